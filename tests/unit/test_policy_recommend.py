"""Policy recommendation: NetworkPolicy semantics of the evaluator, recommended manifests valid
against the Kubernetes OpenAPI schema, the learned policy replayed on later flows, a stale diff."""

from __future__ import annotations

from typing import Any

import kubernetes_validate

from flowwarden.enforcement.recommend.evaluate import Endpoint, PolicySet
from flowwarden.enforcement.recommend.flows import Edge
from flowwarden.enforcement.recommend.recommend import recommend
from flowwarden.settings import Settings

WEB = Endpoint("10.244.1.5", "shop", "web", {"app": "web"})
DB = Endpoint("10.244.2.7", "data", "db", {"app": "db"})
OTHER = Endpoint("10.244.3.9", "shop", "cart", {"app": "cart"})
CDN = [Endpoint(f"203.0.113.{i}") for i in (10, 20)]


def edge(src: Endpoint, dst: Endpoint, port: int, name: str = "", proto: int = 6) -> Edge:
    return Edge(src, dst, proto, port, 3, 1_767_225_600.0, 1_767_229_200.0, name)


LEARNED = [edge(WEB, DB, 5432), *(edge(WEB, c, 443, "cdn.example.com") for c in CDN)]


def test_selector_ipblock_except_and_endport() -> None:
    policy: dict[str, Any] = {
        "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": "shop"},
        "spec": {
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]},
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [{"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.20/32"]}}],
                    "ports": [{"protocol": "TCP", "port": 440, "endPort": 450}],
                },
                {"ports": [{"protocol": "TCP", "port": "https"}]},
            ],
        },
    }
    ps = PolicySet([policy])
    assert ps.evaluate(WEB, CDN[0], 6, 443).allowed
    assert not ps.evaluate(WEB, CDN[1], 6, 443).allowed  # except
    assert not ps.evaluate(WEB, CDN[0], 6, 451).allowed  # past endPort
    assert not ps.evaluate(WEB, CDN[0], 17, 443).allowed  # UDP
    assert ps.evaluate(WEB, CDN[1], 6, 443).unsupported == ["named port 'https'"]
    assert ps.evaluate(OTHER, CDN[1], 6, 9999).allowed  # not selected: not isolated


def test_recommended_policy_is_valid_and_allows_only_what_was_seen() -> None:
    settings = Settings()
    rec = recommend(LEARNED, settings)
    docs = [d for docs in rec.manifests.values() for d in docs]
    for d in docs:
        if d["apiVersion"] == "networking.k8s.io/v1":
            kubernetes_validate.validate(d, "1.30.0", strict=True)
    calico = [d for d in docs if d["kind"] == "NetworkPolicy" and d["apiVersion"] == "projectcalico.org/v3"]
    assert calico[0]["spec"]["egress"][0]["destination"]["domains"] == ["cdn.example.com"]
    ps = PolicySet(docs)
    assert all(ps.evaluate(e.src, e.dst, e.proto, e.port).allowed for e in LEARNED)
    assert ps.evaluate(WEB, Endpoint("203.0.113.17"), 6, 443).allowed  # .10 and .20 share a name: /27
    assert not ps.evaluate(WEB, Endpoint("203.0.113.77"), 6, 443).allowed
    assert ps.evaluate(WEB, Endpoint(settings.cluster.cluster_dns[0]), 17, 53).allowed  # cluster DNS
    assert not ps.evaluate(WEB, Endpoint("198.51.100.1"), 6, 443).allowed  # never seen: exfiltration
    assert not ps.evaluate(OTHER, DB, 6, 5432).allowed  # lateral edge never seen (db ingress)
    assert not ps.evaluate(WEB, DB, 6, 22).allowed
    assert rec.rules == {"data": 2, "shop": 3}


def test_excluded_alert_edges_are_left_out() -> None:
    rec = recommend(LEARNED, Settings(), excluded={(WEB.ip, DB.ip)})
    ps = PolicySet([d for docs in rec.manifests.values() for d in docs])
    assert not ps.evaluate(WEB, DB, 6, 5432).allowed


def test_diff_of_a_stale_policy_lists_missing_and_unused() -> None:
    stale = {
        "kind": "List",
        "items": [
            {
                "kind": "NetworkPolicy",
                "metadata": {"name": "db", "namespace": "data"},
                "spec": {
                    "podSelector": {"matchLabels": {"app": "db"}},
                    "ingress": [
                        {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "old"}}}]},
                        {"from": [{"podSelector": {}}], "ports": [{"port": 5432}]},
                    ],
                },
            }
        ],
    }
    ps = PolicySet([stale])
    assert not ps.evaluate(WEB, DB, 6, 5432).allowed  # missing: web is in another namespace
    assert ps.evaluate(Endpoint("10.244.2.8", "data", "etl", {"app": "etl"}), DB, 6, 5432).allowed
    assert [r for r in ps.rules() if r not in ps.used] == ["data/db#ingress[0]"]
