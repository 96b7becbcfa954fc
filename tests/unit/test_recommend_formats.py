"""Recommendation formats and alert exclusion: the declared policy loads with flowwarden's own
loader and the policy_violation detector finds nothing in the benign flows it was built from;
Calico policies validate against Calico's CRD schema; alert edges are left out and listed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import pytest
import yaml

from flowwarden.enforcement.recommend.alerts import alert_edges
from flowwarden.enforcement.recommend.evaluate import Endpoint, PolicySet
from flowwarden.enforcement.recommend.flows import Edge
from flowwarden.enforcement.recommend.recommend import recommend
from flowwarden.pipeline.detection.detectors.policy_violation import PolicyViolation
from flowwarden.policy import load_policy
from flowwarden.records import Alert, Entity, conform_flows
from flowwarden.settings import Settings

WEB = Endpoint("10.244.1.5", "shop", "web", {"app": "web"})
CART = Endpoint("10.244.1.6", "shop", "cart", {"app": "cart"})
DB = Endpoint("10.244.2.7", "data", "db", {"app": "db"})
CDN = [Endpoint(f"203.0.113.{i}") for i in (10, 20)]
CLIENT = Endpoint("198.51.100.40")
T0 = 1_767_225_600.0
SCHEMAS = Path(__file__).parents[1] / "data" / "schemas"


def edge(src: Endpoint, dst: Endpoint, port: int, name: str = "", proto: int = 6) -> Edge:
    return Edge(src, dst, proto, port, 3, T0, T0 + 3600, name)


BENIGN = [
    edge(WEB, DB, 5432),
    edge(CART, DB, 5432),
    edge(WEB, CART, 8080),
    edge(CLIENT, WEB, 443),
    *(edge(WEB, c, 443, "cdn.example.com") for c in CDN),
    edge(WEB, Endpoint("10.96.0.10"), 53, proto=17),  # cluster DNS: allowed by the baseline
]


def flows_of(edges: list[Edge]) -> pd.DataFrame:
    """One flow row per edge, as the enriched frame the detector reads."""
    rows = []
    for e in edges:
        rows.append(
            {
                "ts_start": e.first_seen,
                "ts_end": e.last_seen,
                "src_ip": e.src.ip,
                "dst_ip": e.dst.ip,
                "dst_port": e.port,
                "proto": e.proto,
                "src_namespace": e.src.namespace,
                "src_workload": e.src.workload,
                "src_pod": f"{e.src.workload}-0" if e.src.is_pod else "",
                "dst_namespace": e.dst.namespace,
                "dst_workload": e.dst.workload,
                "dns_qname": "",
                "server_name": e.name,
                "src_port": 40000,
                "bytes_out": 1000,
                "bytes_in": 2000,
                "pkts_out": 5,
                "pkts_in": 5,
                "state": "closed",
                "final": True,
            }
        )
    return conform_flows(pd.DataFrame(rows))


def test_declared_policy_loads_and_raises_no_violation_on_its_own_flows(tmp_path: Path) -> None:
    settings = Settings()
    rec = recommend(BENIGN, settings, fmt="declared")
    doc = dict(rec.manifests["flowwarden-policy"][0])
    evidence = doc.pop("x-evidence")
    assert doc.pop("x-excluded") == []
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    policy = load_policy(path)  # flowwarden's own loader
    assert policy.declared
    assert evidence["namespaces.data.workloads.db.ingress.0"]["flows"] == 3
    web = policy.namespaces["shop"].workloads["web"]
    assert web.egress is not None and any(
        "cdn.example.com" in (r.to.domains if r.to else []) for r in web.egress
    )
    detector = PolicyViolation()
    detector.set_policy(policy)
    assert detector.find(flows_of(BENIGN), None, settings) is None
    attacks = [edge(CART, Endpoint("192.0.2.66"), 443), edge(WEB, DB, 22), edge(CLIENT, DB, 5432)]
    found = detector.find(flows_of(attacks), None, settings)
    assert found is not None and len(found) == len(attacks)


def test_open_and_malicious_alert_edges_are_left_out_and_listed() -> None:
    def alert(dst: str, port: int, src: Endpoint = CART) -> Alert:
        return Alert(
            kind="lateral_movement",
            detector="new_edge",
            score=0.8,
            severity="high",
            entity=Entity(ip=src.ip, namespace=src.namespace, workload=src.workload, pod="cart-0"),
            window_start=datetime.fromtimestamp(T0 + port, UTC),  # one id per alert
            window_end=datetime.fromtimestamp(T0 + port + 60, UTC),
            targets=[dst],
            target_ports=[port],
        )

    open_, malicious, benign = alert(DB.ip, 5432), alert(WEB.ip, 8080), alert(CDN[0].ip, 443)
    extra = [edge(CART, WEB, 8080), edge(CART, CDN[0], 443)]
    verdicts = {malicious.id: "malicious", benign.id: "benign"}
    forbidden, untargeted = alert_edges([open_, malicious, benign], verdicts)
    assert untargeted == []
    rec = recommend(BENIGN + extra, Settings(), alerts=forbidden)
    assert {(d["source"], d["target"], d["port"], d["why"]) for d in rec.dropped} == {
        ("shop/cart", "data/db", 5432, "open"),
        ("shop/cart", "shop/web", 8080, "malicious"),
    }
    ps = PolicySet([d for docs in rec.manifests.values() for d in docs])
    assert not ps.evaluate(CART, DB, 6, 5432).allowed
    assert not ps.evaluate(CART, WEB, 6, 8080).allowed
    assert ps.evaluate(CART, CDN[0], 6, 443).allowed  # resolved benign: kept
    assert ps.evaluate(WEB, DB, 6, 5432).allowed  # another source: kept
    cart = next(d for d in rec.manifests["shop"] if d["metadata"]["name"] == "flowwarden-rec-cart")
    listed = json.loads(cart["metadata"]["annotations"]["flowwarden.io/excluded-alert-edges"])
    assert len(listed) == 2


def test_store_edges_without_protocol_allow_tcp_and_udp() -> None:
    rec = recommend([Edge(WEB, DB, 0, 5432, 1, T0, T0, "")], Settings())
    ps = PolicySet([d for docs in rec.manifests.values() for d in docs])
    assert ps.evaluate(WEB, DB, 6, 5432).allowed and ps.evaluate(WEB, DB, 17, 5432).allowed
    assert ps.evaluate(WEB, DB, 0, 5432).allowed and not ps.evaluate(WEB, DB, 0, 5433).allowed


def _spec_schema(name: str) -> dict[str, Any]:
    """A spec schema, strict: a field the CRD does not know (the API server would drop it) fails."""

    def strict(node: Any) -> Any:
        if isinstance(node, dict):
            node = {k: strict(v) for k, v in node.items()}
            if node.get("type") == "object" and "properties" in node:
                node["additionalProperties"] = False
        elif isinstance(node, list):
            node = [strict(v) for v in node]
        return node

    data: dict[str, Any] = strict(json.loads((SCHEMAS / name).read_text()))
    return data


def test_calico_policies_validate_against_the_calico_crd_schema() -> None:
    rec = recommend(BENIGN, Settings(), fmt="calico")
    docs = [d for docs in rec.manifests.values() for d in docs]
    kinds = {d["kind"] for d in docs}
    assert kinds == {"NetworkPolicy", "GlobalNetworkPolicy"}
    schemas = {
        "NetworkPolicy": _spec_schema("calico-networkpolicy-spec.json"),
        "GlobalNetworkPolicy": _spec_schema("calico-globalnetworkpolicy-spec.json"),
    }
    for ns, docs_ in rec.manifests.items():
        for d in docs_:
            if ns.endswith(".calico-enterprise"):  # domains: not in open-source Calico's CRD
                with pytest.raises(jsonschema.ValidationError, match="domains"):
                    jsonschema.validate(d["spec"], schemas[d["kind"]])
            else:
                jsonschema.validate(d["spec"], schemas[d["kind"]])
    web = next(d for d in rec.manifests["shop"] if d["metadata"]["name"] == "flowwarden-rec-web")
    nets = [r["destination"]["nets"] for r in web["spec"]["egress"] if "nets" in r["destination"]]
    assert nets == [["203.0.113.0/27"]]
    (enterprise,) = rec.manifests["shop.calico-enterprise"]
    assert enterprise["spec"]["egress"][0]["destination"]["domains"] == ["cdn.example.com"]
    dns = next(d for d in docs if d["kind"] == "GlobalNetworkPolicy")
    assert "projectcalico.org/namespace == 'shop' && app == 'web'" in dns["spec"]["selector"]


def test_a_scan_alert_with_capped_lists_forbids_what_began_during_it_and_isolates_the_source() -> None:
    start = datetime.fromtimestamp(T0 + 1800, UTC)
    scan = Alert(
        kind="lateral_movement",
        detector="port_scan",
        score=0.9,
        severity="high",
        entity=Entity(ip=CART.ip, namespace="shop", workload="cart", pod="cart-0"),
        window_start=start,
        window_end=start,
        targets=[f"10.0.0.{i}" for i in range(20)],  # capped: the pipeline keeps 20
        target_ports=list(range(1, 21)),
    )
    forbidden, _ = alert_edges([scan], {}, cap=20)
    unlisted = Edge(CART, Endpoint("10.0.0.99"), 6, 8443, 1, T0 + 1800, T0 + 1801, "")
    listed_other_port = Edge(CART, Endpoint("10.0.0.3"), 6, 9999, 1, T0, T0 + 1, "")
    rec = recommend([unlisted, listed_other_port], Settings(), alerts=forbidden)
    assert len(rec.dropped) == 2
    ps = PolicySet([d for docs in rec.manifests.values() for d in docs])
    # cart's every edge was dropped: it still gets a policy (else it would stay open to all)
    assert not ps.evaluate(CART, Endpoint("10.0.0.99"), 6, 8443).allowed
    assert ps.evaluate(CART, Endpoint("10.96.0.10"), 17, 53).allowed
