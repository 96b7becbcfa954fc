"""Overlay decapsulation on the crafted golden captures: inner 5-tuple metered, outer kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flowwarden.collectors.decode import CAUSES, TUNNELS, decode
from flowwarden.collectors.flowtable import ip_strings
from flowwarden.collectors.metrics import CollectorMetrics
from flowwarden.collectors.offline import meter_capture
from flowwarden.collectors.pcapfile import PacketBatch, PcapStream, read_capture
from flowwarden.settings import Settings
from tests.data.make_overlay_pcaps import DNS_NAME, NODE_B, OUT, POD_A, POD_B, Case, build_cases
from tests.unit.test_collector_pcapfile import pcap

CASES = build_cases()


def _read(path: Path) -> PacketBatch:
    batches = list(read_capture(path))
    assert len(batches) == 1
    return batches[0]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_encapsulation_meters_the_inner_pod_packet(case: Case) -> None:
    batch = _read(OUT / f"{case.name}.pcap")
    d = decode(batch)
    src, sport, dst, dport, proto = case.inner
    assert [CAUSES[c] for c in d.cause] == ["ok"]
    assert [TUNNELS[t] for t in d.tunnel] == [case.tunnel]
    assert ip_strings(d.src_hi, d.src_lo).tolist() == [src]
    assert ip_strings(d.dst_hi, d.dst_lo).tolist() == [dst]
    assert (d.sport.tolist(), d.dport.tolist(), d.proto.tolist()) == ([sport], [dport], [proto])
    assert ip_strings(d.outer_src_hi, d.outer_src_lo).tolist() == [case.outer[0]]
    assert ip_strings(d.outer_dst_hi, d.outer_dst_lo).tolist() == [case.outer[1]]
    assert d.length.tolist() == [case.inner_frame_len]
    assert batch.wirelen.tolist() == [len(case.frames[0])]  # the outer frame is untouched
    # l3 points at the inner IP header (the name dissector gets the inner packet).
    assert batch.buf[d.l3[0]] >> 4 == (6 if ":" in src else 4)


def test_plain_packets_are_not_tunnelled_and_carry_zero_outer_addresses() -> None:
    batch = _read(Path(__file__).resolve().parents[1] / "data" / "pcaps" / "web.pcap")
    d = decode(batch)
    assert not d.tunnel.any()
    assert d.tunnel.dtype == np.int8
    for a in (d.outer_src_hi, d.outer_src_lo, d.outer_dst_hi, d.outer_dst_lo):
        assert a.dtype == np.uint64 and not a.any()
    np.testing.assert_array_equal(d.length, batch.wirelen)


def test_a_mixed_batch_decapsulates_only_the_tunnelled_packets() -> None:
    frames = [f for c in CASES for f in c.frames]
    plain = next(iter(read_capture(Path(__file__).resolve().parents[1] / "data" / "pcaps" / "web.pcap")))
    raw = [bytes(plain.buf[o : o + c]) for o, c in zip(plain.off[:5], plain.caplen[:5], strict=True)]
    mixed = raw[:2] + frames + raw[2:]
    d = decode(PcapStream().feed(pcap([(1.0 + i, f) for i, f in enumerate(mixed)])))
    assert [TUNNELS[t] for t in d.tunnel] == [""] * 2 + [c.tunnel for c in CASES] + [""] * 3
    assert (d.cause[2 : 2 + len(CASES)] == 0).all()
    expected = decode(plain).cause[:5]
    np.testing.assert_array_equal(np.r_[d.cause[:2], d.cause[2 + len(CASES) :]], expected)


def test_truncated_inner_headers_are_counted_not_read() -> None:
    case = CASES[0]  # VXLAN
    cut = case.frames[0][: 14 + 20 + 8 + 8 + 14 + 10]  # inner IP header cut short
    d = decode(PcapStream().feed(pcap([(1.0, cut)])))
    assert [CAUSES[c] for c in d.cause] == ["truncated"]
    assert [TUNNELS[t] for t in d.tunnel] == ["vxlan"]


def test_wireguard_is_detected_metered_as_udp_and_counted_once_in_a_metric(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = decode(_read(OUT / "overlay_wireguard.pcap"))
    assert [CAUSES[c] for c in d.cause] == ["wireguard", "wireguard"]
    assert d.metered.all() and (d.proto == 17).all() and not d.tunnel.any()
    m = CollectorMetrics("n1")
    with caplog.at_level("WARNING", logger="flowwarden.collector"):
        m.count_undecoded({"wireguard": 2})
        m.count_undecoded({"wireguard": 3})
    assert m.value("flowwarden_collector_encrypted_overlay_packets_total") == 5
    assert len([r for r in caplog.records if "wireguard" in r.getMessage()]) == 1


def test_names_are_read_from_the_inner_packet() -> None:
    df, _report = meter_capture(
        OUT / "overlay_vxlan_dns.pcap", Settings(collector={"node": "n1", "app_names": True})
    )
    assert df[["src_ip", "dst_ip", "dst_port", "tunnel", "outer_dst_ip"]].values.tolist() == [
        [POD_A, POD_B, 53, "vxlan", NODE_B]
    ]
    assert df["dns_qname"].tolist() == [DNS_NAME]
