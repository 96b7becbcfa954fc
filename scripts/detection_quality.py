#!/usr/bin/env python3
"""Per-technique detection quality of the pipeline on simulator data or lab captures: the README's tables.

    .venv/bin/python scripts/detection_quality.py                # figure seeds (never used for tuning)
    .venv/bin/python scripts/detection_quality.py --seeds 1,2,3  # tuning seeds
    .venv/bin/python scripts/detection_quality.py --pcap tests/data/lab/reporting   # a real-traffic capture

For each seed: simulate a cluster with every attack technique at the given intensity plus
all hard negatives, run the offline detector (the live engine), match alerts to episodes
with ``models.evaluation.match_episodes`` (the matching ``flowwarden models evaluate`` uses).
An episode is detected when an alert of the episode's kind, whose entity is the episode's
source, covers some of [start, end + 2 windows]; time to detect is from the episode start
to the close of the alert's first window in that span. An alert about no episode's source
during its span is a false alert (reported per hour per 100 pods): an attacker's alert of
another kind is not counted, unlike ``models evaluate``'s stricter false alerts.

With ``--pcap DIR`` (a capture recorded by ``python -m tests.lab.record``, or a folder of
them): the capture is metered by the collector's offline path (``meter_capture``), scored by
the same engine with the lab's pod inventory (``pods.json``) and settings (``lab.yaml``), and
matched to its ``labels.json`` (see :mod:`lab_quality` below). There an episode counts as
detected only by an alert whose detector *names* the episode's technique (the detector's
MITRE id equals the episode's) and whose entity is the attacking pod; ``match_episodes``'s
laxer verdict (any alert of the episode's kind) is shown beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from flowwarden.labels import TECHNIQUES, Episode
from flowwarden.models.evaluation import TechniqueTally, concerns, false_alert_rates, match_episodes
from flowwarden.records import Alert, Entity
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
    feed_s: float | None = None,
) -> dict[str, Any]:
    """One seed's tallies, false alerts and timings: the matching is ``models/evaluation.py``'s."""
    from flowwarden.kube import PodInventory
    from flowwarden.pipeline.runtime.offline import detect_flows
    from flowwarden.simulator import simulate

    t = time.perf_counter()
    sim = simulate(
        minutes=minutes, pods=pods, seed=seed, attacks="all", intensity=intensity, settings=settings
    )
    t_sim = time.perf_counter() - t
    inv = PodInventory.from_dict(sim.inventory)
    t = time.perf_counter()
    res = detect_flows(
        sim.flows,
        settings=settings,
        inventory=inv,
        state=state,
        model=model,
        keep_windows=False,
        feed_s=feed_s,
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
    from flowwarden.kube import PodInventory
    from flowwarden.pipeline.runtime.offline import detect_flows
    from flowwarden.simulator import simulate

    sim = simulate(minutes=minutes, pods=pods, seed=seed, attacks="none", settings=settings)
    res = detect_flows(
        sim.flows, settings=settings, inventory=PodInventory.from_dict(sim.inventory), keep_windows=False
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
    ap.add_argument(
        "--feed-s",
        type=float,
        default=None,
        help="feed the engine this many seconds of flows at a time, as a live pipeline receives "
        "them (early alerts then fire when they would live; several times slower). Default: "
        "200k-flow chunks, where every alert is raised when its window closes",
    )
    ap.add_argument("--show-false", action="store_true", help="print every false alert")
    ap.add_argument("--show-missed", action="store_true", help="print every missed episode")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    ap.add_argument(
        "--pcap",
        type=Path,
        default=None,
        help="a lab capture folder (capture.pcap, labels.json, pods.json, lab.yaml), or a folder of them",
    )
    args = ap.parse_args(argv)
    from flowwarden.settings import load_settings

    if args.pcap is not None:
        return lab_main(args)

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
        r = run_seed(seed, args.minutes, args.pods, args.intensity, settings, state, model, args.feed_s)
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


# ---------------------------------------------------------------------- lab captures


def lab_dirs(path: Path) -> list[Path]:
    """``path`` itself when it holds a capture, else its sub-folders that do (sorted)."""
    if (path / "labels.json").is_file():
        return [path]
    found = sorted(d for d in path.iterdir() if (d / "labels.json").is_file()) if path.is_dir() else []
    if not found:
        raise SystemExit(
            f"--pcap: {path}: no labels.json here or in a sub-folder (record one: tests/lab/record.py)"
        )
    return found


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def lab_episodes(labels: dict[str, Any]) -> list[Episode]:
    """The labelled episodes as :class:`Episode` objects; techniques beyond the simulator's
    (brute_force, beaconing) are built without the technique check so that the same
    ``concerns`` (entity and time span) applies to them."""
    out = []
    for e in labels["episodes"]:
        fields = {
            "id": e["id"],
            "technique": e["technique"],
            "mitre": e["mitre"],
            "kind": e["kind"],
            "source": Entity(**e["source"]),
            "targets": list(e["targets"]),
            "start": _ts(e["start"]),
            "end": _ts(e["end"]),
            "intensity": 1.0,
        }
        if e["technique"] in TECHNIQUES:
            out.append(Episode(**fields))
        else:
            out.append(Episode.model_construct(**fields))
    return out


def detector_techniques() -> dict[str, str]:
    """Each registered detector's MITRE ATT&CK id (empty when it names none)."""
    from flowwarden.pipeline.detection.detectors import DETECTORS

    return {name: str(getattr(cls, "technique", "") or "") for name, cls in DETECTORS.items()}


class LabRow:
    """One technique's lab episodes and which detectors fired on the attacking pod during them.

    (A plain class: the tests load this script without registering it as a module, which
    ``dataclasses`` needs.)
    """

    def __init__(self, technique: str, mitre: str, naming: list[str]) -> None:
        self.technique, self.mitre = technique, mitre
        self.naming = naming  # the detectors that name this technique
        self.episodes = 0
        self.detected = 0  # by a detector that names the technique, on the attacking pod
        self.detected_by_kind = 0  # match_episodes: any alert of the episode's kind on the attacking pod
        self.by: dict[str, int] = defaultdict(int)  # naming detectors that fired on the pod
        self.other: dict[str, int] = defaultdict(int)  # other detectors on the pod during the episode
        self.elsewhere: dict[str, int] = defaultdict(int)  # a naming detector on another entity
        self.ttd_s: list[float] = []
        self.missed: list[str] = []


def lab_quality(
    alerts: list[Alert], episodes: list[Episode], window_s: float, learning_end: datetime
) -> tuple[dict[str, LabRow], list[Alert], list[Alert]]:
    """Per technique: detected by a naming detector on the attacking pod; false alerts after learning.

    Returns (rows, false alerts after the learning phase, false alerts during it). A false
    alert is ``match_episodes``'s ``unexplained``: about no episode's source during its span.
    """
    names = detector_techniques()
    standard = [ep for ep in episodes if ep.technique in TECHNIQUES]
    lax = match_episodes(alerts, standard, window_s)
    rows: dict[str, LabRow] = {}
    for ep in episodes:
        row = rows.setdefault(
            ep.technique,
            LabRow(ep.technique, ep.mitre, sorted(d for d, t in names.items() if t and t == ep.mitre)),
        )
        row.episodes += 1
        if ep.technique in TECHNIQUES and ep.id in lax.ttd_s:
            row.detected_by_kind += 1
        ttd = math.inf
        start, end = ep.start.timestamp(), ep.end.timestamp() + 2 * window_s
        for a in alerts:
            names_it = (names.get(a.detector) or a.technique) == ep.mitre
            if not concerns(a, ep, window_s):
                overlaps = not (a.window_start.timestamp() > end or a.window_end.timestamp() < start)
                if names_it and overlaps:
                    row.elsewhere[f"{a.detector}@{a.entity.key()}"] += 1
                continue
            if not names_it:
                row.other[a.detector] += 1
                continue
            row.by[a.detector] += 1
            episode_window = math.floor(ep.start.timestamp() / window_s) * window_s
            t_det = max(a.window_start.timestamp(), episode_window) + window_s
            raised = a.evidence.get("detected_at")  # early firing: sooner than the close
            if isinstance(raised, int | float) and a.window_start.timestamp() >= episode_window:
                t_det = min(t_det, max(float(raised), ep.start.timestamp()))
            ttd = min(ttd, max(0.0, t_det - ep.start.timestamp()))
        if math.isfinite(ttd):
            row.detected += 1
            row.ttd_s.append(ttd)
        else:
            row.missed.append(ep.id)
    # match_episodes's "unexplained", over every lab episode (its tallies know only the simulator's).
    unexplained = [a for a in alerts if not any(concerns(a, ep, window_s) for ep in episodes)]
    after = [a for a in unexplained if a.window_end > learning_end]
    during = [a for a in unexplained if a.window_end <= learning_end]
    return rows, after, during


def lab_main(args: argparse.Namespace) -> int:
    from flowwarden.collectors.offline import meter_capture
    from flowwarden.kube import PodInventory
    from flowwarden.pipeline.runtime.offline import default_model, detect_flows
    from flowwarden.settings import load_settings

    results = []
    for d in lab_dirs(args.pcap):
        labels = json.loads((d / "labels.json").read_text())
        lab = labels["lab"]
        config = args.config or d / "lab.yaml"
        settings = load_settings(config)
        t = time.perf_counter()
        flows, report = meter_capture(d / lab.get("capture", "capture.pcap"), settings)
        t_meter = time.perf_counter() - t
        inv = PodInventory.from_file(d / "pods.json")
        model = default_model() if args.model == "default" else None
        t = time.perf_counter()
        res = detect_flows(
            flows, settings=settings, inventory=inv, model=model, keep_windows=False, feed_s=args.feed_s
        )
        t_det = time.perf_counter() - t
        window_s = settings.pipeline.window_s
        episodes = lab_episodes(labels)
        rows, false_after, false_during = lab_quality(
            res.alerts, episodes, window_s, _ts(lab["learning_end"])
        )
        minutes = (_ts(lab["end"]) - _ts(lab["start"])).total_seconds() / 60
        learn_min = (_ts(lab["learning_end"]) - _ts(lab["start"])).total_seconds() / 60
        print(
            f"{d}: {report.packets:,} packets, {len(flows):,} flows, {len(res.alerts)} alerts; "
            f"meter {t_meter:.1f}s, detect {t_det:.1f}s",
            file=sys.stderr,
        )
        print(
            f"\nDetection quality on real traffic: lab capture {d.name} (seed {lab['seed']}), "
            f"{minutes:.1f} min, learning phase {learn_min:.1f} min, cold start, window {window_s:g}s, "
            + ("anomaly model on" if model is not None else "rules only")
            + f"; beacon every {lab.get('beacon_interval_s', '?')}s ±{float(lab.get('beacon_jitter', 0)):.0%}"
        )
        print(
            "\n| technique (MITRE) | tool | episodes | detected by a detector naming it | "
            "any alert of its kind (`match_episodes`) | detectors that name it | "
            "what fired on the pod instead |"
        )
        print("|---|---|---:|---:|---:|---|---|")
        tools: dict[str, list[str]] = defaultdict(list)
        for e in labels["episodes"]:
            if e["tool"] not in tools[e["technique"]]:
                tools[e["technique"]].append(e["tool"])
        for tech, row in rows.items():
            fired = ", ".join(f"{k} ({v})" for k, v in sorted(row.by.items(), key=lambda kv: -kv[1]))
            instead = ", ".join(f"{k} ({v})" for k, v in sorted(row.other.items(), key=lambda kv: -kv[1]))
            if row.elsewhere:
                instead += (
                    ("; " if instead else "")
                    + "naming detector on another entity: "
                    + ", ".join(sorted(row.elsewhere))
                )
            lax = (
                f"{row.detected_by_kind}/{row.episodes}"
                if tech in TECHNIQUES
                else "n/a (not a simulator technique)"
            )
            naming = ", ".join(row.naming) or "**none**"
            print(
                f"| {tech} ({row.mitre}) | {'; '.join(tools[tech])} | {row.episodes} | "
                f"**{row.detected}/{row.episodes}**{' by ' + fired if fired else ''} | {lax} | {naming} | "
                f"{instead or '-'} |"
            )
        by_det: dict[str, int] = defaultdict(int)
        for a in false_after:
            by_det[a.detector] += 1
        print(
            f"\nfalse alerts after the learning phase: {len(false_after)}"
            + (" (" + ", ".join(f"{k}={v}" for k, v in sorted(by_det.items())) + ")" if by_det else "")
            + f"; during it: {len(false_during)}; "
            f"hard negatives in the labels: {len(labels['hard_negatives'])}"
        )
        if args.show_false:
            for a in false_after + false_during:
                phase = "learning" if a in false_during else "after"
                print(
                    f"  FALSE ({phase}) {a.detector} {a.entity.key()} {a.window_start:%H:%M:%S} "
                    f"severity={a.severity} score={a.score:.2f} targets={a.targets[:3]} "
                    f"hard_negative={_hard_negative(a, labels['hard_negatives'])}"
                )
        if args.show_missed:
            for row in rows.values():
                for ep_id in row.missed:
                    print(f"  MISSED {row.technique} {ep_id}", file=sys.stderr)
        results.append(
            {
                "capture": str(d),
                "rows": [
                    {
                        "technique": r.technique,
                        "mitre": r.mitre,
                        "episodes": r.episodes,
                        "detected": r.detected,
                        "detected_by_kind": r.detected_by_kind,
                        "by": dict(r.by),
                        "other": dict(r.other),
                        "elsewhere": dict(r.elsewhere),
                        "naming": r.naming,
                    }
                    for r in rows.values()
                ],
                "false_after_learning": [
                    {
                        "detector": a.detector,
                        "entity": a.entity.key(),
                        "window_start": a.window_start.isoformat(),
                    }
                    for a in false_after
                ],
                "false_during_learning": len(false_during),
                "alerts": len(res.alerts),
                "flows": len(flows),
                "packets": report.packets,
            }
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def _hard_negative(alert: Alert, negatives: list[dict[str, Any]]) -> str:
    """The labelled hard negative this false alert is about (its source and span), if any."""
    for hn in negatives:
        src = hn["source"]
        same = alert.entity.ip == src["ip"] or (src.get("pod") and alert.entity.pod == src["pod"])
        if same and _ts(hn["start"]) <= alert.window_end and alert.window_start <= _ts(hn["end"]):
            return str(hn["id"])
    return "-"


if __name__ == "__main__":
    raise SystemExit(main())
