"""``flowwarden collect``: live capture to the ``flows`` topic, or a pcap file to Parquet/the bus."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from flowwarden.cli.common import (
    COMMANDS,
    ConfigOption,
    Output,
    OutputOption,
    emit,
    progress,
    require_kafka,
    settings_from,
)
from flowwarden.errors import InputError, ServiceUnavailable
from flowwarden.settings import Settings


@COMMANDS.register("collect")
def register(app: typer.Typer) -> None:
    app.command("collect")(collect_command)


def collect_command(
    interface: Annotated[
        list[str] | None, typer.Option("--interface", "-i", help="Interface to capture on (repeatable).")
    ] = None,
    bpf: Annotated[str | None, typer.Option(help="BPF capture filter (tcpdump syntax).")] = None,
    pcap: Annotated[
        Path | None, typer.Option(help="Meter this pcap/pcapng file instead of capturing.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="With --pcap: write flows to this Parquet file (no bus)."),
    ] = None,
    netns: Annotated[str | None, typer.Option(help="Capture inside this network namespace.")] = None,
    node: Annotated[str | None, typer.Option(help="Node name written into every flow.")] = None,
    config: ConfigOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Turn packets into bidirectional flow records (live, or from a capture file)."""
    updates = {"interfaces": interface, "bpf": bpf, "netns": netns, "node": node}
    overrides = {k: v for k, v in updates.items() if v}
    settings = settings_from(config, **({"collector": overrides} if overrides else {}))
    if pcap is not None:
        _from_pcap(settings, pcap, out, output)
        return
    if out is not None:
        raise InputError("--out: only with --pcap (live flows go to the bus)")
    _live(settings, output)


def _from_pcap(settings: Settings, pcap: Path, out: Path | None, output: Output) -> None:
    from flowwarden.collectors.offline import meter_capture

    if not pcap.is_file():
        raise InputError(f"--pcap: {pcap}: no such file")
    if out is None:
        require_kafka(settings, "collect --pcap without --out")
    with progress("collect", total=pcap.stat().st_size) as step:
        df, report = meter_capture(
            pcap, settings, progress=lambda packets, done, size: step(f"{packets:,} packets", done, size)
        )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(out, index=False)
    else:
        from flowwarden.bus import open_bus, publish_flows

        with open_bus(settings) as bus:
            topic = settings.kafka.topics.flows
            bus.ensure_topics([topic], settings.kafka.partitions)
            producer = bus.producer()
            publish_flows(producer, topic, df, settings.kafka.partitions)
            producer.close()
            if producer.failed_count:
                raise ServiceUnavailable(f"bus: {producer.failed_count} flow batches could not be delivered")
    undecoded = ", ".join(f"{k}={v}" for k, v in sorted(report.undecoded.items())) or "none"
    emit(
        output,
        {
            "packets": report.packets,
            "bytes": report.bytes,
            "flows": len(df),
            "evicted": report.evicted,
            "undecoded": dict(sorted(report.undecoded.items())),
            "read_error": report.read_error or None,
            "out": str(out) if out else None,
            "topic": None if out else settings.kafka.topics.flows,
        },
        f"{report.packets} packets -> {len(df)} flow records"
        + (f" -> {out}" if out else f" -> topic {settings.kafka.topics.flows}")
        + f"; undecoded: {undecoded}"
        + (f"; read stopped early: {report.read_error}" if report.read_error else ""),
    )


def _live(settings: Settings, output: Output) -> None:
    from flowwarden.collectors.collector import Collector

    if settings.bus.kind == "memory":
        logging.getLogger("flowwarden.collector").warning(
            "bus.kind is memory: flows stay inside this process; set bus.kind: kafka to publish them"
        )
    collector = Collector(settings)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    collector.start()
    try:
        while not stopping.wait(0.5):
            if collector.wait(0):
                break
    finally:
        collector.stop()
    if collector.failure:
        raise ServiceUnavailable(collector.failure)
    if output is Output.json:
        m = collector.metrics
        emit(
            output,
            {
                "node": settings.collector.node,
                "packets": m.value("flowwarden_collector_packets_total"),
                "flows": m.value("flowwarden_collector_flows_total"),
            },
        )
