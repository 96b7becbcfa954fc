"""The pipeline runtime over the in-memory bus and SQLite: the embedded mode.

The runtime's guarantees are tested against a tiny stand-in engine defined here (windows
per source IP, one rule), so that a failure points at the runtime, not at detection: the
stand-in follows the engine contract of ``pipeline/runtime/ports.py``. The real engine runs
through the same stage in ``tests/integration/test_pipeline_kafka.py``.
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from flowwarden.bus import MemoryBus, dead_letter_of, publish_flows
from flowwarden.errors import ConfigError
from flowwarden.kube import PodInventory
from flowwarden.models.registry import LoadedModel
from flowwarden.pipeline.detection.stats import EngineStats
from flowwarden.pipeline.runtime.batches import CommitTracker, PartitionAligner, PendingBatch
from flowwarden.pipeline.runtime.metrics import PipelineMetrics
from flowwarden.pipeline.runtime.notify import NotifierHub
from flowwarden.pipeline.runtime.stage import PipelineStage, StageOptions
from flowwarden.records import Alert, Entity, conform_flows, empty_flows
from flowwarden.settings import Settings, load_settings
from flowwarden.store import Store
from flowwarden.wire import encode_flows

W = 10.0
T0 = 1_800_000_000.0  # aligned to the window size
EXFIL_BYTES = 5_000_000


class StandInEngine:
    """Windows per ``src_ip``; an alert when a window's bytes out exceed a threshold."""

    def __init__(self, window_s: float = W, lateness_s: float = 2.0) -> None:
        self.window_s = window_s
        self.lateness_s = lateness_s
        self.watermark = -math.inf
        self.open: dict[tuple[str, float], int] = {}
        self.windows_scored = 0
        self.evicted: dict[str, int] = {}
        self.state_entities = 0
        self.totals: dict[str, int] = {}  # "baseline": bytes per source of closed windows (checkpointed)
        self.model: LoadedModel | None = None

    def _close(self, clock: float, everything: bool = False) -> list[Alert]:
        limit = (
            math.inf if everything else math.floor((clock - self.lateness_s) / self.window_s) * self.window_s
        )
        alerts = []
        for key in sorted(k for k in self.open if k[1] + self.window_s <= limit):
            ip, ws = key
            total = self.open.pop(key)
            self.windows_scored += 1
            self.totals[ip] = self.totals.get(ip, 0) + total  # like baselines: folded in at close
            if total > EXFIL_BYTES:
                alerts.append(
                    Alert(
                        kind="exfiltration",
                        detector="bulk_egress",
                        score=min(1.0, total / (4 * EXFIL_BYTES)),
                        severity="high",
                        entity=Entity(ip=ip),
                        window_start=datetime.fromtimestamp(ws, UTC),
                        window_end=datetime.fromtimestamp(ws + self.window_s, UTC),
                        evidence={"bytes_out": total},
                    )
                )
        return alerts

    def process(self, flows: pd.DataFrame, *, now: float | None = None, enriched: bool = False) -> _Result:
        if len(flows):
            ws = np.floor(flows["ts_end"].to_numpy() / self.window_s) * self.window_s
            sums = flows.assign(ws=ws).groupby(["src_ip", "ws"])["bytes_out"].sum()
            ips, starts = sums.index.get_level_values(0), sums.index.get_level_values(1)
            for ip, w, b in zip(ips, starts, sums.to_numpy(), strict=True):
                key = (str(ip), float(w))
                self.open[key] = self.open.get(key, 0) + int(b)
            self.watermark = max(self.watermark, float(flows["ts_end"].max()))
        clock = self.watermark if now is None else max(self.watermark, now)
        self.state_entities = len(self.totals)
        return _Result(self._close(clock), flows, pd.DataFrame())

    def flush(self) -> _Result:
        return _Result(self._close(math.inf, everything=True), empty_flows(), pd.DataFrame())

    def open_window_floor(self) -> float | None:
        return min((ws for _, ws in self.open), default=None)

    def export_state(self) -> bytes:
        return json.dumps(self.totals).encode()

    def import_state(self, data: bytes) -> None:
        self.totals = json.loads(data)

    def set_model(self, model: LoadedModel | None) -> None:
        self.model = model

    def set_inventory(self, inventory: PodInventory | None) -> None:
        self.inventory = inventory

    def set_rules(self, policy: Any, policy_version: str, feeds: Any, feeds_version: str) -> None:
        self.rules = (policy_version, feeds_version)

    def resolve(self, alert: Alert, *, benign: bool) -> int:
        return 0

    def stats(self) -> EngineStats:
        return EngineStats(
            windows_scored=self.windows_scored, state_entities=self.state_entities, evicted=dict(self.evicted)
        )


class _Result:
    def __init__(self, alerts: list[Alert], enriched: pd.DataFrame, windows: pd.DataFrame) -> None:
        self.alerts = alerts
        self.enriched = enriched
        self.windows = windows


def make_flows(
    *, sources: int = 30, minutes: float = 2.0, exfil: tuple[int, ...] = (3, 17), seed: int = 1
) -> pd.DataFrame:
    """Every source sends one flow per second; the ``exfil`` sources send big ones in minute two."""
    rng = np.random.default_rng(seed)
    seconds = int(minutes * 60)
    src = np.tile(np.arange(sources), seconds)
    ts = T0 + np.repeat(np.arange(seconds), sources) + rng.uniform(0, 0.9, seconds * sources)
    bytes_out = rng.integers(100, 2000, seconds * sources)
    big = np.isin(src, exfil) & (ts >= T0 + 60)
    bytes_out[big] = 1_000_000
    return conform_flows(
        {
            "ts_start": ts - 0.05,
            "ts_end": ts,
            "node": "node-1",
            "src_ip": [f"10.244.0.{i + 10}" for i in src],
            "src_port": 40000,
            "dst_ip": "203.0.113.7",
            "dst_port": 443,
            "proto": 6,
            "bytes_out": bytes_out,
            "bytes_in": 100,
            "pkts_out": 10,
            "pkts_in": 5,
            "state": "closed",
        }
    )


def expected_alert_ids(flows: pd.DataFrame) -> set[str]:
    eng = StandInEngine()
    ids = {a.id for a in eng.process(flows).alerts}
    ids |= {a.id for a in eng.flush().alerts}
    return ids


def publish(bus: MemoryBus, settings: Settings, flows: pd.DataFrame, chunk_s: float = 5.0) -> int:
    """As collectors would: one batch per chunk of time, split by source over the partitions."""
    producer = bus.producer()
    sent = 0
    edges = np.arange(flows["ts_end"].min(), flows["ts_end"].max() + chunk_s, chunk_s)
    for lo in edges:
        part = flows[(flows["ts_end"] >= lo) & (flows["ts_end"] < lo + chunk_s)]
        sent += publish_flows(producer, settings.kafka.topics.flows, part, settings.kafka.partitions)
    producer.flush()
    return sent


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        None,
        # A checkpoint (and commit) at every step: the guarantees are easiest to see.
        # flowkit's flows are dated from T0 (January 2027): a wall-clock bound allows that.
        pipeline={
            "window_s": W,
            "group_id": "pipe-test",
            "checkpoint_interval_s": 0.001,
            "max_clock_skew_s": T0 + 86400 - time.time(),
        },
        store={"url": f"sqlite:///{tmp_path / 'fw.db'}"},
        kafka={"partitions": 4},
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    s = Store(settings.store.url).start()
    yield s
    s.stop()


class FakeClock:
    """A monotonic clock the test moves by hand (the stage's idle logic reads it)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def stand_in(stage: PipelineStage) -> StandInEngine:
    """The stage's engine, where the test gave it a :class:`StandInEngine`."""
    assert isinstance(stage.engine, StandInEngine)
    return stage.engine


def make_stage(settings: Settings, bus: MemoryBus, store: Store, **kw: object) -> PipelineStage:
    opts = StageOptions(poll_timeout_s=0.0, align_idle_s=5.0, idle_tick_s=2.0)
    return PipelineStage(
        settings,
        bus=bus,
        store=store,
        engine=StandInEngine(),
        notifiers=NotifierHub([]),
        options=opts,
        **kw,  # type: ignore[arg-type]
    )


def rollup_total(store: Store) -> tuple[int, int]:
    r = store.list_rollups()
    return int(r["bytes_out"].sum()), int(r["flows"].sum())


def test_embedded_stage_produces_every_alert_once_and_commits_everything(
    settings: Settings, store: Store
) -> None:
    bus = MemoryBus(default_partitions=4)
    flows = make_flows()
    stage = make_stage(settings, bus, store)
    stage.start()
    publish(bus, settings, flows)
    stage.drain(idle_polls=2, max_seconds=60)
    stage.stop()

    expected = expected_alert_ids(flows)
    assert len(expected) >= 2 * 6  # two sources, six windows each
    assert {a.id for a in store.list_alerts()} == expected
    on_topic = [Alert.from_json(m.value) for m in _read_all(bus, settings.kafka.topics.alerts)]
    assert {a.id for a in on_topic} == expected
    assert rollup_total(store) == (int(flows["bytes_out"].sum()), len(flows))
    committed = bus.committed(settings.pipeline.group_id)
    assert {tp: off for tp, off in committed.items() if off} == {
        (settings.kafka.topics.flows, p): n
        for p, n in enumerate(bus.end_offsets(settings.kafka.topics.flows))
        if n
    }
    assert stage.stats.flows == len(flows)


def test_partition_skew_does_not_change_the_alerts(settings: Settings, store: Store) -> None:
    """The memory bus hands out partition 0's whole backlog first; the aligner evens it out."""
    bus = MemoryBus(default_partitions=4)
    flows = make_flows(exfil=(3, 17, 21, 28))
    stage = make_stage(settings, bus, store)
    stage.start()
    publish(bus, settings, flows)
    stage.options.max_records = 3  # a few batches per poll: the skew of a real backlog
    stage.drain(idle_polls=2, max_seconds=60)
    stage.stop()
    assert {a.id for a in store.list_alerts()} == expected_alert_ids(flows)


def test_nothing_is_committed_while_its_window_is_open(settings: Settings, store: Store) -> None:
    bus = MemoryBus(default_partitions=1)
    s1 = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"partitions": 1})})
    clock = FakeClock()
    stage = make_stage(s1, bus, store, clock=clock)
    stage.start()
    flows = make_flows(sources=3, minutes=0.25, exfil=())
    first = flows[flows["ts_end"] < T0 + 5]
    publish(bus, s1, first)
    stage.step()
    assert stage.stats.flows == len(first)
    assert not bus.committed(s1.pipeline.group_id).get((s1.kafka.topics.flows, 0))
    # Data of the next windows pushes the watermark past the first window: now it may commit.
    publish(bus, s1, flows[flows["ts_end"] >= T0 + 5])
    clock.t += 1
    stage.step()
    stage.step()
    assert bus.committed(s1.pipeline.group_id).get((s1.kafka.topics.flows, 0), 0) >= 1
    stage.stop()


def test_idle_stream_closes_its_last_windows_without_new_data(settings: Settings, store: Store) -> None:
    bus = MemoryBus(default_partitions=4)
    clock = FakeClock()
    stage = make_stage(settings, bus, store, clock=clock)
    stage.start()
    flows = make_flows(minutes=1.5)
    publish(bus, settings, flows)
    for _ in range(20):
        if not stage.step():
            break
    clock.t += 10  # beyond align_idle_s: every partition has gone quiet
    stage.step()
    before = len(store.list_alerts())
    assert stage.engine.open_window_floor() is not None
    # The event clock: newest flow + wall time since the last feed; 15 s later every window is closed.
    clock.t += 15
    stage.step()
    assert stage.engine.open_window_floor() is None
    assert len(store.list_alerts()) > before
    assert {a.id for a in store.list_alerts()} == expected_alert_ids(flows)
    end = bus.end_offsets(settings.kafka.topics.flows)
    committed = bus.committed(settings.pipeline.group_id)
    assert all(committed.get((settings.kafka.topics.flows, p), 0) == n for p, n in enumerate(end))
    stage.stop()


def test_crash_then_restart_replays_without_double_counting(settings: Settings, store: Store) -> None:
    """A member that dies without committing: its successor replays, the store counts once."""
    bus = MemoryBus(default_partitions=4)
    flows = make_flows()
    publish(bus, settings, flows)
    first = make_stage(settings, bus, store)
    first.start()
    first.options.max_records = 4
    for _ in range(200):  # until part of the stream is fed (the memory bus serves partition 0 first)
        first.step()
        if first.stats.flows > len(flows) / 3:
            break
    assert 0 < first.stats.flows < len(flows)
    first.checkpoint()
    assert first.consumer is not None
    first.consumer.close()  # the crash: no stop(), nothing more committed

    second = make_stage(settings, bus, store)
    second.start()
    assert stand_in(second).totals  # the checkpoint came back
    second.drain(idle_polls=2, max_seconds=60)
    second.stop()
    assert second.stats.replayed > 0
    # The restored state plus the replay counts every byte once (the replay guard at work).
    assert stand_in(second).totals == flows.groupby("src_ip")["bytes_out"].sum().astype(int).to_dict()
    assert rollup_total(store) == (int(flows["bytes_out"].sum()), len(flows))
    ids = [a.id for a in store.list_alerts()]
    assert len(ids) == len(set(ids))
    assert set(ids) == expected_alert_ids(flows)


def test_bad_batches_and_rows_go_to_the_dead_letter_topic(settings: Settings, store: Store) -> None:
    bus = MemoryBus(default_partitions=4)
    topics = settings.kafka.topics
    bus.ensure_topics([topics.flows, topics.flows_dlq])
    producer = bus.producer()
    producer.send(topics.flows, b"not a flow batch", partition=0)
    flows = make_flows(sources=4, minutes=0.2, exfil=())
    bad = flows.head(3).copy()
    bad.loc[0, "src_ip"] = "999.1.1.1"
    bad.loc[1, "bytes_out"] = -5
    producer.send(topics.flows, encode_flows(pd.concat([bad, flows.tail(5)])), partition=1)
    metrics = PipelineMetrics()
    stage = make_stage(settings, bus, store, metrics=metrics)
    stage.start()
    stage.drain(idle_polls=2, max_seconds=30)
    stage.stop()
    letters = [dead_letter_of(m) for m in _read_all(bus, topics.flows_dlq)]
    fields = sorted(d.field for d in letters)
    assert fields == ["batch", "bytes_out", "src_ip"]
    assert any("bad magic" in d.reason for d in letters)
    assert stage.stats.flows == 6  # 1 good row of the bad three, plus five
    assert metrics.registry.get_sample_value("flowwarden_pipeline_dlq_total", {"cause": "src_ip"}) == 1
    assert metrics.registry.get_sample_value("flowwarden_pipeline_dlq_total", {"cause": "batch"}) == 1
    # The garbage did not block the partition: everything is committed.
    assert bus.committed(settings.pipeline.group_id).get((topics.flows, 0)) == 1


def test_metrics_are_served_with_the_dashboard_names(settings: Settings, store: Store) -> None:
    bus = MemoryBus(default_partitions=4)
    metrics = PipelineMetrics()
    port = metrics.serve(0, addr="127.0.0.1")
    try:
        stage = make_stage(settings, bus, store, metrics=metrics)
        stage.start()
        flows = make_flows(minutes=1.2, exfil=(5,))
        publish(bus, settings, flows)
        stage.drain(idle_polls=2, max_seconds=60)
        stage.stop()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        metrics.close()
    assert f"flowwarden_pipeline_flows_total {float(len(flows))}" in text
    assert 'flowwarden_pipeline_alerts_total{detector="bulk_egress",kind="exfiltration"}' in text
    for name in (
        "flowwarden_pipeline_batches_total",
        "flowwarden_pipeline_windows_scored_total",
        "flowwarden_pipeline_latency_seconds_bucket",
        "flowwarden_pipeline_state_entities 30.0",
        'flowwarden_pipeline_consumer_lag{partition="0"}',
    ):
        assert name in text, name


def test_stop_from_another_thread_ends_run(settings: Settings, store: Store) -> None:
    bus = MemoryBus(default_partitions=4)
    stage = make_stage(settings, bus, store)
    stage.start()
    publish(bus, settings, make_flows(minutes=0.5, exfil=()))
    stop = threading.Event()
    worker = threading.Thread(target=stage.run, args=(stop,), kwargs={"max_seconds": 60})
    worker.start()
    from tests.support.netns import wait_for

    wait_for(lambda: stage.stats.flows > 0, timeout=30, what="the stage to consume")
    stop.set()
    worker.join(timeout=30)
    assert not worker.is_alive()
    stage.stop()


def test_aligner_holds_the_partition_that_runs_ahead() -> None:
    aligner = PartitionAligner(idle_s=5.0)

    def batch(p: int, off: int, ts: float) -> PendingBatch:
        from flowwarden.bus import Message

        return PendingBatch(Message("flows", p, off, None, b"", 0), None, ts)

    aligner.expect([("flows", 0), ("flows", 1)], 0.0)
    aligner.add(batch(0, 0, 100.0), 0.0)
    aligner.add(batch(0, 1, 200.0), 0.0)
    assert aligner.release(1.0) == []  # partition 1 has not spoken yet
    aligner.add(batch(1, 0, 150.0), 1.0)
    out = aligner.release(1.0)
    assert [(b.message.partition, b.message.offset) for b in out] == [(0, 0), (1, 0)]
    assert [b.message.offset for b in aligner.release(7.0)] == [1]  # partition 1 went quiet


def test_commit_tracker_waits_for_the_oldest_open_window() -> None:
    from flowwarden.bus import Message

    tracker = CommitTracker()
    batches = [PendingBatch(Message("flows", 0, i, None, b"", 0), None, 0.0) for i in range(3)]
    for b in batches:
        tracker.add(b)
    batches[0].fed = batches[1].fed = True
    batches[0].bound, batches[1].bound = 10.0, 20.0
    assert [b.message.offset for b in tracker.ready(floor=20.0)] == [0]
    assert [b.message.offset for b in tracker.ready(floor=None)] == [1]  # 2 was never fed
    tracker.drop_through([batches[1]])
    assert len(tracker) == 1


def _read_all(bus: MemoryBus, topic: str) -> list:
    consumer = bus.consumer([topic], group_id=f"reader-{topic}")
    out: list = []
    for _ in range(100):
        got = consumer.poll(timeout_s=0.0, max_records=10_000)
        if not got:
            break
        out.extend(got)
    consumer.close()
    return out


def test_model_hot_swap_follows_the_registry(settings: Settings, store: Store, tmp_path: Path) -> None:
    """Promote, roll back, and a tampered promote that is refused while detection goes on."""
    from flowwarden.models import registry
    from flowwarden.models.estimators import BudgetThreshold, WindowAnomalyDetector
    from flowwarden.pipeline.runtime.model_watch import ModelWatcher

    rng = np.random.default_rng(0)
    features = pd.DataFrame(rng.normal(size=(200, 3)), columns=["flows", "bytes_out_ext", "ext_dsts"])
    reg = tmp_path / "registry"
    for version in ("v1", "v2", "v3"):
        est = WindowAnomalyDetector(n_estimators=5, random_state=int(version[1])).fit(features)
        registry.save_model(reg / version, estimator=est, threshold=BudgetThreshold())
    registry.promote(reg, "v1")

    clock = FakeClock()
    metrics = PipelineMetrics()
    bus = MemoryBus(default_partitions=4)
    stage = make_stage(settings, bus, store, clock=clock, metrics=metrics, model_watcher=ModelWatcher(reg))
    stage.options.model_poll_s = 5.0
    stage._next_model_poll = clock.t + 5.0
    stage.start()

    def info(version: str) -> float | None:
        return metrics.registry.get_sample_value("flowwarden_pipeline_model_info", {"version": version})

    engine = stand_in(stage)
    assert engine.model is not None and engine.model.version == "v1" and info("v1") == 1

    registry.promote(reg, "v2")
    clock.t += 1
    stage.step()
    assert engine.model is not None and engine.model.version == "v1"  # not polled yet
    clock.t += 5
    stage.step()
    assert (
        engine.model is not None and engine.model.version == "v2" and info("v2") == 1 and info("v1") is None
    )

    registry.promote(reg, "v3")
    (reg / "v3" / "estimator.skops").write_bytes(b"tampered")
    clock.t += 6
    stage.step()
    assert (
        engine.model is not None and engine.model.version == "v2" and info("v2") == 1
    )  # refused, the old model stays

    registry.rollback(reg)  # from v3 back to v2: nothing changes
    registry.rollback(reg)  # to v1
    clock.t += 6
    stage.step()
    assert (
        engine.model is not None and engine.model.version == "v1" and info("v1") == 1 and info("v2") is None
    )
    stage.stop()


def test_embedded_stage_with_the_real_engine_matches_offline_detection(
    settings: Settings, store: Store
) -> None:
    """The embedded mode's stage and ``flowwarden detect`` raise the same alerts on simulator data."""
    from flowwarden import simulator
    from flowwarden.pipeline.detection.engine import DetectionEngine
    from flowwarden.pipeline.runtime.offline import detect_flows

    sim = simulator.simulate(minutes=3, pods=30, seed=3, attacks="all")
    s = load_settings(None, store={"url": settings.store.url}, kafka={"partitions": 3})
    offline = {
        a.id
        for a in detect_flows(sim.flows, settings=s, inventory=PodInventory.from_dict(sim.inventory)).alerts
    }
    bus = MemoryBus(default_partitions=3)
    stage = PipelineStage(
        s,
        bus=bus,
        store=store,
        engine=DetectionEngine(s, inventory=PodInventory.from_dict(sim.inventory)),
        notifiers=NotifierHub([]),
        options=StageOptions(poll_timeout_s=0.0, max_records=10),
    )
    stage.start()
    publish(bus, s, sim.flows)
    stage.drain(idle_polls=2, max_seconds=120)
    stage.stop()
    assert len(offline) >= 3
    assert {a.id for a in store.list_alerts()} == offline
    assert int(store.list_rollups()["bytes_out"].sum()) == int(sim.flows["bytes_out"].sum())


def test_partitions_given_back_after_a_rebalance_are_not_fed_twice(settings: Settings, store: Store) -> None:
    bus = MemoryBus(default_partitions=4)
    flows = make_flows()
    publish(bus, settings, flows)
    stage = make_stage(settings, bus, store)
    stage.start()
    stage.options.max_records = 8
    for _ in range(200):
        stage.step()
        if stage.stats.flows > len(flows) / 3:
            break
    # A member joins and leaves: the partitions come back at their committed offsets.
    visitor = bus.consumer([settings.kafka.topics.flows], settings.pipeline.group_id)
    visitor.close()
    stage.drain(idle_polls=2, max_seconds=60)
    stage.stop()
    assert stage.stats.redelivered > 0
    assert stage.stats.flows == len(flows)
    assert {a.id for a in store.list_alerts()} == expected_alert_ids(flows)
    assert rollup_total(store) == (int(flows["bytes_out"].sum()), len(flows))


def test_real_engine_restarted_from_a_checkpoint_raises_no_new_alert_ids(tmp_path: Path) -> None:
    """Crash after a checkpoint, mid-behaviour: the restored engine continues the same alerts."""
    from flowwarden import simulator
    from flowwarden.pipeline.detection.engine import DetectionEngine
    from flowwarden.pipeline.runtime.offline import detect_flows

    sim = simulator.simulate(minutes=4, pods=30, seed=23, attacks="all")
    s = load_settings(
        None,
        store={"url": f"sqlite:///{tmp_path / 'crash.db'}"},
        kafka={"partitions": 3},
        pipeline={"checkpoint_interval_s": 3600},
    )
    offline = {
        a.id
        for a in detect_flows(sim.flows, settings=s, inventory=PodInventory.from_dict(sim.inventory)).alerts
    }
    bus = MemoryBus(default_partitions=3)
    store = Store(s.store.url).start()

    def stage() -> PipelineStage:
        return PipelineStage(
            s,
            bus=bus,
            store=store,
            engine=DetectionEngine(s, inventory=PodInventory.from_dict(sim.inventory)),
            notifiers=NotifierHub([]),
            options=StageOptions(poll_timeout_s=0.0, max_records=10),
        )

    publish(bus, s, sim.flows)
    first = stage()
    first.start()
    for _ in range(12):  # the memory bus serves partition by partition: 12 polls reach mid-stream
        first.step()
    first.checkpoint()
    for _ in range(2):
        first.step()
    assert 0 < first.stats.flows < len(sim.flows)
    assert first.consumer is not None
    first.consumer.close()  # the crash
    second = stage()
    second.start()
    second.drain(idle_polls=2, max_seconds=120)
    second.stop()
    stored = {a.id for a in store.list_alerts()}
    store.stop()
    assert second.stats.replayed > 0
    assert len(offline) >= 5
    assert stored == offline


def test_memory_knobs_come_from_the_settings(settings: Settings, store: Store) -> None:
    """``pipeline.max_poll_batches`` bounds a poll (the flows in flight) unless options say otherwise."""
    knobs = {"max_poll_batches": 7, "max_buffered_flows": 30_000, "store_flush_flows": 20_000}
    s = settings.model_copy(update={"pipeline": settings.pipeline.model_copy(update=knobs)})
    stage = PipelineStage(s, bus=MemoryBus(), store=store, engine=StandInEngine(), notifiers=NotifierHub([]))
    assert stage.options.max_records == 7
    assert stage.aligner.max_flows == 30_000 and stage.options.store_flush_rows == 20_000
    assert StageOptions.from_settings(s, worker_id="w1", max_records=3).max_records == 3
    with pytest.raises(ConfigError, match="max_poll_batches"):
        load_settings(None, pipeline={"max_poll_batches": 0})
    with pytest.raises(ConfigError, match="max_buffered_flows"):
        load_settings(None, pipeline={"max_buffered_flows": 10})


def test_the_store_s_retries_are_counted_by_cause(settings: Settings, store: Store) -> None:
    stage = PipelineStage(
        settings, bus=MemoryBus(), store=store, engine=StandInEngine(), notifiers=NotifierHub([])
    )
    assert store.on_retry is not None
    store.on_retry("deadlock")
    store.on_retry("deadlock")
    sample = stage.metrics.registry.get_sample_value(
        "flowwarden_pipeline_store_retries_total", {"cause": "deadlock"}
    )
    assert sample == 2.0
