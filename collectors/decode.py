"""Vectorised header decoding: link, IPv4/IPv6 (VLAN-tagged too), TCP/UDP/SCTP/ICMP.

Every field is taken for a whole :class:`~collectors.pcapfile.PacketBatch` at once with
numpy fancy indexing at per-packet offsets; a packet whose captured bytes do not cover a
header is marked with a cause instead of being read (the buffer is padded so gathers never
fail). Causes are counted by the collector, never fatal:

* ``non_ip``: ARP, LLDP and other non-IP frames;
* ``fragment``: IP fragments after the first (they carry no ports);
* ``truncated``: captured too short for the IP or transport header;
* ``bad_header``: an IP header that contradicts itself (version, header length);
* ``unknown_link``: a link type this decoder does not read.

SCTP is metered with its ports (its common header starts with them, as UDP's does:
Kubernetes Services and NetworkPolicies name SCTP ports). Packets of other IP protocols (ESP,
GRE that is not decapsulated, ...) are metered as port-less flows and counted under
``unknown_proto`` as well, so operators see them.

Overlays are decapsulated (one level): VXLAN (UDP 4789, Flannel's 8472), Geneve (6081),
IP-in-IP (protocol 4; IPv6-in-IPv4, 41) and GRE (47; IP or Ethernet payload). The inner
5-tuple is what is metered; ``tunnel`` and ``outer_*`` keep the encapsulation and the outer
(node) addresses; ``l3`` points at the inner IP header; ``length`` is the inner frame as a
pod's interface carries it (inner IP length + 14), so a pod's flow counts the same bytes on
its veth and on the uplink. An untunnelled batch pays a few comparisons, nothing more.
WireGuard (UDP 51820/51821, Cilium's 51871) cannot be read: such packets are metered as
the UDP flow they are and counted under ``wireguard``.

Addresses are two big-endian uint64 halves of the 16-byte IPv6 form (IPv4 as
``::ffff:a.b.c.d``), so one code path keys both families.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowwarden.collectors.pcapfile import PacketBatch

DLT_NULL = 0
DLT_EN10MB = 1
DLT_RAW = (12, 14, 101)
DLT_LINUX_SLL = 113
DLT_LINUX_SLL2 = 276
DLT_IPV4 = 228
DLT_IPV6 = 229

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN = (0x8100, 0x88A8, 0x9100)

V4_MAPPED = np.uint64(0x0000FFFF00000000)

# Overlay encapsulations, indexed by ``Decoded.tunnel`` (0: not tunnelled).
TUNNELS = ("", "vxlan", "geneve", "ipip", "gre")
NO_TUNNEL, VXLAN, GENEVE, IPIP, GRE = range(len(TUNNELS))
IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_GRE = 4, 41, 47
ETH_BRIDGE = 0x6558  # transparent Ethernet bridging: GRE (gretap) and Geneve carry Ethernet frames
VXLAN_PORTS = (4789, 8472)  # IANA; Linux's and Flannel's historical default
GENEVE_PORT = 6081
# WireGuard: its default port, Calico's IPv4/IPv6 ports (51820/51821), Cilium's (51871).
WIREGUARD_PORTS = (51820, 51821, 51871)

CAUSES = ("ok", "non_ip", "fragment", "truncated", "bad_header", "unknown_link", "unknown_proto", "wireguard")
OK, NON_IP, FRAGMENT, TRUNCATED, BAD_HEADER, UNKNOWN_LINK, UNKNOWN_PROTO, WIREGUARD = range(len(CAUSES))

TCP, UDP, ICMP, ICMPV6, SCTP = 6, 17, 1, 58, 132
SCTP_HEADER = 12  # ports, verification tag, checksum
IPV6_EXT = (0, 43, 60, 51)  # hop-by-hop, routing, destination options, AH
IPV6_FRAG = 44

# Application-layer candidates (only these packets go to tshark for names).
APP_NONE, APP_DNS, APP_TLS, APP_HTTP = 0, 1, 2, 3
_HTTP_METHODS = [m.encode() for m in ("GET ", "POST", "PUT ", "HEAD", "DELE", "OPTI", "PATC", "CONN")]


@dataclass
class Decoded:
    """Header fields of every packet of a batch (arrays of equal length)."""

    cause: np.ndarray  # int8, index into CAUSES; metered when OK, UNKNOWN_PROTO or WIREGUARD
    src_hi: np.ndarray  # uint64
    src_lo: np.ndarray
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    sport: np.ndarray  # int64
    dport: np.ndarray
    proto: np.ndarray  # int64
    flags: np.ndarray  # int64 TCP flags (0 for other protocols)
    length: np.ndarray  # int64 frame bytes on the wire; of the inner frame when tunnelled
    ts: np.ndarray  # float64
    l3: np.ndarray  # int64 offset of the IP header in the batch buffer
    app: np.ndarray  # int8 APP_* candidate kind
    tunnel: np.ndarray  # int8, index into TUNNELS; 0 when not tunnelled
    outer_src_hi: np.ndarray  # uint64 outer (node) addresses, 0 when not tunnelled
    outer_src_lo: np.ndarray
    outer_dst_hi: np.ndarray
    outer_dst_lo: np.ndarray
    # ICMP/ICMPv6 type << 8 | code (0 for other protocols, or when not captured): the
    # Community ID's "ports" of an ICMP flow (collectors/community_id.py).
    icmp: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def metered(self) -> np.ndarray:
        return (self.cause == OK) | (self.cause == UNKNOWN_PROTO) | (self.cause == WIREGUARD)


class _Reader:
    """Gathers big-endian integers at per-packet positions, clipped to the buffer."""

    def __init__(self, buf: np.ndarray) -> None:
        self.buf = buf
        self.last = len(buf) - 1

    def u8(self, pos: np.ndarray) -> np.ndarray:
        return self.buf[np.minimum(pos, self.last)].astype(np.int64)

    def u16(self, pos: np.ndarray) -> np.ndarray:
        return (self.u8(pos) << 8) | self.u8(pos + 1)

    def u32(self, pos: np.ndarray) -> np.ndarray:
        return (self.u16(pos) << 16) | self.u16(pos + 2)

    def u64(self, pos: np.ndarray) -> np.ndarray:
        idx = np.minimum(pos[:, None] + np.arange(8), self.last)
        return np.ascontiguousarray(self.buf[idx]).view(">u8").ravel().astype(np.uint64)


@dataclass
class _Layers:
    """Network and transport fields of a set of packets (full batch, or the tunnelled subset)."""

    src_hi: np.ndarray
    src_lo: np.ndarray
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    proto: np.ndarray
    l4: np.ndarray
    sport: np.ndarray
    dport: np.ndarray
    flags: np.ndarray
    tcp: np.ndarray  # bool: a TCP header was read
    udp: np.ndarray
    icmp: np.ndarray  # ICMP/ICMPv6 type << 8 | code


def _link(rd: _Reader, off: np.ndarray, end: np.ndarray, lt: np.ndarray) -> tuple[np.ndarray, ...]:
    """Cause, ethertype and IP header offset of every packet from its link header."""
    n = len(off)
    cause = np.zeros(n, dtype=np.int8)
    et = np.zeros(n, dtype=np.int64)
    l3 = off.copy()

    eth = lt == DLT_EN10MB
    if eth.any():
        l3[eth] = off[eth] + 14
        et[eth] = rd.u16(off[eth] + 12)
        for _ in range(2):  # 802.1Q, 802.1ad, QinQ
            tagged = eth & np.isin(et, ETH_VLAN)
            if not tagged.any():
                break
            et[tagged] = rd.u16(l3[tagged] + 2)
            l3[tagged] += 4
    sll = lt == DLT_LINUX_SLL
    if sll.any():
        et[sll] = rd.u16(off[sll] + 14)
        l3[sll] = off[sll] + 16
    sll2 = lt == DLT_LINUX_SLL2
    if sll2.any():
        et[sll2] = rd.u16(off[sll2])
        l3[sll2] = off[sll2] + 20
    null = lt == DLT_NULL
    if null.any():
        fam = rd.u8(off[null]) | rd.u8(off[null] + 3)  # host byte order, either end
        et[null] = np.where(fam == 2, ETH_IPV4, np.where(np.isin(fam, (24, 28, 30)), ETH_IPV6, 0))
        l3[null] = off[null] + 4
    raw = np.isin(lt, DLT_RAW) | (lt == DLT_IPV4) | (lt == DLT_IPV6)
    if raw.any():
        ver = rd.u8(off[raw]) >> 4
        et[raw] = np.where(ver == 4, ETH_IPV4, np.where(ver == 6, ETH_IPV6, 0))
    known_link = eth | sll | sll2 | null | raw
    cause[~known_link] = UNKNOWN_LINK
    return cause, et, l3, known_link


def _layers(rd: _Reader, l3: np.ndarray, et: np.ndarray, end: np.ndarray, cause: np.ndarray) -> _Layers:
    """IPv4/IPv6 (with a bounded walk over IPv6 extension headers), then TCP/UDP ports.

    ``cause`` is updated in place; only packets still ``OK`` are read further.
    """
    n = len(l3)
    cause[(cause == OK) & (et != ETH_IPV4) & (et != ETH_IPV6)] = NON_IP
    ver = rd.u8(l3) >> 4
    v4 = (cause == OK) & (et == ETH_IPV4)
    v6 = (cause == OK) & (et == ETH_IPV6)
    cause[(v4 & (ver != 4)) | (v6 & (ver != 6))] = BAD_HEADER
    v4 &= cause == OK
    v6 &= cause == OK

    src_hi = np.zeros(n, dtype=np.uint64)
    src_lo = np.zeros(n, dtype=np.uint64)
    dst_hi = np.zeros(n, dtype=np.uint64)
    dst_lo = np.zeros(n, dtype=np.uint64)
    proto = np.zeros(n, dtype=np.int64)
    l4 = np.zeros(n, dtype=np.int64)

    if v4.any():
        p = l3[v4]
        ihl = (rd.u8(p) & 0x0F) * 4
        frag = rd.u16(p + 6)
        c = cause[v4]
        c[(c == OK) & (p + 20 > end[v4])] = TRUNCATED
        c[(c == OK) & (ihl < 20)] = BAD_HEADER
        c[(c == OK) & ((frag & 0x1FFF) != 0)] = FRAGMENT
        cause[v4] = c
        proto[v4] = rd.u8(p + 9)
        src_lo[v4] = V4_MAPPED | rd.u32(p + 12).astype(np.uint64)
        dst_lo[v4] = V4_MAPPED | rd.u32(p + 16).astype(np.uint64)
        l4[v4] = p + ihl

    if v6.any():
        p = l3[v6]
        c = cause[v6]
        c[(c == OK) & (p + 40 > end[v6])] = TRUNCATED
        src_hi[v6], src_lo[v6] = rd.u64(p + 8), rd.u64(p + 16)
        dst_hi[v6], dst_lo[v6] = rd.u64(p + 24), rd.u64(p + 32)
        nh = rd.u8(p + 6)
        q = p + 40
        e6 = end[v6]
        for _ in range(4):  # a bounded walk over extension headers
            ext = (c == OK) & np.isin(nh, IPV6_EXT)
            fr = (c == OK) & (nh == IPV6_FRAG)
            if not (ext.any() or fr.any()):
                break
            c[(ext | fr) & (q + 8 > e6)] = TRUNCATED
            ext &= c == OK
            fr &= c == OK
            c[fr & ((rd.u16(q + 2) >> 3) != 0)] = FRAGMENT
            step = np.where(nh == 51, (rd.u8(q + 1) + 2) * 4, (rd.u8(q + 1) + 1) * 8)
            step = np.where(fr, 8, step)
            moved = ext | (fr & (c == OK))
            nxt = rd.u8(q)
            nh = np.where(moved, nxt, nh)
            q = np.where(moved, q + step, q)
        c[(c == OK) & (np.isin(nh, IPV6_EXT) | (nh == IPV6_FRAG))] = BAD_HEADER
        cause[v6] = c
        proto[v6] = nh
        l4[v6] = q

    sport = np.zeros(n, dtype=np.int64)
    dport = np.zeros(n, dtype=np.int64)
    flags = np.zeros(n, dtype=np.int64)
    ip_ok = cause == OK
    tcp = ip_ok & (proto == TCP)
    udp = ip_ok & (proto == UDP)
    sctp = ip_ok & (proto == SCTP)
    cause[tcp & (l4 + 14 > end)] = TRUNCATED
    cause[udp & (l4 + 4 > end)] = TRUNCATED
    cause[sctp & (l4 + SCTP_HEADER > end)] = TRUNCATED
    tcp &= cause == OK
    udp &= cause == OK
    ports = tcp | udp | (sctp & (cause == OK))
    if ports.any():
        sport[ports] = rd.u16(l4[ports])
        dport[ports] = rd.u16(l4[ports] + 2)
    if tcp.any():
        flags[tcp] = rd.u8(l4[tcp] + 13)
    icmp = np.zeros(n, dtype=np.int64)
    ic = ip_ok & ((proto == ICMP) | (proto == ICMPV6)) & (l4 + 2 <= end)
    if ic.any():
        icmp[ic] = rd.u16(l4[ic])
    return _Layers(src_hi, src_lo, dst_hi, dst_lo, proto, l4, sport, dport, flags, tcp, udp, icmp)


def _inner(rd: _Reader, f: _Layers, end: np.ndarray, cause: np.ndarray) -> tuple[np.ndarray, ...]:
    """Encapsulation kind, inner ethertype and inner IP offset of every packet (kind 0: none).

    Only a few comparisons over the whole batch; the headers of the candidates are read
    only when there are any, so an untunnelled batch pays almost nothing.
    """
    n = len(end)
    kind = np.zeros(n, dtype=np.int8)
    et = np.zeros(n, dtype=np.int64)
    l3 = np.zeros(n, dtype=np.int64)
    ok = cause == OK
    ipip = ok & ((f.proto == IPPROTO_IPIP) | (f.proto == IPPROTO_IPV6))
    gre = ok & (f.proto == IPPROTO_GRE)
    d = f.dport
    vx = f.udp & ((d == VXLAN_PORTS[0]) | (d == VXLAN_PORTS[1]))
    gen = f.udp & (d == GENEVE_PORT)
    if not (ipip.any() or gre.any() or vx.any() or gen.any()):
        return kind, et, l3
    kind[ipip] = IPIP
    et[ipip] = np.where(f.proto[ipip] == IPPROTO_IPIP, ETH_IPV4, ETH_IPV6)
    l3[ipip] = f.l4[ipip]
    eth_at = np.full(n, -1, dtype=np.int64)  # inner Ethernet header, when the payload is one
    if gre.any():
        # RFC 2784/2890: C, K, S flags each add 4 bytes; routing (R) and versions > 0 (PPTP) are not read.
        p = f.l4[gre]
        fl = rd.u16(p)
        pt = rd.u16(p + 2)
        hdr = 4 + 4 * (((fl >> 15) & 1) + ((fl >> 13) & 1) + ((fl >> 12) & 1))
        good = (p + 4 <= end[gre]) & ((fl & 0x4007) == 0) & np.isin(pt, (ETH_IPV4, ETH_IPV6, ETH_BRIDGE))
        idx = np.flatnonzero(gre)[good]
        kind[idx] = GRE
        et[idx] = pt[good]
        l3[idx] = (p + hdr)[good]
        eth_at[idx[pt[good] == ETH_BRIDGE]] = (p + hdr)[good][pt[good] == ETH_BRIDGE]
    if vx.any():
        # RFC 7348: 8 bytes with the I flag, then the inner Ethernet frame.
        p = f.l4[vx] + 8
        good = (p + 8 <= end[vx]) & ((rd.u8(p) & 0x08) != 0)
        idx = np.flatnonzero(vx)[good]
        kind[idx] = VXLAN
        eth_at[idx] = p[good] + 8
    if gen.any():
        # RFC 8926: version 0, options of 4 * optlen bytes, then Ethernet (0x6558) or IP.
        p = f.l4[gen] + 8
        b0 = rd.u8(p)
        pt = rd.u16(p + 2)
        inner = p + 8 + (b0 & 0x3F) * 4
        good = (p + 8 <= end[gen]) & ((b0 >> 6) == 0) & np.isin(pt, (ETH_IPV4, ETH_IPV6, ETH_BRIDGE))
        idx = np.flatnonzero(gen)[good]
        kind[idx] = GENEVE
        et[idx] = pt[good]
        l3[idx] = inner[good]
        eth_at[idx[pt[good] == ETH_BRIDGE]] = inner[good][pt[good] == ETH_BRIDGE]
    e = eth_at >= 0
    if e.any():
        q = eth_at[e]
        t = rd.u16(q + 12)
        tagged = np.isin(t, ETH_VLAN)
        et[e] = np.where(tagged, rd.u16(q + 16), t)
        l3[e] = q + np.where(tagged, 18, 14)
    return kind, et, l3


def _wireguard(rd: _Reader, f: _Layers, end: np.ndarray) -> np.ndarray:
    """WireGuard on its usual ports: message type 1-4 followed by three zero bytes."""
    d, s = f.dport, f.sport
    lo, hi = min(WIREGUARD_PORTS), max(WIREGUARD_PORTS)
    wg = f.udp & (((d >= lo) & (d <= hi)) | ((s >= lo) & (s <= hi)))  # a cheap range first
    if not wg.any():
        return wg
    wg &= np.isin(d, WIREGUARD_PORTS) | np.isin(s, WIREGUARD_PORTS)
    if not wg.any():
        return wg
    p = f.l4[wg] + 8
    head = rd.u32(p)
    wg[wg] = (p + 4 <= end[wg]) & ((head >> 24) >= 1) & ((head >> 24) <= 4) & ((head & 0xFFFFFF) == 0)
    return wg


def decode(batch: PacketBatch) -> Decoded:
    """Decode every packet's headers; see the module docstring for the causes and tunnels."""
    n = len(batch)
    rd = _Reader(batch.buf)
    off, end, lt = batch.off, batch.off + batch.caplen, batch.linktype
    cause, et, l3, known_link = _link(rd, off, end, lt)
    cause[known_link & (l3 + 1 > end)] = TRUNCATED  # not even one byte after the link header
    f = _layers(rd, l3, et, end, cause)

    tunnel = np.zeros(n, dtype=np.int8)
    outer = [np.zeros(n, dtype=np.uint64) for _ in range(4)]
    length = batch.wirelen
    kind, in_et, in_l3 = _inner(rd, f, end, cause)
    tun = np.flatnonzero(kind)
    if len(tun):
        # Meter the inner packet; keep the outer (node) addresses beside it.
        tunnel[tun] = kind[tun]
        for arr, src in zip(outer, (f.src_hi, f.src_lo, f.dst_hi, f.dst_lo), strict=True):
            arr[tun] = src[tun]
        c = np.where(in_l3[tun] + 1 > end[tun], TRUNCATED, OK).astype(np.int8)
        g = _layers(rd, in_l3[tun], in_et[tun], end[tun], c)
        cause[tun] = c
        for name in (
            "src_hi",
            "src_lo",
            "dst_hi",
            "dst_lo",
            "proto",
            "l4",
            "sport",
            "dport",
            "flags",
            "tcp",
            "udp",
            "icmp",
        ):
            getattr(f, name)[tun] = getattr(g, name)
        l3 = l3.copy()
        l3[tun] = in_l3[tun]
        # Bytes of the inner frame as a pod's interface carries it: the inner IP packet's own
        # length (whatever the capture's link header) + 14 Ethernet bytes.
        q = in_l3[tun]
        ip_len = np.where(in_et[tun] == ETH_IPV6, rd.u16(q + 4) + 40, rd.u16(q + 2))
        length = batch.wirelen.copy()
        length[tun] = np.where(c == OK, ip_len + 14, np.maximum(batch.wirelen[tun] - (q - off[tun]) + 14, 0))

    wg = _wireguard(rd, f, end)
    cause[(cause == OK) & ~np.isin(f.proto, (TCP, UDP, SCTP, ICMP, ICMPV6))] = UNKNOWN_PROTO
    cause[wg & (cause == OK)] = WIREGUARD

    # Candidates for application-layer names: DNS by port, TLS ClientHello and HTTP
    # requests by their first payload bytes.
    app = np.zeros(n, dtype=np.int8)
    tcp, l4 = f.tcp, f.l4
    ports = f.tcp | f.udp
    dns = ports & ((f.sport == 53) | (f.dport == 53))
    app[dns] = APP_DNS
    if tcp.any():
        idx = np.flatnonzero(tcp & ~dns)
        pay = l4[idx] + (rd.u8(l4[idx] + 12) >> 4) * 4
        has = pay + 6 <= end[idx]
        idx, pay = idx[has], pay[has]
        b0, b1, b5 = rd.u8(pay), rd.u8(pay + 1), rd.u8(pay + 5)
        app[idx[(b0 == 0x16) & (b1 == 0x03) & (b5 == 0x01)]] = APP_TLS
        head = rd.u32(pay)
        methods = np.array([int.from_bytes(m, "big") for m in _HTTP_METHODS], dtype=np.int64)
        app[idx[np.isin(head, methods)]] = APP_HTTP

    return Decoded(
        cause=cause,
        src_hi=f.src_hi,
        src_lo=f.src_lo,
        dst_hi=f.dst_hi,
        dst_lo=f.dst_lo,
        sport=f.sport,
        dport=f.dport,
        proto=f.proto,
        flags=f.flags,
        length=length,
        ts=batch.ts,
        l3=l3,
        app=app,
        tunnel=tunnel,
        outer_src_hi=outer[0],
        outer_src_lo=outer[1],
        outer_dst_hi=outer[2],
        outer_dst_lo=outer[3],
        icmp=f.icmp,
    )


def cause_counts(dec: Decoded) -> dict[str, int]:
    """Packets per cause other than ``ok`` (only the causes that occurred)."""
    counts = np.bincount(dec.cause.astype(np.int64), minlength=len(CAUSES))
    return {CAUSES[i]: int(c) for i, c in enumerate(counts) if i != OK and c}
