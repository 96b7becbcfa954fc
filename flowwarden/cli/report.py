"""``flowwarden report``: reports for people outside the dashboards (auditors, reviewers).

``report compliance --since 7d --out DIR`` writes ``compliance.html`` (self-contained: opens
offline) and ``compliance.json`` (the same facts for a script) from the store, the declared
policy (``rules.policy_file`` or ``--policy``) and, when given, the NetworkPolicies deployed
(``--deployed``: a file of ``kubectl get networkpolicy -A -o json``), and the namespaces of
the pod inventory (``--inventory`` or ``kubernetes.inventory_path``), so a namespace that sent
nothing in the range is listed too.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from flowwarden.cli.common import COMMANDS, ConfigOption, Output, OutputOption, emit, settings_from
from flowwarden.errors import InputError

report_app = typer.Typer(help="Reports for auditors: compliance.", no_args_is_help=True)

_SINCE = re.compile(r"^(\d+)([mhd])$")
_UNIT = {"m": "minutes", "h": "hours", "d": "days"}


@COMMANDS.register("report")
def register(app: typer.Typer) -> None:
    app.add_typer(report_app, name="report")


def parse_since(text: str, now: datetime) -> datetime:
    """``7d``, ``12h``, ``30m`` before ``now``, or an ISO 8601 time."""
    m = _SINCE.match(text.strip())
    if m:
        return now - timedelta(**{_UNIT[m.group(2)]: int(m.group(1))})
    try:
        t = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InputError(f"--since {text!r}: give a duration (7d, 12h, 30m) or an ISO time") from exc
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@report_app.command("compliance")
def compliance_command(
    out: Annotated[Path, typer.Option("--out", help="Directory for compliance.html and compliance.json.")],
    since: Annotated[str, typer.Option("--since", help="Range start: 7d, 12h, 30m or an ISO time.")] = "7d",
    policy: Annotated[
        Path | None, typer.Option("--policy", help="Declared policy YAML (default: rules.policy_file).")
    ] = None,
    deployed: Annotated[
        Path | None,
        typer.Option("--deployed", help="Deployed NetworkPolicies: kubectl get networkpolicy -A -o json."),
    ] = None,
    inventory: Annotated[
        Path | None,
        typer.Option(
            "--inventory", help="Pods: kubectl get pods -A -o json (default: kubernetes.inventory_path)."
        ),
    ] = None,
    config: ConfigOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Namespaces without policies, control-plane and metadata access, egress, alerts and blocks."""
    from flowwarden.compliance import build_report, load_deployed_policies
    from flowwarden.compliance_html import render_html
    from flowwarden.kube import PodInventory
    from flowwarden.pipeline.detection.feedback import RESOLUTIONS_KEY, parse_resolutions
    from flowwarden.policy import load_policy
    from flowwarden.store import Store

    settings = settings_from(config)
    now = datetime.now(UTC)
    start = parse_since(since, now)
    policy_path = policy or settings.rules.policy_file
    declared = load_policy(policy_path) if policy_path else None
    per_ns = load_deployed_policies(deployed) if deployed else None
    pods_path = inventory or settings.kubernetes.inventory_path
    workloads = None
    if pods_path:
        pods = PodInventory.from_file(pods_path).pods
        workloads = {str(k): int(v) for k, v in pods.groupby("namespace")["workload"].nunique().items()}
    with Store(settings.store.url) as store:
        verdicts = {r["alert_id"]: r["verdict"] for r in parse_resolutions(store.get_state(RESOLUTIONS_KEY))}
        report = build_report(
            store,
            settings,
            since=start,
            until=now,
            policy=declared,
            deployed=per_ns,
            verdicts=verdicts,
            inventory=workloads,
            sources={
                "store": settings.store.url.split("@")[-1],
                "declared_policy": str(policy_path) if policy_path else None,
                "deployed_policies": str(deployed) if deployed else None,
                "pod_inventory": str(pods_path) if pods_path else None,
            },
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "compliance.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    (out / "compliance.html").write_text(render_html(report))
    s = report["summary"]
    files = {"html": str(out / "compliance.html"), "json": str(out / "compliance.json")}
    emit(
        output,
        {**files, "summary": s},
        f"{files['html']}: {s['namespaces']} namespaces "
        f"({s['namespaces_without_policies']} without policies), "
        f"{s['control_plane_or_metadata_edges']} control-plane/metadata edges, "
        f"{s['egress_destinations']} egress destinations, {s['alerts']} alerts, {s['decisions']} decisions",
    )
