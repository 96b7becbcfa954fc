"""The enforcer's audit trail on the real PostgreSQL store: decisions, replays, approval, expiry,
and a restart that rebuilds its views (offences, active blocks) from the database."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowwarden.enforcement.backends.networkpolicy import NetworkPolicyBackend
from flowwarden.enforcement.enforcer import Enforcer
from flowwarden.store import Store
from tests.unit.enforcement_support import T0, alert, settings

pytestmark = pytest.mark.integration


def test_enforcer_on_postgres(pg_store: Store, tmp_path: Path) -> None:
    now = [T0.timestamp()]
    s = settings(
        gitops_dir=str(tmp_path), backends=["networkpolicy"], mode="approval", ttl_s=60, max_active_blocks=1
    )
    first = Enforcer(s, store=pg_store, backends=[NetworkPolicyBackend(s)], clock=lambda: now[0])
    first.start(consume=False)
    pending = first.handle_alert(alert())
    assert pending is not None and pending.status == "pending"
    assert first.handle_alert(alert()) is None, "a replayed alert decides nothing"
    applied = first.approve(pending.id, by="alice")
    assert applied.status == "applied" and Path(applied.backend_result["networkpolicy"]["manifest"]).exists()

    # A new process: its views come from the database.
    second = Enforcer(s, store=pg_store, backends=[NetworkPolicyBackend(s)], clock=lambda: now[0])
    second.start(consume=False)
    other = second.handle_alert(alert(pod="web-2", ip="10.244.1.3", offset_s=20))
    assert other is not None and other.guardrail == "max_active_blocks", (
        "the active block came from the database"
    )
    repeat = second.handle_alert(alert(offset_s=40))
    assert repeat is not None and repeat.ttl_s == 120, "the earlier decision on web-1 escalates the TTL"

    now[0] += 61
    (expired,) = second.expire()
    assert expired.id == pending.id and expired.status == "expired"
    assert not Path(applied.backend_result["networkpolicy"]["manifest"]).exists()
    statuses = sorted(d.status for d in pg_store.list_decisions())
    assert statuses == ["expired", "refused", "refused"]


def test_new_targets_of_an_open_alert_on_postgres(pg_store: Store, tmp_path: Path) -> None:
    """The decisions of one alert are found in the database: a restarted enforcer decides only on
    the targets the alert gained, once."""
    s = settings(gitops_dir=str(tmp_path), backends=["networkpolicy"], mode="enforce", ttl_s=60)
    first = Enforcer(s, store=pg_store, backends=[NetworkPolicyBackend(s)], clock=lambda: T0.timestamp())
    first.start(consume=False)
    d = first.handle_alert(alert(targets=["10.244.2.7", "10.0.0.7"]))
    assert d is not None and (d.status, d.targets) == ("applied", ["10.244.2.7"])
    second = Enforcer(s, store=pg_store, backends=[NetworkPolicyBackend(s)], clock=lambda: T0.timestamp())
    second.start(consume=False)
    assert second.handle_alert(alert(targets=["10.0.0.7", "10.244.2.7"])) is None
    grown = second.handle_alert(alert(targets=["10.244.2.7", "10.0.0.7", "10.244.2.8"]))
    assert grown is not None and (grown.status, grown.targets) == ("applied", ["10.244.2.8"])
    assert second.handle_alert(alert(targets=["10.244.2.7", "10.0.0.7", "10.244.2.8"])) is None
    assert {x.id for x in pg_store.list_decisions(alert_id=d.alert_id)} == {d.id, grown.id}
