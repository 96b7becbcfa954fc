"""``flowwarden policy``: validate the declared firewall policy (the YAML kept in git)."""

from __future__ import annotations

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


def _edges(flows: Path, inventory: Path | None) -> list[Any]:
    from flowwarden.enforcement.recommend.flows import read_edges
    from flowwarden.kube.inventory import PodInventory

    inv = PodInventory.from_file(inventory) if inventory else PodInventory.empty()
    return read_edges(flows, inv)


@policy_app.command("recommend")
def recommend_command(
    flows: Annotated[Path, typer.Option("--flows", help="Parquet file of flows.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the YAML files, one per namespace.")],
    inventory: Annotated[
        Path | None, typer.Option("--inventory", help="Pods: kubectl get pods -A -o json.")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Settings file.")] = None,
    output: OutputOption = Output.text,
) -> None:
    """Write least-privilege NetworkPolicies (+ Calico domain egress) for the flows observed."""
    import yaml

    from flowwarden.enforcement.recommend.recommend import recommend

    rec = recommend(_edges(flows, inventory), settings_from(config))
    out.mkdir(parents=True, exist_ok=True)
    for ns, docs in rec.manifests.items():
        (out / f"{ns}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    data = {"out": str(out), "rules_per_namespace": rec.rules, "skipped_workloads": rec.skipped}
    emit(output, data, lambda: "\n".join(f"{ns}: {n} rules" for ns, n in sorted(rec.rules.items())))


def _replay(policies: Any, flows: Path, inventory: Path | None) -> dict[str, Any]:
    denied: dict[str, list[str]] = {}
    total = allowed = 0
    for e in _edges(flows, inventory):
        v = policies.evaluate(e.src, e.dst, e.proto, e.port, e.flows)
        total += e.flows
        if v.allowed:
            allowed += e.flows
            continue
        ns = e.src.namespace or e.dst.namespace
        src = f"{e.src.namespace}/{e.src.workload}" if e.src.is_pod else e.src.ip
        dst = f"{e.dst.namespace}/{e.dst.workload}" if e.dst.is_pod else e.dst.ip
        denied.setdefault(ns, []).append(f"{src} -> {dst}:{e.port}/{e.proto} ({e.flows} flows)")
    return {"flows": total, "allowed": allowed, "denied": denied}


@policy_app.command("simulate")
def simulate_command(
    policies: Annotated[Path, typer.Option("--policies", help="Directory (or file) of NetworkPolicy YAML.")],
    flows: Annotated[Path, typer.Option("--flows", help="Parquet file of flows to replay.")],
    inventory: Annotated[
        Path | None, typer.Option("--inventory", help="Pods: kubectl get pods -A -o json.")
    ] = None,
    output: OutputOption = Output.text,
) -> None:
    """What the candidate policy set would have denied, per namespace."""
    import yaml

    from flowwarden.enforcement.recommend.evaluate import PolicySet

    files = sorted(policies.glob("*.y*ml")) if policies.is_dir() else [policies]
    docs = [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]
    data = _replay(PolicySet(docs), flows, inventory)
    emit(output, data, lambda: _text(data))


@policy_app.command("diff")
def diff_command(
    deployed: Annotated[Path, typer.Option("--deployed", help="kubectl get networkpolicy -A -o json.")],
    flows: Annotated[Path, typer.Option("--flows", help="Parquet file of flows of the range.")],
    inventory: Annotated[
        Path | None, typer.Option("--inventory", help="Pods: kubectl get pods -A -o json.")
    ] = None,
    output: OutputOption = Output.text,
) -> None:
    """Observed flows the deployed policies would deny (missing rules) and deployed rules nothing used."""
    import json

    from flowwarden.enforcement.recommend.evaluate import PolicySet

    policies = PolicySet([json.loads(deployed.read_text())])
    data = _replay(policies, flows, inventory)
    data["unused"] = [r for r in policies.rules() if r not in policies.used]
    emit(output, data, lambda: _text(data) + "".join(f"\nunused: {r}" for r in data["unused"]))


def _text(data: dict[str, Any]) -> str:
    lines = [f"{data['allowed']}/{data['flows']} flows allowed"]
    for ns, items in sorted(data["denied"].items()):
        lines += [f"{ns}: denied {d}" for d in items]
    return "\n".join(lines)
