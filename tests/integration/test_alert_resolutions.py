"""A person's verdict reaches the running pipeline (issue 15 item 4), on the real broker (tansu)
and the real PostgreSQL, with the real engine.

Two replicas of one workload each upload 8 MB to the same external address, four minutes
apart (a CronJob-like job's runs). The pipeline alerts on the first; ``flowwarden alerts
resolve ID --benign`` (the CLI, writing to the store) closes that alert in the running engine,
and the second replica's upload raises nothing; with ``--malicious`` it is alerted. The
verdicts applied are counted (``flowwarden_alert_resolutions_total``) and kept in the
checkpoint: a restarted stage does not apply them again. And migration 4 on PostgreSQL: an
older store's alerts gain ``learning`` (false).
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from flowwarden.bus import KafkaBus, publish_flows
from flowwarden.cli import run
from flowwarden.kube import PodInventory
from flowwarden.migrations import MIGRATIONS
from flowwarden.pipeline.detection.engine import DetectionEngine
from flowwarden.pipeline.runtime.notify import NotifierHub
from flowwarden.pipeline.runtime.stage import PipelineStage, StageOptions
from flowwarden.records import Alert, Entity
from flowwarden.settings import Settings
from flowwarden.store import Store, alert_to_row
from tests.support.broker import unique_group
from tests.support.netns import wait_for
from tests.support.stage_thread import StageThread
from tests.unit.flowkit import flows, pod

pytestmark = pytest.mark.integration

REPLICAS = [f"backup-6b9f8d7c5-r{i}" for i in range(2)]
BUCKET = "198.51.100.77"


def _scenario() -> tuple[PodInventory, pd.DataFrame, float]:
    """The two replicas' background calls and uploads, dated in the last 20 minutes (the
    pipeline sends flows from the future to the dead-letter topic); and the time between the
    two uploads."""
    t0 = math.floor((time.time() - 1200) / 10.0) * 10.0
    pods = [
        pod("checkout-7f6d5c4b3-pq9rs", "10.244.1.11", owner=("ReplicaSet", "checkout-7f6d5c4b3")),
        *[
            pod(name, f"10.244.1.{30 + i}", ns="data", owner=("ReplicaSet", "backup-6b9f8d7c5"))
            for i, name in enumerate(REPLICAS)
        ],
    ]
    rows: list[dict[str, Any]] = []
    for t in np.arange(t0, t0 + 900, 5.0):
        rows.append({"ts_start": t + 1, "src_ip": "10.244.1.11", "dst_ip": "203.0.113.10", "dst_port": 443})
    for i in range(2):
        src = f"10.244.1.{30 + i}"
        rows += [
            {"ts_start": t, "src_ip": src, "dst_ip": "10.244.1.11", "dst_port": 8080}
            for t in np.arange(t0, t0 + 900, 7.0)
        ]
        t = t0 + 500 + 240 * i
        rows.append(
            {
                "ts_start": t,
                "ts_end": t + 2,
                "src_ip": src,
                "dst_ip": BUCKET,
                "dst_port": 443,
                "bytes_out": 8_000_000,
            }
        )
    df = flows(rows).sort_values("ts_end", kind="stable").reset_index(drop=True)
    return PodInventory.from_dict({"items": pods}), df, t0 + 600


class Pipeline(StageThread):
    """One pipeline stage with the real engine, looping in a thread."""

    def __init__(self, settings: Settings, store: Store, inventory: PodInventory) -> None:
        self.engine = DetectionEngine(settings, inventory=inventory)
        self.stage = PipelineStage(
            settings,
            bus=KafkaBus(settings.kafka),
            store=store,
            engine=self.engine,
            notifiers=NotifierHub([]),
            options=StageOptions(
                poll_timeout_s=0.2, idle_tick_s=1.0, align_idle_s=1.0, resolution_poll_s=0.5
            ),
        )
        super().__init__(self.stage, "pipeline")

    def __enter__(self) -> Pipeline:
        self.stage.start()
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.halt()
        self.stage.stop()

    def idle(self, flows_in: int) -> bool:
        """Every flow published so far consumed and every window closed."""
        s = self.stage
        return s.stats.flows == flows_in and not len(s.aligner) and s.engine.open_window_floor() is None

    def resolutions(self, verdict: str) -> float:
        value = self.stage.metrics.registry.get_sample_value(
            "flowwarden_alert_resolutions_total", {"verdict": verdict}
        )
        return float(value or 0.0)


def publish(settings: Settings, df: pd.DataFrame) -> None:
    """One message per partition, delivered before the pipeline can raise anything: the test
    broker (tansu, in memory) can give one offset twice to two producers writing at once,
    here this one and the pipeline's alerts."""
    bus = KafkaBus(settings.kafka)
    topics = settings.kafka.topics
    bus.ensure_topics([topics.flows, topics.alerts, topics.flows_dlq])
    producer = bus.producer()
    publish_flows(producer, topics.flows, df, settings.kafka.partitions, max_rows=len(df))
    assert producer.flush(60) and producer.failed_count == 0
    producer.close()


@pytest.mark.parametrize("verdict", ["benign", "malicious"])
def test_a_verdict_through_the_cli_reaches_the_running_pipeline(
    verdict: str,
    kafka_settings: Settings,
    fresh_pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = kafka_settings.model_dump()
    data["pipeline"] |= {"group_id": unique_group("verdicts"), "checkpoint_interval_s": 1.0}
    data["store"] |= {"url": fresh_pg_url}
    settings = Settings.model_validate(data)
    monkeypatch.setenv("FLOWWARDEN_STORE__URL", fresh_pg_url)
    inventory, df, cut = _scenario()
    before, after = df[df["ts_end"] < cut], df[df["ts_end"] >= cut]
    with Store(fresh_pg_url) as store:
        with Pipeline(settings, store, inventory) as p:
            # Partitions held before any flow exists: no rebalance mid-stream.
            wait_for(lambda: len(p.stage._assigned) == 3, timeout=90, what="the partitions assigned")
            publish(settings, before)
            sent = len(before)
            wait_for(lambda: p.idle(sent), timeout=120, what="the first run's flows consumed")
            first = [a for a in store.list_alerts() if a.entity.pod == REPLICAS[0]]
            assert first and all(a.targets == [BUCKET] and not a.learning for a in first)
            ids = {a.id for a in first}
            assert ids <= {a.id for a in p.engine.alerts.open.values()}

            flag = "--benign" if verdict == "benign" else "--malicious"
            for alert_id in sorted(ids):  # one verdict per alert (each detector that fired)
                argv = ["alerts", "resolve", alert_id, flag, "--reason", "nightly backup", "--by", "ana"]
                assert run(argv) == 0
            wait_for(lambda: p.resolutions(verdict) == len(ids), timeout=30, what="the verdicts applied")
            # The open alerts closed: whatever follows is a new alert, not one of these growing.
            assert not ids & {a.id for a in p.engine.alerts.open.values()}

            publish(settings, after)
            sent += len(after)
            wait_for(lambda: p.idle(sent), timeout=120, what="the second run's flows consumed")
            second = [a for a in store.list_alerts() if a.entity.pod == REPLICAS[1]]
            if verdict == "benign":
                assert second == [], [(a.detector, a.summary) for a in second]
            else:
                assert second and all(BUCKET in a.targets for a in second)
            assert p.resolutions("benign") + p.resolutions("malicious") == len(ids)

        # A restart restores which verdicts the engine state holds: none is applied twice.
        with Pipeline(settings, store, inventory) as again:
            assert ids <= set(again.stage.verdicts.applied)  # restored at start
            wait_for(lambda: again.stage.verdicts.polls >= 2, timeout=30, what="the store asked twice")
            assert again.resolutions(verdict) == 0


def test_a_version_3_postgresql_store_gains_the_learning_flag(fresh_pg_url: str) -> None:
    """Migration 4 on PostgreSQL: the alerts of an older store read as not learning."""
    old = Alert(
        kind="exfiltration",
        detector="bulk_egress",
        score=0.9,
        severity="critical",
        entity=Entity(ip="10.244.1.30", namespace="data", pod=REPLICAS[0], workload="backup"),
        window_start=datetime(2026, 12, 4, 7, 0, tzinfo=UTC),
        window_end=datetime(2026, 12, 4, 7, 0, 10, tzinfo=UTC),
        targets=[BUCKET],
    )
    row = {k: v for k, v in alert_to_row(old).items() if k != "learning"}
    with Store(fresh_pg_url, migrations=MIGRATIONS[:3]) as v3, v3.transaction() as conn:
        # The tables as version 3 made them, and an alert written by that version.
        conn.execute(sa.text("DROP VIEW IF EXISTS service_edges"))
        conn.execute(sa.text("ALTER TABLE alerts DROP COLUMN learning"))
        v3_alerts = sa.Table("alerts", sa.MetaData(), autoload_with=conn)
        conn.execute(sa.insert(v3_alerts), [row])
    with Store(fresh_pg_url) as s:
        assert s.schema_version() == MIGRATIONS[-1].version
        got = s.get_alert(old.id)
        assert got is not None and got.learning is False
        s.upsert_alerts([old.model_copy(update={"id": "fresh", "learning": True, "severity": "medium"})])
        fresh = s.get_alert("fresh")
        assert fresh is not None and fresh.learning and fresh.severity == "medium"
