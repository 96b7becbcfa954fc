"""Simulator throughput: flows generated per second, write time, and peak memory.

    .venv/bin/python benchmarks/bench_simulator.py            # 60 minutes, 200 pods
    .venv/bin/python benchmarks/bench_simulator.py --quick    # 10 minutes, 100 pods

Prints figures; asserts nothing about time (the machine is shared).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import compact, emit

from flowwarden.simulator import simulate


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 minutes, 100 pods (< 30 s)")
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--pods", type=int, default=None)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    minutes = args.minutes or (10.0 if args.quick else 60.0)
    pods = args.pods or (100 if args.quick else 200)

    base = _peak_mib()
    t = time.perf_counter()
    sim = simulate(minutes=minutes, pods=pods, seed=args.seed)
    gen_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        sim.save(tmp)
        save_s = time.perf_counter() - t
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
    n = len(sim.flows)
    print(f"simulator: {minutes:g} min, {pods} pods, seed {args.seed}")
    print(f"  flows               {n:>12,}  ({n / (minutes * 60):,.0f} per simulated second)")
    print(f"  episodes            {len(sim.labels.episodes):>12,}")
    print(f"  inventory pods      {len(sim.inventory['items']):>12,}")
    print(f"  generate            {gen_s:>12.2f} s  ({n / gen_s:,.0f} flows/s)")
    print(f"  save (3 files)      {save_s:>12.2f} s  ({size / 1e6:,.1f} MB)")
    print(f"  peak RSS            {_peak_mib():>12,.0f} MiB  (interpreter and imports: {base:,.0f} MiB)")
    print(f"  frame in memory     {sim.flows.memory_usage(deep=True).sum() / 2**20:>12,.0f} MiB")
    real_time = n / (minutes * 60)
    emit(
        "simulator",
        "flows generated",
        round(n / gen_s),
        "flows/s",
        peer=f"simulated traffic: {compact(real_time, 'flows/s')} (real time)",
        note=f"{n:,} flows, {minutes:g} min, {pods} pods; {n / gen_s / real_time:,.0f}x real time",
    )
    emit("simulator", "save (3 files)", round(save_s, 2), "s", note=f"{size / 1e6:,.1f} MB")
    emit("simulator", "peak RSS", round(_peak_mib()), "MiB", note=f"interpreter and imports {base:,.0f} MiB")


if __name__ == "__main__":
    main()
