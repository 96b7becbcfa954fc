"""Golden captures: the metering path against expected tables, tshark's conversations and names.

The captures under ``tests/data/pcaps/`` are real traffic made in isolated namespaces by
``tests/data/make_pcaps.py``; each has its expected flow table (``*.flows.csv``) beside it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flowwarden.collectors import meter_capture
from flowwarden.records import validate_flows
from flowwarden.settings import Settings

pytestmark = pytest.mark.integration

PCAPS = Path(__file__).resolve().parents[1] / "data" / "pcaps"
CAPTURES = sorted(p for p in PCAPS.iterdir() if p.suffix in (".pcap", ".pcapng"))
KEY = ["ts_start", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "final"]


def _metered(path: Path) -> pd.DataFrame:
    df, report = meter_capture(path, Settings(collector={"node": "golden"}))
    assert report.read_error == ""
    validate_flows(df)
    return df


def _expected(path: Path) -> pd.DataFrame:
    csv = path.with_name(path.name.rsplit(".", 1)[0] + ".flows.csv")
    return pd.read_csv(csv, keep_default_na=False, dtype={"dns_qname": str, "server_name": str})


def test_every_capture_has_an_expected_table() -> None:
    assert len(CAPTURES) >= 4
    for p in CAPTURES:
        assert not _expected(p).empty, p


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_flow_table_matches_field_by_field(path: Path) -> None:
    got = _metered(path)
    exp = _expected(path)
    assert (got["node"] == "golden").all()
    got = got[exp.columns].sort_values(KEY, kind="stable").reset_index(drop=True)
    exp = exp.sort_values(KEY, kind="stable").reset_index(drop=True)
    assert len(got) == len(exp)
    for col in exp.columns:
        if col.startswith("ts_"):
            np.testing.assert_allclose(got[col].to_numpy(), exp[col].to_numpy(), atol=2e-6, err_msg=col)
        else:
            assert got[col].astype(str).tolist() == exp[col].astype(str).tolist(), col


def _tshark_conv(path: Path, kind: str) -> dict[frozenset[tuple[str, int]], tuple[int, int]]:
    out = subprocess.run(
        ["tshark", "-n", "-q", "-r", str(path), "-z", f"conv,{kind}"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    conv = {}
    pat = re.compile(r"^(\S+):(\d+)\s+<->\s+(\S+):(\d+)\s+(.*)$")
    for line in out.splitlines():
        m = pat.match(line.strip())
        if not m:
            continue
        # frames<- bytes<- frames-> bytes-> frames bytes start duration
        vals = m.group(5).replace("bytes", " ").split()
        assert len(vals) >= 6, line
        key = frozenset({(m.group(1), int(m.group(2))), (m.group(3), int(m.group(4)))})
        conv[key] = (int(vals[4]), int(vals[5]))
    return conv


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_conversation_totals_equal_tshark(path: Path) -> None:
    got = _metered(path)
    for kind, proto in (("tcp", 6), ("udp", 17)):
        conv = _tshark_conv(path, kind)
        mine: dict[frozenset[tuple[str, int]], tuple[int, int]] = {}
        for r in got[got["proto"] == proto].to_dict("records"):
            key = frozenset({(str(r["src_ip"]), int(r["src_port"])), (str(r["dst_ip"]), int(r["dst_port"]))})
            f, b = mine.get(key, (0, 0))
            mine[key] = (f + int(r["pkts_out"] + r["pkts_in"]), b + int(r["bytes_out"] + r["bytes_in"]))
        assert mine == conv, kind


def _tshark_names(path: Path) -> tuple[set[str], set[str]]:
    out = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-T", "fields", "-e", "dns.qry.name",
         "-e", "tls.handshake.extensions_server_name", "-Y", "dns || tls.handshake.type == 1"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    dns, sni = set(), set()
    for line in out.splitlines():
        q, _, s = line.partition("\t")
        dns |= {q} if q else set()
        sni |= {s} if s else set()
    return dns, sni


def test_dns_names_and_sni_equal_what_tshark_dissects() -> None:
    dns_path, tls_path = PCAPS / "dns.pcapng", PCAPS / "tls_sll2.pcap"
    dns, _ = _tshark_names(dns_path)
    _, sni = _tshark_names(tls_path)
    assert dns == {"db.payments.svc.test", "api.example.test", "missing.example.test"}
    assert sni == {"secure.example.test"}
    got_dns = _metered(dns_path)
    assert set(got_dns["dns_qname"]) - {""} == dns
    assert got_dns.loc[got_dns["dns_qname"] == "missing.example.test", "dns_rcode"].tolist() == [3]
    got_tls = _metered(tls_path)
    assert set(got_tls["server_name"]) - {""} == sni | {"intranet.example.test"}
