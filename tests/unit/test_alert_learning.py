"""Learning made visible (issue 15 item 5) and verdicts followed by the runtime (item 4).

An alert raised while its entity's workload or the engine's memory is still learning says so
(``learning: true``), is at most ``medium``, keeps the flag in the store (migration 4) and on
the wire, and the enforcer refuses to act on it (guardrail ``learning``) unless
``enforcement.act_on_learning``. The runtime's :class:`VerdictFollower` applies each verdict
once, again after a restart only when the checkpoint does not hold it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from flowwarden.bus_memory import MemoryBus
from flowwarden.enforcement.backends.networkpolicy import NetworkPolicyBackend
from flowwarden.enforcement.enforcer import Enforcer
from flowwarden.enforcement.guardrails import Context, Guardrails
from flowwarden.kube import PodInventory
from flowwarden.migrations import MIGRATIONS
from flowwarden.pipeline.detection.alerts import capped_severity
from flowwarden.pipeline.detection.engine import DetectionEngine
from flowwarden.pipeline.detection.feedback import RESOLUTIONS_KEY, add_resolution
from flowwarden.pipeline.runtime.verdicts import VerdictFollower
from flowwarden.records import Alert, Entity
from flowwarden.settings import Settings
from flowwarden.store import Store
from tests.unit.enforcement_support import T0, alert, decision, settings
from tests.unit.flowkit import T0 as FLOW_T0
from tests.unit.flowkit import flows, pod


def test_severity_is_capped_at_medium_while_learning() -> None:
    assert capped_severity(0.95, learning=True) == "medium"
    assert capped_severity(0.95, learning=False) == "critical"
    assert capped_severity(0.3, learning=True) == "low"  # a cap, never a raise


def _upload_engine() -> tuple[DetectionEngine, list[dict[str, Any]]]:
    """A cold engine; in its first minute (learning) a port scan and metadata API reads from a
    pod, long after (not learning) an upload of 8 MB to a new address."""
    inv = PodInventory.from_dict(
        {"items": [pod("web-5d9c8f7b6-a", "10.244.1.30"), pod("api-1", "10.244.1.11", owner=None)]}
    )
    src = "10.244.1.30"
    rows: list[dict[str, Any]] = [
        {"ts_start": t, "src_ip": src, "dst_ip": "10.244.1.11", "dst_port": 8080}
        for t in np.arange(FLOW_T0, FLOW_T0 + 900, 5.0)
    ]
    rows += [
        {"ts_start": FLOW_T0 + 30 + 0.1 * i, "src_ip": src, "dst_ip": "10.244.1.11", "dst_port": 1000 + i}
        | {"state": "rejected", "bytes_out": 60, "bytes_in": 0, "pkts_out": 1, "pkts_in": 1}
        for i in range(40)
    ]
    rows += [
        {"ts_start": FLOW_T0 + 35 + i, "src_ip": src, "dst_ip": "169.254.169.254", "dst_port": 80}
        for i in range(4)
    ]
    t = FLOW_T0 + 700
    rows.append(
        {
            "ts_start": t,
            "ts_end": t + 2,
            "src_ip": src,
            "dst_ip": "198.51.100.8",
            "dst_port": 443,
            "bytes_out": 8e6,
        }
    )
    return DetectionEngine(Settings(), inventory=inv), rows


def test_an_alert_raised_while_learning_says_so_and_is_at_most_medium() -> None:
    eng, rows = _upload_engine()
    alerts = {a.detector: a for a in eng.process(flows(rows)).alerts + eng.flush().alerts}
    for name in ("port_scan", "metadata_api"):  # in the engine's first minute
        assert alerts[name].learning and alerts[name].severity == "medium", alerts[name]
    assert alerts["port_scan"].score >= 0.9  # critical, were it not learning
    upload = alerts["new_destination_volume"]  # ten minutes in
    assert not upload.learning and upload.severity == "critical"
    assert Alert.from_json(alerts["port_scan"].to_json()).learning  # on the wire


def test_a_long_running_pod_that_never_sourced_a_flow_is_not_learning_when_it_starts_scanning() -> None:
    """A broker's pod, running for an hour by the inventory, answers for ten minutes, then scans:
    its workload's first *sourced* flow is the scan, but nothing about it is new to the cluster."""
    started = datetime.fromtimestamp(FLOW_T0 - 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    broker = pod("kafka-0", "10.244.1.40", owner=("StatefulSet", "kafka"), created=started)
    inv = PodInventory.from_dict({"items": [broker, pod("web-5d9c8f7b6-a", "10.244.1.30")]})
    rows: list[dict[str, Any]] = [
        {"ts_start": t, "src_ip": "10.244.1.30", "dst_ip": "10.244.1.40", "dst_port": 9092}
        for t in np.arange(FLOW_T0, FLOW_T0 + 900, 5.0)
    ]
    rows += [
        {"ts_start": FLOW_T0 + 600 + 0.1 * i, "src_ip": "10.244.1.40", "dst_ip": "10.244.1.30",
         "dst_port": 1000 + i, "state": "rejected", "bytes_out": 60, "bytes_in": 0, "pkts_out": 1,
         "pkts_in": 1}
        for i in range(40)
    ]  # fmt: skip
    eng = DetectionEngine(Settings(), inventory=inv)
    alerts = [a for a in eng.process(flows(rows)).alerts + eng.flush().alerts if a.detector == "port_scan"]
    assert alerts and alerts[0].entity.pod == "kafka-0"
    assert not alerts[0].learning and alerts[0].severity == "critical", alerts[0]


def test_resolving_an_alert_closes_it_in_the_engine() -> None:
    eng, rows = _upload_engine()
    df = flows(rows)
    alerts = eng.process(df[df["ts_end"] < FLOW_T0 + 740]).alerts  # the upload's alert still open
    a = next(x for x in alerts if x.targets == ["198.51.100.8"])
    assert a.id in {o.id for o in eng.alerts.open.values()}
    assert eng.resolve(a, benign=True) == 1
    assert a.id not in {o.id for o in eng.alerts.open.values()}


# ---------------------------------------------------------------------- store


def test_the_learning_flag_is_kept_in_the_store_and_merged_by_the_newest(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fw.db'}"
    with Store(url, migrations=MIGRATIONS[:3]) as old:  # as version 3 made it: no column
        with old.transaction() as conn:
            conn.execute(sa.text("ALTER TABLE alerts DROP COLUMN learning"))
        assert "learning" not in {c["name"] for c in sa.inspect(old.engine).get_columns("alerts")}
    a = alert().model_copy(update={"learning": True, "severity": "medium"})
    with Store(url) as s:  # migration 4 adds it
        assert s.schema_version() == MIGRATIONS[-1].version
        s.upsert_alerts([a])
        got = s.get_alert(a.id)
        assert got is not None and got.learning and got.severity == "medium"
        later = a.model_copy(
            update={"learning": False, "severity": "critical", "last_seen": a.window_end.replace(minute=59)}
        )
        s.upsert_alerts([later])
        got = s.get_alert(a.id)
        assert got is not None and not got.learning and got.severity == "critical"


# ---------------------------------------------------------------------- enforcement


def test_the_learning_guardrail_refuses_unless_acting_on_learning_is_allowed() -> None:
    d = decision()
    r = Guardrails(settings()).check(d, Context(learning=True))
    assert r is not None and r.guardrail == "learning" and "act_on_learning" in r.reason
    assert Guardrails(settings()).check(d, Context(learning=False)) is None
    assert Guardrails(settings(act_on_learning=True)).check(d, Context(learning=True)) is None


@pytest.fixture
def store() -> Iterator[Store]:
    s = Store("sqlite://").start()
    yield s
    s.stop()


class _Clock:
    def __call__(self) -> float:
        return T0.timestamp()


@pytest.mark.parametrize(("act", "status"), [(False, "refused"), (True, "applied")])
def test_the_enforcer_records_why_it_leaves_a_learning_alert_alone(
    store: Store, tmp_path: Path, act: bool, status: str
) -> None:
    s = settings(
        gitops_dir=str(tmp_path / "gitops"), backends=["networkpolicy"], mode="enforce", act_on_learning=act
    )
    bus = MemoryBus(default_partitions=1)
    e = Enforcer(s, store=store, bus=bus, backends=[NetworkPolicyBackend(s)], clock=_Clock())
    e.start()
    # Capped at medium while learning: below min_severity (high), yet judged on its score.
    a = alert(score=0.95, severity="medium").model_copy(update={"learning": True})
    p = bus.producer()
    p.send(s.kafka.topics.alerts, a.to_json().encode())
    p.flush()
    (d,) = e.poll_once(0.1)
    assert d.status == status
    if not act:
        assert d.guardrail == "learning" and "still learning" in d.reason
        assert e.metrics.refusals.labels("learning")._value.get() == 1
    e.stop()


# ---------------------------------------------------------------------- the runtime's follower


class _Engine:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    def resolve(self, alert: Alert, *, benign: bool) -> int:
        self.calls.append((alert.id, benign))
        return 1


def _verdict(store: Store, alert_id: str, verdict: str, minute: int) -> None:
    at = datetime(2026, 12, 4, 7, minute, tzinfo=UTC)
    doc = add_resolution(
        store.get_state(RESOLUTIONS_KEY), alert_id=alert_id, verdict=verdict, by="ana", reason="", at=at
    )
    store.put_state(RESOLUTIONS_KEY, doc)


def test_the_follower_applies_each_verdict_once_and_again_only_when_it_changes(store: Store) -> None:
    a = alert(ip="10.244.1.7")
    store.upsert_alerts([a])
    eng, follower = _Engine(), VerdictFollower(poll_s=2.0)
    assert follower.due(0.0)
    assert follower.poll(store, eng, 0.0) == 0  # nothing recorded yet
    assert not follower.due(1.0) and follower.due(2.0)
    _verdict(store, a.id, "benign", 1)
    _verdict(store, "no-such-alert", "benign", 1)  # waits for its alert
    assert follower.poll(store, eng, 2.0) == 1 and eng.calls == [(a.id, True)]
    assert follower.poll(store, eng, 4.0) == 0  # idempotent
    _verdict(store, a.id, "malicious", 2)  # a person changed their mind: a new verdict
    assert follower.poll(store, eng, 6.0) == 1 and eng.calls[-1] == (a.id, False)
    # After a restart from a checkpoint that holds them: nothing again.
    again = VerdictFollower(poll_s=2.0)
    again.restore(follower.export())
    assert again.poll(store, eng, 0.0) == 0
    # From a checkpoint older than the verdicts (or none): applied again, as the state lacks them.
    fresh = VerdictFollower(poll_s=2.0)
    fresh.restore(None)
    assert fresh.poll(store, eng, 0.0) == 1


def test_a_learning_alert_entity_round_trips() -> None:
    e = Entity(ip="10.244.1.7", namespace="shop", pod="web-1", workload="web")
    a = alert().model_copy(update={"entity": e, "learning": True})
    assert Alert.from_json(a.to_json()) == a
