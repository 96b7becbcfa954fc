"""``flowwarden demo``: the whole product in one process, on the embedded default.

Simulated cluster traffic (or a pcap metered by the collector) is published to the bus the
way a collector publishes it, the pipeline stage consumes and scores it, the enforcer decides
in dry-run, and a live view shows it happening. Nothing here is a second implementation: the
same ``PipelineStage``, ``Enforcer``, bus and store run in production with other settings
(``--bus kafka --store postgresql://…``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from flowwarden.cli.common import COMMANDS, ConfigOption, Output, OutputOption, emit
from flowwarden.errors import ExitCode

DEFAULT_OUT = Path("flowwarden-demo")


def demo(
    config: ConfigOption = None,
    minutes: Annotated[float, typer.Option(help="Simulated minutes of cluster traffic.")] = 20.0,
    pods: Annotated[int, typer.Option(help="Pods in the simulated cluster.")] = 80,
    seed: Annotated[int, typer.Option(help="Simulation seed (same seed, same run).")] = 7,
    pcap: Annotated[
        Path | None, typer.Option(help="Replay this capture through the collector's meter instead.")
    ] = None,
    inventory: Annotated[
        Path | None, typer.Option(help="Pods as `kubectl get pods -A -o json` prints them (with --pcap).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Directory for everything the demo leaves behind.")] = DEFAULT_OUT,
    duration: Annotated[
        float, typer.Option(help="Wall-clock seconds to spread the replay over (0: as fast as possible).")
    ] = 15.0,
    bus: Annotated[str, typer.Option(help="memory (embedded) or kafka.")] = "memory",
    bootstrap: Annotated[
        str | None, typer.Option(help="Kafka bootstrap servers, comma-separated (with --bus kafka).")
    ] = None,
    store: Annotated[
        str | None, typer.Option(help="Store URL (default: SQLite in the output directory).")
    ] = None,
    live: Annotated[
        bool | None, typer.Option("--live/--no-live", help="Live terminal view (default: when a terminal).")
    ] = None,
    strict: Annotated[bool, typer.Option(help="Exit 1 when an injected attack was missed.")] = False,
    output: OutputOption = Output.text,
) -> None:
    """Simulate a cluster with attacks, detect them, decide in dry-run, and report (within 60 s)."""
    from flowwarden.cli.demo_run import DemoOptions, run_demo

    options = DemoOptions(
        config=config,
        minutes=minutes,
        pods=pods,
        seed=seed,
        pcap=pcap,
        inventory=inventory,
        out=out,
        duration=duration,
        bus=bus,
        bootstrap=bootstrap,
        store=store,
        live=False if output is Output.json else live,
        json_output=output is Output.json,
    )
    started = time.monotonic()
    summary = run_demo(options)
    wall_s = time.monotonic() - started
    emit(output, summary.to_dict(wall_s), lambda: summary.render(wall_s))
    if strict and summary.missed:
        raise typer.Exit(ExitCode.FAILED)


@COMMANDS.register("demo")
def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
