"""policy_violation and threat_feed through the real engine: observe, process, flush, alerts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from flowwarden.feeds import FeedSet, parse_feed
from flowwarden.kube import PodInventory
from flowwarden.pipeline.detection.detectors.flow_rules import DnsCache
from flowwarden.pipeline.detection.detectors.policy_violation import PolicyViolation
from flowwarden.pipeline.detection.detectors.threat_feed import ThreatFeed
from flowwarden.pipeline.detection.engine import DetectionEngine
from flowwarden.policy import parse_policy
from flowwarden.records import Alert
from flowwarden.settings import Settings
from tests.unit.flowkit import T0, flows, pod

SHOP_API = "10.244.1.10"
SHOP_MAILER = "10.244.1.11"
DB = "10.244.2.20"
DNS = "10.96.0.10"
STRIPE_IP = "198.51.100.10"  # what the pod's DNS says api.stripe.com is
OTHER_IP = "203.0.113.50"

POLICY = {
    "namespaces": {
        "shop": {
            "egress": [
                {
                    "name": "payments",
                    "to": {"domains": ["api.stripe.com", "*.stripe.com"]},
                    "ports": ["443/tcp"],
                },
                {"to": {"namespaces": ["db"]}, "ports": ["5432/tcp"]},
            ],
        }
    },
}


def _inventory() -> PodInventory:
    return PodInventory.from_dict(
        {
            "items": [
                pod("api-1", SHOP_API, ns="shop", owner=("ReplicaSet", "api-5d9c8f7b6")),
                pod("mailer-1", SHOP_MAILER, ns="shop", owner=("ReplicaSet", "mailer-6f7d8c9b5")),
                pod("pg-0", DB, ns="db", owner=("StatefulSet", "pg")),
            ]
        }
    )


def _engine(policy: dict[str, Any] | None = None, feeds: FeedSet | None = None) -> DetectionEngine:
    engine = DetectionEngine(Settings(), inventory=_inventory())
    for det in engine.detectors:
        if isinstance(det, PolicyViolation) and policy is not None:
            det.set_policy(parse_policy(policy), "test")
        if isinstance(det, ThreatFeed) and feeds is not None:
            det.set_feeds(feeds, "test")
    return engine


def _run(engine: DetectionEngine, *batches: pd.DataFrame) -> list[Alert]:
    alerts: dict[str, Alert] = {}
    for batch in batches:
        for a in engine.process(batch).alerts:
            alerts[a.id] = a
    for a in engine.flush().alerts:
        alerts[a.id] = a
    return list(alerts.values())


def _dns(src: str, name: str, answers: str, t: float, ttl: int = 60) -> dict[str, Any]:
    return {
        "ts_start": t,
        "src_ip": src,
        "dst_ip": DNS,
        "dst_port": 53,
        "proto": 17,
        "state": "udp",
        "dns_qname": name,
        "dns_answers": answers,
        "dns_answer_ttl": ttl,
    }


def _conn(src: str, dst: str, port: int, t: float, **extra: Any) -> dict[str, Any]:
    return {"ts_start": t, "src_ip": src, "dst_ip": dst, "dst_port": port, "dns_answer_ttl": -1, **extra}


def test_resolved_allowed_name_passes_and_an_undeclared_destination_alerts_with_its_rule() -> None:
    batch = flows(
        [
            _dns(SHOP_API, "api.stripe.com", STRIPE_IP, T0 + 1),
            _conn(SHOP_API, STRIPE_IP, 443, T0 + 2),  # resolved from an allowed name: allowed
            _conn(SHOP_API, DB, 5432, T0 + 3),  # allowed namespace and port
            _conn(SHOP_API, OTHER_IP, 443, T0 + 4),  # nothing allows it
        ]
    )
    alerts = [a for a in _run(_engine(POLICY), batch) if a.detector == "policy_violation"]
    assert len(alerts) == 1
    a = alerts[0]
    assert a.entity.pod == "api-1" and a.kind == "exfiltration"
    assert a.targets == [OTHER_IP] and a.target_ports == [443]
    assert a.evidence["policy_rules"] == ["namespaces.shop.egress"]
    assert a.evidence["violations"][0]["reason"] == "destination_not_allowed"
    assert a.score >= 0.9 and a.severity == "critical"


def test_another_pods_lookup_does_not_allow_the_address_for_this_pod() -> None:
    batch = flows(
        [
            _dns(SHOP_API, "api.stripe.com", STRIPE_IP, T0 + 1),
            _conn(SHOP_MAILER, STRIPE_IP, 443, T0 + 2),  # the mailer never resolved it
        ]
    )
    alerts = [a for a in _run(_engine(POLICY), batch) if a.detector == "policy_violation"]
    assert [a.entity.pod for a in alerts] == ["mailer-1"]


def test_an_answer_arriving_after_the_connection_still_allows_it_within_the_window() -> None:
    first = flows([_conn(SHOP_API, STRIPE_IP, 443, T0 + 2)])
    later = flows([_dns(SHOP_API, "pay.stripe.com", STRIPE_IP, T0 + 1)])  # the idle UDP record comes later
    alerts = [a for a in _run(_engine(POLICY), first, later) if a.detector == "policy_violation"]
    assert alerts == []


def test_expired_answer_and_wrong_port_are_violations() -> None:
    batch = flows(
        [
            _dns(SHOP_API, "api.stripe.com", STRIPE_IP, T0 + 1, ttl=5),
            _conn(SHOP_API, DB, 6379, T0 + 2),  # db is allowed on 5432 only
            _conn(SHOP_API, STRIPE_IP, 443, T0 + 400),  # TTL 5 s + 300 s grace long past
        ]
    )
    alerts = [a for a in _run(_engine(POLICY), batch) if a.detector == "policy_violation"]
    by_reason = {v["reason"]: v for a in alerts for v in a.evidence["violations"]}
    assert set(by_reason) == {"port_not_allowed", "destination_not_allowed"}
    assert by_reason["port_not_allowed"]["destination"] == DB
    assert by_reason["destination_not_allowed"]["name"] == "api.stripe.com"
    kinds = {a.evidence["violations"][0]["destination"]: a.kind for a in alerts}
    assert kinds[DB] == "lateral_movement"


def test_empty_policy_is_not_declared_and_alerts_nothing() -> None:
    batch = flows([_conn(SHOP_API, OTHER_IP, 443, T0 + 1), _conn(SHOP_API, DB, 6379, T0 + 2)])
    engine = _engine({})
    det = next(d for d in engine.detectors if isinstance(d, PolicyViolation))
    assert not det.wants_flows
    assert [a for a in _run(engine, batch) if a.detector == "policy_violation"] == []


def test_sni_matches_a_wildcard_rule() -> None:
    batch = flows([_conn(SHOP_API, OTHER_IP, 443, T0 + 1, server_name="checkout.stripe.com")])
    assert [a for a in _run(_engine(POLICY), batch) if a.detector == "policy_violation"] == []


def test_cluster_endpoint_etcd_only_from_the_control_plane() -> None:
    policy: dict[str, Any] = {"cluster": {"etcd": {}}}
    settings = Settings(control_plane={"api_server_ips": ["10.0.0.1"]}, cluster={"node_ips": ["10.0.0.1"]})
    engine = DetectionEngine(settings, inventory=_inventory())
    det = next(d for d in engine.detectors if isinstance(d, PolicyViolation))
    det.set_policy(parse_policy(policy))
    batch = flows([_conn(SHOP_API, "10.0.0.1", 2379, T0 + 1)])
    alerts = [a for a in _run(engine, batch) if a.detector == "policy_violation"]
    assert len(alerts) == 1 and alerts[0].evidence["policy_rules"] == ["cluster.etcd"]
    assert alerts[0].evidence["violations"][0]["reason"] == "source_not_allowed"


FEED = FeedSet(
    [
        parse_feed("drop", "1.10.16.0/20 ; SBL256894\n"),
        parse_feed("c2names", "# names\nevil.example.net\n"),
    ]
)


def test_feed_address_and_name_hits_alert_with_feed_and_entry() -> None:
    batch = flows(
        [
            _conn(SHOP_API, "1.10.17.3", 443, T0 + 1),  # in a listed CIDR
            _dns(SHOP_MAILER, "cdn.evil.example.net", "192.0.2.66", T0 + 2),  # below a listed domain
            _conn(SHOP_MAILER, "192.0.2.66", 443, T0 + 3),  # the address that name resolved to
            _conn(SHOP_API, "192.0.2.66", 443, T0 + 3),  # same address, this pod never resolved it
        ]
    )
    alerts = {a.entity.pod: a for a in _run(_engine(feeds=FEED), batch) if a.detector == "threat_feed"}
    assert set(alerts) == {"api-1", "mailer-1"}
    api, mailer = alerts["api-1"], alerts["mailer-1"]
    assert api.targets == ["1.10.17.3"]
    first = api.evidence["hits"][0]
    assert (first["feed"], first["entry"], first["matched"]) == ("drop", "1.10.16.0/20", "address")
    assert mailer.targets == ["192.0.2.66"]  # never the resolver
    hit = mailer.evidence["hits"][0]
    assert (hit["feed"], hit["entry"], hit["matched"]) == ("c2names", "evil.example.net", "resolved")


def test_dns_query_only_alerts_with_evidence() -> None:
    batch = flows([_dns(SHOP_API, "x.evil.example.net", "", T0 + 1, ttl=-1)])
    alerts = [a for a in _run(_engine(feeds=FEED), batch) if a.detector == "threat_feed"]
    assert len(alerts) == 1
    assert alerts[0].evidence["hits"][0]["matched"] == "dns_query"


def test_dns_cache_is_per_pod_bounded_and_expires() -> None:
    cache = DnsCache(grace_s=0.0, max_rows=2)
    f = flows([_dns(SHOP_API, "a.example.com", "192.0.2.1,192.0.2.2,192.0.2.3", T0, ttl=10)])
    cache.learn(f)
    assert len(cache) == 2 and cache.evicted == 1
    # Not enriched: each flow's entity is its source address; only the asker's flow gets the name.
    q = flows([_conn(SHOP_API, "192.0.2.3", 443, T0 + 1), _conn(SHOP_MAILER, "192.0.2.3", 443, T0 + 1)])
    names = cache.resolve(q)
    assert names.tolist() == ["a.example.com", ""]
    assert cache.expire(T0 + 11) == 2 and len(cache) == 0


def test_offline_detection_reads_the_declared_policy_from_the_settings(tmp_path: Path) -> None:
    """``flowwarden detect`` (detect_flows) judges with the same policy file as the pipeline."""
    import yaml

    from flowwarden.pipeline.runtime.offline import detect_flows

    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({"version": 1, **POLICY}))
    batch = flows(
        [_dns(SHOP_API, "api.stripe.com", STRIPE_IP, T0 + 1), _conn(SHOP_API, OTHER_IP, 443, T0 + 4)]
    )
    declared = Settings(rules={"policy_file": str(path)})
    found = detect_flows(batch, settings=declared, inventory=_inventory()).alerts
    assert [a.targets for a in found if a.detector == "policy_violation"] == [[OTHER_IP]]
    silent = detect_flows(batch, settings=Settings(), inventory=_inventory()).alerts
    assert not [a for a in silent if a.detector == "policy_violation"], "no policy declared: nothing to break"
