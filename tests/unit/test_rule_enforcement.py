"""Rule detectors' alerts through the real enforcer: per-detector modes, protected targets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowwarden.bus_memory import MemoryBus
from flowwarden.enforcement.backends.networkpolicy import NetworkPolicyBackend
from flowwarden.enforcement.enforcer import Enforcer
from flowwarden.enforcement.feeds_export import export_mode
from flowwarden.records import Alert, Decision
from flowwarden.store import Store
from tests.unit.enforcement_support import T0, alert, settings


@pytest.fixture
def store() -> Iterator[Store]:
    s = Store("sqlite://").start()
    yield s
    s.stop()


def _decide(store: Store, tmp_path: Path, a: Alert, **enforcement: Any) -> list[Decision]:
    s = settings(gitops_dir=str(tmp_path / "gitops"), backends=["networkpolicy"], ttl_s=60, **enforcement)
    bus = MemoryBus(default_partitions=1)
    e = Enforcer(s, store=store, bus=bus, backends=[NetworkPolicyBackend(s)], clock=lambda: T0.timestamp())
    e.start()
    p = bus.producer()
    p.send(s.kafka.topics.alerts, a.to_json().encode())
    p.flush()
    return e.poll_once(0.1)


def test_policy_violation_enforced_by_its_own_mode_while_others_stay_dry_run(
    store: Store, tmp_path: Path
) -> None:
    a = alert(
        detector="policy_violation",
        kind="exfiltration",
        targets=["203.0.113.50"],
        score=0.9,
        severity="critical",
    )
    (d,) = _decide(store, tmp_path, a, mode="dry_run", mode_by_detector={"policy_violation": "enforce"})
    assert d.status == "applied" and d.mode == "enforce" and d.targets == ["203.0.113.50"]


def test_threat_feed_hit_on_the_cluster_dns_is_never_blocked(store: Store, tmp_path: Path) -> None:
    a = alert(
        detector="threat_feed", kind="exfiltration", targets=["10.96.0.10"], score=0.95, severity="critical"
    )
    (d,) = _decide(store, tmp_path, a, mode="enforce")
    assert d.status == "refused" and d.guardrail == "cluster_dns"


def test_alert_mode_leaves_the_detector_out_of_enforcement(store: Store, tmp_path: Path) -> None:
    a = alert(
        detector="threat_feed", kind="exfiltration", targets=["198.51.100.7"], score=0.95, severity="critical"
    )
    assert _decide(store, tmp_path, a, mode="enforce", detectors=["policy_violation"]) == []
    s = settings(mode="enforce", detectors=["policy_violation"])
    assert export_mode(s) == "alert"
    assert export_mode(settings(mode="dry_run", mode_by_detector={"threat_feed": "enforce"})) == "enforce"
