"""Community ID v1 of flow tuples, vectorised: the name Zeek, Suricata and others log a flow by.

Spec: https://github.com/corelight/community-id-spec (the reference is the ``communityid``
package, which the tests compare against). The ID is ``"1:"`` + base64 of the SHA-1 of

    seed (2) | source addr | destination addr | protocol (1) | 0 (1) | source port (2) | dest. port (2)

all big endian, IPv4 addresses as 4 bytes and IPv6 as 16. Ports are hashed only for TCP,
UDP, SCTP, ICMP and ICMPv6. The endpoints are ordered (the smaller address first, the
smaller port when the addresses are equal) so that both directions get one ID. ICMP has no
ports: its type stands for the source port and, for the request/reply types, the type of the
counterpart for the destination one (echo and echo reply, router solicitation and
advertisement, ...), so a request and its reply share one ID; every other type is one-way:
its code is the destination port and the tuple is not reordered.

Everything but SHA-1 itself is numpy over the whole batch; hashlib runs once per tuple
(about 0.4 µs). The flow table calls this once per flow, at its first record.
"""

from __future__ import annotations

import base64
import hashlib
from typing import cast

import numpy as np

TCP, UDP, ICMP, ICMPV6, SCTP = 6, 17, 1, 58, 132
PORT_PROTOS = (TCP, UDP, ICMP, ICMPV6, SCTP)
ID_LEN = 30  # "1:" + 28 base64 characters (20 bytes of SHA-1)

# Request/reply ICMP types and their counterpart (Zeek's mapping, as the spec adopts it).
ICMP_COUNTERPARTS = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17}
ICMPV6_COUNTERPARTS = {
    128: 129, 129: 128,  # echo
    130: 131, 131: 130,  # multicast listener query / report
    133: 134, 134: 133,  # router solicitation / advertisement
    135: 136, 136: 135,  # neighbor solicitation / advertisement
    139: 140, 140: 139,  # node information query / reply
    144: 145, 145: 144,  # home agent address discovery
}  # fmt: skip

_V4_MAPPED = np.uint64(0x0000FFFF00000000)


def _counterpart_table(pairs: dict[int, int]) -> np.ndarray:
    table = np.full(256, -1, dtype=np.int64)
    for a, b in pairs.items():
        table[a] = b
    return table


_ICMP_TABLE = _counterpart_table(ICMP_COUNTERPARTS)
_ICMPV6_TABLE = _counterpart_table(ICMPV6_COUNTERPARTS)


def port_equivalents(
    proto: np.ndarray, sport: np.ndarray, dport: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ports the hash takes, and which tuples are one-way (never reordered).

    For ICMP and ICMPv6, ``sport`` and ``dport`` are the message's type and code; other
    protocols pass through unchanged.
    """
    icmp4, icmp6 = proto == ICMP, proto == ICMPV6
    if not (icmp4.any() or icmp6.any()):
        return sport, dport, icmp4
    kind = np.clip(sport, 0, 255)
    counterpart = np.where(icmp4, _ICMP_TABLE[kind], np.where(icmp6, _ICMPV6_TABLE[kind], -1))
    two_way = counterpart >= 0
    return sport, np.where(two_way, counterpart, dport), (icmp4 | icmp6) & ~two_way


def _be_bytes(values: np.ndarray, dtype: str) -> np.ndarray:
    """Each value as a row of big-endian bytes."""
    width = np.dtype(dtype).itemsize
    return np.ascontiguousarray(values.astype(dtype)).view(np.uint8).reshape(len(values), width)


def _sha1_rows(rows: np.ndarray) -> np.ndarray:
    """SHA-1 of each row of a (n, w) byte matrix, each digest followed by a zero byte: (n, 21)."""
    n, w = rows.shape
    items = cast(list[bytes], np.ascontiguousarray(rows).view(np.dtype((np.void, w))).ravel().tolist())
    sha1 = hashlib.sha1
    joined = b"\0".join([sha1(m).digest() for m in items]) + b"\0"
    return np.frombuffer(joined, dtype=np.uint8).reshape(n, 21)


def _messages(
    v4: bool, seed: int, a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...], proto: np.ndarray, ports: bool
) -> np.ndarray:
    """The hashed bytes of each tuple of one family, with or without ports, as a (n, w) matrix."""
    n = len(proto)
    addr = 4 if v4 else 16
    msg = np.zeros((n, 2 + 2 * addr + 2 + (4 if ports else 0)), dtype=np.uint8)
    msg[:, 0:2] = np.frombuffer(seed.to_bytes(2, "big"), dtype=np.uint8)
    for col, (hi, lo) in ((2, a[:2]), (2 + addr, b[:2])):
        if v4:
            msg[:, col : col + 4] = _be_bytes(lo, ">u8")[:, 4:]
        else:
            msg[:, col : col + 8], msg[:, col + 8 : col + 16] = _be_bytes(hi, ">u8"), _be_bytes(lo, ">u8")
    at = 2 + 2 * addr
    msg[:, at] = proto
    if ports:
        msg[:, at + 2 : at + 4], msg[:, at + 4 : at + 6] = _be_bytes(a[2], ">u2"), _be_bytes(b[2], ">u2")
    return msg


def community_ids(
    src_hi: np.ndarray,
    src_lo: np.ndarray,
    dst_hi: np.ndarray,
    dst_lo: np.ndarray,
    proto: np.ndarray,
    sport: np.ndarray,
    dport: np.ndarray,
    *,
    seed: int = 0,
) -> np.ndarray:
    """Community ID v1 of each tuple, as an ``S30`` array (``b"1:..."``).

    Addresses are the two big-endian uint64 halves of the 16-byte IPv6 form, IPv4 as
    ``::ffff:a.b.c.d`` (as :mod:`collectors.decode` keeps them). For ICMP and ICMPv6,
    ``sport``/``dport`` are the type and code of the flow's first packet.
    """
    if not 0 <= seed <= 0xFFFF:
        raise ValueError(f"community ID seed must be 0-65535, got {seed}")
    n = len(proto)
    if n == 0:
        return np.zeros(0, dtype=f"S{ID_LEN}")
    proto = np.asarray(proto, dtype=np.int64) & 0xFF
    sport, dport, one_way = port_equivalents(proto, np.asarray(sport, np.int64), np.asarray(dport, np.int64))
    src_hi, src_lo = np.asarray(src_hi, np.uint64), np.asarray(src_lo, np.uint64)
    dst_hi, dst_lo = np.asarray(dst_hi, np.uint64), np.asarray(dst_lo, np.uint64)
    # Ordered: one-way, or the smaller address first (byte order is (hi, lo) order), or
    # equal addresses and the smaller port first.
    less = (src_hi < dst_hi) | ((src_hi == dst_hi) & (src_lo < dst_lo))
    same = (src_hi == dst_hi) & (src_lo == dst_lo)
    keep = one_way | less | (same & (sport < dport))
    a = (
        np.where(keep, src_hi, dst_hi),
        np.where(keep, src_lo, dst_lo),
        np.where(keep, sport, dport) & 0xFFFF,
    )
    b = (
        np.where(keep, dst_hi, src_hi),
        np.where(keep, dst_lo, src_lo),
        np.where(keep, dport, sport) & 0xFFFF,
    )
    v4 = (a[0] == 0) & ((a[1] & ~np.uint64(0xFFFFFFFF)) == _V4_MAPPED)
    ports = np.isin(proto, PORT_PROTOS)
    # Base64 of 21 bytes (the digest and a zero) is 28 characters: one C call for every row,
    # then the last character of each row is the padding "=".
    digests = np.zeros((n, 21), dtype=np.uint8)
    for family in (True, False):
        for with_ports in (True, False):
            sel = (v4 == family) & (ports == with_ports)
            if sel.all():  # the usual batch: one family, every flow with ports
                digests = _sha1_rows(_messages(family, seed, a, b, proto, with_ports))
                continue
            if not sel.any():
                continue
            idx = np.flatnonzero(sel)
            sub_a, sub_b = tuple(x[idx] for x in a), tuple(x[idx] for x in b)
            digests[idx] = _sha1_rows(_messages(family, seed, sub_a, sub_b, proto[idx], with_ports))
    text = np.frombuffer(base64.b64encode(digests.tobytes()), dtype=np.uint8).reshape(n, 28)
    out = np.empty((n, ID_LEN), dtype=np.uint8)
    out[:, 0:2] = np.frombuffer(b"1:", dtype=np.uint8)
    out[:, 2:] = text
    out[:, -1] = ord("=")
    return out.view(f"S{ID_LEN}").ravel()
