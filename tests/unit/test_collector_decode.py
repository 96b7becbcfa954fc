"""Header decoding: link types, VLAN tags, IPv6 extension headers, and what is not metered."""

from __future__ import annotations

import struct

import dpkt
import numpy as np

from flowwarden.collectors.decode import CAUSES, decode
from flowwarden.collectors.flowtable import ip_strings
from flowwarden.collectors.pcapfile import PcapStream
from tests.unit.test_collector_pcapfile import pcap


def _tcp4(flags: int = dpkt.tcp.TH_SYN) -> bytes:
    t = dpkt.tcp.TCP(sport=40000, dport=443, flags=flags)
    ip = dpkt.ip.IP(src=bytes([10, 1, 2, 3]), dst=bytes([10, 96, 0, 1]), p=6, data=t)
    return bytes(ip)


def _decode(frames: list[bytes], linktype: int = 1):
    s = PcapStream()
    batch = s.feed(pcap([(1.0 + i, f) for i, f in enumerate(frames)], linktype=linktype))
    return decode(batch)


def _causes(d) -> list[str]:
    return [CAUSES[c] for c in d.cause]


ETH = b"\x02" * 6 + b"\x04" * 6


def test_ethernet_vlan_qinq_and_arp() -> None:
    ip = _tcp4()
    frames = [
        ETH + b"\x08\x00" + ip,
        ETH + b"\x81\x00\x00\x0a\x08\x00" + ip,
        ETH + b"\x88\xa8\x00\x64\x81\x00\x00\x0a\x08\x00" + ip,
        ETH + b"\x08\x06" + b"\0" * 28,
    ]
    d = _decode(frames)
    assert _causes(d) == ["ok", "ok", "ok", "non_ip"]
    assert d.sport[:3].tolist() == [40000] * 3 and d.dport[:3].tolist() == [443] * 3
    assert d.flags[:3].tolist() == [2] * 3
    assert ip_strings(d.src_hi[:3], d.src_lo[:3]).tolist() == ["10.1.2.3"] * 3


def test_linux_cooked_v1_and_v2() -> None:
    ip = _tcp4()
    sll = struct.pack(">HHH8sH", 0, 1, 6, b"\0" * 8, 0x0800) + ip
    sll2 = struct.pack(">HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, b"\0" * 8) + ip
    assert _decode([sll], linktype=113).sport.tolist() == [40000]
    assert _decode([sll2], linktype=276).dport.tolist() == [443]


def test_ipv6_extension_headers_and_fragments() -> None:
    u = dpkt.udp.UDP(sport=5353, dport=53, data=b"q")
    u.ulen = len(bytes(u))
    payload = bytes(u)
    src, dst = (
        bytes.fromhex("fd000000000000000000000000000001"),
        bytes.fromhex("fd000000000000000000000000000002"),
    )

    def v6(nh: int, body: bytes) -> bytes:
        return struct.pack(">IHBB", 0x60000000, len(body), nh, 64) + src + dst + body

    hop = struct.pack(">BB6x", 17, 0) + payload  # hop-by-hop options, then UDP
    first = struct.pack(">BBHI", 17, 0, 0x0001, 7) + payload  # fragment offset 0, more fragments
    later = struct.pack(">BBHI", 17, 0, 0x00A0, 7) + b"rest"  # offset 20: no ports
    d = _decode([v6(17, payload), v6(0, hop), v6(44, first), v6(44, later)], linktype=101)
    assert _causes(d) == ["ok", "ok", "ok", "fragment"]
    assert d.sport[:3].tolist() == [5353] * 3
    assert d.proto[:3].tolist() == [17] * 3
    assert d.app[:3].tolist() == [1] * 3  # DNS candidates
    assert ip_strings(d.dst_hi[:1], d.dst_lo[:1]).tolist() == ["fd00::2"]


def test_truncated_bad_and_unknown_are_counted_not_fatal() -> None:
    ip = _tcp4()
    gre = bytearray(ip)
    gre[9] = 47
    bad = bytearray(ip)
    bad[0] = 0x42  # header length 8 bytes
    v4frag = bytearray(ip)
    v4frag[6:8] = b"\x00\x10"
    frames = [ip[:30], bytes(gre), bytes(bad), bytes(v4frag), b"\x50" + ip[1:], b""]
    d = _decode(frames, linktype=101)
    assert _causes(d) == ["truncated", "unknown_proto", "bad_header", "fragment", "non_ip", "truncated"]
    assert d.metered.tolist() == [False, True, False, False, False, False]
    assert _decode([ip], linktype=147).cause.tolist() == [CAUSES.index("unknown_link")]
    assert np.all(d.sport[~d.metered] == 0)


def test_sctp_is_metered_with_its_ports() -> None:
    """Kubernetes Services and NetworkPolicies name SCTP ports: the flow keeps them."""
    sctp = struct.pack(">HHII", 38412, 36412, 0xDEADBEEF, 0) + b"\x01\x00\x00\x10" + b"\0" * 12  # INIT
    ip = dpkt.ip.IP(src=bytes([10, 244, 1, 5]), dst=bytes([10, 96, 0, 9]), p=132, data=sctp)
    short = bytes(ip)[: 20 + 8]  # the IP header and half of SCTP's common header
    d = _decode([bytes(ip), short], linktype=101)
    assert _causes(d) == ["ok", "truncated"]
    assert (d.sport[0], d.dport[0], d.proto[0]) == (38412, 36412, 132)
    assert d.metered.tolist() == [True, False] and d.sport[1] == d.dport[1] == 0
