"""DNS aggregates per record: every message of a flow counted, split by record period, state dropped.

Captures are crafted with ``tests/data/dnsgen.py`` (a tunnel: hundreds of queries through
one 5-tuple) and metered by the collector's offline path; the golden ``dns.pcapng`` and
the lab's iodine capture are checked against a real tshark dissection.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowwarden.collectors.meter import Meter
from flowwarden.collectors.offline import meter_capture
from flowwarden.collectors.pcapfile import read_capture
from flowwarden.records import DNS_AGGREGATES
from flowwarden.settings import CollectorSettings, Settings
from tests.data.dnsgen import Packet, query, response, tunnel_packets, write_pcap

DATA = Path(__file__).resolve().parents[1] / "data"


def meter_records(pcap: Path, *, names: bool = True, chunk: int = 1 << 20) -> pd.DataFrame:
    """Records with their uid (the Meter directly, so state can be inspected too)."""
    meter = Meter(CollectorSettings(node="t", app_names=False), dns=names)
    parts = []
    for batch in read_capture(pcap, chunk_bytes=chunk):
        parts.extend(meter.feed(batch))
    parts.append(meter.flush())
    assert meter.dns is None or len(meter.dns) == 0  # every flow ended: no DNS state left
    return pd.concat([p for p in parts if len(p)], ignore_index=True)


@pytest.mark.parametrize("chunk", [1 << 20, 4096], ids=["one-batch", "4KiB-batches"])
def test_a_tunnel_flow_carries_every_query_split_by_record(tmp_path: Path, chunk: int) -> None:
    n = 600
    pcap = write_pcap(tmp_path / "tunnel.pcap", tunnel_packets(n, gap_s=0.05))  # 30 s: several records
    df = meter_records(pcap, chunk=chunk)
    flow = df[(df["dst_port"] == 53)].sort_values("ts_start")
    assert len(flow) >= 3  # first sight / interim / final
    assert flow["dns_queries"].sum() == n
    # Each record carries the queries of its own period: the client sends only queries.
    assert (flow["dns_queries"] == flow["pkts_out"]).all()
    # Every name is new, and a response lands in its query's record except at a boundary.
    assert (flow["dns_names"] >= flow["dns_queries"]).all()
    assert (flow["dns_names"] <= flow["dns_queries"] + 1).all()
    busy = flow[flow["dns_queries"] > 50]
    assert len(busy) >= 2
    assert (busy["dns_top_domain"] == "tunnel.example").all()
    assert (busy["dns_top_domain_names"] == busy["dns_names"]).all()
    assert (busy["dns_qtypes"] == "NULL").all()
    assert (busy["dns_label_entropy"] > 4.0).all()
    assert (busy["dns_name_max_len"] > 100).all() and (busy["dns_name_mean_len"] > 100).all()
    assert (busy["dns_nxdomain"] == 0).all() and (busy["dns_answers"] == "").all()
    # Each query answered 1 ms later; all but those cut by a record boundary are timed.
    assert flow["dns_rtt_n"].sum() >= n - len(flow)
    assert (busy["dns_rtt_mean_ms"] - 1.0).abs().max() < 0.01
    assert (flow["dns_rcode"].iloc[1:] == 0).all()
    assert flow["dns_qname"].str.endswith(".t.tunnel.example").all()


def test_names_off_leaves_the_defaults(tmp_path: Path) -> None:
    pcap = write_pcap(tmp_path / "tunnel.pcap", tunnel_packets(50))
    df = meter_records(pcap, names=False)
    assert (df["dns_queries"] == 0).all() and (df["dns_qname"] == "").all()


def test_resolver_flow_aggregates_qtypes_nxdomain_answers_and_ttl(tmp_path: Path) -> None:
    t = 100.0
    c = ("10.244.0.5", 5353 + 1000)
    msgs = [
        query("web.shop.svc.cluster.local", "A", ident=1),
        response("web.shop.svc.cluster.local", "A", ident=1, answers=[("10.96.0.20", 30)]),
        query("web.shop.svc.cluster.local", "AAAA", ident=2),
        response("web.shop.svc.cluster.local", "AAAA", ident=2, answers=[("fd00::20", 5)]),
        query("nope.shop.svc.cluster.local", "A", ident=3, edns=True),
        response("nope.shop.svc.cluster.local", "A", ident=3, rcode=3, edns=True),
        query("mail.example.com", "MX", ident=4),
        query("x.example.com", "TXT", ident=5),
        response("x.example.com", "TXT", ident=5, rdata=b"\x02hi"),
    ]
    pkts = []
    for i, m in enumerate(msgs):
        is_resp = bool(m[2] & 0x80)
        src, sport, dst, dport = ("10.96.0.10", 53, *c) if is_resp else (*c, "10.96.0.10", 53)
        pkts.append(Packet(t + i * 0.01, src, sport, dst, dport, m))
    df = meter_records(write_pcap(tmp_path / "r.pcap", pkts))
    assert len(df) == 1
    r = df.iloc[0]
    assert r["dns_qname"] == "web.shop.svc.cluster.local" and r["dns_rcode"] == 0
    assert r["dns_queries"] == 5 and r["dns_names"] == 4
    assert r["dns_qtypes"] == "A,AAAA,MX,TXT"
    assert r["dns_nxdomain"] == 1
    assert r["dns_answers"] == "10.96.0.20,fd00::20" and r["dns_answer_ttl"] == 5
    assert r["dns_top_domain"] == "cluster.local" and r["dns_top_domain_names"] == 2


def test_resolution_time_pairs_responses_with_their_queries_by_id(tmp_path: Path) -> None:
    c, r = ("10.244.0.5", 41000), ("10.96.0.10", 53)
    t = 200.0
    pkts = [
        Packet(t, *c, *r, query("a.example.com", ident=7)),
        Packet(t + 0.002, *c, *r, query("b.example.com", ident=8)),
        Packet(t + 0.0045, *r, *c, response("b.example.com", ident=8)),  # 2.5 ms, out of order
        Packet(t + 0.010, *r, *c, response("a.example.com", ident=7)),  # 10 ms
        Packet(t + 0.011, *r, *c, response("c.example.com", ident=9)),  # no query: not timed
        Packet(t + 0.020, *c, *r, query("d.example.com", ident=10)),  # never answered
    ]
    (rec,) = meter_records(write_pcap(tmp_path / "r.pcap", pkts)).to_dict("records")
    assert rec["dns_rtt_n"] == 2
    assert rec["dns_rtt_max_ms"] == pytest.approx(10.0, abs=0.01)
    assert rec["dns_rtt_mean_ms"] == pytest.approx((10.0 + 2.5) / 2, abs=0.01)


def test_a_query_answered_in_the_next_record_is_timed_there(tmp_path: Path) -> None:
    # The flow's first record closes at the end of its first 1 s tick; the answer comes
    # 1.5 s after its query (a slow upstream), in the flow's next record.
    c, r = ("10.244.0.5", 41001), ("10.96.0.10", 53)
    pkts = [
        Packet(300.0, *c, *r, query("slow.example.com", ident=1)),
        Packet(301.5, *r, *c, response("slow.example.com", ident=1)),
    ]
    df = meter_records(write_pcap(tmp_path / "r.pcap", pkts)).sort_values("ts_end")
    assert len(df) == 2
    assert df["dns_rtt_n"].tolist() == [0, 1]
    assert df["dns_rtt_max_ms"].iloc[1] == pytest.approx(1500.0, abs=0.01)


def test_a_response_without_its_query_names_the_record(tmp_path: Path) -> None:
    pkts = [Packet(5.0, "10.96.0.10", 53, "10.0.0.9", 4444, response("late.example.org", rcode=2))]
    df = meter_records(write_pcap(tmp_path / "r.pcap", pkts))
    r = df.iloc[0]
    assert r["dns_qname"] == "late.example.org" and r["dns_rcode"] == 2
    assert r["dns_queries"] == 0 and r["dns_names"] == 1


def test_truncated_and_malformed_messages_are_counted_not_raised(tmp_path: Path) -> None:
    good = query("ok.example.com")
    pkts = [
        Packet(1.0, "10.0.0.1", 1000, "10.0.0.2", 53, good),
        Packet(1.1, "10.0.0.1", 1000, "10.0.0.2", 53, b"\x00\x01\x01"),  # shorter than a header
        Packet(1.2, "10.0.0.1", 1000, "10.0.0.2", 53, good[:15]),  # name cut
        Packet(1.3, "10.0.0.1", 1000, "10.0.0.2", 53, good[:12] + b"\xc0\x0c\x00\x01\x00\x01"),  # loop
    ]
    meter = Meter(CollectorSettings(node="t", app_names=False), dns=True)
    parts = []
    for batch in read_capture(write_pcap(tmp_path / "bad.pcap", pkts)):
        parts.extend(meter.feed(batch))
    parts.append(meter.flush())
    df = pd.concat([p for p in parts if len(p)], ignore_index=True)
    assert dict(meter.dns_problems) == {"truncated": 2, "malformed": 1}
    assert df["dns_queries"].sum() == 3 and df["dns_qname"].iloc[0] == "ok.example.com"


def test_snap_length_cut_names_still_count_queries(tmp_path: Path) -> None:
    pcap = write_pcap(tmp_path / "snap.pcap", tunnel_packets(40), snaplen=96)
    meter = Meter(CollectorSettings(node="t", app_names=False), dns=True)
    for batch in read_capture(pcap):
        meter.feed(batch)
    df = meter.flush()
    assert df["dns_queries"].sum() == 40 and meter.dns_problems["truncated"] == 80


def test_offline_path_keeps_the_flow_schema(tmp_path: Path) -> None:
    pcap = write_pcap(tmp_path / "tunnel.pcap", tunnel_packets(30))
    df, _ = meter_capture(pcap, Settings(collector={"node": "t", "app_names": True}))
    assert "uid" not in df.columns and set(DNS_AGGREGATES) <= set(df.columns)
    assert df["dns_queries"].sum() == 30


@pytest.mark.integration
def test_golden_dns_capture_first_names_and_rcodes_match_tshark() -> None:
    pcap = DATA / "pcaps" / "dns.pcapng"
    args = ["tshark", "-n", "-r", str(pcap), "-Y", "dns", "-T", "fields", "-E", "separator=\t"]
    for f in ("udp.srcport", "udp.dstport", "dns.flags.response", "dns.qry.name", "dns.flags.rcode"):
        args += ["-e", f]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
    want: dict[int, tuple[str, int]] = {}
    for line in out.splitlines():
        sport, dport, resp, name, rcode = line.split("\t")
        client = int(dport) if int(sport) == 53 else int(sport)
        q, rc = want.get(client, ("", -1))
        if resp in ("1", "True"):
            rc = int(rcode) if rc < 0 else rc
        q = q or name
        want[client] = (q, rc)
    df, _ = meter_capture(pcap, Settings(collector={"node": "t", "app_names": True}))
    dns = df[df["dst_port"] == 53]
    got: dict[int, tuple[str, int]] = {}
    for _, r in dns.iterrows():
        q, rc = got.get(int(r["src_port"]), ("", -1))
        got[int(r["src_port"])] = (q or r["dns_qname"], rc if rc >= 0 else int(r["dns_rcode"]))
    assert got == want and len(got) >= 3
    assert dns["dns_nxdomain"].sum() == sum(1 for _, rc in want.values() if rc == 3)


def _lab_dirs() -> list[Path]:
    return sorted(p.parent for p in (DATA / "lab").glob("*/capture.pcap"))


@pytest.mark.integration
@pytest.mark.parametrize("lab", _lab_dirs(), ids=lambda p: p.name)
def test_lab_iodine_flow_carries_hundreds_of_queries_and_names(lab: Path) -> None:
    """The real iodine tunnel of the lab capture: every query counted (tshark agrees)."""
    df, _ = meter_capture(lab / "capture.pcap", Settings(collector={"node": "lab", "app_names": True}))
    dns = df[(df["dst_port"] == 53) & (df["proto"] == 17)]
    per = dns.groupby(["src_ip", "src_port", "dst_ip"])["dns_queries"].sum()
    key, queries = per.idxmax(), int(per.max())
    assert isinstance(key, tuple)
    src, sport, dst = key
    flow = dns[(dns["src_ip"] == src) & (dns["src_port"] == sport) & (dns["dst_ip"] == dst)]
    args = ["tshark", "-n", "-r", str(lab / "capture.pcap"), "-T", "fields", "-e", "frame.number", "-Y"]
    args.append(f"ip.src=={src} && udp.srcport=={sport} && ip.dst=={dst} && dns.flags.response==0")
    seen = len(subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout.split())
    assert queries == seen >= 300
    assert flow["dns_names"].sum() >= 300
    assert flow["dns_names"].max() >= 100  # one record alone carries hundreds of names
    assert (flow["dns_top_domain"] == "attacker.example").all()
    assert flow["dns_qtypes"].str.contains("NULL").all()
    assert flow.sort_values("dns_names")["dns_label_entropy"].iloc[-1] > 3.5


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.binary(max_size=120), st.booleans(), st.integers(0, 3), st.integers(30, 200)),
        min_size=1,
        max_size=30,
    )
)
def test_garbage_on_port_53_never_raises_out_of_the_meter(
    tmp_path_factory: pytest.TempPathFactory, items: list[tuple[bytes, bool, int, int]]
) -> None:
    """Random payloads (UDP and TCP, cut by random snap lengths) through the whole DNS path."""
    pkts = [
        Packet(1.0 + i * 0.3, "10.0.0.1", 1000 + port, "10.0.0.2", 53, payload, tcp=tcp)
        for i, (payload, tcp, port, _) in enumerate(items)
    ]
    snap = min(s for *_, s in items)
    pcap = write_pcap(tmp_path_factory.mktemp("fuzz") / "f.pcap", pkts, snaplen=snap)
    meter = Meter(CollectorSettings(node="t", app_names=False), dns=True)
    total = 0
    for batch in read_capture(pcap):
        total += sum(int(r["dns_queries"].sum()) for r in meter.feed(batch))
    total += int(meter.flush()["dns_queries"].sum())
    assert total <= len(items) and meter.dns is not None and len(meter.dns) == 0
    assert meter.dns_messages + sum(meter.dns_problems.values()) >= total


def test_records_of_a_sweep_without_packets_carry_their_dns(tmp_path: Path) -> None:
    """The live collector's idle sweep (Meter.advance) emits records with their aggregates."""
    pcap = write_pcap(tmp_path / "t.pcap", tunnel_packets(20, t0=1000.0, gap_s=0.01))
    meter = Meter(CollectorSettings(node="t", app_names=False), dns=True)
    seen = 0
    for batch in read_capture(pcap):
        seen += sum(int(r["dns_queries"].sum()) for r in meter.feed(batch))
    assert meter.dns is not None and len(meter.dns) == 1
    swept = meter.advance(1000.0 + 3600.0)  # long after the flow went idle
    seen += sum(int(r["dns_queries"].sum()) for r in swept)
    assert seen == 20 and len(meter.dns) == 0


@pytest.mark.integration
@pytest.mark.parametrize("chunk", [1 << 20, 16384], ids=["big-batches", "16KiB-batches"])
def test_resolver_capture_totals_match_tshark(tmp_path: Path, chunk: int) -> None:
    """Many short flows and a tunnel, metered in big or small batches: tshark's counts."""
    from tests.data.dnsgen import dns_heavy_capture

    pcap = dns_heavy_capture(tmp_path / "heavy.pcap", packets=4000)
    df = meter_records(pcap, chunk=chunk)
    args = [
        "tshark",
        "-n",
        "-r",
        str(pcap),
        "-T",
        "fields",
        "-e",
        "dns.flags.response",
        "-e",
        "dns.flags.rcode",
    ]
    rows = [
        line.split("\t")
        for line in subprocess.run(
            args, capture_output=True, text=True, check=True, timeout=120
        ).stdout.split("\n")
        if line
    ]
    queries = sum(1 for r, _ in rows if r in ("0", "False"))
    nxdomain = sum(1 for r, c in rows if r in ("1", "True") and c == "3")
    assert df["dns_queries"].sum() == queries
    assert df["dns_nxdomain"].sum() == nxdomain
    assert (df["dns_queries"] == df["pkts_out"]).all()  # clients send queries only, per record
    answered = df[df["dns_answers"] != ""]
    assert len(answered) and (answered["dns_answer_ttl"] == 30).all()
    assert set(",".join(df["dns_qtypes"]).split(",")) - {""} == {"A", "AAAA", "NULL"}
