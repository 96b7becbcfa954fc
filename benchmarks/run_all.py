#!/usr/bin/env python3
"""Run every stage's harness and print one results table (Markdown), with the machine.

    .venv/bin/python benchmarks/run_all.py            # quick runs (a few minutes in all)
    .venv/bin/python benchmarks/run_all.py --full     # the full sizes each harness documents
    .venv/bin/python benchmarks/run_all.py --only collector,bus

Each harness runs in its own process (so peak memory is per process) and reports its
headline figures as ``RESULT`` lines (see ``results.py``); the table is those lines.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from results import parse  # noqa: E402

HARNESSES = {
    "collector": "bench_collector.py",
    "bus": "bench_bus.py",
    "wire": "bench_wire.py",
    "simulator": "bench_simulator.py",
    "detection": "bench_detection.py",
    "pipeline": "bench_pipeline.py",
    "store": "bench_store.py",
    "enforcement": "bench_enforcement.py",
    "dashboards": "bench_dashboards.py",
    "e2e": "bench_e2e.py",
    "models": "bench_models.py",
}


def cell(value: object) -> str:
    """One Markdown table cell: numbers with thousands separators (3 significant digits
    below 100), and any ``|`` escaped so that a note cannot break the row."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        text = str(value)
    elif isinstance(value, int):
        text = f"{value:,}"
    elif abs(value) >= 100:
        text = f"{value:,.0f}"
    else:
        text = f"{value:.3g}"
    return text.replace("|", "\\|").replace("\n", " ")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, "
        f"Python {platform.python_version()}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="full sizes instead of --quick")
    ap.add_argument("--only", default="", help="comma-separated harness names")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per harness")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(HARNESSES)
    unknown = [n for n in names if n not in HARNESSES]
    if unknown:
        ap.error(f"unknown harness {', '.join(unknown)}; known: {', '.join(HARNESSES)}")
    rows: list[dict[str, object]] = []
    failures: list[str] = []
    for name in names:
        script = HERE / HARNESSES[name]
        if not script.exists():
            failures.append(f"{name}: {script.name} missing")
            continue
        cmd = [sys.executable, str(script)] + ([] if args.full else ["--quick"])
        print(f"== {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)
        except subprocess.TimeoutExpired:
            failures.append(f"{name}: timed out after {args.timeout:.0f} s")
            continue
        found = parse(proc.stdout.splitlines())
        if proc.returncode != 0 or not found:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            failures.append(f"{name}: exit {proc.returncode}, {len(found)} figures; {' | '.join(tail)}")
        rows.extend(found)
        print(f"   {len(found)} figures in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    print(f"Machine: {machine()}; mode: {'full' if args.full else 'quick'}; {time.strftime('%Y-%m-%d')}\n")
    print("| stage | figure | value | unit | beside (peer or ceiling, same run) | note |")
    print("|---|---|---:|---|---|---|")
    for r in rows:
        cells = [cell(r.get(k, "")) for k in ("stage", "figure", "value", "unit", "peer", "note")]
        print("| " + " | ".join(cells) + " |")
    for f in failures:
        print(f"\n(!) {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
