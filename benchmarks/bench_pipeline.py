"""Pipeline runtime benchmark: one worker from Kafka (tansu) to alerts.

Prints, for one ``PipelineStage`` with the real engine, the shipped default model, a SQLite
store and a real broker that this harness starts on loopback:

* throughput: a backlog of flow batches (benign traffic with stable peers plus a port scan,
  an IP sweep and a bulk upload) consumed, detected, stored and committed; flows/s end to
  end (wall, and per CPU-second of this process: the "one core" figure, since the broker
  shares this machine's cores), with the share of time spent in the engine, the store and
  decoding. The engine's cost has a part per flow and a part per entity-window (features,
  baselines, the isolation forest), so it is run at three densities:

  - ``dense``: 2,000 entities at 30 flows/s each (300 flows per entity-window);
  - ``10k``: 10,000 entities at 3 flows/s each (30 per entity-window): what a worker sees
    at 300,000 flows/s shared by 100,000 pods, or 30,000 flows/s by 10,000;
  - ``sparse``: 10,000 entities at 0.4 flows/s each (4 per entity-window): a quiet cluster,
    where the per-window part dominates;

* latency: a producer publishes "live" batches once a second (``ts_end`` = now) while the
  worker runs; p50 / p99 from a flow's end (the newest flow of the alert's window) to the
  alert's production;
* memory: the peak RSS of the worker process (each density runs in its own process, which
  only consumes: the backlog is generated and published by this one), and its checkpoint size.

Run: ``.venv/bin/python benchmarks/bench_pipeline.py [--quick] [--only NAME]`` (``--quick``
< 60 s: the dense run and a small one at 25 flows per entity-window). The target of issue 4
is 300,000 flows/s on one core. Times vary with the load of this shared machine: the
harness prints the load average.

``--engine-only`` feeds the same flows straight to one :class:`DetectionEngine` (the shipped
model, no broker, no store) in ``--batch-flows`` batches (36,000: a poll of several collector
batches) and prints the engine's flows per CPU-second, its peak RSS and a digest of the
alerts (the final version of each, and every version emitted), so a change meant to be
behaviour-neutral can be checked on this input too; ``--profile FILE`` writes a cProfile of
the engine's calls (issue 19's target for the engine alone: 1,500,000 flows/s at ``10k``).
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import logging
import multiprocessing
import os
import resource
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowwarden.bus import KafkaBus, publish_flows
from flowwarden.kube import PodInventory
from flowwarden.pipeline.detection.engine import DetectionEngine
from flowwarden.pipeline.runtime.notify import NotifierHub
from flowwarden.pipeline.runtime.stage import PipelineStage, StageOptions
from flowwarden.records import conform_flows
from flowwarden.settings import Settings
from flowwarden.store import Store
from tests.support.broker import TansuBroker, kafka_settings_for

BATCH_FLOWS = 5_000  # a collector's batch_max_flows


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hwm_mb() -> float:
    """Peak RSS of this process image (VmHWM). ``ru_maxrss`` would not do in a spawned child:
    Linux carries the parent's high-water mark over fork and exec."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cluster_flows(
    *, entities: int, seconds: float, rate: float, t0: float, seed: int, attackers: int = 3
) -> pd.DataFrame:
    """Benign traffic with stable peers for ``entities`` sources, plus scanners and an exfiltrator."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    src = rng.integers(0, entities, n)
    ts = t0 + np.sort(rng.uniform(0, seconds, n))
    src_ips = np.array([source_ip(i) for i in range(entities)], dtype=object)
    peers = np.array([peer_ip(i) for i in range(500)], dtype=object)
    externals = np.array([f"198.51.100.{i + 1}" for i in range(20)], dtype=object)
    slot = rng.integers(0, 4, n)  # each source talks to 3 fixed peers and 1 fixed external service
    ext = slot == 3
    dst = np.where(ext, externals[src % 20], peers[(src * 3 + slot) % 500])
    frames = [
        pd.DataFrame(
            {
                "ts_start": ts - 0.2,
                "ts_end": ts,
                "src_ip": src_ips[src],
                "src_port": rng.integers(30000, 60000, n),
                "dst_ip": dst,
                "dst_port": np.where(ext, 443, 8080),
                "proto": 6,
                "bytes_out": rng.integers(200, 4000, n),
                "bytes_in": rng.integers(200, 40000, n),
                "pkts_out": rng.integers(2, 20, n),
                "pkts_in": rng.integers(2, 40, n),
                "state": "closed",
            }
        )
    ]
    # Attackers: a port scan and an IP sweep from pods, and a bulk upload to a new address.
    for a in range(attackers):
        m = int(seconds * 40)
        at = t0 + np.sort(rng.uniform(seconds / 3, seconds, m))
        kind = a % 3
        frames.append(
            pd.DataFrame(
                {
                    "ts_start": at - 0.01,
                    "ts_end": at,
                    "src_ip": src_ips[a * 7 + 1],
                    "src_port": rng.integers(30000, 60000, m),
                    "dst_ip": (
                        peers[a]
                        if kind == 0
                        else (
                            np.array([f"10.244.{150 + a}.{i % 250 + 1}" for i in range(m)], dtype=object)
                            if kind == 1
                            else "203.0.113.66"
                        )
                    ),
                    "dst_port": rng.integers(1, 10000, m) if kind == 0 else (22 if kind == 1 else 443),
                    "proto": 6,
                    "bytes_out": 60 if kind < 2 else 5_000_000,
                    "bytes_in": 0 if kind < 2 else 2000,
                    "pkts_out": 1 if kind < 2 else 4000,
                    "pkts_in": 0 if kind < 2 else 100,
                    "state": "rejected" if kind < 2 else "closed",
                }
            )
        )
    flows = pd.concat(frames, ignore_index=True).sort_values("ts_end", kind="stable", ignore_index=True)
    flows["node"] = "node-1"
    return conform_flows(flows)


def source_ip(i: int) -> str:
    return f"10.244.{i // 250}.{i % 250 + 1}"


def peer_ip(i: int) -> str:
    return f"10.244.{200 + i // 250}.{i % 250 + 1}"


def inventory(entities: int, *, pods_per_workload: int = 20) -> PodInventory:
    """``kubectl get pods -A -o json`` for the sources (Deployments of 20 pods) and the 500 peers."""

    def pod(name: str, ns: str, owner: str, ip: str) -> dict[str, Any]:
        return {
            "metadata": {
                "name": name,
                "namespace": ns,
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "ownerReferences": [{"kind": "ReplicaSet", "name": owner}],
            },
            "spec": {"nodeName": f"node-{hash(owner) % 8}"},
            "status": {"podIP": ip, "phase": "Running"},
        }

    items = []
    for i in range(entities):
        w = i // pods_per_workload
        items.append(pod(f"app{w}-5d8f9c7b6-{i:05d}", f"team{w % 20}", f"app{w}-5d8f9c7b6", source_ip(i)))
    for j in range(500):
        items.append(pod(f"svc{j // 10}-7c9d8f6b5-{j:05d}", "backend", f"svc{j // 10}-7c9d8f6b5", peer_ip(j)))
    return PodInventory.from_dict({"items": items})


def publish(settings: Settings, flows: pd.DataFrame) -> int:
    bus = KafkaBus(settings.kafka)
    # Create the topics as configured first (as the worker's start() would): a topic the
    # broker auto-creates gets its own default partition count, and an empty extra partition
    # holds the worker's aligner back for ``align_idle_s`` (a start-up wait, not throughput).
    topics = settings.kafka.topics
    bus.ensure_topics([topics.flows, topics.alerts, topics.flows_dlq])
    producer = bus.producer()
    sent = 0
    for start in range(0, len(flows), BATCH_FLOWS * settings.kafka.partitions):
        chunk = flows.iloc[start : start + BATCH_FLOWS * settings.kafka.partitions]
        sent += publish_flows(producer, settings.kafka.topics.flows, chunk, settings.kafka.partitions)
    if not producer.flush(120):
        raise RuntimeError("the broker did not take the backlog in time")
    producer.close()
    return sent


class Timed:
    """Wrap a callable and add up the wall time spent in it."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.seconds = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t


def bench_settings(broker: TansuBroker) -> Settings:
    """The test broker's settings (fast group joins), with room for a long step on a busy machine."""
    settings = kafka_settings_for(broker.bootstrap, partitions=3)
    settings.pipeline.checkpoint_interval_s = 5.0
    settings.kafka.max_poll_interval_ms = 120_000
    # The throughput run's flows are dated 2027 (t0 = 1.8e9): that is no broken node clock.
    settings.pipeline.max_clock_skew_s = 1e9
    return settings


def make_stage(settings: Settings, store: Store, worker: str, pods: PodInventory) -> PipelineStage:
    from flowwarden.models.registry import load_default

    return PipelineStage(
        settings,
        bus=KafkaBus(settings.kafka),
        store=store,
        # The shipped model, as `pipeline run` uses by default (the isolation forest scores).
        engine=DetectionEngine(settings, inventory=pods, model=load_default()),
        notifiers=NotifierHub([]),
        # The memory knobs from the settings, as `pipeline run` takes them.
        options=StageOptions.from_settings(
            settings, poll_timeout_s=0.2, idle_tick_s=1.0, align_idle_s=2.0, worker_id=worker
        ),
    )


def throughput(
    broker: TansuBroker,
    tmp: Path,
    *,
    entities: int,
    seconds: float,
    rate: float,
    poll_batches: int | None = None,
) -> dict[str, Any]:
    """Publish the backlog here, consume it in a fresh process (its own peak RSS and CPU)."""
    settings = bench_settings(broker)
    if poll_batches is not None:
        settings.pipeline.max_poll_batches = poll_batches
    flows = cluster_flows(entities=entities, seconds=seconds, rate=rate, t0=1_800_000_000.0, seed=5)
    t = time.perf_counter()
    messages = publish(settings, flows)
    produce_s = time.perf_counter() - t
    n = len(flows)
    del flows
    ctx = multiprocessing.get_context("spawn")  # a clean interpreter: no memory of this one
    with ctx.Pool(1) as pool:
        out: dict[str, Any] = pool.apply(
            consume, (settings.model_dump_json(), str(tmp / "bench-throughput.db"), entities, n, messages)
        )
    return out | {"produce_flows_s": n / produce_s}


def consume(settings_json: str, db: str, entities: int, n: int, messages: int) -> dict[str, Any]:
    """One worker over the whole backlog, timed from its first message (joining is not throughput)."""
    logging.basicConfig(level=logging.WARNING)
    settings = Settings.model_validate_json(settings_json)
    Path(db).unlink(missing_ok=True)
    store = Store(f"sqlite:///{db}").start()
    stage = make_stage(settings, store, "bench", inventory(entities))
    engine_t = Timed(stage.engine.process)
    stage.engine.process = engine_t
    sink_t = Timed(stage.sink.write)
    stage.sink.write = sink_t  # type: ignore[method-assign]
    stage.start()
    assert stage.consumer is not None
    poll_t = Timed(stage.consumer.poll)
    stage.consumer.poll = poll_t  # type: ignore[method-assign]
    ingest_t = Timed(stage._ingest)
    stage._ingest = ingest_t  # type: ignore[method-assign]
    ckpt_t = Timed(stage.checkpoint)
    stage.checkpoint = ckpt_t  # type: ignore[method-assign]
    rss0 = current_rss_mb()
    deadline = time.monotonic() + 600
    while not stage.stats.batches and time.monotonic() < deadline:
        stage.step()
    for timer in (engine_t, sink_t, poll_t, ingest_t, ckpt_t):
        timer.seconds = 0.0
    t = time.perf_counter()
    cpu0 = time.process_time()
    # Consume the whole backlog, then drain: the drain releases what the aligner still holds
    # at the end of the backlog (the last batches of the partitions that ran ahead), rather
    # than waiting ``align_idle_s`` for the partitions that finished to count as idle.
    while stage.stats.batches < messages and time.monotonic() < deadline:
        stage.step()
    stage.drain(idle_polls=1, max_seconds=60, flush=True)
    wall = time.perf_counter() - t
    cpu = time.process_time() - cpu0
    if stage.stats.flows != n:
        raise RuntimeError(f"the worker fed {stage.stats.flows:,} of {n:,} flows to the engine")
    entities_held = stage.engine.stats().state_entities
    state_mb = len(stage.engine.export_state()) / 2**20
    stage.stop()
    store.stop()
    return {
        "flows": n,
        "messages": messages,
        "wall_s": wall,
        "flows_s": n / wall,
        "flows_per_cpu_s": n / cpu,
        "engine_share": engine_t.seconds / wall,
        "store_share": sink_t.seconds / wall,
        "poll_share": poll_t.seconds / wall,
        "decode_share": ingest_t.seconds / wall,
        "checkpoint_share": ckpt_t.seconds / wall,
        "alerts": stage.stats.alerts,
        "entities": entities_held,
        "rss_start_mb": rss0,
        "peak_rss_mb": hwm_mb(),
        "state_mb": state_mb,
    }


def latency(
    broker: TansuBroker, tmp: Path, *, entities: int, seconds: float, rate: float, tail_s: float
) -> dict[str, Any]:
    settings = bench_settings(broker)
    store = Store(f"sqlite:///{tmp / 'bench-latency.db'}").start()
    stage = make_stage(settings, store, "live", inventory(entities))
    stage.start()
    while not stage._assigned:  # joined before the first live batch
        stage.step()
    stop = threading.Event()

    def produce() -> None:
        producer = KafkaBus(settings.kafka).producer()
        t_start = time.time()
        for i in range(int(seconds)):
            if stop.wait(max(0.0, t_start + i + 1 - time.time())):
                break
            lo = time.time() - 1.0
            batch = cluster_flows(entities=entities, seconds=1.0, rate=rate, t0=lo, seed=100 + i)
            publish_flows(producer, settings.kafka.topics.flows, batch, settings.kafka.partitions)
            producer.flush(10)
        producer.close()

    feeder = threading.Thread(target=produce, daemon=True)
    feeder.start()
    deadline = time.monotonic() + seconds + 60
    while feeder.is_alive() and time.monotonic() < deadline:
        stage.step()
    steady = len(stage.stats.latencies)  # alerts while flows kept coming (windows closed by the watermark)
    end = time.monotonic() + tail_s  # let the idle clock close the last windows
    while time.monotonic() < end and stage.engine.open_window_floor() is not None:
        stage.step()
    stop.set()
    lat = np.array(stage.stats.latencies, dtype="float64")
    stage.stop()
    store.stop()

    def pct(values: np.ndarray, q: float) -> float:
        return float(np.percentile(values, q)) if len(values) else float("nan")

    return {
        "alerts": len(lat),
        "steady_alerts": steady,
        "p50_s": pct(lat[:steady], 50),
        "p99_s": pct(lat[:steady], 99),
        "tail_p50_s": pct(lat[steady:], 50),
        "flows": stage.stats.flows,
    }


def engine_only(sc: Scenario, *, batch_flows: int, profile: str | None = None) -> dict[str, Any]:
    """The engine alone over a scenario's flows, in this process: CPU, peak RSS, alert digests."""
    from flowwarden.models.registry import load_default

    flows = cluster_flows(
        entities=sc.entities,
        seconds=sc.seconds,
        rate=sc.entities * sc.per_entity_rate,
        t0=1_800_000_000.0,
        seed=5,
    )
    engine = DetectionEngine(Settings(), inventory=inventory(sc.entities), model=load_default())
    batches = [flows.iloc[a : a + batch_flows] for a in range(0, len(flows), batch_flows)]
    emitted: list[Any] = []
    prof = cProfile.Profile() if profile else None
    rss0 = current_rss_mb()
    t, cpu0 = time.perf_counter(), time.process_time()
    if prof is not None:
        prof.enable()
    for b in batches:
        emitted += engine.process(b).alerts
    emitted += engine.flush().alerts
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile)  # type: ignore[arg-type]
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu0
    final = {a.id: a for a in emitted}
    return {
        "flows": len(flows),
        "batches": len(batches),
        "wall_s": wall,
        "cpu_s": cpu,
        "flows_per_cpu_s": len(flows) / cpu,
        "alerts": len(final),
        "emitted": len(emitted),
        "early": engine.early_alerts,
        "final_digest": _digest(sorted(_canonical(a) for a in final.values())),
        "emitted_digest": _digest([_canonical(a) for a in emitted]),
        "rss_start_mb": rss0,
        "peak_rss_mb": hwm_mb(),
    }


def _canonical(alert: Any) -> str:
    """An alert's JSON without ``created_at`` (the wall clock of this run)."""
    return alert.model_dump_json(exclude={"created_at"})


def _digest(items: list[str]) -> str:
    """A short hash of the alerts' JSON: equal digests, same alerts (ids, windows, evidence)."""
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:12]


def run_engine_only(scenarios: list[Scenario], *, batch_flows: int, profile: str | None) -> None:
    """Print the engine-alone figures of each scenario."""
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores shared)")
    for sc in scenarios:
        r = engine_only(sc, batch_flows=batch_flows, profile=profile)
        print(
            f"engine-only {sc.name:<6} {r['flows']:,} flows in {r['batches']} batches of {batch_flows:,}: "
            f"{r['flows_per_cpu_s']:,.0f} flows/CPU-s ({r['cpu_s']:.2f} s CPU, {r['wall_s']:.2f} s wall); "
            f"{r['alerts']} alerts ({r['emitted']} emitted, {r['early']} early) "
            f"final {r['final_digest']} emitted {r['emitted_digest']}; "
            f"peak RSS {r['peak_rss_mb']:,.0f} MB ({r['rss_start_mb']:,.0f} MB before the engine ran)"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


@dataclass(frozen=True)
class Scenario:
    name: str
    entities: int
    per_entity_rate: float  # flows/s of event time per entity
    seconds: float  # event time of the backlog

    @property
    def per_window(self) -> float:
        return self.per_entity_rate * 10.0

    @property
    def flows(self) -> int:
        return int(self.entities * self.per_entity_rate * self.seconds)


FULL = (
    Scenario("dense", 2_000, 30.0, 40.0),
    Scenario("10k", 10_000, 3.0, 60.0),
    Scenario("sparse", 10_000, 0.4, 200.0),
)
QUICK = (Scenario("dense", 2_000, 30.0, 15.0), Scenario("small", 2_000, 2.5, 60.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small runs, under a minute")
    ap.add_argument(
        "--only", choices=sorted({sc.name for sc in (*FULL, *QUICK)}), action="append", help="run only these"
    )
    ap.add_argument("--poll-batches", type=int, default=None, help="pipeline.max_poll_batches (default 10)")
    ap.add_argument(
        "--engine-only", action="store_true", help="the detection engine alone: no broker, no store"
    )
    ap.add_argument("--batch-flows", type=int, default=36_000, help="flows per engine call (--engine-only)")
    ap.add_argument("--profile", default=None, help="write a cProfile of the engine here (--engine-only)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    scenarios = [sc for sc in (QUICK if args.quick else FULL) if not args.only or sc.name in args.only]
    if args.engine_only:
        run_engine_only(scenarios, batch_flows=args.batch_flows, profile=args.profile)
        return
    # Quick: 21 s live, so at least one 10 s window closes while flows still come (with 10 s,
    # a run that started late in a window closed none and printed NaN).
    live_s, live_rate = (21.0, 2_000.0) if args.quick else (30.0, 5_000.0)
    live_entities = 2_000 if args.quick else 10_000
    results: list[tuple[Scenario, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as d, TansuBroker() as broker:
        tmp = Path(d)
        print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores shared)")
        for sc in scenarios:
            tp = throughput(
                broker,
                tmp,
                entities=sc.entities,
                seconds=sc.seconds,
                rate=sc.entities * sc.per_entity_rate,
                poll_batches=args.poll_batches,
            )
            results.append((sc, tp))
            print(
                f"throughput  {sc.name:<6} {tp['flows']:,} flows, {sc.entities:,} entities x "
                f"{sc.per_window:g} flows/window: {tp['flows_s']:,.0f} flows/s wall, "
                f"{tp['flows_per_cpu_s']:,.0f} flows/CPU-s (of wall: engine {tp['engine_share']:.0%}, "
                f"store {tp['store_share']:.0%}, poll {tp['poll_share']:.0%}, "
                f"decode {tp['decode_share']:.0%}, checkpoint+commit {tp['checkpoint_share']:.0%}); "
                f"{tp['alerts']} alerts; worker peak RSS {tp['peak_rss_mb']:,.0f} MB "
                f"({tp['rss_start_mb']:,.0f} MB at start) holding {tp['entities']:,} entities, "
                f"checkpoint {tp['state_mb']:.1f} MB"
            )
        lt = latency(
            broker,
            tmp,
            entities=live_entities,
            seconds=live_s,
            rate=live_rate,
            tail_s=0.0 if args.quick else 15.0,
        )
        print(
            f"latency     {lt['steady_alerts']} alerts over {live_s:.0f} s live at {live_rate:,.0f} flows/s: "
            f"flow end -> alert p50 {lt['p50_s']:.2f} s, p99 {lt['p99_s']:.2f} s; after the stream stopped "
            f"{lt['alerts'] - lt['steady_alerts']} more (idle clock) at p50 {lt['tail_p50_s']:.2f} s"
        )
        print(f"load average after: {os.getloadavg()[0]:.2f}; peak RSS {rss_mb():,.0f} MB")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results import emit

    for sc, tp in results:
        note = (
            f"{tp['flows']:,} flows, {sc.entities:,} entities x {sc.per_window:g} flows per 10 s window; "
            "Kafka (tansu) to alerts + store, default model"
        )
        emit("pipeline", f"one worker, Kafka to alerts ({sc.name})", tp["flows_per_cpu_s"], "flows/CPU-s",
             peer=f"{tp['flows_s']:,.0f} wall; target 300k", note=note)  # fmt: skip
    live = f"{live_rate:,.0f} flows/s live for {live_s:.0f} s"
    emit("pipeline", "flow end -> alert p50", lt["p50_s"], "s", note=live)
    emit("pipeline", "flow end -> alert p99", lt["p99_s"], "s", note=live)
    for sc, tp in results:
        emit("pipeline", f"worker peak RSS ({sc.name})", tp["peak_rss_mb"], "MiB",
             note=f"{tp['entities']:,} active entities; the worker process alone, model and store included; "
             f"checkpoint {tp['state_mb']:.1f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
