"""Community IDs of records metered from real captures, against the reference package and tshark.

The golden captures (``tests/data/pcaps``, real traffic) and the overlay captures: every
record's ``community_id`` is the ``communityid`` package's for its tuple; an ICMP flow's,
for the type and code of its first packet as tshark reads it. And tshark's own Community ID
dissector, packet by packet, gives the same IDs (seeds 0 and 1).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest

from flowwarden.collectors import meter_capture
from flowwarden.settings import Settings
from tests.unit.test_community_id import record_tuples, reference

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"
GOLDEN = sorted(p for p in (DATA / "pcaps").iterdir() if p.suffix in (".pcap", ".pcapng"))
OVERLAYS = sorted((DATA / "overlays").glob("*.pcap"))
ICMP = (1, 58)


def _metered(path: Path, seed: int = 0) -> pd.DataFrame:
    df, report = meter_capture(path, Settings(collector={"node": "golden", "community_id_seed": seed}))
    assert report.read_error == "" and len(df)
    return df


def _tshark(path: Path, *args: str) -> list[list[str]]:
    out = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "separator=\t", *args],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    return [line.split("\t") for line in out.splitlines()]


def _first_icmp_packets(path: Path) -> dict[tuple[int, frozenset[str]], tuple[str, str, int, int]]:
    """The first ICMP/ICMPv6 packet between each pair of addresses: (src, dst, type, code).
    An error message quotes the packet it is about: only the outer header's fields count."""
    fields = ["ip.src", "ip.dst", "ipv6.src", "ipv6.dst"] + [
        f"{p}.{f}" for p in ("icmp", "icmpv6") for f in ("type", "code")
    ]
    rows = _tshark(path, "-Y", "icmp || icmpv6", *[a for f in fields for a in ("-e", f)])
    first: dict[tuple[int, frozenset[str]], tuple[str, str, int, int]] = {}
    for row in rows:
        v = [x.split(",")[0] for x in row]
        v6 = v[6] != ""
        src, dst = (v[2], v[3]) if v6 else (v[0], v[1])
        kind, code = (int(v[6]), int(v[7])) if v6 else (int(v[4]), int(v[5]))
        first.setdefault((58 if v6 else 1, frozenset((src, dst))), (src, dst, kind, code))
    return first


@pytest.mark.parametrize("path", GOLDEN + OVERLAYS, ids=lambda p: p.name)
def test_every_record_carries_the_reference_id_of_its_tuple(path: Path) -> None:
    df = _metered(path)
    first = _first_icmp_packets(path) if df["proto"].isin(ICMP).any() else {}
    for (proto, src, dst, sport, dport), cid in zip(
        record_tuples(df), df["community_id"].tolist(), strict=True
    ):
        if proto not in ICMP:
            assert cid == reference(proto, src, dst, sport, dport), (proto, src, dst, sport, dport)
            continue
        p_src, p_dst, kind, code = first[(proto, frozenset((src, dst)))]
        assert (p_src, p_dst) == (src, dst), "the initiator sent the flow's first packet"
        assert cid == reference(proto, src, dst, kind, code), (proto, src, dst, kind, code)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.name)
def test_tshark_computes_the_same_ids(path: Path, seed: int) -> None:
    """Each record's ID is one tshark gives its packets, and every IP packet's ID is a record's."""
    df = _metered(path, seed)
    pref = f"communityid.seed:{seed}"
    rows = _tshark(path, "--enable-protocol", "communityid", "-o", pref, "-e", "communityid")
    packets = {r[0] for r in rows if r[0]}
    records = set(df["community_id"])
    assert records <= packets
    assert packets <= records
