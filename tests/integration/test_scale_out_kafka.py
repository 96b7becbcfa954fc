"""Scale-out on the real broker (tansu) and PostgreSQL, with the real engine (issue 19).

Must show: from a cold start, an enrich stage and three detect workers in one group, with
the replicas of each workload spread over different source partitions of ``flows``, raise
the same alerts (ids and all) as one worker doing everything on the same input, both on the
simulator (seed 23) and on a real-traffic lab capture (tests/data/lab/reporting, metered by
the collector as scripts/detection_quality.py does); and a destination first seen by one
detect worker is not "new to the cluster" for another (the global-memory topic).
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from flowwarden import simulator
from flowwarden.bus import KafkaBus
from flowwarden.kube import FixedSource, PodInventory
from flowwarden.pipeline.detection.engine import DetectionEngine
from flowwarden.pipeline.detection.state import mix
from flowwarden.pipeline.runtime.global_memory import GlobalMemory
from flowwarden.pipeline.runtime.notify import NotifierHub
from flowwarden.pipeline.runtime.partition_engines import PartitionEngines
from flowwarden.pipeline.runtime.repartition import EnrichStage, UpstreamLag
from flowwarden.pipeline.runtime.stage import PipelineStage, StageOptions
from flowwarden.records import Alert, empty_flows
from flowwarden.settings import Settings, load_settings
from flowwarden.store import Store
from flowwarden.wire import encode_flows
from tests.support.broker import unique_group
from tests.support.netns import wait_for
from tests.support.stage_thread import StageThread

pytestmark = pytest.mark.integration

LAB = Path(__file__).resolve().parents[1] / "data" / "lab"
CHUNK_S = 5.0  # simulated seconds per published batch, like a collector's flush interval
# Alert fields that say when this process wrote the record, not what it found.
VOLATILE = {"created_at"}


def settings_with(settings: Settings, **sections: dict[str, Any]) -> Settings:
    data = settings.model_dump()
    for name, values in sections.items():
        for key, value in values.items():
            data[name][key] = {**data[name][key], **value} if isinstance(value, dict) else value
    return Settings.model_validate(data)


@dataclass(frozen=True)
class Input:
    """Flows and the pods they come from, with the settings sections of their own."""

    flows: pd.DataFrame
    inventory: PodInventory
    # Settings sections for this input (the lab's address plan), over the test broker's.
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Workloads with two or more pods that the spread input must put on several partitions.
    replicated: int = 3
    chunk_s: float = CHUNK_S  # event time per published batch


@pytest.fixture(scope="module", params=["sim-seed-23", "lab-reporting"])
def source(request: pytest.FixtureRequest) -> Input:
    """The simulator's seed 23, or a lab capture metered once by the collector's offline path
    (the lab's own settings: its address plan; every detector at its defaults)."""
    if request.param == "sim-seed-23":
        sim = simulator.simulate(minutes=4, pods=30, seed=23, attacks="all")
        return Input(sim.flows, PodInventory.from_dict(sim.inventory))
    from flowwarden.collectors.offline import meter_capture

    lab = LAB / request.param.removeprefix("lab-")
    plan = load_settings(lab / "lab.yaml")
    flows, _ = meter_capture(lab / "capture.pcap", plan)
    sections = {name: getattr(plan, name).model_dump() for name in ("cluster", "control_plane")}
    # Two workloads with several pods: the frontend's three replicas (the attacking pod is
    # one of them) and the backup CronJob's five runs, one pod after the other.
    # 10 s batches: 20 minutes of capture in 5 s ones are 720 sends, a third of the test's time.
    return Input(
        flows,
        PodInventory.from_file(lab / "pods.json"),
        sections,
        replicated=2,
        chunk_s=10.0,
    )


def spread_partitions(flows: pd.DataFrame, inventory: PodInventory, partitions: int) -> np.ndarray:
    """A source partition per flow that puts the replicas of each workload on different
    partitions (replica i of a workload on partition i mod n); other sources by CRC-32."""
    pods = inventory.pods
    by_ip: dict[str, int] = {}
    for _, group in pods.groupby(["namespace", "workload"], sort=True):
        for i, ip in enumerate(sorted(set(group["ip"]))):
            by_ip[ip] = i % partitions
    src = flows["src_ip"].astype("str")
    return np.fromiter(
        (by_ip.get(ip, zlib.crc32(ip.encode()) % partitions) for ip in src), dtype=np.int64, count=len(src)
    )


def publish_spread(
    settings: Settings, flows: pd.DataFrame, inventory: PodInventory, chunk_s: float = CHUNK_S
) -> int:
    """The flows in ``chunk_s`` chunks, each split by :func:`spread_partitions`; messages sent."""
    n = settings.kafka.partitions
    bus = KafkaBus(settings.kafka)
    producer = bus.producer()
    sent = 0
    ts = flows["ts_end"].to_numpy()
    for lo in np.arange(ts.min(), ts.max() + chunk_s, chunk_s):
        chunk = flows[(ts >= lo) & (ts < lo + chunk_s)]
        parts = spread_partitions(chunk, inventory, n)
        for p in np.unique(parts):
            producer.send(settings.kafka.topics.flows, encode_flows(chunk[parts == p]), partition=int(p))
            sent += 1
    assert producer.flush(60)
    assert producer.failed_count == 0
    producer.close()
    return sent


def detect_stage(
    settings: Settings, store: Store, inventory: PodInventory, worker_id: str, *, scale_out: bool
) -> PipelineStage:
    # A detect worker holds one engine per assigned partition, as `--stage detect` does.
    engine: Any = (
        PartitionEngines(lambda: DetectionEngine(settings, inventory=inventory))
        if scale_out
        else DetectionEngine(settings, inventory=inventory)
    )
    bus = KafkaBus(settings.kafka)
    topics = settings.kafka.topics
    return PipelineStage(
        settings,
        bus=bus,
        store=store,
        engine=engine,
        notifiers=NotifierHub([]),
        options=StageOptions(poll_timeout_s=0.2, idle_tick_s=1.0, align_idle_s=3.0, worker_id=worker_id),
        topic=topics.flows_by_workload if scale_out else None,
        global_memory=GlobalMemory(bus, topics.global_memory, engine) if scale_out else None,
        upstream=UpstreamLag(bus, settings) if scale_out else None,
    )


def comparable(alerts: list[Alert]) -> dict[str, dict[str, Any]]:
    """Each alert as a dict, but for what depends on the order rows arrive in, not on what
    was found: when it was detected (the event clock of the call), which example flows were
    picked among equals (how many is compared) and the order of the targets."""
    out = {}
    for a in alerts:
        d = a.model_dump(mode="json", exclude=VOLATILE)
        d["evidence"].pop("detected_at", None)
        d["example_flows"] = len(d["example_flows"])
        d["targets"] = sorted(d["targets"])
        out[a.id] = d
    return out


def differences(alone: dict[str, dict[str, Any]], together: dict[str, dict[str, Any]]) -> str:
    """What differs between the two paths' alerts, one phrase per alert."""

    def name(a: dict[str, Any]) -> str:
        return f"{a['detector']} {a['entity']['namespace']}/{a['entity']['pod']} {a['window_start']}"

    out = [f"only one worker: {name(alone[k])}" for k in sorted(set(alone) - set(together))]
    out += [f"only three workers: {name(together[k])}" for k in sorted(set(together) - set(alone))]
    for k in sorted(set(alone) & set(together)):
        fields = sorted(f for f in alone[k] if alone[k][f] != together[k].get(f))
        if fields:
            out.append(
                f"{name(alone[k])}: " + ", ".join(f"{f} {alone[k][f]} vs {together[k][f]}" for f in fields)
            )
    return "; ".join(out)


def stop_all(runners: list[StageThread], stages: list[Any], *, check: bool = True) -> None:
    """Stop the loops (``check``: each must stop cleanly), then the stages (they commit)."""
    for r in runners:
        if check:
            r.halt()
        else:
            r.abandon()
    runners.clear()
    for s in stages:
        s.stop()
    stages.clear()


@pytest.fixture
def runners() -> Iterator[list[StageThread]]:
    started: list[StageThread] = []
    yield started
    for r in started:
        r.abandon()


def test_three_detect_workers_keyed_by_workload_raise_the_same_alerts_as_one(
    kafka_settings: Settings, fresh_pg_url: str, tmp_path: Any, source: Input, runners: list[StageThread]
) -> None:
    kafka_settings = settings_with(kafka_settings, **source.sections)
    suffix = uuid.uuid4().hex[:8]
    topics = {"flows_by_workload": f"by-workload-{suffix}", "global_memory": f"memory-{suffix}"}
    one = settings_with(
        kafka_settings,
        pipeline={"group_id": unique_group("one"), "checkpoint_interval_s": 1.0},
        kafka={"topics": topics},
    )
    many = settings_with(
        kafka_settings,
        pipeline={"group_id": unique_group("many"), "checkpoint_interval_s": 1.0},
        kafka={"topics": {**topics, "alerts": kafka_settings.kafka.topics.alerts + "-many"}},
    )
    inventory = source.inventory
    n = kafka_settings.kafka.partitions
    assert n == 3
    # The input really spreads each multi-replica workload over several source partitions.
    parts = spread_partitions(source.flows, inventory, n)
    wl = source.flows.assign(part=parts, ip=source.flows["src_ip"]).merge(
        inventory.pods[["ip", "namespace", "workload"]], on="ip"
    )
    by_workload = wl.groupby(["namespace", "workload"])
    replicated = by_workload["ip"].nunique() >= 2
    assert replicated.sum() >= source.replicated
    assert (by_workload["part"].nunique()[replicated] >= 2).all()

    store_one = Store(f"sqlite:///{tmp_path / 'one.db'}").start()
    store_many = Store(fresh_pg_url).start()
    stages: list[Any] = []
    try:
        enrich = EnrichStage(
            many, bus=KafkaBus(many.kafka), inventory_source=FixedSource(inventory), poll_timeout_s=0.2
        )
        enrich.start()
        stages.append(enrich)
        detectors = [detect_stage(many, store_many, inventory, f"d{i}", scale_out=True) for i in range(3)]
        for d in detectors:
            d.start()
            stages.append(d)
        solo = detect_stage(one, store_one, inventory, "solo", scale_out=False)
        solo.start()
        stages.append(solo)
        for i, s in enumerate(stages):
            runners.append(StageThread(s, f"stage-{i}").start())

        def owned(stage: PipelineStage) -> set[int]:
            return {p for _, p in stage._assigned}

        # Every member holds its partitions before any flow exists: no rebalance mid-stream.
        wait_for(
            lambda: (
                all(len(owned(d)) == 1 for d in detectors)
                and set().union(*(owned(d) for d in detectors)) == set(range(n))
                and owned(solo) == set(range(n))
                and len(enrich._assigned) == n
            ),
            timeout=120,
            what="one partition per detect worker, all of them for the enrich stage and the solo worker",
        )
        publish_spread(kafka_settings, source.flows, inventory, source.chunk_s)
        valid = len(source.flows)

        def idle(stage: PipelineStage) -> bool:
            return not len(stage.aligner) and stage.engine.open_window_floor() is None

        wait_for(
            lambda: (
                solo.stats.flows == valid
                and idle(solo)
                and enrich.stats.flows >= valid  # more if it read some twice (a rebalance)
                and sum(d.stats.flows for d in detectors) == valid
                and all(idle(d) for d in detectors)
            ),
            timeout=120,
            what="every flow through both paths and every window closed",
        )
        stop_all(runners, stages)

        alone = comparable(store_one.list_alerts())
        together = comparable(store_many.list_alerts())
        assert len(alone) >= 5
        assert len({a["detector"] for a in alone.values()}) >= 4
        assert all(d.stats.flows > 0 for d in detectors)  # each did part of the work
        assert sum(d.global_memory.published for d in detectors if d.global_memory) > 0
        assert set(together) == set(alone), differences(alone, together)
        assert together == alone, differences(alone, together)
    finally:
        stop_all(runners, stages, check=False)
        store_one.stop()
        store_many.stop()


def test_a_destination_one_worker_saw_is_not_new_to_the_cluster_for_another(kafka_settings: Settings) -> None:
    """Worker A talks to an address first; B, started afterwards from the global-memory topic,
    and C, already running, both know the address since A's window, and neither counts it
    as new to the cluster when their own pods first use it."""
    from tests.unit.flowkit import T0, flows, pod

    settings = settings_with(kafka_settings, pipeline={"window_s": 10.0, "allowed_lateness_s": 0.0})
    inventory = PodInventory.from_dict(
        {
            "items": [
                pod("a-1", "10.244.9.1", owner=("ReplicaSet", "alpha-1")),
                pod("b-1", "10.244.9.2", owner=("ReplicaSet", "beta-1")),
                pod("c-1", "10.244.9.3", owner=("ReplicaSet", "gamma-1")),
            ]
        }
    )
    topic = f"memory-{uuid.uuid4().hex[:8]}"
    bus = KafkaBus(settings.kafka)
    producer = bus.producer()
    dst = "203.0.113.7"

    def engine_with_memory() -> tuple[DetectionEngine, GlobalMemory]:
        engine = DetectionEngine(settings, inventory=inventory)
        memory = GlobalMemory(bus, topic, engine)
        memory.start()
        return engine, memory

    def first_seen(engine: DetectionEngine) -> float:
        h = mix(engine.vocab.hash_of(engine.vocab.encode(np.array([dst], dtype=object))), 0, 6)
        return float(engine.edges.first_seen(h)[0])

    a, mem_a = engine_with_memory()
    c, mem_c = engine_with_memory()
    try:
        a.process(flows([{"ts_start": T0 + 1, "src_ip": "10.244.9.1", "dst_ip": dst, "dst_port": 443}]))
        a.process(empty_flows(), now=T0 + 25)  # the window closes: A learns the address
        assert mem_a.exchange(producer) == (0, 1)
        assert producer.flush(30)

        b, mem_b = engine_with_memory()  # a new worker: replays the topic
        try:
            assert first_seen(b) == T0
            wait_for(lambda: mem_c.exchange(producer)[0] == 1, timeout=30, what="C to hear of A's address")
            assert first_seen(c) == T0
            for late, src, engine in ((60.0, "10.244.9.2", b), (60.0, "10.244.9.3", c)):
                engine.process(
                    flows([{"ts_start": T0 + late + 1, "src_ip": src, "dst_ip": dst, "dst_port": 443}])
                )
                out = engine.process(empty_flows(), now=T0 + late + 25)
                w = out.windows
                assert len(w) == 1
                assert w["young_ext_age"].iloc[0] == late  # known to the cluster since A's window
            # Without the memory, the same window says the address is brand new (age 0).
            alone = DetectionEngine(settings, inventory=inventory)
            alone.process(
                flows([{"ts_start": T0 + 61, "src_ip": "10.244.9.2", "dst_ip": dst, "dst_port": 443}])
            )
            assert alone.process(empty_flows(), now=T0 + 85).windows["young_ext_age"].iloc[0] == 0.0
            # B and C learnt nothing new to share: the address was the cluster's already.
            assert mem_b.exchange(producer)[1] == 0
        finally:
            mem_b.close()
    finally:
        mem_a.close()
        mem_c.close()
        producer.close()


def test_a_worker_replaced_while_it_stalled_neither_saves_nor_commits_its_old_partitions(
    kafka_settings: Settings, fresh_pg_url: str, runners: list[StageThread]
) -> None:
    """Fencing: when the group gives a stalled worker's partition to another worker, which
    claims the partition's state as it restores it, the stalled worker's next checkpoint
    must not overwrite that state nor commit the partition's offsets."""
    from flowwarden.pipeline.runtime.sinks import StoreSink

    suffix = uuid.uuid4().hex[:8]
    settings = settings_with(
        kafka_settings,
        pipeline={"group_id": unique_group("fence"), "checkpoint_interval_s": 0.5},
        kafka={"topics": {"flows_by_workload": f"by-workload-{suffix}", "global_memory": f"memory-{suffix}"}},
    )
    sim = simulator.simulate(minutes=2, pods=30, seed=31)
    inventory = PodInventory.from_dict(sim.inventory)
    half = sim.flows["ts_end"].median()
    first, second = sim.flows[sim.flows["ts_end"] < half], sim.flows[sim.flows["ts_end"] >= half]
    store = Store(fresh_pg_url).start()
    stages: list[Any] = []
    try:
        enrich = EnrichStage(
            settings,
            bus=KafkaBus(settings.kafka),
            inventory_source=FixedSource(inventory),
            poll_timeout_s=0.2,
        )
        worker = detect_stage(settings, store, inventory, "stalled", scale_out=True)
        for s in (enrich, worker):
            s.start()
            stages.append(s)
            runners.append(StageThread(s, f"fence-{len(stages)}").start())
        n = settings.kafka.partitions
        wait_for(lambda: len(worker._assigned) == n, timeout=120, what="the worker to hold every partition")
        publish_spread(settings, first, inventory)
        wait_for(
            lambda: worker.stats.flows == len(first) and worker.stats.commits > 0,
            timeout=120,
            what="the first half checkpointed and committed",
        )
        # Another worker is given every partition and claims their state, then saves its own.
        sink = StoreSink(store, settings.pipeline.group_id)
        for p in range(n):
            key = worker._partition_state_key(p)
            assert sink.save_state(key, b"successor", b"{}", claim=sink.claim_state(key))
        fenced = worker.metrics.checkpoints.labels(status="fenced")
        committed = dict(worker._committed)
        publish_spread(settings, second, inventory)
        wait_for(
            lambda: worker.stats.flows == len(sim.flows) and fenced._value.get() == n,
            timeout=120,
            what="the second half fed and every partition's save refused",
        )
        checkpoints = worker.metrics.checkpoints.labels(status="ok")
        done = checkpoints._value.get()
        wait_for(lambda: checkpoints._value.get() >= done + 2, timeout=30, what="two more checkpoints")
        assert worker._committed == committed  # nothing of the second half committed
        for p in range(n):
            assert store.get_state(worker._partition_state_key(p)) == b"successor"
    finally:
        stop_all(runners, stages)
        store.stop()
