"""The interval structures behind the guardrails and the nftables merge agree with a plain scan."""

from __future__ import annotations

import ipaddress
import random

from flowwarden.enforcement.backends.nftables import Element, merge, overlapping
from flowwarden.enforcement.intervals import HostIndex, Ranges, outermost
from flowwarden.enforcement.targets import Network


def random_net(rng: random.Random) -> Network:
    if rng.random() < 0.8:
        prefix = rng.choice([8, 16, 20, 24, 28, 30, 32, 32, 32])
        addr = ipaddress.IPv4Address(rng.randrange(2**32))
        return ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
    prefix = rng.choice([32, 64, 120, 128])
    return ipaddress.ip_network(f"{ipaddress.IPv6Address(rng.randrange(2**128))}/{prefix}", strict=False)


def test_first_overlap_is_the_first_a_scan_finds() -> None:
    rng = random.Random(16)
    for _ in range(50):
        items = [(random_net(rng), f"g{i % 4}") for i in range(rng.randrange(1, 40))]
        r = Ranges(items)
        for _ in range(40):
            q = random_net(rng)
            scan = next(((n, t) for n, t in items if n.version == q.version and n.overlaps(q)), None)
            hit = r.first_overlap(q)
            assert (None if hit is None else (hit.net, hit.tag)) == scan


def test_outermost_and_merge_keep_the_widest_of_nested_networks() -> None:
    nets = [ipaddress.ip_network(n) for n in ("10.0.0.0/24", "10.0.0.5/32", "10.0.1.0/24", "10.0.0.0/24")]
    assert [str(n) for n in outermost(nets)] == ["10.0.0.0/24", "10.0.1.0/24"]
    elements = [
        Element(("blocked_v4", "10.9.9.9", "10.0.0.5/32"), 50.0),
        Element(("blocked_v4", "10.9.9.9", "10.0.0.0/24"), 10.0),
        Element(("blocked_v4", "10.8.8.8", "10.0.0.5/32"), 20.0),
        Element(("quarantine_v4", "10.7.7.7", ""), 5.0),
    ]
    assert merge(elements) == {
        ("blocked_v4", "10.9.9.9", "10.0.0.0/24"): 50.0,
        ("blocked_v4", "10.8.8.8", "10.0.0.5/32"): 20.0,
        ("quarantine_v4", "10.7.7.7", ""): 5.0,
    }
    keys = list(merge(elements))
    wide = ("blocked_v4", "10.9.9.9", "10.0.0.0/24")
    assert overlapping(keys, [("blocked_v4", "10.9.9.9", "10.0.0.7/32")]) == [wide]
    assert overlapping(keys, [("quarantine_v4", "10.7.7.7", "")]) == [("quarantine_v4", "10.7.7.7", "")]


def test_host_index_finds_the_addresses_inside_a_network() -> None:
    index = HostIndex(["10.0.0.3", "10.0.1.1", "fd00::1", "garbage", "10.0.0.200"])
    assert index.inside(ipaddress.ip_network("10.0.0.0/24")) == ["10.0.0.3", "10.0.0.200"]
    assert index.inside(ipaddress.ip_network("fd00::/64")) == ["fd00::1"]
