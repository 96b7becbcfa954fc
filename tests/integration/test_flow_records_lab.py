"""Flow end rules on real traffic: the lab's captures of real tools (nmap, curl, sshd, TLS
servers, DNS through dnsmasq, iodine) against the per-packet reference meter.

Every TCP connection that closed (both FINs, or a reset) is one final record with reason
``fin`` or ``rst``; no record has zero packets unless it is its flow's only one; every flow
has exactly one first record.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flowwarden.collectors.meter import Meter
from flowwarden.collectors.pcapfile import read_capture
from flowwarden.records import validate_flows
from flowwarden.settings import CollectorSettings
from tests.data.make_pcaps import reference_flows

pytestmark = pytest.mark.integration

LAB = Path(__file__).resolve().parents[1] / "data" / "lab"
CAPTURES = sorted(LAB.glob("*/capture.pcap"))
COLS = ["ts_start", "ts_end", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "bytes_out", "bytes_in",
        "pkts_out", "pkts_in", "tcp_flags", "state", "final", "first", "end_reason"]  # fmt: skip
KEY = ["ts_start", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "final"]


@pytest.fixture(scope="module", params=CAPTURES, ids=lambda p: p.parent.name)
def metered(request: pytest.FixtureRequest) -> tuple[Path, pd.DataFrame]:
    path: Path = request.param
    meter = Meter(CollectorSettings(node="lab", app_names=False))
    parts = [r for batch in read_capture(path) for r in meter.feed(batch)]
    df = pd.concat([*parts, meter.table.flush()], ignore_index=True)  # with the flow's uid
    validate_flows(df.drop(columns="uid"))
    return path, df


def test_records_match_the_per_packet_reference(metered: tuple[Path, pd.DataFrame]) -> None:
    path, df = metered
    got = df[COLS].sort_values(KEY, kind="stable").reset_index(drop=True)
    exp = pd.DataFrame(reference_flows(path)[0])[COLS].sort_values(KEY, kind="stable").reset_index(drop=True)
    assert len(got) == len(exp)
    for col in COLS:
        if col.startswith("ts_"):
            np.testing.assert_allclose(got[col], exp[col].astype(float), atol=2e-6, err_msg=col)
        else:
            assert got[col].astype(str).tolist() == exp[col].astype(str).tolist(), col


def test_closed_connections_are_one_final_record_and_no_record_is_empty(
    metered: tuple[Path, pd.DataFrame],
) -> None:
    path, df = metered
    records = df.groupby("uid")["uid"].transform("size")
    empty = (df["pkts_out"] + df["pkts_in"]) == 0
    assert not (empty & (records > 1)).any(), df[empty & (records > 1)]
    assert (df.groupby("uid")["first"].sum() == 1).all(), "one first record per flow"
    assert (df.groupby("uid")["final"].sum() <= 1).all(), "at most one final record per flow"
    # The reference knows which connections closed: each is one final record, fin or rst.
    ref = pd.DataFrame(reference_flows(path)[0])
    closed = ref[ref["final"] & ref["end_reason"].isin(["fin", "rst"])]
    assert len(closed) > 100, "the lab's captures hold hundreds of closed TCP connections"
    finals = df[df["final"] & df["end_reason"].isin(["fin", "rst"])]
    assert len(finals) == len(closed)
    # (tcp_other: nmap -sn's ACK to port 80, answered by a reset, with no SYN in the flow)
    assert set(finals["state"]) <= {"closed", "rejected", "tcp_other"}
    # Short connections (HTTP, scans, SSH guesses) are mostly one record, not two.
    tcp = df[df["proto"] == 6]
    one_record = (tcp.groupby("uid").size() == 1).mean()
    assert one_record > 0.5, one_record
