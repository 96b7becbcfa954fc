"""Upload the dashboards and data sources to a running Grafana over its HTTP API.

The data sources come from the same provisioning file Grafana reads at start, with
``${VAR}`` expanded from the environment as Grafana would, so one definition serves both.
A push never changes which data source is the default: ``isDefault`` is never sent for a new
data source, and an existing one keeps the value it has.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flowwarden.dashboards.catalog import PROVISIONING_DIR, load_committed
from flowwarden.dashboards.model import Json
from flowwarden.errors import ConfigError, ServiceUnavailable
from flowwarden.retry import RetryPolicy

FOLDER_UID = "flowwarden"
FOLDER_TITLE = "flowwarden"
DATASOURCES_FILE = PROVISIONING_DIR / "datasources" / "flowwarden.yaml"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def expand_env(text: str, env: dict[str, str]) -> str:
    """Expand ``${VAR}``/``$VAR`` the way Grafana does in provisioning files; unknown -> error."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in env:
            raise ConfigError(f"{DATASOURCES_FILE.name}: environment variable {name} is not set")
        return env[name]

    return _VAR.sub(sub, text)


def datasources(path: Path = DATASOURCES_FILE, env: dict[str, str] | None = None) -> list[Json]:
    """The data sources as Grafana's API wants them (provisioning keys that the API lacks removed)."""
    doc = yaml.safe_load(path.read_text())
    doc = _expand_values(doc, dict(os.environ) if env is None else env)
    result = []
    for ds in doc.get("datasources", []):
        body = {k: v for k, v in ds.items() if k not in ("editable", "orgId", "version", "isDefault")}
        result.append(body)
    return result


def _expand_values(node: Any, env: dict[str, str]) -> Any:
    """Expand variables in string values only (never in comments or keys), like Grafana."""
    if isinstance(node, dict):
        return {k: _expand_values(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_values(v, env) for v in node]
    return expand_env(node, env) if isinstance(node, str) else node


@dataclass
class PushPlan:
    """Everything one push sends, built without touching the network (so it can be inspected)."""

    folder: Json
    datasources: list[Json]
    dashboards: list[Json] = field(default_factory=list)


def plan(env: dict[str, str] | None = None, with_datasources: bool = True) -> PushPlan:
    boards = [
        {
            "dashboard": {**board, "id": None},
            "folderUid": FOLDER_UID,
            "overwrite": True,
            "message": "flowwarden dashboards push",
        }
        for board in load_committed().values()
    ]
    return PushPlan(
        folder={"uid": FOLDER_UID, "title": FOLDER_TITLE},
        datasources=datasources(env=env) if with_datasources else [],
        dashboards=boards,
    )


def push(
    url: str,
    token: str,
    *,
    with_datasources: bool = True,
    timeout_s: float = 10.0,
    retry: RetryPolicy | None = None,
) -> list[str]:
    """Create or update the folder, the data sources and every dashboard; returns what was done.

    Every step is an upsert, so a Grafana that is down or answers 5xx gets the whole push
    again from the one retry policy (target ``grafana``); a 4xx is final.
    """
    from grafana_client import GrafanaApi
    from grafana_client.client import GrafanaClientError, GrafanaException, GrafanaServerError

    todo = plan(with_datasources=with_datasources)
    api = GrafanaApi.from_url(url, credential=token, timeout=timeout_s)
    policy = retry or RetryPolicy(target="grafana", attempts=5)
    try:
        return policy.call(lambda: _push_once(api, todo), (GrafanaServerError, OSError))
    except GrafanaClientError as exc:
        raise ServiceUnavailable(f"grafana at {url} refused the push: {exc}") from exc
    except (GrafanaException, OSError) as exc:
        raise ServiceUnavailable(f"grafana at {url} is unreachable: {exc}") from exc


def _push_once(api: Any, todo: PushPlan) -> list[str]:
    from grafana_client.client import GrafanaClientError

    done: list[str] = []
    try:
        api.folder.get_folder(FOLDER_UID)
    except GrafanaClientError as exc:
        if exc.status_code != 404:
            raise
        api.folder.create_folder(todo.folder["title"], uid=FOLDER_UID)
        done.append(f"folder {FOLDER_UID} created")
    for ds in todo.datasources:
        done.append(_upsert_datasource(api, ds, GrafanaClientError))
    for body in todo.dashboards:
        result: Any = api.dashboard.update_dashboard(body)
        done.append(f"dashboard {body['dashboard']['uid']} -> {result.get('status', 'ok')}")
    return done


def _upsert_datasource(api: Any, ds: Json, client_error: type[Exception]) -> str:
    try:
        existing: Any = api.datasource.get_datasource_by_uid(ds["uid"])
    except client_error as exc:
        if getattr(exc, "status_code", None) != 404:
            raise
        api.datasource.create_datasource(ds)
        return f"datasource {ds['uid']} created"
    # An update is a replacement: say what the data source already is, so it stays (or stays
    # not) the default.
    body = {**ds, "isDefault": bool(existing.get("isDefault", False))}
    api.datasource.update_datasource_by_uid(ds["uid"], body)
    return f"datasource {ds['uid']} updated"
