"""The collector's own DNS parser: wire-format corner cases, and agreement with tshark.

Messages are crafted byte by byte (``tests/data/dnsgen.py``); the cross-check writes them
to a pcap and compares every field with a real ``tshark`` dissection of the same file.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowwarden.collectors.decode import APP_DNS, decode
from flowwarden.collectors.dnsparse import (
    MALFORMED,
    OK,
    TRUNCATED,
    DnsMessage,
    parse,
    payload_bounds,
    qtype_name,
    read_name,
)
from flowwarden.collectors.pcapfile import read_capture
from tests.data.dnsgen import Packet, encode_name, header, query, response, write_pcap


def p(msg: bytes) -> DnsMessage:
    m = parse(msg, 0, len(msg))
    assert m is not None
    return m


def test_query_name_type_and_flags() -> None:
    m = p(query("www.Example.com", "AAAA", ident=7))
    assert m == DnsMessage(False, 0, "www.Example.com", 28, (), -1, OK)


def test_response_answers_through_compression_pointers_with_smallest_ttl() -> None:
    m = p(response("api.example.com", answers=[("10.0.0.1", 300), ("10.0.0.2", 60), ("fd00::7", 120)]))
    assert m.response and m.rcode == 0 and m.qname == "api.example.com" and m.qtype == 1
    assert m.answers == ("10.0.0.1", "10.0.0.2", "fd00::7")
    assert m.ttl == 60 and m.problem == OK


def test_answer_with_a_full_owner_name_and_a_cname_before_it() -> None:
    q = encode_name("www.example.com") + struct.pack(">HH", 1, 1)
    target = encode_name("edge.cdn.example.net")
    cname = b"\xc0\x0c" + struct.pack(">HHIH", 5, 1, 30, len(target)) + target
    # The A record's owner is the CNAME target spelled through a pointer into the CNAME's rdata.
    owner_at = 12 + len(q) + 12
    a = struct.pack(">H", 0xC000 | owner_at) + struct.pack(">HHIH", 1, 1, 20, 4) + bytes([192, 0, 2, 9])
    # And one more A record whose owner name is written out in full.
    a2 = encode_name("edge.cdn.example.net") + struct.pack(">HHIH", 1, 1, 10, 4) + bytes([192, 0, 2, 10])
    m = p(header(1, 0x8180, 1, 3) + q + cname + a + a2)
    assert m.answers == ("192.0.2.9", "192.0.2.10") and m.ttl == 10 and m.problem == OK


def test_question_name_through_a_pointer_and_pointer_loops_end() -> None:
    # A pointer in the question pointing back into the header bytes is followed (and read).
    name = encode_name("a.b")
    msg = header(1, 0x0100, 1, 0) + name + struct.pack(">HH", 1, 1)
    assert p(msg).qname == "a.b"
    # A pointer to itself: a loop, cut at once (pointers must point backwards).
    loop = header(1, 0x0100, 1, 0) + b"\x01x\xc0\x0e" + struct.pack(">HH", 1, 1)
    m = p(loop)
    assert m.problem == MALFORMED and m.qname == "x"
    # Two pointers pointing at each other: forward one refused.
    ping = header(1, 0x0100, 1, 0) + b"\xc0\x0e\xc0\x0c" + struct.pack(">HH", 1, 1)
    assert p(ping).problem == MALFORMED


def test_a_chain_of_backward_pointers_is_bounded() -> None:
    # Each label ends in a pointer to the previous one: legal but long; the walk stops.
    body = b"\x01a\x00"
    for i in range(40):
        body += b"\x01a" + struct.pack(">H", 0xC000 | (12 + 3 * i if i else 12))
    data = header(1, 0x0100, 1, 0) + body
    name, _, problem = read_name(data, len(data) - 4, 0, len(data))
    assert problem in (OK, MALFORMED) and len(name) < 600


def test_truncated_messages_never_raise_and_say_so() -> None:
    full = response("truncated.example.org", answers=[("10.1.2.3", 5)])
    assert parse(full, 0, 5) is None  # not even a header
    for cut in range(12, len(full)):
        m = parse(full, 0, cut)
        assert m is not None
        assert m.problem in (TRUNCATED, OK)
        if cut < len(full):
            assert m.problem == TRUNCATED or m.answers == ()
    head = parse(full, 0, 20)
    assert head is not None and head.response and head.problem == TRUNCATED


def test_edns_opt_record_is_ignored_and_rcode_kept() -> None:
    q = p(query("example.com", edns=True))
    assert q.qname == "example.com" and q.problem == OK
    r = p(response("nx.example.com", rcode=3, edns=True))
    assert r.rcode == 3 and r.answers == () and r.problem == OK


def test_txt_and_null_qtypes() -> None:
    t = p(response("x.t.example", "TXT", rdata=b"\x05hello"))
    n = p(query("y.t.example", "NULL"))
    assert (qtype_name(t.qtype), qtype_name(n.qtype)) == ("TXT", "NULL")
    assert t.answers == () and t.ttl == -1
    assert qtype_name(4242) == "TYPE4242"


def test_nxdomain_response() -> None:
    m = p(response("missing.example.com", rcode=3))
    assert m.response and m.rcode == 3 and m.qname == "missing.example.com"


def test_binary_labels_are_escaped_reversibly() -> None:
    m = p(query(b"a\x00b\xff.c.d\\e.f"))
    assert m.qname == "a\\000b\\255.c.d\\092e.f"
    inner_dot = header(1, 0x0100, 1, 0) + b"\x03a.b\x01c\x00" + struct.pack(">HH", 1, 1)
    assert p(inner_dot).qname == "a\\046b.c"


def test_reserved_label_types_and_overlong_names_are_malformed() -> None:
    ext = header(1, 0x0100, 1, 0) + b"\x41abc\x00" + struct.pack(">HH", 1, 1)
    assert p(ext).problem == MALFORMED
    long = header(1, 0x0100, 1, 0) + (b"\x3f" + b"a" * 63) * 5 + b"\x00" + struct.pack(">HH", 1, 1)
    assert p(long).problem == MALFORMED


def test_no_question_and_counts_that_lie() -> None:
    assert p(header(1, 0x0100, 0, 0)).problem == OK
    assert p(header(1, 0x8180, 0, 2)).problem == MALFORMED
    lie = header(1, 0x8180, 1, 5) + encode_name("a.example") + struct.pack(">HH", 1, 1)
    m = p(lie)
    assert m.problem == TRUNCATED and m.qname == "a.example"


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    m = parse(data, 0, len(data))
    assert m is None or m.problem in (OK, TRUNCATED, MALFORMED)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=200), st.integers(0, 200))
def test_corrupted_responses_never_raise(noise: bytes, at: int) -> None:
    msg = bytearray(response("a.b.example.com", answers=[("10.0.0.1", 1), ("fd00::1", 2)]))
    msg[at % len(msg) : at % len(msg) + len(noise)] = noise
    parse(bytes(msg), 0, len(msg))


def test_payload_bounds_for_udp_tcp_padding_and_bare_acks(tmp_path: Path) -> None:
    q = query("pad.example")
    pkts = [
        Packet(1.0, "10.0.0.1", 1111, "10.0.0.2", 53, q),
        Packet(1.1, "10.0.0.1", 2222, "10.0.0.2", 53, q, tcp=True),
        Packet(1.2, "10.0.0.1", 2222, "10.0.0.2", 53, b"", tcp=True),  # a bare ACK: no message
    ]
    pcap = write_pcap(tmp_path / "b.pcap", pkts)
    batch = next(iter(read_capture(pcap)))
    dec = decode(batch)
    assert (dec.app == APP_DNS).all()
    start, end = payload_bounds(batch.buf, dec.l3, batch.off + batch.caplen, dec.proto)
    data = batch.buf.tobytes()
    assert parse(data, int(start[0]), int(end[0])) == p(q)
    assert parse(data, int(start[1]), int(end[1])) == p(q)
    assert end[2] <= start[2]


def test_ethernet_padding_is_not_part_of_the_message(tmp_path: Path) -> None:
    q = header(9, 0x0100, 0, 0)  # a 12-byte message in a frame with trailer bytes after it
    pcap = tmp_path / "pad.pcap"
    frame = bytearray(
        write_pcap(tmp_path / "tmp.pcap", [Packet(1.0, "10.0.0.1", 1, "10.0.0.2", 53, q)]).read_bytes()
    )
    frame += b"\xee" * 4  # trailer bytes after the UDP datagram
    size = len(frame) - 24 - 16  # the pcap file header, then one record header
    struct.pack_into("<II", frame, 24 + 8, size, size)
    pcap.write_bytes(bytes(frame))
    batch = next(iter(read_capture(pcap)))
    dec = decode(batch)
    start, end = payload_bounds(batch.buf, dec.l3, batch.off + batch.caplen, dec.proto)
    assert int(end[0] - start[0]) == 12


def _tshark_fields(pcap: Path) -> list[list[str]]:
    fields = ["dns.flags.response", "dns.qry.name", "dns.qry.type", "dns.flags.rcode", "dns.a", "dns.aaaa"]
    args = ["tshark", "-n", "-r", str(pcap), "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a"]
    for f in fields:
        args += ["-e", f]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
    return [line.split("\t") for line in out.splitlines()]


@pytest.mark.integration
def test_agrees_with_tshark_on_every_field(tmp_path: Path) -> None:
    msgs = [
        query("www.example.com"),
        response("www.example.com", answers=[("93.184.216.34", 300)]),
        query("v6.example.org", "AAAA", edns=True),
        response("v6.example.org", "AAAA", answers=[("2001:db8::1", 60), ("2001:db8::2", 30)], edns=True),
        query("x.t.example", "TXT"),
        response("x.t.example", "TXT", rdata=b"\x03abc"),
        query("y.t.example", "NULL"),
        response("missing.example.net", rcode=3),
        query("kubernetes.default.svc.cluster.local"),
    ]
    pkts = [Packet(10.0 + i, "10.0.0.1", 3333, "10.0.0.53", 53, m) for i, m in enumerate(msgs)]
    pcap = write_pcap(tmp_path / "x.pcap", pkts)
    ref = _tshark_fields(pcap)
    assert len(ref) == len(msgs)
    batch = next(iter(read_capture(pcap)))
    dec = decode(batch)
    start, end = payload_bounds(batch.buf, dec.l3, batch.off + batch.caplen, dec.proto)
    data = batch.buf.tobytes()
    for i, row in enumerate(ref):
        m = parse(data, int(start[i]), int(end[i]))
        assert m is not None and m.problem == OK
        resp, name, qtype, rcode, a, aaaa = row
        assert m.response == (resp in ("1", "True"))
        assert m.qname == name
        assert m.qtype == int(qtype)
        assert m.rcode == int(rcode or 0)
        want = [x for x in a.split(",") if x] + [x for x in aaaa.split(",") if x]
        assert sorted(m.answers) == sorted(want)
    assert np.all(end > start)


def _corpus(seed: int) -> list[bytes]:
    """Well-formed messages of every shape, then the same cut and corrupted at random."""
    import random

    rng = random.Random(seed)
    base = [
        query("www.example.com"),
        query("MiXeD.Case.Example.org", "AAAA", edns=True),
        query(b"bin\x00\xff.t.example", "NULL"),
        response("api.example.com", answers=[("10.0.0.1", 300), ("10.0.0.2", 60), ("fd00::7", 0xFFFFFFFF)]),
        response("nx.example.com", rcode=3, edns=True),
        response("x.t.example", "TXT", rdata=b"\x05hello"),
        header(1, 0x0100, 0, 0),
        header(1, 0x8180, 0, 2),
        header(1, 0x0100, 1, 0) + b"\xc0\x0c" + struct.pack(">HH", 1, 1),
        header(1, 0x8180, 2, 1) + encode_name("a.b") * 2 + b"\x00\x01\x00\x01" * 2,
    ]
    out = list(base)
    for _ in range(400):
        m = bytearray(rng.choice(base))
        if rng.random() < 0.5:
            m = m[: rng.randint(0, len(m))]
        for _ in range(rng.randint(0, 3)):
            if m:
                m[rng.randrange(len(m))] = rng.randrange(256)
        out.append(bytes(m))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_batch_parser_agrees_with_the_scalar_one(seed: int) -> None:
    from flowwarden.collectors.dnsparse import parse_batch

    msgs = _corpus(seed)
    data = b"".join(msgs)
    ends = np.cumsum([len(m) for m in msgs])
    starts = ends - np.array([len(m) for m in msgs])
    batch = parse_batch(data, starts, ends)
    for i, m in enumerate(msgs):
        want = parse(data, int(starts[i]), int(ends[i]))
        got = batch.message(i)
        if want is None:
            assert got.problem == TRUNCATED and got.qname == "" and got.qtype == -1
        else:
            assert got == want, (i, m)
        assert batch.qkey[i] == got.qname.lower()
        assert batch.txid[i] == (int.from_bytes(m[:2], "big") if len(m) >= 2 else -1)
    few = parse_batch(data, starts[:5], ends[:5])  # the scalar path reads the same IDs
    assert few.txid.tolist() == batch.txid[:5].tolist()
