#!/usr/bin/env python3
"""Per-technique detection quality of the pipeline on simulator data: the README's table.

    .venv/bin/python scripts/detection_quality.py                # figure seeds (never used for tuning)
    .venv/bin/python scripts/detection_quality.py --seeds 1,2,3  # tuning seeds

For each seed: simulate a cluster with every attack technique at the given intensity plus
all hard negatives, run the offline detector (the live engine), match alerts to episodes
with ``models.evaluation.match_episodes`` (the matching ``flowwarden models evaluate`` uses).
An episode is detected when an alert of the episode's kind, whose entity is the episode's
source, covers some of [start, end + 2 windows]; time to detect is from the episode start
to the close of the alert's first window in that span. An alert about no episode's source
during its span is a false alert (reported per hour per 100 pods): an attacker's alert of
another kind is not counted, unlike ``models evaluate``'s stricter false alerts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from flowwarden.labels import TECHNIQUES
from flowwarden.models.evaluation import TechniqueTally, false_alert_rates, match_episodes
from flowwarden.records import Alert
from flowwarden.settings import Settings

FIGURE_SEEDS = (101, 102, 103)
TUNING_SEEDS = (1, 2, 3)


def run_seed(
    seed: int,
    minutes: float,
    pods: int,
    intensity: float,
    settings: Settings,
    state: bytes | None,
    model: Any = None,
) -> dict[str, Any]:
    """One seed's tallies, false alerts and timings: the matching is ``models/evaluation.py``'s."""
    from flowwarden.pipeline.detection.enrich import Inventory
    from flowwarden.pipeline.runtime.offline import detect_flows
    from flowwarden.simulator import simulate

    t = time.perf_counter()
    sim = simulate(
        minutes=minutes, pods=pods, seed=seed, attacks="all", intensity=intensity, settings=settings
    )
    t_sim = time.perf_counter() - t
    inv = Inventory.from_dict(sim.inventory)
    t = time.perf_counter()
    res = detect_flows(
        sim.flows, settings=settings, inventory=inv, state=state, model=model, keep_windows=False
    )
    t_det = time.perf_counter() - t
    m = match_episodes(res.alerts, sim.labels.episodes, settings.pipeline.window_s)
    return {
        "tallies": m.tallies,
        "false": m.unexplained,
        "flows": len(sim.flows),
        "sim_s": t_sim,
        "detect_s": t_det,
        "alerts": len(res.alerts),
    }


def benign_state(seed: int, minutes: float, pods: int, settings: Settings) -> bytes:
    """History from a benign-only run (what a shipped model's ``state`` carries)."""
    from flowwarden.pipeline.detection.enrich import Inventory
    from flowwarden.pipeline.runtime.offline import detect_flows
    from flowwarden.simulator import simulate

    sim = simulate(minutes=minutes, pods=pods, seed=seed, attacks="none", settings=settings)
    res = detect_flows(
        sim.flows, settings=settings, inventory=Inventory.from_dict(sim.inventory), keep_windows=False
    )
    assert res.engine is not None
    return res.engine.export_state()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default=",".join(map(str, FIGURE_SEEDS)))
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--intensity", type=float, default=1.0)
    ap.add_argument(
        "--warm-seed",
        type=int,
        default=None,
        help="warm-start from the history of a benign run with this seed",
    )
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument(
        "--model",
        choices=("none", "default"),
        default="none",
        help="'default': the anomaly model shipped with the package (isolation_forest on)",
    )
    ap.add_argument("--show-false", action="store_true", help="print every false alert")
    ap.add_argument("--show-missed", action="store_true", help="print every missed episode")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = ap.parse_args(argv)
    from flowwarden.settings import load_settings

    settings = load_settings(args.config)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    state = None
    if args.warm_seed is not None:
        if args.warm_seed in seeds:
            ap.error("--warm-seed must differ from the evaluated seeds")
        state = benign_state(args.warm_seed, args.minutes, args.pods, settings)
    model = None
    if args.model == "default":
        from flowwarden.pipeline.runtime.offline import default_model

        model = default_model()
    window_s = settings.pipeline.window_s
    total: dict[str, TechniqueTally] = {t: TechniqueTally() for t in TECHNIQUES}
    false: list[Alert] = []
    hours = 0.0
    flows = 0
    det_s = 0.0
    for seed in seeds:
        r = run_seed(seed, args.minutes, args.pods, args.intensity, settings, state, model)
        for tech, t in r["tallies"].items():
            total[tech].add(t)
            if args.show_missed:
                for ep in t.missed:
                    print(
                        f"  MISSED seed {seed} {tech} {ep.source.namespace}/{ep.source.pod} "
                        f"{ep.start:%H:%M:%S}-{ep.end:%H:%M:%S} intensity={ep.intensity}",
                        file=sys.stderr,
                    )
        false += r["false"]
        hours += args.minutes / 60.0
        flows += r["flows"]
        det_s += r["detect_s"]
        print(
            f"seed {seed}: {r['flows']} flows, {r['alerts']} alerts, {len(r['false'])} false, "
            f"simulate {r['sim_s']:.1f}s, detect {r['detect_s']:.1f}s",
            file=sys.stderr,
        )
    rates = false_alert_rates(len(false), hours, args.pods)
    fp_rate = rates["false_alerts_per_hour_per_100_pods"] if hours else 0.0
    rows = []
    print(
        f"\nDetection quality: seeds {args.seeds}, {args.minutes:g} min x {args.pods} pods each, "
        f"intensity {args.intensity:g}, window {window_s:g}s"
        + (f", warm start from benign seed {args.warm_seed}" if state else ", cold start")
        + (f", anomaly model {getattr(model, 'version', '?')}" if model is not None else ", rules only")
    )
    print("\n| technique | episodes | detected | recall | median TTD (windows) | detectors |")
    print("|---|---:|---:|---:|---:|---|")
    for tech, t in total.items():
        recall = t.detected / t.episodes if t.episodes else float("nan")
        ttd_windows = [s / window_s for s in t.ttd_s]
        ttd = float(np.median(ttd_windows)) if ttd_windows else float("nan")
        dets = ", ".join(f"{d} ({n})" for d, n in sorted(t.detectors.items(), key=lambda kv: -kv[1]))
        print(f"| {tech} | {t.episodes} | {t.detected} | {recall:.2f} | {ttd:.1f} | {dets} |")
        rows.append(
            {
                "technique": tech,
                "episodes": t.episodes,
                "detected": t.detected,
                "recall": recall,
                "median_ttd_windows": ttd,
            }
        )
    all_ttd = [s / window_s for t in total.values() for s in t.ttd_s]
    print(
        f"\nfalse alerts: {len(false)} over {hours:g} h -> {fp_rate:.2f} per hour per 100 pods; "
        f"overall median TTD {float(np.median(all_ttd)) if all_ttd else float('nan'):.1f} windows; "
        f"engine {flows / det_s:,.0f} flows/s (offline, incl. enrichment)"
    )
    by_det: dict[str, int] = defaultdict(int)
    for a in false:
        by_det[a.detector] += 1
    if false:
        print("false alerts by detector: " + ", ".join(f"{d}={n}" for d, n in sorted(by_det.items())))
    if args.show_false:
        for a in false:
            print(
                f"  FALSE {a.detector} {a.entity.key()} {a.window_start:%H:%M:%S} score={a.score} "
                f"targets={a.targets[:3]} evidence={json.dumps(a.evidence)[:300]}"
            )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"rows": rows, "false_per_hour_per_100_pods": fp_rate, "false_alerts": len(false)}, indent=2
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
