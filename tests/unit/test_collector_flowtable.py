"""The vectorised flow table against the plain per-packet reference, on synthetic captures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flowwarden.collectors import meter_capture
from flowwarden.collectors.decode import decode
from flowwarden.collectors.flowtable import FlowTable, FlowTableConfig
from flowwarden.collectors.pcapfile import read_capture
from flowwarden.records import COUNTER_COLUMNS, validate_flows
from flowwarden.settings import Settings
from tests.data.make_pcaps import reference_flows
from tests.data.synth import synth_capture

COLS = ["ts_start", "ts_end", "src_ip", "src_port", "dst_ip", "dst_port", "proto", *COUNTER_COLUMNS,
        "tcp_flags", "state", "final"]  # fmt: skip
KEY = ["ts_start", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "final"]


def _meter(path: Path, chunk_bytes: int | None = None, **cfg: float) -> pd.DataFrame:
    table = FlowTable(FlowTableConfig(**cfg))  # type: ignore[arg-type]
    parts = []
    kw = {"chunk_bytes": chunk_bytes} if chunk_bytes else {}
    for batch in read_capture(path, **kw):  # type: ignore[arg-type]
        parts.extend(table.process(decode(batch)))
    parts.append(table.flush())
    return pd.concat(parts, ignore_index=True)


@pytest.mark.parametrize("seed", [1, 2])
def test_matches_the_per_packet_reference_with_timeouts(tmp_path: Path, seed: int) -> None:
    pcap = synth_capture(tmp_path / "s.pcap", packets=4000, flows=300, duration_s=90, seed=seed)
    # Small chunks: ticks and flows straddle chunk boundaries.
    got = _meter(pcap, chunk_bytes=7919)[COLS]
    exp = pd.DataFrame(reference_flows(pcap)[0])[COLS]
    assert (~got["final"]).sum() > 10, "active timeouts should have fired"
    got = got.sort_values(KEY, kind="stable").reset_index(drop=True)
    exp = exp.sort_values(KEY, kind="stable").reset_index(drop=True)
    assert len(got) == len(exp)
    for col in COLS:
        if col.startswith("ts_"):
            np.testing.assert_allclose(got[col], exp[col].astype(float), atol=2e-6, err_msg=col)
        else:
            assert got[col].astype(str).tolist() == exp[col].astype(str).tolist(), col


def test_interim_records_are_deltas_that_sum_to_the_conversation(tmp_path: Path) -> None:
    pcap = synth_capture(tmp_path / "s.pcap", packets=3000, flows=50, duration_s=60, seed=3)
    df = _meter(pcap)
    validate_flows(df.drop(columns="uid"))
    packets = sum(len(b) for b in read_capture(pcap))
    assert int(df["pkts_out"].sum() + df["pkts_in"].sum()) == packets
    per_flow = df.groupby("uid")["final"].agg(["sum", "last"])
    assert (per_flow["sum"] == 1).all() and per_flow["last"].all(), "one final record, and it is the last"


def test_idle_timeout_splits_a_conversation(tmp_path: Path) -> None:
    import dpkt

    path = tmp_path / "idle.pcap"
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for t in (100.0, 101.0, 130.0):  # 29 s of silence > 15 s idle timeout
            u = dpkt.udp.UDP(sport=5000, dport=6000, data=b"x")
            ip = dpkt.ip.IP(src=bytes([10, 0, 0, 1]), dst=bytes([10, 0, 0, 2]), p=17, data=u)
            w.writepkt(bytes(dpkt.ethernet.Ethernet(data=ip)), t)
    df = _meter(path)
    assert df["final"].tolist() == [True, True]
    assert df["pkts_out"].tolist() == [2, 1]
    assert df["uid"].nunique() == 2


def test_max_flows_evicts_the_least_recently_seen_and_counts(tmp_path: Path) -> None:
    pcap = synth_capture(tmp_path / "s.pcap", packets=3000, flows=400, duration_s=20, seed=4)
    table = FlowTable(FlowTableConfig(max_flows=50))
    parts = []
    for batch in read_capture(pcap):
        parts.extend(table.process(decode(batch)))
        assert len(table) <= 50
    parts.append(table.flush())
    df = pd.concat(parts, ignore_index=True)
    assert table.evicted > 0
    packets = sum(len(b) for b in read_capture(pcap))
    assert int(df["pkts_out"].sum() + df["pkts_in"].sum()) == packets, "eviction loses no packet"


def test_meter_pcap_returns_the_flow_schema(tmp_path: Path) -> None:
    pcap = synth_capture(tmp_path / "s.pcap", packets=500, flows=40, seed=5)
    df, report = meter_capture(pcap, Settings(collector={"node": "n1", "app_names": False}))
    assert list(df.columns)[:3] == ["ts_start", "ts_end", "node"]
    validate_flows(df)
    assert report.packets == 500 or report.packets > 400
    assert report.undecoded == {}
    assert (df["node"] == "n1").all()
