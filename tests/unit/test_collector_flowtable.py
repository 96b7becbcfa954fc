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
        "tcp_flags", "state", "final", "first", "end_reason"]  # fmt: skip
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


def test_hash_collisions_keep_flows_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flows are looked up by a 64-bit hash of their key; a weak hash (16 values) forces the
    exact-key fallback on almost every flow, and the records must not change."""
    from flowwarden.collectors import flowtable

    pcap = synth_capture(tmp_path / "s.pcap", packets=3000, flows=200, duration_s=60, seed=9)
    exp = _meter(pcap)[COLS].sort_values(KEY, kind="stable").reset_index(drop=True)
    monkeypatch.setattr(flowtable, "_mix", lambda x: x & np.uint64(0xF))
    got = _meter(pcap, chunk_bytes=7919)[COLS].sort_values(KEY, kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, exp)


def test_interim_records_are_deltas_that_sum_to_the_conversation(tmp_path: Path) -> None:
    pcap = synth_capture(tmp_path / "s.pcap", packets=3000, flows=50, duration_s=60, seed=3)
    df = _meter(pcap)
    validate_flows(df.drop(columns="uid"))
    packets = sum(len(b) for b in read_capture(pcap))
    assert int(df["pkts_out"].sum() + df["pkts_in"].sum()) == packets
    per_flow = df.groupby("uid", sort=False).agg(
        finals=("final", "sum"), last=("final", "last"), firsts=("first", "sum"), head=("first", "first")
    )
    assert (per_flow["finals"] <= 1).all(), "at most one final record per flow"
    assert per_flow["last"][per_flow["finals"] == 1].all(), "a final record is its flow's last"
    assert (per_flow["firsts"] == 1).all() and per_flow["head"].all(), "one first record, the first"
    records = df.groupby("uid")["uid"].transform("size")
    empty = (df["pkts_out"] + df["pkts_in"]) == 0
    assert not (empty & (records > 1)).any(), "no zero-packet record unless it is the flow's only one"


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
    # First sight at the end of the first tick, the rest at the idle end, then a new flow.
    assert df["final"].tolist() == [False, True, True]
    assert df["end_reason"].tolist() == ["active", "idle", "end_of_capture"]
    assert df["first"].tolist() == [True, False, True]
    assert df["pkts_out"].tolist() == [1, 1, 1]
    assert df["uid"].nunique() == 2


def _tcp_pcap(path: Path, packets: list[tuple[float, bool, int]]) -> Path:
    """One TCP conversation 10.0.0.1:40000 <-> 10.0.0.2:80: (time, from client, flags)."""
    import dpkt

    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for t, out, flags in packets:
            a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
            seg = dpkt.tcp.TCP(sport=40000 if out else 80, dport=80 if out else 40000, flags=flags)
            ip = dpkt.ip.IP(src=a if out else b, dst=b if out else a, p=6, data=seg)
            w.writepkt(bytes(dpkt.ethernet.Ethernet(data=ip)), t)
    return path


SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08
_SHORT = [(100.1, True, SYN), (100.2, False, SYN | ACK), (100.3, True, ACK), (100.4, True, PSH | ACK),
          (100.5, False, PSH | ACK), (100.6, True, FIN | ACK), (100.7, False, FIN | ACK),
          (100.71, True, ACK)]  # fmt: skip


def test_a_closed_connection_is_one_final_record(tmp_path: Path) -> None:
    later = [(105.0, True, ACK)]  # a stray ACK after the end: a new flow, not this one's
    pcap = _tcp_pcap(tmp_path / "fin.pcap", _SHORT + later)
    df = _meter(pcap)
    conn = df[df["uid"] == df["uid"].iloc[0]]
    assert len(conn) == 1 and df["uid"].nunique() == 2, df
    row = conn.iloc[0]
    assert (row["final"], row["first"], row["end_reason"], row["state"]) == (True, True, "fin", "closed")
    assert row["pkts_out"] + row["pkts_in"] == 8, "the last ACK after both FINs belongs to the flow"
    assert row["ts_end"] < 101.0


def test_a_reset_ends_the_flow_at_the_next_tick(tmp_path: Path) -> None:
    table = FlowTable(FlowTableConfig())
    pcap = _tcp_pcap(tmp_path / "rst.pcap", [(100.1, True, SYN), (100.2, False, RST | ACK)])
    for batch in read_capture(pcap):
        assert table.process(decode(batch)) == []
    out = table.advance(101.0)
    assert len(out) == 1 and out[0]["end_reason"].tolist() == ["rst"]
    assert out[0]["state"].tolist() == ["rejected"] and out[0]["final"].all()
    assert table.take_ended().tolist() == out[0]["uid"].tolist() and len(table) == 0


def test_first_sight_within_a_tick_and_active_records_only_with_packets(tmp_path: Path) -> None:
    # A long connection: handshake and data in tick 100, then silence, then data at 125.
    talk = [(100.1, True, SYN), (100.2, False, SYN | ACK), (100.3, True, ACK), (100.4, True, PSH | ACK)]
    pcap = _tcp_pcap(tmp_path / "long.pcap", talk)
    table = FlowTable(FlowTableConfig(idle_timeout_s=60.0, active_timeout_s=10.0))
    for batch in read_capture(pcap):
        table.process(decode(batch))
    first = table.advance(101.0)
    assert len(first) == 1 and first[0]["end_reason"].tolist() == ["active"]
    assert not first[0]["final"].any() and first[0]["first"].all()
    assert first[0]["state"].tolist() == ["established"]
    for t in range(102, 140):  # silent: no interim record without packets, not idle yet
        assert table.advance(float(t)) == []
    assert len(table) == 1
    ended = table.flush()
    assert len(ended) == 0, "nothing new since the last record: no zero-packet final record"
    assert len(table.take_ended()) == 1 and table.ended_silently == 1


def test_an_unanswered_syn_waits_for_its_answer_before_first_sight(tmp_path: Path) -> None:
    pcap = _tcp_pcap(
        tmp_path / "syn.pcap", [(100.9, True, SYN), (101.3, False, SYN | ACK), (101.4, True, ACK)]
    )
    table = FlowTable(FlowTableConfig())
    for batch in read_capture(pcap):
        out = table.process(decode(batch))
        assert out == [], "the SYN of 100.9 is not reported as syn_only at 101.0"
    rec = table.advance(102.0)
    assert rec[0]["state"].tolist() == ["established"] and rec[0]["pkts_out"].tolist() == [2]
    syn = _tcp_pcap(tmp_path / "lone.pcap", [(200.2, True, SYN)])
    lone = FlowTable(FlowTableConfig())
    for batch in read_capture(syn):
        lone.process(decode(batch))
    assert lone.advance(201.0) == []
    assert lone.advance(202.0)[0]["state"].tolist() == ["syn_only"], "no answer in 1 s: reported"


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
