"""``flowwarden enforce`` (the stage; an offline dry-run) and ``flowwarden blocks`` (for people)."""

from __future__ import annotations

import getpass
import json
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flowwarden.cli.common import (
    COMMANDS,
    ConfigOption,
    Output,
    OutputOption,
    StrictOption,
    emit,
    settings_from,
)
from flowwarden.errors import ExitCode, InputError

if TYPE_CHECKING:
    from flowwarden.enforcement.enforcer import Enforcer
    from flowwarden.settings import Settings
    from flowwarden.store import Store

enforce_app = typer.Typer(
    help="The enforcement hook: alerts become guarded firewall rules.", no_args_is_help=False
)
blocks_app = typer.Typer(help="List, revoke, approve and add blocks (the people's side of enforcement).")


@COMMANDS.register("enforce")
def register(app: typer.Typer) -> None:
    app.add_typer(enforce_app, name="enforce")
    app.add_typer(blocks_app, name="blocks")


@enforce_app.callback(invoke_without_command=True)
def enforce(
    ctx: typer.Context,
    alerts: Annotated[
        Path | None, typer.Option("--alerts", help="Alerts as JSON lines (offline dry-run).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Where to write the decisions (JSON lines).")
    ] = None,
    rules_dir: Annotated[
        Path | None,
        typer.Option(
            "--rules-dir",
            help="Where to write rules.nft and the Kubernetes manifests of every backend.",
        ),
    ] = None,
    config: ConfigOption = None,
    output: OutputOption = Output.text,
    strict: StrictOption = False,
) -> None:
    """Offline dry-run over a file of alerts (``--alerts``), or a subcommand (``run``).

    With ``--strict`` the exit status says whether any block would be applied.
    """
    if ctx.invoked_subcommand is not None:
        return
    if alerts is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    from flowwarden.enforcement.offline import plan_offline, read_alerts, summarise, write_decisions

    settings = settings_from(config)
    if not alerts.is_file():
        raise InputError(f"--alerts: {alerts}: no such file")
    out = out or alerts.with_name("decisions.jsonl")
    rules_dir = rules_dir or out.parent / "rules"
    decisions = plan_offline(read_alerts(alerts), settings, rules_dir)
    n = write_decisions(decisions, out)
    by_status = summarise(decisions)
    emit(
        output,
        {"decisions": n, "by_status": by_status, "out": str(out), "rules_dir": str(rules_dir)},
        f"{n} decisions -> {out}; rules it would apply -> {rules_dir}\n" + json.dumps(by_status, indent=2),
    )
    if strict and any(d.status in ("simulated", "applied", "pending") for d in decisions):
        raise typer.Exit(ExitCode.FOUND)


@enforce_app.command("run")
def run(
    config: ConfigOption = None,
    ready_port: Annotated[
        int,
        typer.Option(
            "--ready-port", help="Serve /ready (Kafka and the store reachable) and /healthz here (0: off)."
        ),
    ] = 0,
) -> None:
    """Run the enforcer: consume alerts, decide, apply, publish and record until SIGTERM."""
    from flowwarden.bus import open_bus
    from flowwarden.enforcement.enforcer import Enforcer
    from flowwarden.readiness import Readiness
    from flowwarden.store import Store

    settings = settings_from(config)
    if settings.bus.kind == "memory":
        typer.secho(
            "warning: bus.kind=memory: no other process can publish alerts to this enforcer "
            "(use bus.kind=kafka, or the demo that runs every stage in one process)",
            err=True,
            fg=typer.colors.YELLOW,
        )
    store = Store(settings.store.url).start()
    bus = open_bus(settings)
    enforcer = Enforcer(settings, store=store, bus=bus)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    readiness = Readiness.from_settings(settings)
    try:
        if ready_port:
            readiness.serve(ready_port)
        result = enforcer.start()
        enforcer.metrics.serve(settings.enforcement.metrics_port)
        typer.echo(
            f"enforcer started mode={settings.enforcement.mode} backends={enforcer.backend_name} {result}"
        )
        enforcer.run(stop)
    finally:
        readiness.close()
        enforcer.stop()
        bus.close()
        store.stop()


# --------------------------------------------------------------------------- blocks


def _enforcer(settings: Settings, store: Store, *, start: bool) -> Enforcer:
    from flowwarden.bus import open_bus
    from flowwarden.enforcement.enforcer import Enforcer

    bus = open_bus(settings) if settings.bus.kind == "kafka" else None
    enforcer = Enforcer(settings, store=store, bus=bus)
    if start:
        enforcer.start(consume=False)
    elif bus is not None:
        enforcer.producer = bus.producer()
    return enforcer


def _doc(d: Any) -> Any:
    """A decision as the JSON object its ``to_json`` writes (the store's and the topic's form)."""
    return json.loads(d.to_json())


def _show(d: Any) -> str:
    exp = d.expires_at.isoformat(timespec="seconds") if d.expires_at else "-"
    what = ",".join(d.targets) if d.targets else "(all traffic)"
    extra = f" guardrail={d.guardrail}" if d.guardrail else ""
    return f"{d.id}  {d.status:<9} {d.mode:<8} {d.action:<10} {d.source.ip} -> {what}  expires={exp}{extra}"


def _with_store(config: Path | None) -> tuple[Settings, Store]:
    from flowwarden.store import Store

    settings = settings_from(config)
    return settings, Store(settings.store.url).start()


@blocks_app.command("list")
def blocks_list(
    all_: Annotated[
        bool, typer.Option("--all", help="Every decision, not only active and pending ones.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON decision per line (JSON Lines; see also --output json).")
    ] = False,
    config: ConfigOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Blocks in force, pending approval, or simulated (dry-run)."""
    _, store = _with_store(config)
    try:
        statuses = None if all_ else ("applied", "pending", "simulated")
        decisions = store.list_decisions(status=statuses)
    finally:
        store.stop()
    if as_json:
        for d in decisions:
            typer.echo(d.to_json())
        return
    emit(
        output,
        {"decisions": [_doc(d) for d in decisions], "count": len(decisions)},
        lambda: "\n".join([*(_show(d) for d in decisions), f"{len(decisions)} decisions"]),
    )


@blocks_app.command("revoke")
def blocks_revoke(
    decision_id: Annotated[str, typer.Argument(help="The decision to lift.")],
    by: Annotated[str, typer.Option("--by", help="Who revokes (audit trail).")] = "",
    config: ConfigOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Lift a block now (its rules are removed from every backend)."""
    settings, store = _with_store(config)
    try:
        enforcer = _enforcer(settings, store, start=False)
        d = enforcer.revoke(decision_id, by=by or getpass.getuser())
        enforcer.stop()
    finally:
        store.stop()
    emit(output, {"decision": _doc(d)}, _show(d))


@blocks_app.command("approve")
def blocks_approve(
    decision_id: Annotated[str, typer.Argument(help="The pending decision to apply.")],
    by: Annotated[str, typer.Option("--by", help="Who approves (audit trail).")] = "",
    force: Annotated[
        bool, typer.Option("--force", help="Override the allowlist (never the other guardrails).")
    ] = False,
    config: ConfigOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Apply a decision waiting for approval; the guardrails are checked again now."""
    settings, store = _with_store(config)
    try:
        enforcer = _enforcer(settings, store, start=True)
        d = enforcer.approve(decision_id, by=by or getpass.getuser(), force=force)
        enforcer.stop()
    finally:
        store.stop()
    emit(output, {"decision": _doc(d)}, _show(d))
    if d.status == "refused":
        raise typer.Exit(ExitCode.FAILED)


@blocks_app.command("add")
def blocks_add(
    source: Annotated[str, typer.Option("--source", help="The source IP to block.")],
    target: Annotated[list[str], typer.Option("--target", help="Target IP or CIDR (repeat).")] = [],  # noqa: B006
    quarantine: Annotated[bool, typer.Option("--quarantine", help="Cut the source off entirely.")] = False,
    ttl: Annotated[
        int | None, typer.Option("--ttl", help="Seconds (default: enforcement.ttl_s).", min=1)
    ] = None,
    namespace: Annotated[str, typer.Option("--namespace")] = "",
    pod: Annotated[str, typer.Option("--pod")] = "",
    reason: Annotated[str, typer.Option("--reason")] = "",
    by: Annotated[str, typer.Option("--by", help="Who decides (audit trail).")] = "",
    force: Annotated[
        bool, typer.Option("--force", help="Override the allowlist (never the other guardrails).")
    ] = False,
    config: ConfigOption = None,
    output: OutputOption = Output.text,
) -> None:
    """A manual block, applied now in enforce mode; the same guardrails as for alerts."""
    from pydantic import ValidationError

    from flowwarden.records import Entity

    try:
        entity = Entity(ip=source, namespace=namespace, pod=pod)
    except ValidationError as exc:
        raise InputError(f"--source: {source!r} is not an IP address") from exc
    settings, store = _with_store(config)
    try:
        enforcer = _enforcer(settings, store, start=True)
        d = enforcer.manual(
            source=entity,
            targets=list(target),
            action="quarantine" if quarantine else "block",
            ttl_s=ttl,
            decided_by=by or getpass.getuser(),
            reason=reason,
            force=force,
        )
        enforcer.stop()
    finally:
        store.stop()
    emit(output, {"decision": _doc(d)}, _show(d))
    if d.status in ("refused", "failed"):
        raise typer.Exit(ExitCode.FAILED)
