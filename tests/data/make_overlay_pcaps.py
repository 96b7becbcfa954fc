"""Write the small crafted overlay captures in ``tests/data/overlays/overlay_*.pcap``.

Run: ``.venv/bin/python tests/data/make_overlay_pcaps.py``. Each capture holds a few
Ethernet frames of one encapsulation between two "nodes" (192.168.50.1 -> .2) carrying a
pod-to-pod packet (10.244.1.5:40000 -> 10.244.2.7:8080 TCP SYN, or UDP for IPv6), built
byte by byte with dpkt so the expected fields below are known independently of the
decoder. :func:`build_cases` is what ``tests/unit/test_collector_overlays.py`` checks; real
tunnels are checked by ``tests/integration/test_collect_overlays.py``.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import dpkt

OUT = Path(__file__).resolve().parent / "overlays"
NODE_A, NODE_B = "192.168.50.1", "192.168.50.2"
POD_A, POD_B = "10.244.1.5", "10.244.2.7"
POD6_A, POD6_B = "fd00:244:1::5", "fd00:244:2::7"
DNS_NAME = "exfil.example.com"
MAC = b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02"


@dataclass(frozen=True)
class Case:
    """One crafted capture and what decoding it must give (every frame is the same packet)."""

    name: str
    tunnel: str
    frames: tuple[bytes, ...]
    inner: tuple[str, int, str, int, int]  # src, sport, dst, dport, proto
    outer: tuple[str, str]
    inner_frame_len: int  # the inner IP packet + 14 Ethernet bytes


def _a(text: str) -> bytes:
    import socket

    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


def _tcp_syn() -> bytes:
    t = dpkt.tcp.TCP(sport=40000, dport=8080, flags=dpkt.tcp.TH_SYN, seq=1000, data=b"")
    ip = dpkt.ip.IP(src=_a(POD_A), dst=_a(POD_B), p=6, ttl=63, data=t)
    return bytes(ip)


def _udp6() -> bytes:
    u = dpkt.udp.UDP(sport=5353, dport=53, data=b"\x12\x34" + b"\0" * 10)
    u.ulen = len(bytes(u))
    ip6 = dpkt.ip6.IP6(src=_a(POD6_A), dst=_a(POD6_B), nxt=17, hlim=63, data=u)
    ip6.plen = len(bytes(u))
    return bytes(ip6)


def _eth(payload: bytes, ethertype: int) -> bytes:
    return MAC + struct.pack(">H", ethertype) + payload


def _outer_ip(proto: int, payload: bytes) -> bytes:
    ip = dpkt.ip.IP(src=_a(NODE_A), dst=_a(NODE_B), p=proto, ttl=64, data=payload)
    return _eth(bytes(ip), 0x0800)


def _outer_udp(dport: int, payload: bytes, sport: int = 53211) -> bytes:
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    u.ulen = len(bytes(u))
    return _outer_ip(17, bytes(u))


def _vxlan(vni: int, inner_eth: bytes) -> bytes:
    return struct.pack(">BBHI", 0x08, 0, 0, vni << 8) + inner_eth


def _geneve(inner_eth: bytes) -> bytes:
    # One 8-byte option (class 0x0102, type 0x80, 4 bytes of data): optlen = 2 words.
    opt = struct.pack(">HBB", 0x0102, 0x80, 1) + b"\xaa\xbb\xcc\xdd"
    return struct.pack(">BBHI", len(opt) // 4, 0, 0x6558, 42 << 8) + opt + inner_eth


def _gre(ethertype: int, payload: bytes, key: int | None = None) -> bytes:
    flags = 0x2000 if key is not None else 0
    head = struct.pack(">HH", flags, ethertype) + (struct.pack(">I", key) if key is not None else b"")
    return head + payload


def build_cases() -> list[Case]:
    syn, udp6 = _tcp_syn(), _udp6()
    inner_eth = _eth(syn, 0x0800)
    v4 = (POD_A, 40000, POD_B, 8080, 6)
    v6 = (POD6_A, 5353, POD6_B, 53, 17)
    outer = (NODE_A, NODE_B)
    n4, n6 = len(syn) + 14, len(udp6) + 14
    return [
        Case("overlay_vxlan", "vxlan", (_outer_udp(4789, _vxlan(4096, inner_eth)),), v4, outer, n4),
        Case("overlay_vxlan_flannel", "vxlan", (_outer_udp(8472, _vxlan(1, inner_eth)),), v4, outer, n4),
        Case("overlay_geneve", "geneve", (_outer_udp(6081, _geneve(inner_eth)),), v4, outer, n4),
        Case("overlay_ipip", "ipip", (_outer_ip(4, syn),), v4, outer, n4),
        Case("overlay_ip6in4", "ipip", (_outer_ip(41, udp6),), v6, outer, n6),
        Case("overlay_gre_ip", "gre", (_outer_ip(47, _gre(0x0800, syn)),), v4, outer, n4),
        Case("overlay_gretap_key", "gre", (_outer_ip(47, _gre(0x6558, inner_eth, key=7)),), v4, outer, n4),
    ]


def wireguard_frames() -> tuple[bytes, ...]:
    """A WireGuard handshake initiation and a transport message (type 1 and 4) on 51820."""
    init = struct.pack("<I", 1) + b"\x11" * 144
    data = struct.pack("<I", 4) + b"\x22" * 60
    return (_outer_udp(51820, init, sport=51820), _outer_udp(51820, data, sport=51820))


def dns_in_vxlan_frames() -> tuple[bytes, ...]:
    """A pod's DNS query inside VXLAN: its name must reach the record like an untunnelled one."""
    q = dpkt.dns.DNS(id=7, qd=[dpkt.dns.DNS.Q(name=DNS_NAME, type=dpkt.dns.DNS_A)])
    u = dpkt.udp.UDP(sport=5353, dport=53, data=bytes(q))
    u.ulen = len(bytes(u))
    ip = bytes(dpkt.ip.IP(src=_a(POD_A), dst=_a(POD_B), p=17, ttl=63, data=u))
    return (_outer_udp(4789, _vxlan(4096, _eth(ip, 0x0800))),)


def write_pcap(path: Path, frames: tuple[bytes, ...]) -> None:
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh, linktype=dpkt.pcap.DLT_EN10MB)
        for i, frame in enumerate(frames):
            w.writepkt(frame, ts=1_700_000_000.0 + i * 0.001)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for case in build_cases():
        write_pcap(OUT / f"{case.name}.pcap", case.frames)
    write_pcap(OUT / "overlay_wireguard.pcap", wireguard_frames())
    write_pcap(OUT / "overlay_vxlan_dns.pcap", dns_in_vxlan_frames())
    print(f"wrote {len(build_cases()) + 2} overlay captures to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
