"""``flowwarden policy``: validate the declared policy; recommend, simulate and diff policies.

``recommend``/``simulate``/``diff`` read the observed edges of a range from the store's
rollups (``--since 7d [--until ...]``) or from a Parquet file of flows (``--flows``).
``recommend`` leaves out the edges of open or malicious alerts (the store's, or ``--alerts``)
and writes NetworkPolicies, Calico policies or flowwarden's own declared policy (``--format``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from flowwarden.cli.common import COMMANDS, Output, OutputOption, emit, settings_from

policy_app = typer.Typer(help="Check the declared egress/ingress/port policy.", no_args_is_help=True)


@COMMANDS.register("policy")
def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="policy")


@policy_app.command("check")
def check_command(
    file: Annotated[Path, typer.Argument(help="Policy YAML file to validate.")],
    show: Annotated[bool, typer.Option("--show", help="Print the policy as flowwarden reads it.")] = False,
) -> None:
    """Validate FILE; errors name the key path and the nearest valid name (exit status 3)."""
    from flowwarden.policy import ENDPOINTS, load_policy

    policy = load_policy(file)
    if not policy.declared:
        typer.echo(f"{file}: valid; declares nothing (an empty policy checks no flow)")
        return
    scopes = policy.scopes()
    egress = sum(s.egress is not None for _, s in scopes)
    ingress = sum(s.ingress is not None for _, s in scopes)
    endpoints = [e for e in ENDPOINTS if getattr(policy.cluster, e) is not None]
    typer.echo(
        f"{file}: valid; {len(policy.namespaces)} namespaces, {policy.rule_count()} rules; "
        f"egress declared for {egress} scopes, ingress for {ingress}; "
        f"cluster endpoints: {', '.join(endpoints) or 'none'}"
    )
    if show:
        typer.echo(policy.to_yaml(), nl=False)


FlowsOption = Annotated[
    Path | None, typer.Option("--flows", help="Parquet file of flows (instead of the store's range).")
]
SinceOption = Annotated[
    str | None, typer.Option("--since", help="Read the store's rollups from: 7d, 12h, 30m or an ISO time.")
]
UntilOption = Annotated[
    str | None, typer.Option("--until", help="... up to (default: now): 7d, 12h, 30m or an ISO time.")
]
InventoryOption = Annotated[
    Path | None,
    typer.Option(
        "--inventory", help="Pods: kubectl get pods -A -o json (default: kubernetes.inventory_path)."
    ),
]
ConfigFileOption = Annotated[Path | None, typer.Option("--config", help="Settings file.")]


def _inventory(path: Path | None, settings: Any) -> Any:
    from flowwarden.kube.inventory import PodInventory

    path = path or settings.kubernetes.inventory_path
    return PodInventory.from_file(path) if path else PodInventory.empty()


def _source(flows: Path | None, since: str | None, until: str | None) -> None:
    from flowwarden.errors import InputError

    if (flows is None) == (since is None):
        raise InputError("give either --flows FILE (Parquet) or --since RANGE (the store's rollups)")
    if until is not None and since is None:
        raise InputError("--until needs --since")


def _edges(
    flows: Path | None, since: str | None, until: str | None, inv: Any, settings: Any, store: Any = None
) -> list[Any]:
    """Observed edges from the Parquet file or the store's range; an empty range is an error."""
    from flowwarden.cli.common import progress
    from flowwarden.errors import InputError

    if flows is not None:
        from flowwarden.enforcement.recommend.flows import read_edges

        edges = read_edges(flows, inv)
        if not edges:
            raise InputError(f"{flows}: holds no flows")
        return edges
    from flowwarden.cli.report import parse_since
    from flowwarden.enforcement.recommend.flows import workload_labels
    from flowwarden.enforcement.recommend.store_edges import store_edges

    now = datetime.now(UTC)
    start = parse_since(since or "7d", now)
    end = parse_since(until, now) if until else now
    if end <= start:
        raise InputError(f"--since {since} .. --until {until}: the range is empty")
    with progress("store", (end - start).total_seconds() / 86400) as step:
        edges = store_edges(store.engine, start, end, workload_labels(inv), step)
    if not edges:
        raise InputError(
            f"the store holds no flows from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC "
            f"({settings.store.url.split('@')[-1]}): widen --since, or check that the pipeline writes rollups"
        )
    return edges


def _alerts(alerts: Path | None, store: Any, inv: Any) -> tuple[list[Any], list[str]]:
    """Edges of open/malicious alerts: from ``--alerts`` (JSONL, all open) or the store."""
    from flowwarden.enforcement.recommend.alerts import alert_edges, read_alerts_jsonl
    from flowwarden.pipeline.detection.alerts import MAX_TARGETS

    by_ip = {ip: f"{r.namespace}/{r.workload}" for ip, r in inv.pods_by_ip.items() if r.workload}
    if alerts is not None:
        return alert_edges(read_alerts_jsonl(alerts), {}, by_ip, MAX_TARGETS)
    if store is None:
        return [], []
    from flowwarden.pipeline.detection.feedback import RESOLUTIONS_KEY, parse_resolutions

    verdicts = {r["alert_id"]: r["verdict"] for r in parse_resolutions(store.get_state(RESOLUTIONS_KEY))}
    return alert_edges(store.list_alerts(), verdicts, by_ip, MAX_TARGETS)


@contextmanager
def _store_for(since: str | None, settings: Any) -> Iterator[Any]:
    """The store when the range comes from it, else None."""
    if since is None:
        yield None
        return
    from flowwarden.store import Store

    with Store(settings.store.url) as store:
        yield store


@policy_app.command("recommend")
def recommend_command(
    out: Annotated[Path, typer.Option("--out", help="Directory for the YAML files, one per namespace.")],
    flows: FlowsOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    inventory: InventoryOption = None,
    alerts: Annotated[
        Path | None, typer.Option("--alerts", help="Alerts JSONL (alerts.jsonl): their edges are left out.")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="networkpolicy, calico or declared (flowwarden's own policy).")
    ] = "networkpolicy",
    config: ConfigFileOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Write least-privilege policies for the flows observed, minus edges of open/malicious alerts."""
    import json

    import yaml

    from flowwarden.enforcement.recommend.recommend import FORMATS, recommend
    from flowwarden.errors import InputError

    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    _source(flows, since, until)
    settings = settings_from(config)
    inv = _inventory(inventory, settings)
    with _store_for(since, settings) as store:
        edges = _edges(flows, since, until, inv, settings, store)
        forbidden, untargeted = _alerts(alerts, store, inv)
    rec = recommend(edges, settings, alerts=forbidden, fmt=fmt)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for stem, docs in rec.manifests.items():
        if fmt == "declared":
            doc = dict(docs[0])
            side = {"evidence": doc.pop("x-evidence"), "excluded_alert_edges": doc.pop("x-excluded")}
            (out / f"{stem}.evidence.json").write_text(json.dumps(side, indent=2, sort_keys=True) + "\n")
            docs = [doc]
        path = out / f"{stem}.yaml"
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        files.append(str(path))
    data = {
        "out": str(out),
        "format": fmt,
        "files": files,
        "edges": len(edges),
        "rules_per_namespace": rec.rules,
        "skipped_workloads": rec.skipped,
        "excluded_alert_edges": rec.dropped,
        "alerts_without_targets": untargeted,
    }
    if len(inv) == 0 and forbidden:
        data["warning"] = (
            "no pod inventory (--inventory): alert targets given as addresses match workloads "
            "only through the alerts' example flows"
        )
    emit(output, data, lambda: _rec_text(data))


def _rec_text(data: dict[str, Any]) -> str:
    lines = [f"{ns}: {n} rules" for ns, n in sorted(data["rules_per_namespace"].items())]
    lines += [f"skipped (no labels to select it): {w}" for w in data["skipped_workloads"]]
    lines += [f"warning: {data['warning']}"] if "warning" in data else []
    lines += [
        f"excluded ({d['why']} alert {d['alert']}): {d['source']} -> {d['target']}:{d['port']}"
        for d in data["excluded_alert_edges"]
    ]
    return "\n".join(lines)


def _replay(policies: Any, edges: list[Any]) -> dict[str, Any]:
    denied: dict[str, list[str]] = {}
    total = allowed = 0
    for e in edges:
        v = policies.evaluate(e.src, e.dst, e.proto, e.port, e.flows)
        total += e.flows
        if v.allowed:
            allowed += e.flows
            continue
        ns = e.src.namespace or e.dst.namespace
        src = f"{e.src.namespace}/{e.src.workload}" if e.src.is_pod else e.src.ip
        dst = f"{e.dst.namespace}/{e.dst.workload}" if e.dst.is_pod else e.dst.ip
        proto = e.proto or "tcp|udp"
        denied.setdefault(ns, []).append(f"{src} -> {dst}:{e.port}/{proto} ({e.flows} flows)")
    return {"flows": total, "allowed": allowed, "denied": denied}


def _range_edges(
    flows: Path | None, since: str | None, until: str | None, inventory: Path | None, config: Path | None
) -> list[Any]:
    _source(flows, since, until)
    settings = settings_from(config)
    inv = _inventory(inventory, settings)
    with _store_for(since, settings) as store:
        return _edges(flows, since, until, inv, settings, store)


@policy_app.command("simulate")
def simulate_command(
    policies: Annotated[Path, typer.Option("--policies", help="Directory (or file) of NetworkPolicy YAML.")],
    flows: FlowsOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    inventory: InventoryOption = None,
    config: ConfigFileOption = None,
    output: OutputOption = Output.text,
) -> None:
    """What the candidate policy set would have denied, per namespace."""
    import yaml

    from flowwarden.enforcement.recommend.evaluate import PolicySet

    files = sorted(policies.glob("*.y*ml")) if policies.is_dir() else [policies]
    docs = [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]
    data = _replay(PolicySet(docs), _range_edges(flows, since, until, inventory, config))
    emit(output, data, lambda: _text(data))


@policy_app.command("diff")
def diff_command(
    deployed: Annotated[Path, typer.Option("--deployed", help="kubectl get networkpolicy -A -o json.")],
    flows: FlowsOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    inventory: InventoryOption = None,
    config: ConfigFileOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Observed flows the deployed policies would deny (missing rules) and deployed rules nothing used."""
    import json

    from flowwarden.enforcement.recommend.evaluate import PolicySet

    policies = PolicySet([json.loads(deployed.read_text())])
    data = _replay(policies, _range_edges(flows, since, until, inventory, config))
    data["unused"] = [r for r in policies.rules() if r not in policies.used]
    emit(output, data, lambda: _text(data) + "".join(f"\nunused: {r}" for r in data["unused"]))


def _text(data: dict[str, Any]) -> str:
    lines = [f"{data['allowed']}/{data['flows']} flows allowed"]
    for ns, items in sorted(data["denied"].items()):
        lines += [f"{ns}: denied {d}" for d in items]
    return "\n".join(lines)
