"""Scale-out benchmark: one vs two detect workers on the same input, each an OS process (issue 19).

The flows of ``bench_pipeline.py`` (its generator, inventory and publisher; the shipped
default model; a broker, tansu, that this harness starts on loopback) are published once to
``flows``. Then, for each run, one worker count after the other (1, 2, 1, 2, ... so that the
load of this shared machine falls on both alike):

1. the detect workers start (``build_stage(stage="detect")``, as ``flowwarden pipeline run
   --stage detect`` wires them, with the pod inventory from a file and one PostgreSQL store
   shared by the workers), join their group and wait, holding their partitions of the
   repartition topic, so that no rebalance falls inside the measurement;
2. an enrich stage (``EnrichStage``, as ``--stage enrich`` runs it) consumes the whole backlog
   of ``flows`` into the run's own repartition topic keyed by workload, alone on the machine:
   its flows per CPU-second and wall figure;
3. the detect workers consume the repartition topic to the end (then drain and flush): per
   worker its share of the flows, CPU seconds, flows per CPU-second and peak RSS (VmHWM of its
   own spawned process); for the run, wall-clock flows/s from the go to the last worker done.

The scaling factor is the median wall-clock flows/s of two detect workers over that of one.
The end-to-end cost per flow adds the enrich stage's CPU to the detect workers'. The broker
and PostgreSQL share the machine's two cores with the workers (and with whatever else runs):
the harness prints the load average.

Run: ``.venv/bin/python benchmarks/bench_scale_out.py [--quick] [--repeat N]`` (``--quick``,
under a minute: 2,000 entities at 25 flows per entity-window, one run each; the default, a few
minutes: the 10,000-entity density of bench_pipeline.py, 30 flows per entity-window, two runs
each).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import bench_settings, cluster_flows, hwm_mb, inventory, publish

from flowwarden.settings import Settings
from tests.support.broker import TansuBroker

PARTITIONS = 4  # of flows and of the repartition topic: two workers hold two each
JOIN_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 600.0


def run_settings(base: Settings, store_url: str) -> Settings:
    """The run's own group, repartition topic and global-memory topic: a cold start each time."""
    suffix = uuid.uuid4().hex[:8]
    data = base.model_dump(mode="json")
    data["pipeline"]["group_id"] = f"bench-scale-{suffix}"
    data["kafka"]["topics"]["flows_by_workload"] = f"by-workload-{suffix}"
    data["kafka"]["topics"]["global_memory"] = f"memory-{suffix}"
    data["store"]["url"] = store_url
    return Settings.model_validate(data)


def enrich_worker(settings_json: str, entities: int, messages: int, out: Any) -> None:
    """Consume every message of ``flows`` into the repartition topic; report time and memory."""
    logging.basicConfig(level=logging.WARNING)
    from flowwarden.bus import open_bus
    from flowwarden.kube import FixedSource
    from flowwarden.pipeline.runtime.repartition import EnrichStage

    settings = Settings.model_validate_json(settings_json)
    stage = EnrichStage(
        settings,
        bus=open_bus(settings),
        inventory_source=FixedSource(inventory(entities)),
        poll_timeout_s=0.2,
    )
    stage.start()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not stage.stats.batches and time.monotonic() < deadline:
        stage.step()
    t, cpu0 = time.perf_counter(), time.process_time()
    while stage.stats.batches < messages and time.monotonic() < deadline:
        stage.step()
    stage.stop()  # forwards what the aligner holds, flushes, commits
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu0
    if stage.stats.batches < messages:
        raise RuntimeError(f"enrich: {stage.stats.batches} of {messages} batches in {RUN_TIMEOUT_S:.0f} s")
    out.put({"flows": stage.stats.flows, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": hwm_mb()})


def detect_worker(
    settings_json: str,
    worker: str,
    workers: int,
    entities: int,
    n: int,
    ready: Any,
    go: Any,
    total: Any,
    out: Any,
    engines: str = "partition",
    profile: str = "",
) -> None:
    """Join, hold the partitions until ``go``, then consume until the workers fed ``n`` flows.

    ``engines``: ``partition``, as ``build_stage(stage="detect")`` wires the worker (one engine
    per assigned partition); ``one``, a single engine for the worker's partitions (as the
    scale-out test wires it). ``profile``: a folder for a cProfile of the measured loop."""
    logging.basicConfig(level=logging.WARNING)
    from flowwarden.bus import KafkaBus
    from flowwarden.kube import FixedSource
    from flowwarden.pipeline.runtime.stage import StageOptions, build_stage
    from flowwarden.store import Store

    settings = Settings.model_validate_json(settings_json)
    store = Store(settings.store.url).start()
    options = StageOptions.from_settings(
        settings, poll_timeout_s=0.2, idle_tick_s=1.0, align_idle_s=2.0, worker_id=worker
    )
    pods = inventory(entities)
    if engines == "one":
        from flowwarden.models.registry import load_default
        from flowwarden.pipeline.detection.engine import DetectionEngine
        from flowwarden.pipeline.runtime.global_memory import GlobalMemory
        from flowwarden.pipeline.runtime.repartition import UpstreamLag
        from flowwarden.pipeline.runtime.stage import PipelineStage

        bus = KafkaBus(settings.kafka)
        engine = DetectionEngine(settings, inventory=pods, model=load_default())
        stage = PipelineStage(
            settings,
            bus=bus,
            store=store,
            engine=engine,
            options=options,
            topic=settings.kafka.topics.flows_by_workload,
            global_memory=GlobalMemory(bus, settings.kafka.topics.global_memory, engine),
            upstream=UpstreamLag(bus, settings),
        )
    else:
        stage = build_stage(
            settings, bus=KafkaBus(settings.kafka), store=store, options=options, stage="detect"
        )
    stage.inventory_source = FixedSource(pods)  # bench_pipeline's pods, as a file would give them
    stage.start()
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    mine = PARTITIONS // workers
    # Every member must hold its share before the enrich stage sends anything.
    while len(stage._assigned) != mine and time.monotonic() < deadline:
        stage.step()
    with ready.get_lock():
        ready.value += 1
    while ready.value < workers and time.monotonic() < deadline:
        stage.step()  # keep polling (the empty topic) while the others join
    if not go.wait(timeout=RUN_TIMEOUT_S):
        raise RuntimeError("detect: no go")
    if len(stage._assigned) != mine:
        raise RuntimeError(f"detect {worker}: holds {len(stage._assigned)} partitions, not {mine}")
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    t, cpu0 = time.perf_counter(), time.process_time()
    started = time.time()
    fed = 0
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while total.value < n and time.monotonic() < deadline:
        stage.step()
        if stage.stats.flows != fed:
            with total.get_lock():
                total.value += stage.stats.flows - fed
            fed = stage.stats.flows
    stage.drain(idle_polls=1, max_seconds=60, flush=True)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu0
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(str(Path(profile) / f"detect-{workers}w-{worker}-{os.getpid()}.prof"))
    stats = stage.stats
    stage.stop()
    store.stop()
    out.put(
        {
            "worker": worker,
            "flows": stats.flows,
            "alerts": stats.alerts,
            "alert_ids": sorted(stats.alert_ids),
            "wall_s": wall,
            "cpu_s": cpu,
            "started": started,
            "done": started + wall,
            "peak_rss_mb": hwm_mb(),
        }
    )


def one_run(
    base: Settings,
    store_url: str,
    workers: int,
    entities: int,
    n: int,
    messages: int,
    engines: str = "partition",
    profile: str = "",
) -> dict[str, Any]:
    """An enrich stage and ``workers`` detect workers, each a spawned process (clean memory)."""
    settings = run_settings(base, store_url)
    js = settings.model_dump_json()
    ctx = multiprocessing.get_context("spawn")
    ready, total, go, out = ctx.Value("i", 0), ctx.Value("q", 0), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(
            target=detect_worker,
            args=(js, f"d{i}", workers, entities, n, ready, go, total, out, engines, profile),
            daemon=True,
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while ready.value < workers and time.monotonic() < deadline:
        if not all(p.is_alive() for p in procs):
            raise RuntimeError("a detect worker died while joining")
        time.sleep(0.2)  # polling the workers' shared counter, not a timing assumption
    if ready.value < workers:
        raise RuntimeError("the detect workers did not join in time")
    enrich = ctx.Process(target=enrich_worker, args=(js, entities, messages, out), daemon=True)
    enrich.start()
    enrich.join(RUN_TIMEOUT_S)
    if enrich.exitcode != 0:
        raise RuntimeError(f"the enrich stage failed (exit {enrich.exitcode})")
    en = out.get(timeout=10)
    go.set()
    results = [out.get(timeout=RUN_TIMEOUT_S) for _ in procs]
    for p in procs:
        p.join(60)
    if sum(r["flows"] for r in results) != n:
        raise RuntimeError(f"the detect workers fed {sum(r['flows'] for r in results):,} of {n:,} flows")
    wall = max(r["done"] for r in results) - min(r["started"] for r in results)
    cpu = sum(r["cpu_s"] for r in results)
    return {
        "workers": workers,
        "enrich": en,
        "detect": sorted(results, key=lambda r: r["worker"]),
        "wall_s": wall,
        "flows_s": n / wall,
        "flows_per_cpu_s": n / cpu,
        "e2e_flows_per_cpu_s": n / (cpu + en["cpu_s"]),
        "alerts": sum(r["alerts"] for r in results),  # alert records, updates included
        "alert_ids": sorted({a for r in results for a in r.pop("alert_ids")}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small input, one run each: under a minute")
    ap.add_argument("--repeat", type=int, default=None, help="runs per worker count (default 2; quick 1)")
    ap.add_argument("--json", type=Path, default=None, help="also write the runs here")
    ap.add_argument(
        "--engines",
        choices=["partition", "one"],
        default="partition",
        help="per detect worker: one engine per partition (build_stage, the default) or one engine",
    )
    ap.add_argument(
        "--profile", type=Path, default=None, help="a cProfile per detect worker into this folder"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    entities, rate, seconds = (2_000, 2.5, 60.0) if args.quick else (10_000, 3.0, 60.0)
    repeat = args.repeat or (1 if args.quick else 2)
    from tests.support.postgres import _admin_engine, _create_database, _drop_database

    admin = _admin_engine()
    runs: list[dict[str, Any]] = []
    with TansuBroker() as broker:
        base = bench_settings(broker)
        base.kafka.partitions = PARTITIONS
        base.kafka.max_poll_interval_ms = 300_000  # the waiting detect workers do not poll
        pods = inventory(entities)
        flows = cluster_flows(
            entities=entities, seconds=seconds, rate=entities * rate, t0=1_800_000_000.0, seed=5
        )
        n = len(flows)
        t = time.perf_counter()
        messages = publish(base, flows)
        print(
            f"input: {n:,} flows ({entities:,} entities x {rate * 10:g} flows per 10 s window) in {messages} "
            f"messages over {PARTITIONS} partitions, published in {time.perf_counter() - t:.1f} s; "
            f"{len(pods.pods):,} pods"
        )
        del flows
        print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores shared)")
        for _ in range(repeat):
            for workers in (1, 2):
                name, url = _create_database(admin)
                try:
                    r = one_run(
                        base, url, workers, entities, n, messages, args.engines, str(args.profile or "")
                    )
                finally:
                    _drop_database(admin, name)
                runs.append(r)
                print_run(r, n)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"engines per detect worker: {args.engines}")
    summary(runs, n, entities, rate)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))


def print_run(r: dict[str, Any], n: int) -> None:
    en = r["enrich"]
    print(
        f"{r['workers']} detect worker(s): {r['flows_s']:,.0f} flows/s wall ({r['wall_s']:.1f} s), "
        f"{r['flows_per_cpu_s']:,.0f} flows/CPU-s over the detect workers, "
        f"{r['e2e_flows_per_cpu_s']:,.0f} with the enrich stage's CPU; {len(r['alert_ids'])} alerts; "
        f"enrich {en['flows'] / en['wall_s']:,.0f} flows/s wall, "
        f"{en['flows'] / en['cpu_s']:,.0f} flows/CPU-s, peak RSS {en['peak_rss_mb']:,.0f} MB"
    )
    for w in r["detect"]:
        print(
            f"    {w['worker']}: {w['flows']:,} flows ({w['flows'] / n:.0%}), {w['cpu_s']:.1f} CPU-s, "
            f"{w['flows'] / w['cpu_s']:,.0f} flows/CPU-s, {w['wall_s']:.1f} s wall, "
            f"peak RSS {w['peak_rss_mb']:,.0f} MB"
        )


def summary(runs: list[dict[str, Any]], n: int, entities: int, rate: float) -> None:
    def med(values: list[float]) -> str:
        m = statistics.median(values)
        return f"{m:,.0f}" + (f" ({min(values):,.0f}-{max(values):,.0f})" if len(values) > 1 else "")

    by = {w: [r for r in runs if r["workers"] == w] for w in (1, 2)}
    print(f"\nsummary, median (range) of {len(by[1])} run(s) each, {n:,} flows, {entities:,} entities:")
    for w, rs in by.items():
        rss = [d["peak_rss_mb"] for r in rs for d in r["detect"]]
        print(
            f"  {w} detect worker(s): {med([r['flows_s'] for r in rs])} flows/s wall; "
            f"{med([r['flows_per_cpu_s'] for r in rs])} flows/CPU-s (detect); "
            f"{med([r['e2e_flows_per_cpu_s'] for r in rs])} flows/CPU-s (enrich + detect); "
            f"peak RSS per worker {med(rss)} MB"
        )
    scale = [b["flows_s"] / a["flows_s"] for a, b in zip(by[1], by[2], strict=False)]
    enrich = [r["enrich"]["flows"] / r["enrich"]["cpu_s"] for r in runs]
    print(
        "  scaling factor (wall, two over one, per interleaved pair): " + ", ".join(f"{s:.2f}" for s in scale)
    )
    print(f"  enrich stage: {med(enrich)} flows/CPU-s")
    same = len({tuple(r["alert_ids"]) for r in runs}) == 1
    print(
        f"  same alert ids in every run: {'yes' if same else 'NO'} "
        f"({len(runs[0]['alert_ids'])} distinct alerts)"
    )
    from results import emit

    note = (
        f"{n:,} flows, {entities:,} entities x {rate * 10:g} flows per 10 s window; "
        "enrich + detect processes, tansu, PostgreSQL, default model"
    )
    for w, rs in by.items():
        per_cpu = statistics.median([r["flows_per_cpu_s"] for r in rs])
        wall = statistics.median([r["flows_s"] for r in rs])
        label = f"{w} detect worker(s), repartition topic to alerts"
        emit("pipeline", label, per_cpu, "flows/CPU-s", peer=f"{wall:,.0f} wall", note=note)
    emit(
        "pipeline",
        "scale-out factor, two detect workers over one (wall)",
        statistics.median(scale),
        "x",
        note=note,
    )


if __name__ == "__main__":
    main()
