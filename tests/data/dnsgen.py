"""DNS messages and captures crafted byte by byte, for the DNS parser's tests and benchmark.

:func:`query` and :func:`response` build wire-format messages (RFC 1035) with exactly the
features a test needs (compression pointers, EDNS OPT records, TXT/NULL types, NXDOMAIN);
:func:`write_pcap` wraps them in Ethernet/IPv4/UDP (or TCP with the 2-byte length prefix)
frames; :func:`dns_heavy_capture` writes a resolver's day in miniature: many clients
asking cluster and Internet names, plus a tunnel pushing thousands of queries through one
5-tuple. Plain ``struct``, no packet library, so every byte is visible here.
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

QTYPE = {"A": 1, "NS": 2, "CNAME": 5, "NULL": 10, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "OPT": 41}


def encode_name(name: str | bytes) -> bytes:
    """Uncompressed wire form of a dotted name (labels of raw bytes allowed)."""
    raw = name.encode() if isinstance(name, str) else name
    out = b""
    for label in raw.strip(b".").split(b".") if raw.strip(b".") else []:
        out += bytes([len(label)]) + label
    return out + b"\x00"


def header(ident: int, flags: int, qd: int, an: int, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack(">HHHHHH", ident, flags, qd, an, ns, ar)


def opt_record(udp_size: int = 1232, ext_rcode: int = 0) -> bytes:
    """An EDNS(0) OPT pseudo-record (RFC 6891) for the additional section."""
    return b"\x00" + struct.pack(">HHIH", QTYPE["OPT"], udp_size, ext_rcode << 24, 0)


def query(name: str | bytes, qtype: str = "A", *, ident: int = 1, edns: bool = False) -> bytes:
    """A recursive query for ``name``."""
    body = encode_name(name) + struct.pack(">HH", QTYPE[qtype], 1)
    return header(ident, 0x0100, 1, 0, 0, int(edns)) + body + (opt_record() if edns else b"")


def response(
    name: str | bytes,
    qtype: str = "A",
    *,
    ident: int = 1,
    rcode: int = 0,
    answers: Sequence[tuple[str, int]] = (),
    edns: bool = False,
    rdata: bytes | None = None,
) -> bytes:
    """A response echoing the question; ``answers`` are (address, ttl) A/AAAA records whose
    owner name is a compression pointer to the question (offset 12), as servers write it.
    ``rdata`` instead adds one record of ``qtype`` with that data (TXT, NULL)."""
    body = encode_name(name) + struct.pack(">HH", QTYPE[qtype], 1)
    records = b""
    count = 0
    for addr, ttl in answers:
        fam, t = (socket.AF_INET6, "AAAA") if ":" in addr else (socket.AF_INET, "A")
        data = socket.inet_pton(fam, addr)
        records += b"\xc0\x0c" + struct.pack(">HHIH", QTYPE[t], 1, ttl, len(data)) + data
        count += 1
    if rdata is not None:
        records += b"\xc0\x0c" + struct.pack(">HHIH", QTYPE[qtype], 1, 60, len(rdata)) + rdata
        count += 1
    flags = 0x8180 | (rcode & 0xF)
    msg = header(ident, flags, 1, count, 0, int(edns)) + body + records
    return msg + (opt_record() if edns else b"")


@dataclass(frozen=True)
class Packet:
    """One DNS message on the wire: endpoints, time and payload."""

    ts: float
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes
    tcp: bool = False


def _checksum_free_ipv4(src: str, dst: str, proto: int, l4: bytes) -> bytes:
    total = 20 + len(l4)
    return (
        struct.pack(">BBHHHBBH", 0x45, 0, total, 0, 0x4000, 64, proto, 0)
        + socket.inet_aton(src)
        + socket.inet_aton(dst)
        + l4
    )


def frame(p: Packet) -> bytes:
    """Ethernet + IPv4 + UDP (or TCP with the DNS length prefix) around ``p.payload``."""
    if p.tcp:
        data = struct.pack(">H", len(p.payload)) + p.payload
        l4 = struct.pack(">HHIIBBHHH", p.sport, p.dport, 1, 1, 0x50, 0x18, 65535, 0, 0) + data
        ip = _checksum_free_ipv4(p.src, p.dst, 6, l4)
    else:
        l4 = struct.pack(">HHHH", p.sport, p.dport, 8 + len(p.payload), 0) + p.payload
        ip = _checksum_free_ipv4(p.src, p.dst, 17, l4)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip


def write_pcap(path: str | Path, packets: Iterable[Packet], snaplen: int = 65535) -> Path:
    """A classic pcap (Ethernet, microseconds) of the packets, each cut at ``snaplen``."""
    path = Path(path)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, 1))
        for p in packets:
            raw = frame(p)
            cap = raw[:snaplen]
            sec = int(p.ts)
            fh.write(struct.pack("<IIII", sec, round((p.ts - sec) * 1e6), len(cap), len(raw)) + cap)
    return path


def tunnel_name(rng: random.Random, domain: str = "t.tunnel.example") -> str:
    """An iodine-like name: 100-200 characters of base32 in labels of at most 63."""
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    body = "".join(rng.choice(alphabet) for _ in range(rng.randint(100, 200)))
    return ".".join(body[i : i + 63] for i in range(0, len(body), 63)) + "." + domain


def tunnel_packets(
    n: int, *, t0: float = 1.7e9, gap_s: float = 0.01, seed: int = 3, client: str = "10.244.1.13"
) -> list[Packet]:
    """``n`` NULL queries with distinct names through ONE 5-tuple, each answered."""
    rng = random.Random(seed)
    out: list[Packet] = []
    for i in range(n):
        name = tunnel_name(rng)
        ts = t0 + i * gap_s
        out.append(Packet(ts, client, 40000, "10.96.0.10", 53, query(name, "NULL", ident=i & 0xFFFF)))
        data = bytes(rng.getrandbits(8) for _ in range(32))
        ans = response(name, "NULL", ident=i & 0xFFFF, rdata=data)
        out.append(Packet(ts + 0.001, "10.96.0.10", 53, client, 40000, ans))
    return out


CLUSTER_NAMES = [
    f"{s}.{ns}.svc.cluster.local" for s in ("api", "db", "cart", "web") for ns in ("shop", "pay")
]
INTERNET_NAMES = ["www.example.com", "api.github.com", "s3.amazonaws.com", "pypi.org", "bbc.co.uk"]


def dns_heavy_capture(path: str | Path, *, packets: int = 200_000, seed: int = 5, t0: float = 1.7e9) -> Path:
    """A resolver's traffic: client flows of 1-4 lookups (A and AAAA, answered, some
    NXDOMAIN) over many source ports, and one tunnel flow with a tenth of the queries."""
    rng = random.Random(seed)
    pkts: list[Packet] = tunnel_packets(packets // 20, t0=t0, gap_s=60.0 / max(packets // 20, 1), seed=seed)
    names = CLUSTER_NAMES + INTERNET_NAMES
    ident = 0
    while len(pkts) < packets:
        client = f"10.244.{rng.randint(0, 15)}.{rng.randint(2, 250)}"
        port = rng.randint(1024, 65535)
        ts = t0 + rng.uniform(0, 60)
        for _ in range(rng.randint(1, 4)):
            name = rng.choice(names)
            qtype = rng.choice(("A", "AAAA"))
            ident = (ident + 1) & 0xFFFF
            pkts.append(
                Packet(ts, client, port, "10.96.0.10", 53, query(name, qtype, ident=ident, edns=True))
            )
            if rng.random() < 0.1:
                ans = response(name, qtype, ident=ident, rcode=3, edns=True)
            else:
                addr = f"10.96.{rng.randint(0, 255)}.{rng.randint(1, 254)}" if qtype == "A" else "fd00::1"
                ans = response(name, qtype, ident=ident, answers=[(addr, 30)], edns=True)
            pkts.append(Packet(ts + 0.0005, "10.96.0.10", 53, client, port, ans))
            ts += 0.002
    pkts.sort(key=lambda p: p.ts)
    return write_pcap(path, pkts, snaplen=512)
