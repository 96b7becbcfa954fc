"""Registered domains (Public Suffix List, offline) and per-name figures shared by collector and pipeline."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowwarden.dnsnames import CLUSTER_DOMAIN, entropy, label_stats, registered_domain


@pytest.mark.parametrize(
    ("name", "reg"),
    [
        ("www.example.com", "example.com"),
        ("a.b.example.co.uk.", "example.co.uk"),  # a multi-label public suffix, trailing dot
        ("API.Example.COM", "example.com"),  # case-insensitive
        ("user.github.io", "user.github.io"),  # PSL private section: each user's own zone
        ("kubernetes.default.svc.cluster.local", CLUSTER_DOMAIN),
        ("web.shop.svc", CLUSTER_DOMAIN),
        ("4.3.2.10.in-addr.arpa", "in-addr.arpa"),
        ("b.a.9.8.ip6.arpa", "ip6.arpa"),
        ("x.t.attacker.example", "attacker.example"),  # no public suffix: the last label acts as one
        ("localhost", "localhost"),
        ("10.1.2.3", "10.1.2.3"),
        ("co.uk", "co.uk"),
        ("", ""),
    ],
)
def test_registered_domain(name: str, reg: str) -> None:
    assert registered_domain(name) == reg


def test_label_stats_entropy_of_labels_left_of_the_registered_domain() -> None:
    length, ent, reg = label_stats("aaaa.example.com")
    assert (length, ent, reg) == (16, 0.0, "example.com")
    length, ent, reg = label_stats("ab.cd.example.co.uk")
    assert reg == "example.co.uk" and math.isclose(ent, 2.0)  # "abcd": 4 symbols, dots left out
    assert label_stats("example.com")[1] == 0.0
    assert label_stats("1.0.0.10.in-addr.arpa")[1] == 0.0  # address digits are not chosen text


def test_escaped_binary_labels_count_as_octets() -> None:
    length, ent, reg = label_stats("a\\255b.t.tunnel.example")
    assert length == len("a?b.t.tunnel.example") and reg == "tunnel.example"
    assert math.isclose(ent, entropy("a\xffbt"))


def test_tunnel_names_have_higher_entropy_than_service_names() -> None:
    tunnel = label_stats("mzxw6ytboi2dkmrxgq3tcnzqgi4dkobzgiydaylmm5zq.t.attacker.example")[1]
    service = label_stats("checkout.shop.svc.cluster.local")[1]
    assert tunnel > 3.5 > service


@given(st.text(max_size=300))
def test_any_text_is_handled(name: str) -> None:
    length, ent, reg = label_stats(name)
    assert length >= 0 and ent >= 0.0 and isinstance(reg, str)
