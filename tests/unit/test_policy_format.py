"""The policy file format: validation (key paths, nearest names), semantics, round trip, matching sets."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from flowwarden.errors import ConfigError
from flowwarden.feeds import parse_feed
from flowwarden.feeds_index import AddressSet, NameSet, parse_addresses, parse_network
from flowwarden.policy import Policy, load_policy, parse_policy, parse_port

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "policy.yaml"


def test_the_readme_example_is_valid_and_round_trips() -> None:
    policy = load_policy(EXAMPLE)
    assert policy.declared and policy.rule_count() == 11
    assert parse_policy(yaml.safe_load(policy.to_yaml())) == policy


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"namespaces": {"web": {"egres": []}}},
            "unknown key 'namespaces.web.egres'; did you mean 'namespaces.web.egress'?",
        ),
        ({"namespaces": {"web": {"egress": [{"from": {}}]}}}, "unknown key 'namespaces.web.egress.0.from'"),
        (
            {"namespaces": {"web": {"ingress": [{"form": {}}]}}},
            "did you mean 'namespaces.web.ingress.0.from'?",
        ),
        (
            {"namespaces": {"web": {"egress": [{"ports": ["80/tpc"]}]}}},
            "unknown protocol 'tpc'; did you mean 'tcp'?",
        ),
        ({"namespaces": {"web": {"egress": [{"ports": ["70000"]}]}}}, "ports must be 1-65535"),
        ({"namespaces": {"web": {"egress": [{"to": {"domains": ["a.*.com"]}}]}}}, "is not a domain name"),
        ({"namespaces": {"web": {"egress": [{"to": {"cidrs": ["10.0.0.0/33"]}}]}}}, "is not a CIDR"),
        ({"namespaces": {"Web": {}}}, "is not a namespace name"),
        (
            {"namespaces": {"web": {"egress": [{"to": {"workloads": ["api"]}}]}}},
            "is not 'namespace/workload'",
        ),
        (
            {"cluster": {"etcd": {"from": {"control_plan": True}}}},
            "did you mean 'cluster.etcd.from.control_plane'?",
        ),
        ({"version": 2}, "'version'"),
    ],
)
def test_errors_name_the_key_path_and_the_fix(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_policy(data, "p.yaml")
    assert str(err.value).startswith("p.yaml: ") and message in str(err.value)


def test_empty_is_not_declared_but_an_empty_egress_list_is() -> None:
    assert not parse_policy(None).declared and not parse_policy({}).declared and not Policy().declared
    assert parse_policy({"namespaces": {"db": {"egress": []}}}).declared


def test_ports() -> None:
    assert parse_port("443").text() == "443" and parse_port("443/TCP").text() == "443/tcp"
    assert parse_port("8000-8100/udp") == (8000, 8100, 17)
    assert parse_port("icmp") == (0, 65535, 1)
    for bad in ("icmp/7", "/tcp", "tcp", "1-0", "0"):
        with pytest.raises(ValueError):
            parse_port(bad)


def test_address_set_v4_v6_most_specific_and_merged() -> None:
    nets = [parse_network(c) for c in ("10.0.0.0/8", "10.1.2.0/24", "10.1.3.0/24", "2001:db8::/32")]
    s = AddressSet((n[0], n[1], n[2], i) for i, n in enumerate(nets) if n is not None)
    got = s.contains(
        parse_addresses(pd.Series(["10.1.2.9", "11.0.0.1", "2001:db8::1", "2001:db9::1", "", "x"]))
    )
    assert got.tolist() == [True, False, True, False, False, False]
    assert s.lookup("10.1.2.9") == ("10.1.2.0/24", 1) and s.lookup("10.9.9.9") == ("10.0.0.0/8", 0)
    assert len(s.v4_start) == 1  # nested and adjacent networks merged into one interval
    assert parse_network("010.1.1.1") is None and parse_network("1.2.3") is None
    assert parse_network("10.1.2.3/8") == (4, 10 << 24, 8)


def test_name_set_exact_wildcard_and_parents() -> None:
    n = NameSet()
    n.add("evil.example", 0)
    n.add("*.stripe.com", 1)
    n.add("exact.example.org", 2, subdomains=False)
    assert n.lookup("EVIL.example.") == ("evil.example", 0)
    assert n.lookup("a.b.evil.example") == ("evil.example", 0)
    assert n.lookup("stripe.com") is None and n.lookup("api.stripe.com") == ("*.stripe.com", 1)
    assert n.lookup("x.exact.example.org") is None and n.lookup("exact.example.org") == (
        "exact.example.org",
        2,
    )


def test_feed_formats_reject_what_does_not_parse() -> None:
    f = parse_feed("x", "1.2.3.4\n1.2.3.4/40\nnot a name!\n-bad-.com\nok.example\n::1\n", "lines")
    assert [n[2] for n in f.networks] == [32, 128] and f.domains == ["ok.example"] and f.rejected == 3
