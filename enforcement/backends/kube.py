"""What the Kubernetes backends share: the GitOps directory and the kubernetes-client calls.

Manifests are always written to ``settings.enforcement.gitops_dir`` (one file per object,
so a revoke is a file deletion a GitOps tool can sync). The API calls are built as plain
:class:`KubeCall` values and executed with the kubernetes client only when
``apply_to_cluster`` is set; without a cluster, tests check the calls that would be made.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flowwarden.enforcement.backends.base import BackendError
from flowwarden.retry import RetryPolicy

log = logging.getLogger("flowwarden.enforcement.kube")


@dataclass(frozen=True)
class KubeCall:
    """One kubernetes-client call: ``getattr(<api class>(), method)(**kwargs)``."""

    api: str  # "NetworkingV1Api", "CoreV1Api", "CustomObjectsApi"
    method: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        name = self.kwargs.get("name") or self.kwargs.get("body", {}).get("metadata", {}).get("name", "")
        return f"{self.api}.{self.method}({name})"


class KubeClient:
    """Executes :class:`KubeCall` values; create falls back to replace when the object exists."""

    def __init__(
        self, enabled: bool, loader: Callable[[], Any] | None = None, retry: RetryPolicy | None = None
    ) -> None:
        self.enabled = enabled
        self._loader = loader
        self._client: Any = None
        # The one retry policy (target kubernetes): an API server that is restarting or
        # overloaded (5xx, 429, no connection) is tried again; any other answer is final.
        self.retry = retry or RetryPolicy(target="kubernetes", attempts=4)

    def _api(self, name: str) -> Any:
        if self._client is None:
            from kubernetes import client, config

            if self._loader is not None:
                self._loader()
            else:
                try:
                    config.load_incluster_config()
                except config.ConfigException:
                    config.load_kube_config()
            self._client = client
        return getattr(self._client, name)()

    def run(self, calls: list[KubeCall]) -> list[str]:
        """Run ``calls`` when enabled; returns their descriptions either way."""
        done = [c.describe() for c in calls]
        if not self.enabled:
            return done
        from kubernetes.client.exceptions import ApiException

        for call in calls:
            api = self._api(call.api)
            try:
                self.retry.call(functools.partial(getattr(api, call.method), **call.kwargs), _transient)
            except ApiException as exc:
                if exc.status == 409 and call.method.startswith("create_"):
                    replace = call.method.replace("create_", "replace_", 1)
                    name = call.kwargs["body"]["metadata"]["name"]
                    getattr(api, replace)(name=name, **call.kwargs)
                elif exc.status == 404 and call.method.startswith("delete_"):
                    continue  # already gone: revoking twice changes nothing
                else:
                    raise BackendError(f"kubernetes: {call.describe()}: {exc.status} {exc.reason}") from exc
        return done

    def names(self, call: KubeCall) -> list[tuple[str, str]]:
        """(namespace, name) of the objects a ``list_*`` call returns; [] when not enabled."""
        if not self.enabled:
            return []
        from kubernetes.client.exceptions import ApiException

        api = self._api(call.api)
        try:
            result = self.retry.call(functools.partial(getattr(api, call.method), **call.kwargs), _transient)
        except ApiException as exc:
            raise BackendError(f"kubernetes: {call.describe()}: {exc.status} {exc.reason}") from exc
        return [(i.metadata.namespace or "", i.metadata.name) for i in result.items]


def _transient(exc: BaseException) -> bool:
    """Worth another try: the API server is restarting, overloaded or not reachable."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        return exc.status in (429, 500, 502, 503, 504)
    return isinstance(exc, urllib3.exceptions.HTTPError | OSError)


def write_manifest(path: Path, docs: list[dict[str, Any]]) -> None:
    """Write atomically so that a GitOps sync never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(dump(docs))
    tmp.replace(path)


def dump(docs: list[dict[str, Any]]) -> str:
    return yaml.dump_all(docs, Dumper=_DUMPER, sort_keys=False) if docs else ""


# libyaml's emitter when PyYAML has it (same YAML, ~10x faster: a block of thousands of targets is
# one document), else the pure-Python one; both are the safe dumper (plain data only).
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
