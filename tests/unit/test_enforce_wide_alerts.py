"""Alerts with more targets than ``max_targets_per_block``: a quarantine proposal for a person, and
the in-memory views that keep the blast-radius checks free of scans."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from flowwarden.enforcement.guardrails import Context, Guardrails
from flowwarden.store import Store
from tests.unit.enforcement_support import T0, alert, decision, settings
from tests.unit.test_enforcer import Clock, make, published, send


@pytest.fixture
def store() -> Iterator[Store]:
    s = Store("sqlite://").start()
    yield s
    s.stop()


def sweep(n: int) -> list[str]:
    return [f"10.244.{2 + i // 250}.{i % 250 + 1}" for i in range(n)]


def test_a_wide_alert_becomes_a_quarantine_that_waits_for_approval(store: Store, tmp_path: Path) -> None:
    clock = Clock()
    e, bus, s = make(store, tmp_path, clock, mode="enforce", max_targets_per_block=10)
    send(bus, s, alert(targets=sweep(25)))
    (d,) = e.poll_once(0.1)
    assert (d.action, d.mode, d.status, d.targets) == ("quarantine", "approval", "pending", [])
    assert "25 targets exceed max_targets_per_block=10" in d.reason and "and 20 more" in d.reason
    assert d.backend_result["wide_alert"] == {"targets": 25, "limit": 10, "first": sweep(10)}
    assert e.metrics.targets_over_limit._value.get() == 15
    assert store.active_blocks(T0) == []
    # A re-delivery, even with more targets, decides nothing more.
    send(bus, s, alert(targets=sweep(40)))
    assert e.poll_once(0.1) == []
    approved = e.approve(d.id, by="alice")
    assert approved.status == "applied" and approved.action == "quarantine"
    assert [p.status for p in published(bus, s)] == ["pending", "applied"]


def test_an_alert_at_the_limit_is_an_ordinary_block(store: Store, tmp_path: Path) -> None:
    e, bus, s = make(store, tmp_path, Clock(), mode="enforce", max_targets_per_block=10)
    send(bus, s, alert(targets=sweep(10)))
    (d,) = e.poll_once(0.1)
    assert (d.action, d.status, len(d.targets)) == ("block", "applied", 10)


def test_a_person_s_block_over_the_limit_is_refused() -> None:
    g = Guardrails(settings(max_targets_per_block=3))
    assert g.check(decision(targets=sweep(4))).guardrail == "max_targets_per_block"  # type: ignore[union-attr]
    assert g.check(decision(targets=sweep(3))) is None


def test_the_views_drop_ended_blocks_and_count_the_last_minute(store: Store, tmp_path: Path) -> None:
    clock = Clock()
    e, bus, s = make(store, tmp_path, clock, mode="enforce", max_new_blocks_per_minute=2)
    send(bus, s, alert(ip="10.244.1.2", pod="a"), alert(ip="10.244.1.3", pod="b", offset_s=1))
    assert [d.status for d in e.poll_once(0.1)] == ["applied", "applied"]
    send(bus, s, alert(ip="10.244.1.4", pod="c", offset_s=2))
    (third,) = e.poll_once(0.1)
    assert third.guardrail == "max_new_blocks_per_minute"
    clock.now += 61  # past the minute and the TTL
    ctx = e.context("enforce")
    assert ctx.new_last_minute == 0 and len(ctx.active) == 0
    send(bus, s, alert(ip="10.244.1.5", pod="d", offset_s=3))
    (fourth,) = e.poll_once(0.1)
    assert fourth.status == "applied"
    # Reloaded from the store (another process's view of the same decisions): the same counts.
    e.load_views()
    ctx = e.context("enforce")
    assert ctx.new_last_minute == 1 and list(ctx.active) == [fourth.id]
    assert (
        Guardrails(s).max_active_blocks(decision(id=fourth.id), Context(active={fourth.id: fourth})) is None
    )
    assert fourth.created_at - T0 >= timedelta(seconds=61)
