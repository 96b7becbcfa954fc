"""Community ID v1 against the spec's test vectors and the reference ``communityid`` package.

The package (corelight's pycommunityid) computes one tuple at a time; ours computes a batch
in numpy and hashlib. Records metered by the flow table must carry their tuple's ID, also
after slots are freed and reused. Captures of real traffic: tests/integration/test_collect_community_id.py.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import communityid
import dpkt
import numpy as np
import pandas as pd
import pyarrow as pa
import pydantic
import pytest

from flowwarden.collectors import meter_capture
from flowwarden.collectors.community_id import ICMP_COUNTERPARTS, ICMPV6_COUNTERPARTS, community_ids
from flowwarden.collectors.decode import decode
from flowwarden.collectors.flowtable import FlowTable, FlowTableConfig
from flowwarden.collectors.pcapfile import read_capture
from flowwarden.records import FLOW_SCHEMA
from flowwarden.settings import Settings
from flowwarden.wire import ADDED_IN, ARROW_SCHEMA, MAGIC, decode_flows
from tests.data.make_overlay_pcaps import _a, write_pcap
from tests.data.synth import synth_capture
from tests.unit.test_wire import sample

# corelight/community-id-spec baseline/baseline_deflt.json and baseline_seed1.json: the
# tuples (proto, source, destination, source port or ICMP type, destination port or ICMP
# code) and their IDs with seeds 0 and 1.
SPEC_TUPLES = [
    (58, "fe80::200:86ff:fe05:80da", "fe80::260:97ff:fe07:69ea", 135, 136),
    (58, "fe80::260:97ff:fe07:69ea", "fe80::200:86ff:fe05:80da", 136, 135),
    (58, "fe80::260:97ff:fe07:69ea", "fe80::200:86ff:fe05:80da", 135, 136),
    (58, "fe80::200:86ff:fe05:80da", "fe80::260:97ff:fe07:69ea", 136, 135),
    (58, "3ffe:501:1800:2345::2", "3ffe:507:0:1:200:86ff:fe05:80da", 3, 0),
    (58, "3ffe:501:410:0:2c0:dfff:fe47:33e", "3ffe:507:0:1:200:86ff:fe05:80da", 1, 4),
    (58, "3ffe:507:0:1:200:86ff:fe05:80da", "3ffe:501:0:1001::2", 128, 129),
    (58, "3ffe:501:0:1001::2", "3ffe:507:0:1:200:86ff:fe05:80da", 129, 128),
    (58, "fe80::200:86ff:fe05:80da", "ff02::2", 133, 134),
    (58, "fe80::260:97ff:fe07:69ea", "ff02::1", 134, 133),
    (1, "192.168.0.89", "192.168.0.1", 8, 0),
    (1, "192.168.0.1", "192.168.0.89", 0, 8),
    (1, "10.0.0.1", "10.0.0.2", 11, 0),
    (6, "2001:470:e5bf:dead:4957:2174:e82c:4887", "2607:f8b0:400c:c03::1a", 63943, 25),
    (6, "2607:f8b0:400c:c03::1a", "2001:470:e5bf:dead:4957:2174:e82c:4887", 25, 63943),
    (132, "192.168.170.8", "192.168.170.56", 7, 7),
    (132, "192.168.170.56", "192.168.170.8", 7, 7),
    (6, "128.232.110.120", "66.35.250.204", 34855, 80),
    (6, "66.35.250.204", "128.232.110.120", 80, 34855),
    (17, "192.168.1.52", "8.8.8.8", 54585, 53),
    (17, "8.8.8.8", "192.168.1.52", 53, 54585),
    (46, "10.1.12.1", "10.1.12.2", 0, 0),
    (46, "10.1.12.2", "10.1.12.1", 0, 0),
]
SPEC_IDS = {
    0: [
        "1:dGHyGvjMfljg6Bppwm3bg0LO8TY=", "1:dGHyGvjMfljg6Bppwm3bg0LO8TY=", "1:zavyT/cezQr1fmImYCwYnMXbgck=",
        "1:zavyT/cezQr1fmImYCwYnMXbgck=", "1:2ObVBgIn28oZvibYZhZMBgh7WdQ=", "1:hLZd0XGWojozrvxqE0dWB1iM6R0=",
        "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg=", "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg=", "1:hO+sN4H+MG5MY/8hIrXPqc4ZQz0=",
        "1:pkvHqCL88/tg1k4cPigmZXUtL00=", "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=", "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=",
        "1:YHxtAirCG//0OzkcVAukqKQN9xM=", "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=", "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=",
        "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs=", "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs=", "1:LQU9qZlK+B5F3KDmev6m5PMibrg=",
        "1:LQU9qZlK+B5F3KDmev6m5PMibrg=", "1:d/FP5EW3wiY1vCndhwleRRKHowQ=", "1:d/FP5EW3wiY1vCndhwleRRKHowQ=",
        "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw=", "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw=",
    ],
    1: [
        "1:kHa1FhMYIT6Ym2Vm2AOtoOARDzY=", "1:kHa1FhMYIT6Ym2Vm2AOtoOARDzY=", "1:2hSqmsDZ2kdcY9kbiUzOEBic0iM=",
        "1:2hSqmsDZ2kdcY9kbiUzOEBic0iM=", "1:lVEtCZpYu84Xqaa++3lXFyuu2n4=", "1:W8MHwXpWzpoSTD+cGcaJr4u0ys8=",
        "1:GfZxjAkDk2MkegpBYHV6tadtFXQ=", "1:GfZxjAkDk2MkegpBYHV6tadtFXQ=", "1:L7Ka0ZMYu+J3bL4ulW2PrqyXNo8=",
        "1:K/ee5UCqAMAQXDorP5nSa2CGLjc=", "1:03g6IloqVBdcZlPyX8r0hgoE7kA=", "1:03g6IloqVBdcZlPyX8r0hgoE7kA=",
        "1:XjUibYHaafLQ3pxQeiMI8g25q20=", "1:eJYTW6AOzFLlSUoESovMjnu7rMw=", "1:eJYTW6AOzFLlSUoESovMjnu7rMw=",
        "1:5w3ZRjeKBzqT3zsaEECDGjUbYeg=", "1:5w3ZRjeKBzqT3zsaEECDGjUbYeg=", "1:3V71V58M3Ksw/yuFALMcW0LAHvc=",
        "1:3V71V58M3Ksw/yuFALMcW0LAHvc=", "1:Q9We8WO3piVF8yEQBNJF4uiSVrI=", "1:Q9We8WO3piVF8yEQBNJF4uiSVrI=",
        "1:rYir8gphR31noO9iDRQmF/BteEI=", "1:rYir8gphR31noO9iDRQmF/BteEI=",
    ],
}  # fmt: skip


def _halves(text: str) -> tuple[int, int]:
    """An address as the decoder keeps it: the 16-byte form's halves, IPv4 as ::ffff:a.b.c.d."""
    ip = ipaddress.ip_address(text)
    v = int(ip) if ip.version == 6 else (0xFFFF << 32) | int(ip)
    return v >> 64, v & (2**64 - 1)


def ids_of(rows: list[tuple[int, str, str, int, int]], seed: int = 0) -> list[str]:
    """Ours, for (proto, source, destination, source port or type, destination port or code) rows."""
    src = np.array([_halves(r[1]) for r in rows], dtype=np.uint64).reshape(-1, 2)
    dst = np.array([_halves(r[2]) for r in rows], dtype=np.uint64).reshape(-1, 2)
    out = community_ids(
        src[:, 0], src[:, 1], dst[:, 0], dst[:, 1],
        np.array([r[0] for r in rows]), np.array([r[3] for r in rows]), np.array([r[4] for r in rows]),
        seed=seed,
    )  # fmt: skip
    return [x.decode() for x in out]


def reference(proto: int, src: str, dst: str, sport: int, dport: int, seed: int = 0) -> str:
    """The communityid package's ID (ports only for the protocols that have them)."""
    if proto in communityid.PORT_PROTOS:
        tpl = communityid.FlowTuple(proto, src, dst, sport, dport)
    else:
        tpl = communityid.FlowTuple(proto, src, dst)
    out = communityid.CommunityID(seed).calc(tpl)
    assert out is not None
    return str(out)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_spec_test_vectors(seed: int) -> None:
    want = SPEC_IDS[seed]
    assert ids_of(SPEC_TUPLES, seed) == want
    assert [reference(*r, seed=seed) for r in SPEC_TUPLES] == want


def test_random_tuples_match_the_reference() -> None:
    """Both families, every protocol kind, ICMP request/reply and one-way types, equal
    addresses (ordered by port) and equal endpoints, random seeds."""
    rng = np.random.default_rng(20)
    rows: list[tuple[int, str, str, int, int]] = []
    icmp_types = [*ICMP_COUNTERPARTS, 3, 5, 11, 12, 255]
    icmp6_types = [*ICMPV6_COUNTERPARTS, 1, 2, 3, 4, 137, 143, 255]
    pool4 = [str(ipaddress.IPv4Address(int(x))) for x in rng.integers(0, 2**32, 40)] + ["10.0.0.1"]
    pool6 = [str(ipaddress.IPv6Address(int(x) << 64 | 7)) for x in rng.integers(0, 2**63, 40)] + ["::1"]
    for _ in range(3000):
        proto = int(rng.choice([6, 17, 132, 1, 58, 47, 50, 46]))
        pool = pool6 if proto == 58 or (proto != 1 and rng.random() < 0.4) else pool4
        src = pool[int(rng.integers(len(pool)))]
        dst = src if rng.random() < 0.1 else pool[int(rng.integers(len(pool)))]
        if proto in (1, 58):
            kinds = icmp_types if proto == 1 else icmp6_types
            sport, dport = int(rng.choice(kinds)), int(rng.integers(0, 16))
        elif rng.random() < 0.1:
            sport = dport = int(rng.integers(0, 65536))
        else:
            sport, dport = (int(x) for x in rng.integers(0, 65536, 2))
        rows.append((proto, src, dst, sport, dport))
    for seed in (0, 1, 65535, int(rng.integers(0, 65536))):
        got = ids_of(rows, seed)
        want = [reference(*r, seed=seed) for r in rows]
        bad = [(r, g, w) for r, g, w in zip(rows, got, want, strict=True) if g != w]
        assert not bad, bad[:3]


def test_an_empty_batch_and_a_bad_seed() -> None:
    empty = np.zeros(0, dtype=np.uint64)
    assert len(community_ids(empty, empty, empty, empty, empty, empty, empty)) == 0
    with pytest.raises(ValueError, match="0-65535"):
        ids_of([(6, "10.0.0.1", "10.0.0.2", 1, 2)], seed=65536)


def record_tuples(df: pd.DataFrame) -> list[tuple[int, str, str, int, int]]:
    """(proto, src_ip, dst_ip, src_port, dst_port) of each record."""
    cols = [df[c].tolist() for c in ("proto", "src_ip", "dst_ip", "src_port", "dst_port")]
    return [(int(p), str(s), str(d), int(sp), int(dp)) for p, s, d, sp, dp in zip(*cols, strict=True)]


def _tuple_ids(df: pd.DataFrame, seed: int = 0) -> list[str]:
    return [reference(*t, seed=seed) for t in record_tuples(df)]


@pytest.mark.parametrize("seed", [0, 7])
def test_every_record_carries_its_tuples_id_when_slots_are_reused(tmp_path: Path, seed: int) -> None:
    """Thousands of flows through a small table, fed in small chunks: ended flows free their
    slots for new ones, and each flow is named once, at its first record."""
    pcap = synth_capture(tmp_path / "s.pcap", packets=20_000, flows=2_000, duration_s=60, seed=3)
    table = FlowTable(FlowTableConfig(max_flows=100, idle_timeout_s=3.0, community_id_seed=seed))
    batches = read_capture(pcap, chunk_bytes=7919)
    parts = [frame for batch in batches for frame in table.process(decode(batch))]
    df = pd.concat([*parts, table.flush()], ignore_index=True)
    assert table.evicted > 0 and len(parts) > 100 and df["uid"].nunique() >= 2_000
    assert df["community_id"].tolist() == _tuple_ids(df, seed)


def test_the_seed_comes_from_the_collector_settings(tmp_path: Path) -> None:
    pcap = synth_capture(tmp_path / "s.pcap", packets=200, flows=20, seed=4)
    df, _ = meter_capture(pcap, Settings(collector={"node": "n", "app_names": False, "community_id_seed": 9}))
    assert len(df) and df["community_id"].tolist() == _tuple_ids(df, 9)


def _icmp_capture(path: Path) -> list[tuple[int, str, str, int, int]]:
    """Ping (v4, v6), a ping seen from its reply, one-way ICMP errors, neighbour discovery
    and an SCTP packet; returns each flow's first packet as (proto, src, dst, type or source
    port, code or destination port)."""
    first: list[tuple[int, str, str, int, int]] = []
    frames = []

    def add(proto: int, src: str, dst: str, kind: int, code: int, *, first_of_flow: bool = True) -> None:
        if proto == 1:
            body = dpkt.icmp.ICMP(type=kind, code=code, data=b"\0" * 8)
            ip = dpkt.ip.IP(src=_a(src), dst=_a(dst), p=1, ttl=64, data=body)
            frames.append(b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x08\x00" + bytes(ip))
        else:
            ip6 = dpkt.ip6.IP6(src=_a(src), dst=_a(dst), nxt=proto, hlim=64)
            payload = (
                bytes(dpkt.icmp6.ICMP6(type=kind, code=code, data=b"\0" * 8))
                if proto == 58
                else (kind.to_bytes(2, "big") + code.to_bytes(2, "big") + b"\0" * 8)
            )
            ip6.data, ip6.plen = payload, len(payload)
            frames.append(b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x86\xdd" + bytes(ip6))
        if first_of_flow:
            first.append((proto, src, dst, kind, code))

    add(1, "10.1.0.5", "10.1.0.9", 8, 0)
    add(1, "10.1.0.9", "10.1.0.5", 0, 0, first_of_flow=False)
    add(1, "10.1.0.7", "10.1.0.2", 0, 0)  # the request was missed: the reply names the flow
    add(1, "10.1.0.1", "10.1.0.6", 3, 3)  # port unreachable, one-way
    add(1, "10.1.0.1", "10.1.0.8", 11, 0)  # time exceeded, one-way
    add(58, "fd00::9", "fd00::5", 128, 0)
    add(58, "fd00::5", "fd00::9", 129, 0, first_of_flow=False)
    add(58, "fe80::2", "fe80::1", 135, 0)
    add(58, "fd00::1", "fd00::3", 1, 4)  # destination unreachable, one-way
    add(132, "fd00::4", "fd00::6", 38412, 36412)  # SCTP (its common header): named with its ports
    write_pcap(path, tuple(frames))
    return first


def test_icmp_flows_are_named_by_their_first_packets_type_and_code(tmp_path: Path) -> None:
    first = _icmp_capture(tmp_path / "icmp.pcap")
    df, _ = meter_capture(tmp_path / "icmp.pcap", Settings(collector={"node": "n", "app_names": False}))
    got = {t[:3]: cid for t, cid in zip(record_tuples(df), df["community_id"].tolist(), strict=True)}
    assert len(got) == len(first) == len(df)
    for proto, src, dst, kind, code in first:
        assert got[(proto, src, dst)] == reference(proto, src, dst, kind, code), (proto, src, dst)


def test_the_seed_setting_is_validated() -> None:
    assert Settings().collector.community_id_seed == 0
    for bad in (-1, 65536, "x"):
        with pytest.raises(pydantic.ValidationError, match="community_id_seed"):
            Settings(collector={"community_id_seed": bad})


def test_a_version_2_message_decodes_with_no_community_id() -> None:
    """Messages in flight from collectors not yet upgraded carry no ID: it reads as ""."""
    df = sample()
    v2_columns = [c for c in FLOW_SCHEMA if c not in ADDED_IN[3]]
    table = pa.Table.from_pandas(
        df[v2_columns], schema=pa.schema([ARROW_SCHEMA.field(c) for c in v2_columns]), preserve_index=False
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    out = decode_flows(MAGIC + bytes([2]) + sink.getvalue().to_pybytes())
    assert (out["community_id"] == "").all() and list(out.columns) == list(FLOW_SCHEMA)
    pd.testing.assert_frame_equal(out[v2_columns], df[v2_columns])
