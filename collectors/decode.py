"""Vectorised header decoding: link, IPv4/IPv6 (VLAN-tagged too), TCP/UDP/ICMP.

Every field is taken for a whole :class:`~collectors.pcapfile.PacketBatch` at once with
numpy fancy indexing at per-packet offsets; a packet whose captured bytes do not cover a
header is marked with a cause instead of being read (the buffer is padded so gathers never
fail). Causes are counted by the collector, never fatal:

* ``non_ip``: ARP, LLDP and other non-IP frames;
* ``fragment``: IP fragments after the first (they carry no ports);
* ``truncated``: captured too short for the IP or transport header;
* ``bad_header``: an IP header that contradicts itself (version, header length);
* ``unknown_link``: a link type this decoder does not read.

Packets of other IP protocols (GRE, ESP, SCTP, ...) are metered as port-less flows and
counted under ``unknown_proto`` as well, so operators see them.

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

CAUSES = ("ok", "non_ip", "fragment", "truncated", "bad_header", "unknown_link", "unknown_proto")
OK, NON_IP, FRAGMENT, TRUNCATED, BAD_HEADER, UNKNOWN_LINK, UNKNOWN_PROTO = range(len(CAUSES))

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
IPV6_EXT = (0, 43, 60, 51)  # hop-by-hop, routing, destination options, AH
IPV6_FRAG = 44

# Application-layer candidates (only these packets go to tshark for names).
APP_NONE, APP_DNS, APP_TLS, APP_HTTP = 0, 1, 2, 3
_HTTP_METHODS = [m.encode() for m in ("GET ", "POST", "PUT ", "HEAD", "DELE", "OPTI", "PATC", "CONN")]


@dataclass
class Decoded:
    """Header fields of every packet of a batch (arrays of equal length)."""

    cause: np.ndarray  # int8, index into CAUSES; metered when OK or UNKNOWN_PROTO
    src_hi: np.ndarray  # uint64
    src_lo: np.ndarray
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    sport: np.ndarray  # int64
    dport: np.ndarray
    proto: np.ndarray  # int64
    flags: np.ndarray  # int64 TCP flags (0 for other protocols)
    length: np.ndarray  # int64 frame bytes on the wire
    ts: np.ndarray  # float64
    l3: np.ndarray  # int64 offset of the IP header in the batch buffer
    app: np.ndarray  # int8 APP_* candidate kind

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def metered(self) -> np.ndarray:
        return (self.cause == OK) | (self.cause == UNKNOWN_PROTO)


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


def decode(batch: PacketBatch) -> Decoded:
    """Decode every packet's headers; see the module docstring for the causes."""
    n = len(batch)
    rd = _Reader(batch.buf)
    off, end, lt = batch.off, batch.off + batch.caplen, batch.linktype
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
    cause[known_link & (l3 + 1 > end)] = TRUNCATED  # not even one byte after the link header
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
    app = np.zeros(n, dtype=np.int8)
    ip_ok = cause == OK
    tcp = ip_ok & (proto == TCP)
    udp = ip_ok & (proto == UDP)
    cause[tcp & (l4 + 14 > end)] = TRUNCATED
    cause[udp & (l4 + 4 > end)] = TRUNCATED
    tcp &= cause == OK
    udp &= cause == OK
    ports = tcp | udp
    if ports.any():
        sport[ports] = rd.u16(l4[ports])
        dport[ports] = rd.u16(l4[ports] + 2)
    if tcp.any():
        flags[tcp] = rd.u8(l4[tcp] + 13)
    cause[ip_ok & ~np.isin(proto, (TCP, UDP, ICMP, ICMPV6))] = UNKNOWN_PROTO

    # Candidates for application-layer names: DNS by port, TLS ClientHello and HTTP
    # requests by their first payload bytes.
    dns = ports & ((sport == 53) | (dport == 53))
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
        src_hi=src_hi,
        src_lo=src_lo,
        dst_hi=dst_hi,
        dst_lo=dst_lo,
        sport=sport,
        dport=dport,
        proto=proto,
        flags=flags,
        length=batch.wirelen,
        ts=batch.ts,
        l3=l3,
        app=app,
    )


def cause_counts(dec: Decoded) -> dict[str, int]:
    """Packets per cause other than ``ok`` (only the causes that occurred)."""
    counts = np.bincount(dec.cause.astype(np.int64), minlength=len(CAUSES))
    return {CAUSES[i]: int(c) for i, c in enumerate(counts) if i != OK and c}
