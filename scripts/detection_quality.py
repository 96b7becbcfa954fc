#!/usr/bin/env python3
"""Per-technique detection quality of the pipeline on simulator data: the README's table.

    .venv/bin/python scripts/detection_quality.py                # figure seeds (never used for tuning)
    .venv/bin/python scripts/detection_quality.py --seeds 1,2,3  # tuning seeds

For each seed: simulate a cluster with every attack technique at the given intensity plus
all hard negatives, run the offline detector (the live engine), match alerts to episodes.
An episode is detected when an alert of the episode's kind, whose entity is the episode's
source, covers some of [start, end + 2 windows]; time to detect is from the episode start
to the close of the first such window. An alert whose entity is no episode's source at that
time is a false alert (reported per hour per 100 pods). Thin on purpose: the models stage's
``models/evaluation.py`` will own this matching once it exists.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from flowwarden.labels import TECHNIQUES, Episode
from flowwarden.records import Alert
from flowwarden.settings import Settings

FIGURE_SEEDS = (101, 102, 103)
TUNING_SEEDS = (1, 2, 3)


@dataclass
class Tally:
    episodes: int = 0
    detected: int = 0
    ttd_windows: list[float] = field(default_factory=list)
    missed: list[Episode] = field(default_factory=list)
    detectors: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def _same_source(alert: Alert, ep: Episode) -> bool:
    if ep.source.pod and alert.entity.pod:
        return alert.entity.pod == ep.source.pod and alert.entity.namespace == ep.source.namespace
    return alert.entity.ip == ep.source.ip


def match(alerts: list[Alert], episodes: list[Episode], window_s: float) -> dict[str, Any]:
    """Per technique: episodes, detected, times to detect; plus the false alerts."""
    tallies: dict[str, Tally] = {t: Tally() for t in TECHNIQUES}
    explained: set[str] = set()
    for ep in episodes:
        t = tallies[ep.technique]
        t.episodes += 1
        lo, hi = ep.start.timestamp(), ep.end.timestamp() + 2 * window_s
        best: float | None = None
        for a in alerts:
            if not _same_source(a, ep):
                continue
            a0 = a.window_start.timestamp()
            a1 = (a.last_seen or a.window_end).timestamp()
            if a1 < lo - window_s or a0 > hi:
                continue
            explained.add(a.id)  # about the attacker during the attack: not a false alert
            if a.kind != ep.kind:
                continue
            t.detectors[a.detector] += 1
            detect_at = max(a0, lo - window_s) + window_s
            best = detect_at if best is None else min(best, detect_at)
        if best is not None:
            t.detected += 1
            t.ttd_windows.append(max(0.0, best - lo) / window_s)
        else:
            t.missed.append(ep)
    false = [a for a in alerts if a.id not in explained]
    return {"tallies": tallies, "false": false}


def run_seed(
    seed: int,
    minutes: float,
    pods: int,
    intensity: float,
    settings: Settings,
    state: bytes | None,
    model: Any = None,
) -> dict[str, Any]:
    from pipeline.enrich import Inventory
    from pipeline.offline import detect_flows
    from simulator import simulate

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
    out = match(res.alerts, sim.labels.episodes, settings.pipeline.window_s)
    out.update(flows=len(sim.flows), sim_s=t_sim, detect_s=t_det, alerts=len(res.alerts))
    return out


def benign_state(seed: int, minutes: float, pods: int, settings: Settings) -> bytes:
    """History from a benign-only run (what a shipped model's ``state`` carries)."""
    from pipeline.enrich import Inventory
    from pipeline.offline import detect_flows
    from simulator import simulate

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
        from pipeline.offline import default_model

        model = default_model()
    total: dict[str, Tally] = {t: Tally() for t in TECHNIQUES}
    false: list[Alert] = []
    hours = 0.0
    flows = 0
    det_s = 0.0
    for seed in seeds:
        r = run_seed(seed, args.minutes, args.pods, args.intensity, settings, state, model)
        for tech, t in r["tallies"].items():
            tot = total[tech]
            tot.episodes += t.episodes
            tot.detected += t.detected
            tot.ttd_windows += t.ttd_windows
            if args.show_missed:
                for ep in t.missed:
                    print(
                        f"  MISSED seed {seed} {tech} {ep.source.namespace}/{ep.source.pod} "
                        f"{ep.start:%H:%M:%S}-{ep.end:%H:%M:%S} intensity={ep.intensity}",
                        file=sys.stderr,
                    )
            for d, n in t.detectors.items():
                tot.detectors[d] += n
        false += r["false"]
        hours += args.minutes / 60.0
        flows += r["flows"]
        det_s += r["detect_s"]
        print(
            f"seed {seed}: {r['flows']} flows, {r['alerts']} alerts, {len(r['false'])} false, "
            f"simulate {r['sim_s']:.1f}s, detect {r['detect_s']:.1f}s",
            file=sys.stderr,
        )
    fp_rate = len(false) / hours / (args.pods / 100.0) if hours else 0.0
    rows = []
    print(
        f"\nDetection quality: seeds {args.seeds}, {args.minutes:g} min x {args.pods} pods each, "
        f"intensity {args.intensity:g}, window {settings.pipeline.window_s:g}s"
        + (f", warm start from benign seed {args.warm_seed}" if state else ", cold start")
        + (f", anomaly model {getattr(model, 'version', '?')}" if model is not None else ", rules only")
    )
    print("\n| technique | episodes | detected | recall | median TTD (windows) | detectors |")
    print("|---|---:|---:|---:|---:|---|")
    for tech, t in total.items():
        recall = t.detected / t.episodes if t.episodes else float("nan")
        ttd = float(np.median(t.ttd_windows)) if t.ttd_windows else float("nan")
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
    all_ttd = [x for t in total.values() for x in t.ttd_windows]
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
