"""``flowwarden replay``: recorded or simulated flows onto the ``flows`` topic, paced as live."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from flowwarden.cli.common import (
    COMMANDS,
    ConfigOption,
    Output,
    OutputOption,
    emit,
    require_kafka,
    settings_from,
)
from flowwarden.errors import ExitCode, InputError


def replay(
    flows: Annotated[Path, typer.Argument(help="Parquet file of flows (e.g. `flowwarden simulate` output).")],
    config: ConfigOption = None,
    realtime: Annotated[
        bool, typer.Option("--realtime", help="Shift timestamps to now and send at the traffic's own pace.")
    ] = False,
    speed: Annotated[float, typer.Option(help="Pace multiplier with --realtime (2: twice as fast).")] = 1.0,
    batch_s: Annotated[float, typer.Option(help="Seconds of traffic per published batch.")] = 1.0,
    output: OutputOption = Output.text,
) -> None:
    """Publish a flows file to the bus's `flows` topic, as a collector would (needs bus.kind: kafka)."""
    from flowwarden.bus import open_bus
    from flowwarden.simulator.replay import load_flows
    from flowwarden.simulator.replay import replay as run_replay

    if speed <= 0 or batch_s <= 0:
        raise InputError("--speed and --batch-s must be positive")
    settings = settings_from(config)
    require_kafka(settings, "replay")
    if not flows.is_file():
        raise InputError(f"{flows}: no such file")
    frame = load_flows(flows)
    bus = open_bus(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _s, _f: stop.set())
    try:
        topics = settings.kafka.topics
        bus.ensure_topics([topics.flows])
        producer = bus.producer()
        try:
            stats = run_replay(
                frame,
                producer,
                topic=topics.flows,
                partitions=settings.kafka.partitions,
                speed=speed if realtime else 0.0,
                batch_s=batch_s,
                stop=stop,
            )
        finally:
            producer.close()
        failed = producer.failed_count
    finally:
        bus.close()
    emit(
        output,
        {
            "flows": stats.flows,
            "messages": stats.messages,
            "seconds": round(stats.seconds, 3),
            "failed_messages": failed,
            "topic": settings.kafka.topics.flows,
        },
        f"replayed {stats.flows:,} flows in {stats.messages:,} messages over {stats.seconds:.1f} s"
        + (f"; {failed} messages failed" if failed else ""),
    )
    if failed:
        raise typer.Exit(ExitCode.FAILED)


@COMMANDS.register("replay")
def register(app: typer.Typer) -> None:
    app.command("replay")(replay)
