"""The faster policy judge gives exactly the verdicts of the one before it, on random policies and flows."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pandas as pd
import pytest

from flowwarden.policy import parse_policy
from flowwarden.policy_match import CompiledPolicy, Environment
from tests.support import policy_match_reference as reference

NAMESPACES = ["web", "api", "db", "mail", "monitoring", ""]
WORKLOADS = ["web", "api", "db", "mailer", "prom", ""]
NAMES = ["", "", "", "api.stripe.com", "x.svc1.example.com", "fonts.gstatic.com", "evil.example", "a.b.c.d"]
ADDRESSES = [
    "10.0.0.5",
    "10.0.1.7",
    "10.96.0.10",
    "192.0.2.1",
    "198.51.100.25",
    "203.0.113.9",
    "172.16.3.3",
    "2001:db8::1",
    "",
]
PORTS = [53, 80, 443, 587, 2379, 5432, 6443, 8080, 8090, 10250]
ENV = Environment(
    cluster_dns=frozenset({"10.96.0.10"}),
    node_ips=frozenset({"10.0.0.5"}),
    api_server_ips=frozenset({"10.0.1.7"}),
    metadata_api=frozenset({"169.254.169.254", "203.0.113.9"}),
)


def _peers(rng: random.Random) -> dict[str, Any] | None:
    if rng.random() < 0.15:
        return None
    out: dict[str, Any] = {}
    if rng.random() < 0.5:
        out["cidrs"] = rng.sample(["192.0.2.0/24", "198.51.100.25/32", "10.0.0.0/16", "2001:db8::/32"], 2)
    if rng.random() < 0.5:
        out["domains"] = rng.sample(["api.stripe.com", "*.example.com", "*.gstatic.com", "evil.example"], 2)
    if rng.random() < 0.4:
        out["namespaces"] = rng.sample(["web", "api", "db", "*"], 1)
    if rng.random() < 0.3:
        out["workloads"] = rng.sample(["api/api", "web/web", "mail/mailer"], 1)
    return out or None


def _rules(rng: random.Random, key: str) -> list[dict[str, Any]]:
    rules = []
    for i in range(rng.randrange(0, 5)):
        r: dict[str, Any] = {"name": f"r{i}"}
        if (p := _peers(rng)) is not None:
            r[key] = p
        if rng.random() < 0.7:
            r["ports"] = rng.sample(["443/tcp", "53", "5432/tcp", "8000-8100/tcp", "icmp", "587/tcp"], 2)
        rules.append(r)
    return rules


def random_policy(rng: random.Random) -> dict[str, Any]:
    namespaces: dict[str, Any] = {}
    for ns in rng.sample(NAMESPACES[:-1], rng.randrange(1, 5)):
        scope: dict[str, Any] = {}
        if rng.random() < 0.8:
            scope["egress"] = _rules(rng, "to")
        if rng.random() < 0.5:
            scope["ingress"] = _rules(rng, "from")
        if rng.random() < 0.3:
            scope["allow_cluster_dns"] = False
        if rng.random() < 0.3:
            scope["workloads"] = {rng.choice(WORKLOADS[:-1]): {"egress": _rules(rng, "to")}}
        namespaces[ns] = scope
    cluster: dict[str, Any] = {}
    for endpoint in ("etcd", "api_server", "kubelet", "metadata_api"):
        if rng.random() < 0.4:
            cluster[endpoint] = (
                {}
                if rng.random() < 0.3
                else {"from": {"nodes": True, "namespaces": [rng.choice(NAMESPACES[:-1])]}}
            )
    return {"namespaces": namespaces, "cluster": cluster}


def random_flows(rng: random.Random, n: int) -> pd.DataFrame:
    def pick(values: list[Any]) -> list[Any]:
        return [rng.choice(values) for _ in range(n)]

    frame = pd.DataFrame(
        {
            "src_ip": pd.array(pick(ADDRESSES), dtype="string[pyarrow]"),
            "dst_ip": pd.array(pick(ADDRESSES), dtype="string[pyarrow]"),
            "dst_port": pick(PORTS),
            "proto": pick([6, 6, 6, 17, 1]),
            "src_namespace": pd.Categorical(pick(NAMESPACES)),
            "src_workload": pick(WORKLOADS),
            "dst_namespace": pd.Categorical(pick(NAMESPACES)),
            "dst_workload": pick(WORKLOADS),
            "dns_qname": pd.array(pick(NAMES), dtype="string[pyarrow]"),
            "server_name": pick(NAMES),
        }
    )
    return frame


@pytest.mark.parametrize("seed", range(120))
def test_new_judge_equals_the_old_on_random_policies_and_flows(seed: int) -> None:
    rng = random.Random(seed)
    policy = parse_policy(random_policy(rng))
    flows = random_flows(rng, rng.choice([1, 7, 300, 2000]))
    resolved = pd.Series([rng.choice(NAMES) for _ in range(len(flows))], dtype=object) if seed % 2 else None
    new = CompiledPolicy(policy, ENV).evaluate(flows, resolved)
    old = reference.CompiledPolicy(policy, reference.Environment(**ENV.__dict__)).evaluate(flows, resolved)
    assert np.array_equal(new.violation, old.violation)
    assert new.rule.tolist() == old.rule.tolist()
    assert new.reason.tolist() == old.reason.tolist()
    assert new.matched_name.tolist() == old.matched_name.tolist()
    if seed == 0:
        assert new.violation.any() and not new.violation.all()  # the random cases judge both ways
