"""Fuzzing the metering path: random and mutated captures never crash or hang it."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowwarden.collectors.decode import CAUSES, decode
from flowwarden.collectors.meter import Meter
from flowwarden.collectors.pcapfile import CaptureFormatError, PcapStream
from flowwarden.records import validate_flows
from flowwarden.settings import CollectorSettings

GOLDEN = sorted((Path(__file__).resolve().parents[1] / "data" / "pcaps").glob("*.pcap*"))
LINKTYPES = [0, 1, 12, 101, 113, 228, 229, 276, 147]
CFG = CollectorSettings(node="fuzz", app_names=False)


def meter_bytes(data: bytes, chunk: int = 4096) -> tuple[int, PcapStream, Meter]:
    """The whole metering path over ``data``; returns records emitted."""
    stream, meter = PcapStream(), Meter(CFG)
    records = 0
    try:
        for i in range(0, len(data), chunk):
            for df in meter.feed(stream.feed(data[i : i + chunk])):
                records += len(df)
    except CaptureFormatError:
        return 0, stream, meter
    stream.close()
    final = meter.table.flush()
    validate_flows(final.drop(columns="uid"))
    return records + len(final), stream, meter


def _header(linktype: int) -> bytes:
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)


@settings(max_examples=80, deadline=10_000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000), st.sampled_from(LINKTYPES))
def test_random_bytes_after_a_header(body: bytes, linktype: int) -> None:
    records, stream, meter = meter_bytes(_header(linktype) + body)
    assert meter.packets == stream.packets
    assert records <= meter.packets


@settings(max_examples=120, deadline=10_000)
@given(
    st.lists(st.tuples(st.sampled_from(LINKTYPES), st.binary(max_size=120), st.floats(0, 4e9)), max_size=40),
)
def test_well_framed_records_with_random_contents(packets: list[tuple[int, bytes, float]]) -> None:
    """Every record is framed correctly but holds garbage: each packet gets exactly one cause."""
    data = _header(1)
    for _, payload, ts in packets:
        data += struct.pack("<IIII", int(ts), 0, len(payload), len(payload) + 100) + payload
    s = PcapStream()
    batch = s.feed(data)
    batch.linktype = np.array([lt for lt, _, _ in packets], dtype=np.int64)
    d = decode(batch)
    assert len(d) == len(packets)
    assert ((d.cause >= 0) & (d.cause < len(CAUSES))).all()
    assert ((d.sport >= 0) & (d.sport <= 65535)).all() and ((d.proto >= 0) & (d.proto <= 255)).all()
    _, _, meter = meter_bytes(data)
    assert meter.packets == len(packets)


@settings(max_examples=80, deadline=10_000, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(GOLDEN),
    st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=12),
    st.integers(0, 1 << 20),
    st.integers(1, 5000),
)
def test_mutated_golden_captures(path: Path, flips: list[tuple[int, int]], cut: int, chunk: int) -> None:
    data = bytearray(path.read_bytes())
    for pos, value in flips:
        data[pos % len(data)] = value
    data = data[: max(1, cut % (len(data) + 1))]
    _, stream, meter = meter_bytes(bytes(data), chunk=chunk)
    assert meter.packets == stream.packets
    assert sum(meter.undecoded.values()) <= meter.packets
