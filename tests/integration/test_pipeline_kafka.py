"""The pipeline runtime on the real broker (tansu) and the real PostgreSQL, with the real engine.

Must show (issue 4): two workers in one consumer group raise the same alerts as one worker;
a pipeline process killed with SIGKILL mid-stream and restarted skips no batch (rollup totals
equal the input's) and duplicates no alert (the same alerts as an uninterrupted run).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from flowwarden import simulator
from flowwarden.bus import KafkaBus, publish_flows
from flowwarden.kube import PodInventory
from flowwarden.pipeline.detection.engine import DetectionEngine
from flowwarden.pipeline.runtime.model_watch import ModelWatcher
from flowwarden.pipeline.runtime.notify import NotifierHub
from flowwarden.pipeline.runtime.offline import detect_flows
from flowwarden.pipeline.runtime.stage import PipelineStage, StageOptions
from flowwarden.records import Alert
from flowwarden.settings import Settings, dump_settings
from flowwarden.store import Store
from tests.support.broker import unique_group
from tests.support.netns import wait_for
from tests.support.stage_thread import StageThread

pytestmark = pytest.mark.integration

CHUNK_S = 5.0  # simulated seconds per published batch, like a collector's flush interval


@pytest.fixture(scope="module")
def sim() -> Any:
    return simulator.simulate(minutes=4, pods=30, seed=23, attacks="all")


@pytest.fixture(scope="module")
def warm_state() -> bytes:
    """Benign history of the same workloads (another seed, the day before), as a model ships it.

    Baselines and seen edges are kept per workload too, while flows are spread over the
    partitions by source IP: from a cold start, two workers each learn a workload from
    their share of its pods and can disagree with one worker on a brand-new workload.
    With the workloads' history (what a running pipeline has, and what a model's
    warm-start state gives a new one) they must agree exactly.
    """
    history = simulator.simulate(
        minutes=10, pods=30, seed=1023, benign_only=True, start=datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
    )
    engine = DetectionEngine(Settings(), inventory=PodInventory.from_dict(history.inventory))
    engine.process(history.flows)
    engine.flush()
    state: bytes = engine.export_state()
    return state


def with_changes(settings: Settings, **sections: dict[str, Any]) -> Settings:
    data = settings.model_dump()
    for name, values in sections.items():
        for key, value in values.items():
            if isinstance(value, dict):
                data[name][key] = {**data[name][key], **value}
            else:
                data[name][key] = value
    return Settings.model_validate(data)


def chunks(flows: pd.DataFrame) -> list[pd.DataFrame]:
    ts = flows["ts_end"].to_numpy()
    edges = np.arange(ts.min(), ts.max() + CHUNK_S, CHUNK_S)
    return [flows[(ts >= lo) & (ts < lo + CHUNK_S)] for lo in edges]


def publish(settings: Settings, parts: list[pd.DataFrame]) -> int:
    bus = KafkaBus(settings.kafka)
    topics = settings.kafka.topics
    bus.ensure_topics([topics.flows, topics.alerts, topics.flows_dlq])
    producer = bus.producer()
    sent = sum(
        publish_flows(producer, settings.kafka.topics.flows, p, settings.kafka.partitions) for p in parts
    )
    assert producer.flush(60)
    assert producer.failed_count == 0
    producer.close()
    return sent


class Worker(StageThread):
    """A pipeline stage with the real engine, looping in a thread."""

    def __init__(
        self, settings: Settings, store: Store, inventory: dict[str, Any], worker_id: str, warm: bytes
    ) -> None:
        engine = DetectionEngine(settings, inventory=PodInventory.from_dict(inventory))
        engine.import_state(warm, clocks=False)
        self.stage = PipelineStage(
            settings,
            bus=KafkaBus(settings.kafka),
            store=store,
            engine=engine,
            notifiers=NotifierHub([]),
            options=StageOptions(poll_timeout_s=0.2, idle_tick_s=1.0, align_idle_s=3.0, worker_id=worker_id),
        )
        super().__init__(self.stage, f"worker-{worker_id}")

    def start(self) -> Self:
        self.stage.start()
        return super().start()

    def partitions(self) -> set[int]:
        return {p for _, p in self.stage._assigned}

    def idle(self) -> bool:
        """Everything it owns was consumed and every window closed (the idle clock did it)."""
        return not len(self.stage.aligner) and self.stage.engine.open_window_floor() is None

    def stop(self) -> None:
        self.halt()
        self.stage.stop()


def test_two_workers_in_one_group_raise_the_same_alerts_as_one(
    kafka_settings: Settings, fresh_pg_url: str, tmp_path: Path, sim: Any, warm_state: bytes
) -> None:
    valid = len(sim.flows)
    one = with_changes(
        kafka_settings, pipeline={"group_id": unique_group("one"), "checkpoint_interval_s": 1.0}
    )
    two = with_changes(
        kafka_settings,
        pipeline={"group_id": unique_group("two"), "checkpoint_interval_s": 1.0},
        kafka={"topics": {"alerts": kafka_settings.kafka.topics.alerts + "-two"}},
    )
    all_partitions = set(range(kafka_settings.kafka.partitions))
    assert len(all_partitions) >= 2
    store_one = Store(f"sqlite:///{tmp_path / 'one.db'}").start()
    store_two = Store(fresh_pg_url).start()
    workers: list[Worker] = []
    try:
        pair = [Worker(two, store_two, sim.inventory, f"w{i}", warm_state).start() for i in range(2)]
        workers += pair
        # Both members hold partitions before any flow exists: no rebalance mid-stream.
        wait_for(
            lambda: (
                all(w.partitions() for w in pair) and pair[0].partitions() | pair[1].partitions() == {0, 1, 2}
            ),
            timeout=90,
            what="the two workers to split the partitions",
        )
        assert not pair[0].partitions() & pair[1].partitions()
        solo = Worker(one, store_one, sim.inventory, "solo", warm_state).start()
        workers.append(solo)
        wait_for(
            lambda: solo.partitions() == all_partitions, timeout=90, what="the single worker's assignment"
        )

        publish(kafka_settings, chunks(sim.flows))

        def done(ws: list[Worker]) -> bool:
            return sum(w.stage.stats.flows for w in ws) == valid and all(w.idle() for w in ws)

        wait_for(
            lambda: done([solo]) and done(pair), timeout=180, what="all flows consumed and windows closed"
        )
        for w in workers:
            w.stop()
        workers.clear()

        alone = {a.id: a for a in store_one.list_alerts()}
        together = {a.id: a for a in store_two.list_alerts()}
        assert len(alone) >= 5
        assert len({a.detector for a in alone.values()}) >= 4
        assert set(together) == set(alone)
        assert {i: a.detector for i, a in together.items()} == {i: a.detector for i, a in alone.items()}
        # Each pair member did part of the work.
        assert all(w.stage.stats.flows > 0 for w in pair)
        # Every batch of both groups is marked done once in its store.
        assert store_batches(store_one, one) == store_batches(store_two, two)
    finally:
        for w in workers:
            w.abandon()
        store_one.stop()
        store_two.stop()


def store_batches(store: Store, settings: Settings) -> int:
    with store.engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT count(*) FROM consumed_batches WHERE group_id = :g"),
                {"g": settings.pipeline.group_id},
            ).scalar_one()
        )


def rollup_sums(store: Store) -> tuple[int, int]:
    with store.engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT coalesce(sum(bytes_out), 0), coalesce(sum(packets), 0) FROM flow_rollups")
        )
        b, p = row.one()
    return int(b), int(p)


def start_pipeline(config: Path, log: Path) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("flowwarden")
    with log.open("ab") as fh:
        return subprocess.Popen(
            [str(exe), "pipeline", "run", "--config", str(config), "--metrics-port", "0", "--flush-on-stop"],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)


def test_sigkill_mid_stream_then_restart_skips_no_batch_and_duplicates_no_alert(
    kafka_settings: Settings,
    fresh_pg_url: str,
    tmp_path: Path,
    sim: Any,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    inventory = tmp_path / "pods.json"
    inventory.write_text(__import__("json").dumps(sim.inventory))
    settings = with_changes(
        kafka_settings,
        pipeline={
            "group_id": unique_group("crash"),
            "checkpoint_interval_s": 1.0,
            "metrics_port": 0,
        },
        kubernetes={"inventory_path": str(inventory)},
        store={"url": fresh_pg_url},
    )
    config = tmp_path / "pipeline.yaml"
    data = yaml.safe_load(dump_settings(settings))
    data["kafka"].pop("sasl_password", None)
    config.write_text(yaml.safe_dump(data))
    log = tmp_path / "pipeline.log"
    store = Store(fresh_pg_url).start()
    try:
        parts = chunks(sim.flows)
        half = len(parts) // 2
        sent = publish(settings, parts[:half])
        processes.append(start_pipeline(config, log))

        def progress() -> int:
            assert processes[-1].poll() is None, log.read_text()[-3000:]
            return store_batches(store, settings)

        # Mid-stream: some of the first half stored, with a checkpoint or more behind it.
        wait_for(lambda: progress() >= sent // 3, timeout=120, what="the pipeline to store some batches")
        processes[-1].send_signal(signal.SIGKILL)
        processes[-1].wait(timeout=30)
        assert processes[-1].returncode == -signal.SIGKILL
        marked_at_kill = store_batches(store, settings)
        assert marked_at_kill < sent + 1  # it was mid-stream (the second half is not even sent)

        sent += publish(settings, parts[half:])  # flows keep coming while it is down
        processes.append(start_pipeline(config, log))
        wait_for(lambda: progress() == sent, timeout=180, what="every batch stored after the restart")
        # A clean stop closes the last windows (if the idle clock has not yet) and commits.
        processes[-1].send_signal(signal.SIGTERM)
        assert processes[-1].wait(timeout=60) == 0, log.read_text()[-3000:]
        # The process runs with the model the package ships (and its warm-start history): the reference too.
        model = ModelWatcher(settings.pipeline.model_dir).initial()
        expected = detect_flows(
            sim.flows, settings=settings, inventory=PodInventory.from_dict(sim.inventory), model=model
        )
        expected_ids = {a.id for a in expected.alerts}

        # No batch skipped: every batch's effect is in the store, once.
        assert rollup_sums(store) == (
            int(sim.flows["bytes_out"].sum()),
            int(sim.flows["pkts_out"].sum() + sim.flows["pkts_in"].sum()),
        )
        # No alert duplicated: exactly the alerts of an uninterrupted run of the same engine.
        stored = store.list_alerts()
        assert len(expected_ids) >= 5
        assert (
            sorted(
                (a.detector, a.entity.key(), str(a.window_start)) for a in stored if a.id not in expected_ids
            )
            == []
        )
        assert {a.id for a in stored} == expected_ids
        # The alerts topic may carry a replayed alert twice (at-least-once), never a new id.
        topic_ids = read_alert_ids(settings)
        assert topic_ids == expected_ids
        text = log.read_text()
        assert "state restored" in text
        # The restarted process read again batches the killed one had stored: replay happened.
        restarted = int(text.rsplit("pipeline stopped: ", 1)[1].split(" batches")[0])
        assert restarted > sent - marked_at_kill
    finally:
        store.stop()


def read_alert_ids(settings: Settings) -> set[str]:
    bus = KafkaBus(settings.kafka)
    consumer = bus.consumer([settings.kafka.topics.alerts], unique_group("reader"))
    ids: set[str] = set()
    empty = 0
    try:
        for _ in range(200):
            got = consumer.poll(timeout_s=1.0, max_records=5000)
            ids |= {Alert.from_json(m.value).id for m in got}
            empty = 0 if got else empty + 1
            if empty >= 3 and ids:
                break
    finally:
        consumer.close()
    return ids
