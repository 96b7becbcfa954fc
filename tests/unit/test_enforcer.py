"""The enforcer stage in memory: MemoryBus, an in-memory SQLite store, the GitOps NetworkPolicy backend."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowwarden.bus_memory import MemoryBus
from flowwarden.enforcement import plan_offline, policy
from flowwarden.enforcement.backends.networkpolicy import NetworkPolicyBackend
from flowwarden.enforcement.enforcer import Enforcer
from flowwarden.errors import FlowwardenError
from flowwarden.records import Alert, Decision
from flowwarden.settings import Settings
from flowwarden.store import Store
from tests.unit.enforcement_support import T0, alert, settings


class Clock:
    def __init__(self) -> None:
        self.now = T0.timestamp()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store() -> Iterator[Store]:
    s = Store("sqlite://").start()
    yield s
    s.stop()


def make(store: Store, tmp_path: Path, clock: Clock, **kw: Any) -> tuple[Enforcer, MemoryBus, Settings]:
    s = settings(gitops_dir=str(tmp_path / "gitops"), backends=["networkpolicy"], ttl_s=60, **kw)
    bus = MemoryBus(default_partitions=1)
    e = Enforcer(s, store=store, bus=bus, backends=[NetworkPolicyBackend(s)], clock=clock)
    e.start()
    return e, bus, s


def send(bus: MemoryBus, s: Settings, *alerts: Alert) -> None:
    p = bus.producer()
    for a in alerts:
        p.send(s.kafka.topics.alerts, a.to_json().encode())
    p.flush()


def published(bus: MemoryBus, s: Settings) -> list[Decision]:
    c = bus.consumer([s.kafka.topics.decisions], "reader")
    return [Decision.from_json(m.value) for m in c.poll(timeout_s=0.1, max_records=1000)]


def test_enforce_mode_applies_records_publishes_and_ignores_replays(store: Store, tmp_path: Path) -> None:
    clock = Clock()
    e, bus, s = make(store, tmp_path, clock, mode="enforce")
    send(bus, s, alert(), alert())  # the second is a replay of the first
    decisions = e.poll_once(0.1)
    assert [d.status for d in decisions] == ["applied"]
    d = decisions[0]
    assert store.get_decision(d.id) == d
    assert d.expires_at is not None and d.expires_at.timestamp() == clock.now + 60
    assert Path(d.backend_result["networkpolicy"]["manifest"]).exists()
    assert [p.id for p in published(bus, s)] == [d.id]
    assert e.metrics.decisions.labels("enforce", "networkpolicy", "applied")._value.get() == 1


def test_ttl_end_lifts_the_block_and_marks_it_expired(store: Store, tmp_path: Path) -> None:
    clock = Clock()
    e, bus, s = make(store, tmp_path, clock, mode="enforce")
    send(bus, s, alert())
    (d,) = e.poll_once(0.1)
    path = Path(d.backend_result["networkpolicy"]["manifest"])
    clock.now += 59
    assert e.expire() == [] and path.exists()
    clock.now += 2
    (gone,) = e.expire()
    assert gone.status == "expired" and not path.exists()
    assert store.active_blocks(gone.expires_at) == []


def test_repeat_offender_gets_a_doubled_ttl(store: Store, tmp_path: Path) -> None:
    clock = Clock()
    e, bus, s = make(store, tmp_path, clock, mode="enforce")
    send(bus, s, alert(), alert(offset_s=100))
    first, second = e.poll_once(0.1)
    assert (first.ttl_s, second.ttl_s) == (60, 120)


def test_dry_run_records_what_it_would_do_and_applies_nothing(store: Store, tmp_path: Path) -> None:
    clock = Clock()
    e, bus, s = make(store, tmp_path, clock)  # the default mode
    send(bus, s, alert())
    (d,) = e.poll_once(0.1)
    assert d.status == "simulated" and d.mode == "dry_run" and d.backend_result["would_apply"]
    assert not (tmp_path / "gitops").exists()
    assert store.active_blocks(T0) == []


def test_approval_waits_for_a_person(store: Store, tmp_path: Path) -> None:
    clock = Clock()
    e, bus, s = make(store, tmp_path, clock, mode="approval")
    send(bus, s, alert())
    (d,) = e.poll_once(0.1)
    assert d.status == "pending" and store.active_blocks(T0) == []
    approved = e.approve(d.id, by="alice")
    assert approved.status == "applied" and "approved by alice" in approved.reason
    assert [b.id for b in store.active_blocks(T0)] == [d.id]
    with pytest.raises(FlowwardenError, match="not pending"):
        e.approve(d.id)
    revoked = e.revoke(d.id, by="bob")
    assert revoked.status == "revoked" and store.active_blocks(T0) == []
    assert [p.status for p in published(bus, s)] == ["pending", "applied", "revoked"]


def test_refusals_are_decisions_with_the_guardrail(store: Store, tmp_path: Path) -> None:
    clock = Clock()
    e, bus, s = make(store, tmp_path, clock, mode="enforce", max_new_blocks_per_minute=2)
    send(bus, s, alert(targets=["10.0.0.1"]), *[alert(pod=f"web-{i}", offset_s=i) for i in range(3)])
    decisions = e.poll_once(0.1)
    assert [(d.status, d.guardrail) for d in decisions] == [
        ("refused", "control_plane"),
        ("applied", ""),
        ("applied", ""),
        ("refused", "max_new_blocks_per_minute"),
    ]
    assert e.metrics.refusals.labels("control_plane")._value.get() == 1
    assert len(store.active_blocks(T0)) == 2


def test_manual_block_over_the_allowlist_needs_force(store: Store, tmp_path: Path) -> None:
    clock = Clock()
    e, _, _ = make(store, tmp_path, clock, mode="enforce")
    src = alert(namespace="kube-system", pod="coredns-1").entity
    assert e.manual(source=src, targets=["10.244.2.7"]).guardrail == "allow_namespace"
    forced = e.manual(source=src, targets=["10.244.2.7"], force=True, decided_by="alice")
    assert forced.status == "applied" and forced.decided_by == "alice"
    assert e.manual(source=src, targets=["10.0.0.1"], force=True).guardrail == "control_plane"


def test_a_bad_alert_goes_to_the_dead_letter_topic(store: Store, tmp_path: Path) -> None:
    clock = Clock()
    e, bus, s = make(store, tmp_path, clock, mode="enforce")
    p = bus.producer()
    p.send(s.kafka.topics.alerts, b'{"kind": "exfiltration"}')
    p.flush()
    assert e.poll_once(0.1) == []
    dlq = bus.consumer([f"{s.kafka.topics.alerts}.dlq"], "dlq-reader").poll(timeout_s=0.1)
    assert len(dlq) == 1 and dlq[0].value == b'{"kind": "exfiltration"}'


def test_plan_offline_writes_the_three_rule_files(tmp_path: Path) -> None:
    alerts = [
        alert(),
        alert(pod="web-2", ip="10.244.1.3"),
        alert(targets=["0.0.0.0"], pod="web-3", ip="10.244.1.4"),
    ]
    decisions = plan_offline(alerts, settings(mode="enforce"), tmp_path)
    assert [(d.status, d.guardrail) for d in decisions] == [
        ("simulated", ""),
        ("simulated", ""),
        ("refused", "reserved_address"),
    ]
    nft = (tmp_path / "rules.nft").read_text()
    # rules.nft is the backend's libnftables JSON as nft lists it: a single address without /32.
    assert "10.244.1.2 . 10.244.2.7 timeout 14400s" in nft and "10.244.1.4" not in nft
    assert (tmp_path / "networkpolicies.yaml").read_text().count("kind: NetworkPolicy") == 2
    assert (tmp_path / "calico.yaml").read_text().count("name: flowwarden.d-") == 2  # one per decision
    assert (tmp_path / "cilium.yaml").read_text().count("kind: CiliumClusterwideNetworkPolicy") == 2


def test_offences_older_than_ttl_max_no_longer_escalate(store: Store, tmp_path: Path) -> None:
    clock = Clock()
    e, bus, s = make(store, tmp_path, clock, mode="enforce", ttl_max_s=300)
    send(bus, s, alert())
    (first,) = e.poll_once(0.1)
    clock.now += 301
    send(bus, s, alert(offset_s=301))
    (second,) = e.poll_once(0.1)
    assert (first.ttl_s, second.ttl_s) == (60, 60)


# ---------------------------------------------------------------- a scan that touched protected addresses

SCAN = ["10.244.2.7", "10.0.0.7", "10.244.2.8", "10.96.0.10"]  # two pods, a node, the cluster DNS


def test_an_alert_s_protected_targets_are_dropped_and_the_rest_blocked(store: Store, tmp_path: Path) -> None:
    clock = Clock()
    e, bus, s = make(store, tmp_path, clock, mode="enforce")
    send(bus, s, alert(targets=SCAN))
    (d,) = e.poll_once(0.1)
    assert (d.status, d.guardrail, d.targets) == ("applied", "", ["10.244.2.7", "10.244.2.8"])
    assert [(x["target"], x["guardrail"]) for x in d.backend_result["dropped_targets"]] == [
        ("10.0.0.7", "node_address"),
        ("10.96.0.10", "cluster_dns"),
    ]
    assert "dropped protected target(s) 10.0.0.7 (node_address), 10.96.0.10 (cluster_dns)" in d.reason
    assert e.metrics.refusals.labels("node_address")._value.get() == 1
    assert e.metrics.refusals.labels("cluster_dns")._value.get() == 1
    (policy_doc,) = yaml.safe_load_all(Path(d.backend_result["networkpolicy"]["manifest"]).read_text())
    blocked = policy_doc["spec"]["egress"][0]["to"][0]["ipBlock"]["except"]
    assert blocked == ["10.244.2.7/32", "10.244.2.8/32"], "only the pods are blocked"
    assert store.get_decision(d.id) == d and published(bus, s) == [d]
    # The same alert again: the dropped targets count as decided, nothing new, nothing counted.
    send(bus, s, alert(targets=SCAN))
    assert e.poll_once(0.1) == []
    assert e.metrics.refusals.labels("node_address")._value.get() == 1


def test_an_alert_with_only_protected_targets_is_refused_whole(store: Store, tmp_path: Path) -> None:
    clock = Clock()
    e, bus, s = make(store, tmp_path, clock, mode="enforce")
    send(bus, s, alert(targets=["10.0.0.7", "10.96.0.10"]))
    (d,) = e.poll_once(0.1)
    assert (d.status, d.guardrail, d.targets) == ("refused", "node_address", ["10.0.0.7", "10.96.0.10"])
    assert d.reason.startswith("every target is protected:") and "dropped_targets" not in d.backend_result
    assert e.metrics.refusals.labels("node_address")._value.get() == 1
    assert store.active_blocks(T0) == []


def test_dropped_targets_are_kept_in_dry_run_and_through_approval(store: Store, tmp_path: Path) -> None:
    clock = Clock()
    e, bus, s = make(store, tmp_path, clock, mode="approval", mode_by_detector={"volume": "dry_run"})
    send(bus, s, alert(targets=SCAN), alert(targets=SCAN, detector="volume", kind="exfiltration"))
    pending, simulated = e.poll_once(0.1)
    assert simulated.status == "simulated" and simulated.backend_result["would_apply"]
    assert simulated.targets == ["10.244.2.7", "10.244.2.8"]
    assert len(simulated.backend_result["dropped_targets"]) == 2
    assert pending.status == "pending" and pending.targets == ["10.244.2.7", "10.244.2.8"]
    approved = e.approve(pending.id, by="alice")
    assert approved.status == "applied" and approved.backend_result["networkpolicy"]["manifest"]
    assert approved.backend_result["dropped_targets"] == pending.backend_result["dropped_targets"]


def test_a_person_s_block_with_a_protected_target_is_refused_whole(store: Store, tmp_path: Path) -> None:
    clock = Clock()
    e, _, _ = make(store, tmp_path, clock, mode="enforce")
    d = e.manual(source=alert().entity, targets=SCAN)
    assert (d.status, d.guardrail, d.targets) == ("refused", "node_address", SCAN)
    assert store.active_blocks(T0) == [] and not (tmp_path / "gitops").exists()


def test_garbage_in_an_alert_still_refuses_it_whole(store: Store, tmp_path: Path) -> None:
    clock = Clock()
    e, bus, s = make(store, tmp_path, clock, mode="enforce")
    bad = [*SCAN, "::ffff:10.244.2.9"]  # a valid Alert target, but IPv4-mapped: malformed here
    send(bus, s, alert(targets=bad))
    (d,) = e.poll_once(0.1)
    assert (d.status, d.guardrail) == ("refused", "malformed")
    # Later decisions on that alert carry the garbage along: refused too.
    send(bus, s, alert(targets=[*bad, "10.244.2.10"]))
    (later,) = e.poll_once(0.1)
    assert (later.status, later.guardrail) == ("refused", "malformed") and "10.244.2.10" in later.targets
    assert store.active_blocks(T0) == []


# ---------------------------------------------------------------- an open alert that gains targets


def test_new_targets_of_an_open_alert_get_a_decision_of_their_own(store: Store, tmp_path: Path) -> None:
    clock = Clock()
    e, bus, s = make(store, tmp_path, clock, mode="enforce")
    send(bus, s, alert(targets=["10.244.2.7"]))
    (first,) = e.poll_once(0.1)
    clock.now += 5
    grown = alert(targets=["10.244.2.7", "10.0.0.7", "10.244.2.9", "10.244.2.8"])
    assert grown.id == first.alert_id
    send(bus, s, grown, grown)  # re-delivered at once: still one decision
    (second,) = e.poll_once(0.1)
    assert second.id == policy.decision_id(grown.id, "block", ["10.244.2.8", "10.0.0.7", "10.244.2.9"])
    assert (second.status, second.alert_id, second.targets) == (
        "applied",
        grown.id,
        ["10.244.2.9", "10.244.2.8"],
    )
    assert [x["target"] for x in second.backend_result["dropped_targets"]] == ["10.0.0.7"]
    assert second.ttl_s == first.ttl_s == 60, "more targets of the same alert are no repeat offence"
    assert {d.id for d in store.active_blocks(clock_dt(clock))} == {first.id, second.id}
    # NetworkPolicies are additive: the pod's first policy now excepts the new targets too.
    assert second.backend_result["networkpolicy"]["updated"] == [first.id]
    (doc,) = yaml.safe_load_all(Path(first.backend_result["networkpolicy"]["manifest"]).read_text())
    assert doc["spec"]["egress"][0]["to"][0]["ipBlock"]["except"] == [
        "10.244.2.7/32",
        "10.244.2.8/32",
        "10.244.2.9/32",
    ]
    # Re-delivery of any earlier version decides nothing; nor does a restarted enforcer.
    send(bus, s, alert(targets=["10.244.2.7"]), grown)
    assert e.poll_once(0.1) == []
    again, _, _ = make(store, tmp_path, clock, mode="enforce")
    assert again.handle_alert(grown) is None
    assert [p.id for p in published(bus, s)] == [first.id, second.id]


def test_a_revoked_or_refused_target_of_an_open_alert_is_not_taken_again(
    store: Store, tmp_path: Path
) -> None:
    clock = Clock()
    e, _, _ = make(store, tmp_path, clock, mode="enforce", max_new_blocks_per_minute=1)
    first = e.handle_alert(alert(targets=["10.244.2.7"]))
    assert first is not None and first.status == "applied"
    refused = e.handle_alert(alert(targets=["10.244.2.7", "10.244.2.8"]))
    assert refused is not None and (refused.status, refused.guardrail, refused.targets) == (
        "refused",
        "max_new_blocks_per_minute",
        ["10.244.2.8"],
    )
    assert e.handle_alert(alert(targets=["10.244.2.7", "10.244.2.8"])) is None
    e.revoke(first.id, by="alice")
    clock.now += 61
    assert e.handle_alert(alert(targets=["10.244.2.7", "10.244.2.8"])) is None, "a person's revoke holds"
    later = e.handle_alert(alert(targets=["10.244.2.7", "10.244.2.8", "10.244.2.9"]))
    assert later is not None and (later.status, later.targets) == ("applied", ["10.244.2.9"])


def test_a_quarantined_source_needs_no_decision_for_new_targets(store: Store, tmp_path: Path) -> None:
    clock = Clock()
    e, _, _ = make(store, tmp_path, clock, mode="enforce", action="quarantine")
    first = e.handle_alert(alert())
    assert first is not None and first.status == "applied" and first.action == "quarantine"
    assert e.handle_alert(alert(targets=["10.244.2.7", "10.244.2.8"])) is None


def test_new_targets_in_dry_run_are_simulated_and_rendered(tmp_path: Path) -> None:
    alerts = [alert(targets=["10.244.2.7"]), alert(targets=["10.244.2.7", "10.244.2.8"])]
    decisions = plan_offline(alerts, settings(), tmp_path)
    assert [(d.status, d.targets) for d in decisions] == [
        ("simulated", ["10.244.2.7"]),
        ("simulated", ["10.244.2.8"]),
    ]
    nft = (tmp_path / "rules.nft").read_text()
    assert "10.244.1.2 . 10.244.2.7 timeout" in nft and "10.244.1.2 . 10.244.2.8 timeout" in nft


def clock_dt(clock: Clock) -> datetime:
    return datetime.fromtimestamp(clock.now, UTC)
