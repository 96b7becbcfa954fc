#!/usr/bin/env python3
"""Detection engine throughput on simulator data: flows/s, featurisation and scoring rates, memory.

    .venv/bin/python benchmarks/bench_detection.py           # ~3,000 pods, 3 simulated minutes
    .venv/bin/python benchmarks/bench_detection.py --quick   # < 30 s

Feeds a simulated cluster's flows (every attack and hard negative included) to one
:class:`DetectionEngine` in batches of ``--batch-flows`` in time order, as
the streaming runtime would, on one core, and prints: end-to-end engine flows/s (enrichment, windowing,
features, detectors, alerts), the time split by stage, entity-windows scored per second,
active entities, and peak memory. It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=3000)
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument(
        "--batch-flows",
        type=int,
        default=50_000,
        help="flows per engine call (a consumer's poll of several collector batches)",
    )
    ap.add_argument("--quick", action="store_true", help="1,000 pods, 1 minute")
    args = ap.parse_args(argv)
    if args.quick:
        args.pods, args.minutes = 1000, 1.0

    import pandas as pd

    from flowwarden.kube import PodInventory
    from flowwarden.pipeline.detection import engine as engine_mod
    from flowwarden.pipeline.detection.engine import DetectionEngine
    from flowwarden.records import conform_flows
    from flowwarden.settings import Settings
    from flowwarden.simulator import simulate

    settings = Settings()
    t = time.perf_counter()
    sim = simulate(minutes=args.minutes, pods=args.pods, seed=args.seed, attacks="all", settings=settings)
    flows = conform_flows(sim.flows)
    print(
        f"simulated {len(flows):,} flows ({args.pods} pods, {args.minutes:g} min) "
        f"in {time.perf_counter() - t:.1f}s"
    )
    inv = PodInventory.from_dict(sim.inventory)
    eng = DetectionEngine(settings, inventory=inv)

    # Time the stages by wrapping the engine's own functions (no change to the code measured).
    spent: dict[str, float] = {}

    def timed(name: str, fn):  # type: ignore[no-untyped-def]
        def wrapper(*a, **k):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0

        return wrapper

    for name in (
        "enrich_flows",
        "to_lean",
        "prepare",
        "window_features",
        "novelty_features",
        "recent_features",
        "beacon_features",
    ):
        setattr(engine_mod, name, timed(name, getattr(engine_mod, name)))
    eng.alerts.build = timed("alerts", eng.alerts.build)  # type: ignore[method-assign]

    batches = [flows.iloc[a : a + args.batch_flows] for a in range(0, len(flows), args.batch_flows)]
    emitted = []
    t = time.perf_counter()
    cpu0 = time.process_time()
    active_peak = 0
    for b in batches:
        emitted += eng.process(b).alerts
        active_peak = max(active_peak, len(eng.entity_base))
    emitted += eng.flush().alerts
    n_alerts = len(emitted)
    wall = time.perf_counter() - t
    cpu = time.process_time() - cpu0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"engine: {len(flows):,} flows in {wall:.2f}s wall ({cpu:.2f}s CPU) -> "
        f"{len(flows) / wall:,.0f} flows/s wall, {len(flows) / cpu:,.0f} flows/s per CPU-second"
    )
    print(
        f"batches: {len(batches)} of ~{len(flows) / max(len(batches), 1):,.0f} flows; "
        f"windows scored: {eng.windows_scored:,} ({eng.windows_scored / wall:,.0f}/s); alerts: {n_alerts}"
    )
    feat = sum(
        spent.get(k, 0.0)
        for k in ("prepare", "window_features", "novelty_features", "recent_features", "beacon_features")
    )
    print(
        f"featurisation: {eng.flows_scored / max(feat, 1e-9):,.0f} flows/s "
        f"({eng.windows_scored / max(feat, 1e-9):,.0f} entity-windows/s)"
    )
    for name, s in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {name:18s} {s:7.2f}s  {100 * s / wall:5.1f}%")
    print(
        f"state: {len(eng.entity_base):,} entities (peak {active_peak:,}), {len(eng.workload_base):,} "
        f"workloads, {len(eng.edges):,} edges, {len(eng.connections):,} recent connections, "
        f"vocabulary {len(eng.vocab):,}"
    )
    print(f"peak memory (max RSS): {peak_mb:,.0f} MiB")
    # Equal digests, same alerts (ids, windows, evidence): a check for behaviour-neutral changes.
    final = {a.id: a for a in emitted}
    print(
        f"alert digests: final {_digest(sorted(_canonical(a) for a in final.values()))} "
        f"({len(final)} alerts), emitted {_digest([_canonical(a) for a in emitted])} ({len(emitted)})"
    )
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results import emit

    note = f"{len(flows):,} simulated flows, engine only (enrich, features, detectors, alerts), no bus"
    per_cpu = f"{len(flows) / cpu:,.0f}/CPU-s"
    emit("detection", "engine", len(flows) / wall, "flows/s", peer=per_cpu, note=note)
    emit("detection", "featurisation", eng.flows_scored / max(feat, 1e-9), "flows/s", note="window features")
    emit("detection", "entity-windows scored", eng.windows_scored / wall, "windows/s", note=note)
    emit("detection", "peak RSS", peak_mb, "MiB", note="includes the simulated frame")
    _ = pd  # imported for the frame types the engine uses
    return 0


def _canonical(alert: Any) -> str:
    """An alert's JSON without ``created_at`` (the wall clock of this run)."""
    return str(alert.model_dump_json(exclude={"created_at"}))


def _digest(items: list[str]) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:12]


if __name__ == "__main__":
    raise SystemExit(main())
