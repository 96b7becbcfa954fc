"""DNS messages parsed in the collector's own path: every query and response of a flow.

Why not tshark: it costs more than the metering itself once it sees every DNS packet
(figures in ``benchmarks/bench_collector.py``), and a tunnel's hundreds of queries per
flow are exactly the packets we need. A DNS message needs little: the header, the first
question (name with compression pointers, type) and the A/AAAA answers with their TTLs.

Locating payloads is vectorised over the batch (:func:`payload_bounds`), and so is the
common message shape (:func:`parse_batch`: a question written out, answers owned by
compression pointers), one numpy step per label or answer over all messages at once.
Anything else falls back to :func:`parse`, a plain Python walk over one ``bytes`` object
with offsets, which is also the reference the vectorised path is tested against. Neither
raises: a message cut by the snap length or bad on the wire parses as far as it can and
says why in ``problem``, which the meter counts.

Names come back as text in master-file form: printable ASCII as is, any other byte (and a
dot or backslash inside a label) as ``\\DDD`` (RFC 1035 section 5.1), so a binary tunnel
(iodine's raw encoding) still yields distinct, reversible names.
"""

from __future__ import annotations

import re
import socket
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from flowwarden.collectors.decode import TCP, UDP

# Why a message could not be parsed whole (the meter counts each under its cause).
OK, TRUNCATED, MALFORMED = 0, 1, 2
PROBLEMS = ("ok", "truncated", "malformed")

HEADER_LEN = 12
MAX_LABELS = 128  # a name of 255 octets has at most 127 labels; the walk stops there
MAX_NAME = 255
MAX_JUMPS = 16  # compression pointers followed per name (each must point backwards anyway)
MAX_ANSWERS = 64  # answer records read per message
RCODE_NXDOMAIN = 3

QTYPES: dict[int, str] = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 10: "NULL", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT",
    17: "RP", 18: "AFSDB", 24: "SIG", 25: "KEY", 28: "AAAA", 29: "LOC", 33: "SRV", 35: "NAPTR",
    36: "KX", 37: "CERT", 39: "DNAME", 41: "OPT", 43: "DS", 44: "SSHFP", 46: "RRSIG", 47: "NSEC",
    48: "DNSKEY", 50: "NSEC3", 52: "TLSA", 59: "CDS", 60: "CDNSKEY", 61: "OPENPGPKEY", 64: "SVCB",
    65: "HTTPS", 99: "SPF", 249: "TKEY", 250: "TSIG", 251: "IXFR", 252: "AXFR", 255: "ANY",
    256: "URI", 257: "CAA",
}  # fmt: skip

_HDR = struct.Struct(">HHHH")  # id, flags, qdcount, ancount
_QT = struct.Struct(">H")
_RR = struct.Struct(">HHIH")  # type, class, ttl, rdlength
_SAFE = re.compile(rb"[\x21-\x7e]*")  # printable ASCII without space
_A, _AAAA = 1, 28


class DnsMessage(NamedTuple):
    """What a record needs from one DNS message."""

    response: bool
    rcode: int
    qname: str  # the first question's name ("" when the message has none)
    qtype: int  # the first question's type (-1 when none)
    answers: tuple[str, ...]  # A/AAAA addresses, in message order
    ttl: int  # the smallest TTL of those answers (-1 when none)
    problem: int  # OK, TRUNCATED or MALFORMED


def qtype_name(qtype: int) -> str:
    """Mnemonic of a query type; unknown ones as ``TYPEnnn`` (RFC 3597)."""
    return QTYPES.get(qtype) or f"TYPE{qtype}"


def _escape(label: bytes) -> str:
    """A label with non-printable bytes, dots or backslashes: master-file escapes."""
    out = []
    for b in label:
        if 0x21 <= b <= 0x7E and b not in (0x2E, 0x5C):
            out.append(chr(b))
        else:
            out.append(f"\\{b:03d}")
    return "".join(out)


def read_name(data: bytes, pos: int, start: int, end: int) -> tuple[str, int, int]:
    """(name, offset after it in the message, problem) of the name at ``pos``.

    ``start`` is the message's first byte (pointers are relative to it); ``end`` the first
    byte past what was captured. A pointer must point before the label that holds it, and
    at most :data:`MAX_JUMPS` are followed, so a crafted loop ends. On a problem the name
    is what was read so far.
    """
    labels: list[bytes] = []
    after = -1
    jumps = 0
    size = 0
    for _ in range(MAX_LABELS):
        if pos >= end:
            return _text(labels), after if after >= 0 else pos, TRUNCATED
        n = data[pos]
        if n == 0:
            return _text(labels), after if after >= 0 else pos + 1, OK
        if n >= 0xC0:
            if pos + 1 >= end:
                return _text(labels), after if after >= 0 else pos, TRUNCATED
            target = start + (((n & 0x3F) << 8) | data[pos + 1])
            if after < 0:
                after = pos + 2
            jumps += 1
            if target >= pos or jumps > MAX_JUMPS:
                return _text(labels), after, MALFORMED
            pos = target
            continue
        if n >= 0x40:  # extended (0x40, RFC 6891 obsolete) or reserved label types
            return _text(labels), after if after >= 0 else pos, MALFORMED
        stop = pos + 1 + n
        if stop > end:
            return _text(labels), after if after >= 0 else end, TRUNCATED
        labels.append(data[pos + 1 : stop])
        size += n + 1
        if size > MAX_NAME:
            return _text(labels), after if after >= 0 else stop, MALFORMED
        pos = stop
    return _text(labels), after if after >= 0 else pos, MALFORMED


def _text(labels: list[bytes]) -> str:
    joined = b".".join(labels)
    if _SAFE.fullmatch(joined) is not None and joined.count(b".") == len(labels) - 1 and b"\\" not in joined:
        return joined.decode("ascii")
    return ".".join(_escape(x) for x in labels)


def parse(data: bytes, start: int, end: int) -> DnsMessage | None:
    """The DNS message in ``data[start:end]``; None when not even its header was captured."""
    if end - start < HEADER_LEN:
        return None
    _, flags, qdcount, ancount = _HDR.unpack_from(data, start)
    response = bool(flags & 0x8000)
    rcode = flags & 0x000F
    pos = start + HEADER_LEN
    if qdcount == 0:
        return DnsMessage(response, rcode, "", -1, (), -1, OK if ancount == 0 else MALFORMED)
    qname, pos, problem = read_name(data, pos, start, end)
    if problem:
        return DnsMessage(response, rcode, qname, -1, (), -1, problem)
    if pos + 4 > end:
        return DnsMessage(response, rcode, qname, -1, (), -1, TRUNCATED)
    qtype = _QT.unpack_from(data, pos)[0]
    pos += 4
    if not response or ancount == 0:
        return DnsMessage(response, rcode, qname, qtype, (), -1, OK)
    for _ in range(min(qdcount - 1, 8)):  # further questions (rare): skip their names
        _, pos, problem = read_name(data, pos, start, end)
        pos += 4
        if problem or pos > end:
            return DnsMessage(response, rcode, qname, qtype, (), -1, problem or TRUNCATED)
    answers: list[str] = []
    ttl = -1
    problem = OK
    for _ in range(min(ancount, MAX_ANSWERS)):
        if pos + 1 < end and data[pos] >= 0xC0:
            pos += 2  # the usual compressed owner name (a pointer to the question)
        else:
            _, pos, problem = read_name(data, pos, start, end)
            if problem:
                break
        if pos + 10 > end:
            problem = TRUNCATED
            break
        rtype, _, rttl, rdlen = _RR.unpack_from(data, pos)
        pos += 10
        if pos + rdlen > end:
            problem = TRUNCATED
            break
        rttl = rttl if rttl < 0x80000000 else 0  # RFC 2181 8: a TTL with the top bit set is 0
        if rtype == _A and rdlen == 4:
            answers.append(socket.inet_ntop(socket.AF_INET, data[pos : pos + 4]))
        elif rtype == _AAAA and rdlen == 16:
            answers.append(socket.inet_ntop(socket.AF_INET6, data[pos : pos + 16]))
        else:
            pos += rdlen
            continue
        ttl = rttl if ttl < 0 else min(ttl, rttl)
        pos += rdlen
    return DnsMessage(response, rcode, qname, qtype, tuple(answers), ttl, problem)


def payload_bounds(
    buf: np.ndarray, l3: np.ndarray, cap_end: np.ndarray, proto: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(first byte, end) of the DNS message in each packet, vectorised; end <= start: none.

    UDP: the datagram after its 8-byte header, bounded by the UDP length (Ethernet padding
    is not DNS). TCP: the first message of the segment after its 2-byte length prefix
    (RFC 1035 4.2.2); a segment that only continues a message parses as malformed.
    ``l3`` is the IP header's offset; IPv6 extension headers are walked (bounded).
    """
    last = len(buf) - 1

    def u8(p: np.ndarray) -> np.ndarray:
        return buf[np.clip(p, 0, last)].astype(np.int64)

    def u16(p: np.ndarray) -> np.ndarray:
        return (u8(p) << 8) | u8(p + 1)

    v4 = (u8(l3) >> 4) == 4
    l4 = np.where(v4, l3 + (u8(l3) & 0x0F) * 4, l3 + 40)
    ip_end = np.where(v4, l3 + u16(l3 + 2), l3 + 40 + u16(l3 + 4))
    nh = np.where(v4, proto, u8(l3 + 6))
    for _ in range(4):  # IPv6 extension headers before the transport one (as the decoder)
        ext = ~v4 & (nh != proto)
        if not ext.any():
            break
        step = np.where(nh == 51, (u8(l4 + 1) + 2) * 4, np.where(nh == 44, 8, (u8(l4 + 1) + 1) * 8))
        nh = np.where(ext, u8(l4), nh)
        l4 = np.where(ext, l4 + step, l4)
    end = np.minimum(cap_end, np.where(ip_end > l4, ip_end, cap_end))
    udp = proto == UDP
    start = np.where(udp, l4 + 8, l4 + (u8(l4 + 12) >> 4) * 4 + 2)
    msg_end = np.where(udp, l4 + u16(l4 + 4), start + u16(start - 2))
    end = np.minimum(end, np.where(msg_end >= start, msg_end, end))
    bad = (nh != proto) | ((proto != UDP) & (proto != TCP))
    end = np.where(bad, start, end)
    return start, end


@dataclass
class DnsBatch:
    """The DNS messages of one packet batch, as columns (one row per message, packet order).

    ``qname`` is the name as text, ``qkey`` its normalized form (the key names are counted
    by); answers are flat, message ``i`` owning ``addrs[ans_lo[i]:ans_hi[i]]``.
    """

    response: np.ndarray  # bool
    rcode: np.ndarray  # int64
    qtype: np.ndarray  # int64, -1 when none
    ttl: np.ndarray  # int64 smallest A/AAAA TTL, -1 when none
    problem: np.ndarray  # int8 OK / TRUNCATED / MALFORMED
    qname: list[str]
    qkey: list[str]
    ans_lo: np.ndarray  # int64
    ans_hi: np.ndarray
    addrs: list[str]
    # The header's ID (-1: message shorter than 2 bytes): pairs a response with its query.
    txid: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.qname)

    def message(self, i: int) -> DnsMessage:
        """Row ``i`` as a :class:`DnsMessage` (tests compare it with :func:`parse`)."""
        answers = tuple(self.addrs[self.ans_lo[i] : self.ans_hi[i]])
        return DnsMessage(
            bool(self.response[i]),
            int(self.rcode[i]),
            self.qname[i],
            int(self.qtype[i]),
            answers,
            int(self.ttl[i]),
            int(self.problem[i]),
        )


SCALAR_BELOW = 24  # fewer messages than this: parse() each (numpy's fixed cost per call is higher)
_WIRE_TEXT: dict[bytes, tuple[str, str]] = {}
WIRE_CACHE = 65_536


def _wire_text(wire: bytes) -> tuple[str, str]:
    """(text, normalized key) of an uncompressed wire-format name; cached per distinct name."""
    hit = _WIRE_TEXT.get(wire)
    if hit is not None:
        return hit
    labels = []
    pos = 0
    for _ in range(MAX_LABELS):
        n = wire[pos] if pos < len(wire) else 0
        if n == 0:
            break
        labels.append(wire[pos + 1 : pos + 1 + n])
        pos += 1 + n
    text = _text(labels)
    out = (text, text.lower())
    if len(_WIRE_TEXT) >= WIRE_CACHE:
        _WIRE_TEXT.clear()  # a tunnel makes every name new: start again rather than grow
    _WIRE_TEXT[wire] = out
    return out


def _txid(data: bytes, start: int, end: int) -> int:
    return (data[start] << 8) | data[start + 1] if end - start >= 2 else -1


def _scalar_batch(data: bytes, start: np.ndarray, end: np.ndarray) -> DnsBatch:
    """:func:`parse_batch` for a few messages: :func:`parse` each."""
    n = len(start)
    response = np.zeros(n, dtype=bool)
    rcode = np.zeros(n, dtype=np.int64)
    qtype = np.full(n, -1, dtype=np.int64)
    ttl = np.full(n, -1, dtype=np.int64)
    problem = np.zeros(n, dtype=np.int8)
    qname = [""] * n
    qkey = [""] * n
    lo = np.zeros(n, dtype=np.int64)
    hi = np.zeros(n, dtype=np.int64)
    addrs: list[str] = []
    for i, (a, b) in enumerate(zip(start.tolist(), end.tolist(), strict=True)):
        m = parse(data, a, b)
        if m is None:
            problem[i] = TRUNCATED
            continue
        response[i], rcode[i], qtype[i], ttl[i], problem[i] = m.response, m.rcode, m.qtype, m.ttl, m.problem
        qname[i], qkey[i] = m.qname, m.qname.lower()
        lo[i] = len(addrs)
        addrs.extend(m.answers)
        hi[i] = len(addrs)
    txid = np.array(
        [_txid(data, a, b) for a, b in zip(start.tolist(), end.tolist(), strict=True)], dtype=np.int64
    )
    return DnsBatch(response, rcode, qtype, ttl, problem, qname, qkey, lo, hi, addrs, txid)


def parse_batch(data: bytes, start: np.ndarray, end: np.ndarray) -> DnsBatch:
    """Every message ``data[start[i]:end[i]]`` parsed; same results as :func:`parse` row by row.

    The common shape (one question written out, answers owned by compression pointers) is
    walked with numpy over all messages at once, one step per label or answer; anything
    else (a pointer in the question, a truncated or malformed message, a full owner name)
    falls back to :func:`parse` for that message. Messages shorter than a header are rows
    with problem TRUNCATED and no question.
    """
    n = len(start)
    if n <= SCALAR_BELOW:
        return _scalar_batch(data, start, end)
    buf = np.frombuffer(data + bytes(16), dtype=np.uint8)
    last = len(buf) - 1

    def u8(p: np.ndarray) -> np.ndarray:
        return buf[np.clip(p, 0, last)].astype(np.int64)

    def u16(p: np.ndarray) -> np.ndarray:
        return (u8(p) << 8) | u8(p + 1)

    s = start.astype(np.int64)
    e = end.astype(np.int64)
    whole = e - s >= HEADER_LEN
    txid = np.where(e - s >= 2, u16(s), -1)
    flags = u16(s + 2)
    response = (flags & 0x8000) != 0
    rcode = flags & 0x000F
    qd, an = u16(s + 4), u16(s + 6)
    fast = whole & (qd == 1)
    # The question's name: a bounded walk, one label per step, over the messages still in it.
    qs = s + HEADER_LEN
    pos = qs.copy()
    qe = np.zeros(n, dtype=np.int64)
    walking = np.flatnonzero(fast)
    for _ in range(MAX_LABELS):
        if len(walking) == 0:
            break
        p = pos[walking]
        ln = u8(p)
        bad = (p >= e[walking]) | (ln >= 0x40)  # cut, pointer or reserved label: the slow path
        fast[walking[bad]] = False
        done = ~bad & (ln == 0)
        qe[walking[done]] = p[done] + 1
        go = ~bad & ~done
        pos[walking[go]] = p[go] + 1 + ln[go]
        walking = walking[go]
    fast[walking] = False  # too many labels
    fast &= (qe - qs <= MAX_NAME + 1) & (qe + 4 <= e)
    qtype = np.where(fast, u16(qe), -1)
    # No question at all (as parse() reads it: fine unless it claims answers).
    empty = whole & (qd == 0)
    fast |= empty
    ttl = np.full(n, -1, dtype=np.int64)
    # Answers owned by a compression pointer (what servers write), one record per step.
    ans_msg: list[np.ndarray] = []
    ans_at: list[np.ndarray] = []
    ans_len: list[np.ndarray] = []
    apos = qe + 4
    reading = np.flatnonzero(fast & ~empty & response & (an > 0))
    for k in range(MAX_ANSWERS):
        reading = reading[an[reading] > k]
        if len(reading) == 0:
            break
        p = apos[reading]
        er = e[reading]
        bad = (u8(p) < 0xC0) | (p + 12 > er)
        rdlen = u16(p + 10)
        bad |= p + 12 + rdlen > er
        fast[reading[bad]] = False
        reading, p, rdlen = reading[~bad], p[~bad], rdlen[~bad]
        rtype = u16(p + 2)
        addr = ((rtype == _A) & (rdlen == 4)) | ((rtype == _AAAA) & (rdlen == 16))
        if addr.any():
            m = reading[addr]
            ans_msg.append(m)
            ans_at.append(p[addr] + 12)
            ans_len.append(rdlen[addr])
            rttl = (u16(p[addr] + 6) << 16) | u16(p[addr] + 8)
            rttl = np.where(rttl >= 0x80000000, 0, rttl)  # RFC 2181 8
            ttl[m] = np.where(ttl[m] < 0, rttl, np.minimum(ttl[m], rttl))
        apos[reading] = p + 12 + rdlen
    problem = np.where(empty & (an > 0), MALFORMED, OK).astype(np.int8)
    qname = [""] * n
    qkey = [""] * n
    wire = _WIRE_TEXT
    named = fast & ~empty
    for i, a, b in zip(np.flatnonzero(named).tolist(), qs[named].tolist(), qe[named].tolist(), strict=True):
        w = data[a:b]
        hit = wire.get(w)
        qname[i], qkey[i] = hit if hit is not None else _wire_text(w)
    # Answers of the fast messages, in message order (then record order).
    if ans_msg:
        msg = np.concatenate(ans_msg)
        at = np.concatenate(ans_at)
        size = np.concatenate(ans_len)
        keep = fast[msg]  # a message that fell back later is parsed whole by parse()
        msg, at, size = msg[keep], at[keep], size[keep]
        order = np.argsort(msg, kind="stable")
        msg, at, size = msg[order], at[order], size[order]
        fam = [socket.AF_INET if z == 4 else socket.AF_INET6 for z in size.tolist()]
        fast_addrs = [
            socket.inet_ntop(f, data[x : x + z])
            for f, x, z in zip(fam, at.tolist(), size.tolist(), strict=True)
        ]
    else:
        msg = np.zeros(0, dtype=np.int64)
        fast_addrs = []
    counts = np.bincount(msg, minlength=n).astype(np.int64)
    slow = np.flatnonzero(~fast)
    if len(slow) == 0:
        hi = np.cumsum(counts)
        ttl = np.where(fast, ttl, -1)
        return DnsBatch(response, rcode, qtype, ttl, problem, qname, qkey, hi - counts, hi, fast_addrs, txid)
    # The slow path, message by message; its answers are appended after the fast ones.
    ttl[slow] = -1
    extra: list[str] = []
    extra_lo = np.zeros(n, dtype=np.int64)
    extra_n = np.zeros(n, dtype=np.int64)
    base = len(fast_addrs)
    for i, a, b in zip(slow.tolist(), s[slow].tolist(), e[slow].tolist(), strict=True):
        m1 = parse(data, a, b)
        if m1 is None:
            problem[i] = TRUNCATED
            qtype[i] = -1
            continue
        response[i], rcode[i], qtype[i], ttl[i], problem[i] = (
            m1.response,
            m1.rcode,
            m1.qtype,
            m1.ttl,
            m1.problem,
        )
        qname[i], qkey[i] = m1.qname, m1.qname.lower()
        extra_lo[i] = base + len(extra)
        extra_n[i] = len(m1.answers)
        extra.extend(m1.answers)
    hi = np.cumsum(counts)
    lo = hi - counts
    lo = np.where(fast, lo, extra_lo)
    hi = np.where(fast, hi, extra_lo + extra_n)
    return DnsBatch(response, rcode, qtype, ttl, problem, qname, qkey, lo, hi, fast_addrs + extra, txid)
