"""Metering a capture file offline: the pure entry point the rest of the project calls.

``flowwarden detect --pcap``, the demo and model tuning turn a pcap into flow records with
:func:`meter_pcap`; no bus, no threads besides tshark's name dissector.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from flowwarden.collectors.meter import Meter
from flowwarden.collectors.pcapfile import PcapStream, read_capture
from flowwarden.errors import InputError
from flowwarden.records import FLOW_COLUMNS, conform_flows
from flowwarden.settings import Settings

log = logging.getLogger("flowwarden.collector")


@dataclass
class MeterReport:
    """What reading a capture did: counts, causes of undecoded packets, read errors."""

    packets: int = 0
    bytes: int = 0
    flows: int = 0
    evicted: int = 0
    undecoded: dict[str, int] = field(default_factory=dict)
    read_error: str = ""
    unread_bytes: int = 0


# Progress of a capture being metered: (packets read, frame bytes read, file size in bytes).
# Frame bytes leave out the capture's own record headers, so they end a little short of the size.
MeterProgress = Callable[[int, int, int], None]


def meter_capture(
    path: str | Path, settings: Settings | None = None, *, progress: MeterProgress | None = None
) -> tuple[pd.DataFrame, MeterReport]:
    """Flow records (FLOW_SCHEMA, app names joined) of a pcap/pcapng file, and a report.

    ``progress`` is called after each chunk of packets: metering a multi-million-packet
    capture takes minutes, and the caller (the CLI) decides whether and how to show it.
    """
    from flowwarden.collectors.appnames import NameDissector
    from flowwarden.collectors.pcapfile import CaptureFormatError

    settings = settings or Settings()
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--pcap: {p} is not a file")
    meter = Meter(settings.collector)
    names = NameDissector() if meter.app_names else None
    if names is not None:
        names.start()
    stream = PcapStream()
    parts: list[pd.DataFrame] = []
    size = p.stat().st_size
    try:
        for batch in read_capture(p, stream):
            parts.extend(meter.feed(batch))
            if names is not None:
                names.submit(meter.candidates.take())
            if progress is not None:
                progress(meter.packets, meter.bytes, size)
    except CaptureFormatError as exc:
        raise InputError(f"{p}: {exc}") from exc
    finally:
        if names is not None:
            names.close()
    parts.append(meter.flush())
    df = pd.concat([x for x in parts if len(x)] or parts[-1:], ignore_index=True)
    if names is not None:
        df = names.join(df)
    report = MeterReport(
        packets=meter.packets,
        bytes=meter.bytes,
        flows=len(df),
        evicted=meter.table.evicted,
        undecoded=dict(meter.undecoded),
        read_error=stream.error,
        unread_bytes=stream.bad_bytes,
    )
    return conform_flows(df[list(FLOW_COLUMNS)]), report


def meter_pcap(path: str | Path, settings: Settings | None = None) -> pd.DataFrame:
    """Flow records of a capture file (FLOW_SCHEMA, DNS/TLS/HTTP names joined)."""
    return meter_capture(path, settings)[0]
