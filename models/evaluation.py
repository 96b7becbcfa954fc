"""Scoring detections against labelled episodes: pure functions, no I/O but :func:`write_metrics`.

An episode is *detected* when an alert of the episode's kind, whose entity matches the
episode's source (same IP, or same namespace/pod), overlaps ``[start, end + 2 windows]``.
An alert that detects no episode is a *false alert*; :func:`match_episodes` is the one
place that decides this, for ``models evaluate`` and ``scripts/detection_quality.py``
alike. Rates are per hour of data and per hour per 100 pods, because an analyst's burden
grows with the cluster (the base-rate fallacy: a "low" per-window rate still buries people
in a big cluster).

Window-level ROC-AUC and PR-AUC use the detectors' per-window scores: a window is positive
when its entity is an episode's source and it overlaps the episode; the source's windows in
the grace period after the episode are left out (neither clean nor attack).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from flowwarden.labels import TECHNIQUE_KIND, TECHNIQUES, Episode, Labels
from flowwarden.records import Alert

GRACE_WINDOWS = 2
POSITIVE, NEGATIVE, IGNORED = 1, 0, -1


def _ts(dt: Any) -> float:
    return float(dt.timestamp())


def entity_matches(alert: Alert, ep: Episode) -> bool:
    src = ep.source
    if alert.entity.ip == src.ip:
        return True
    return bool(src.pod) and alert.entity.pod == src.pod and alert.entity.namespace == src.namespace


def concerns(alert: Alert, ep: Episode, window_s: float) -> bool:
    """Whether ``alert`` is about ``ep``'s source during ``[start, end + 2 windows]``, of any kind."""
    if not entity_matches(alert, ep):
        return False
    start, end = _ts(ep.start), _ts(ep.end) + GRACE_WINDOWS * window_s
    return not (_ts(alert.window_start) > end or _ts(alert.window_end) < start)


def detection_time(alert: Alert, ep: Episode, window_s: float) -> float | None:
    """When ``alert`` detects ``ep``, else None: the close of its first window in the episode's
    span, or sooner when the alert opened in that span and says when it was raised
    (``evidence.detected_at``, event time: early firing from the open window)."""
    if alert.kind != TECHNIQUE_KIND[ep.technique] or not concerns(alert, ep, window_s):
        return None
    episode_window = math.floor(_ts(ep.start) / window_s) * window_s
    first_window = max(_ts(alert.window_start), episode_window)
    t = first_window + window_s
    raised = alert.evidence.get("detected_at")
    if isinstance(raised, int | float) and _ts(alert.window_start) >= episode_window:
        t = min(t, max(float(raised), _ts(ep.start)))
    return t


@dataclass
class TechniqueTally:
    """One technique's episodes and detections; tallies of several runs add up with :meth:`add`."""

    episodes: int = 0
    detected: int = 0
    ttd_s: list[float] = field(default_factory=list)  # time to detect of each detected episode
    missed: list[Episode] = field(default_factory=list)
    detectors: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # detections each

    def add(self, other: TechniqueTally) -> None:
        self.episodes += other.episodes
        self.detected += other.detected
        self.ttd_s += other.ttd_s
        self.missed += other.missed
        for name, n in other.detectors.items():
            self.detectors[name] += n


@dataclass
class Matching:
    """Which alerts detect which episodes: what every detection-quality figure is counted from."""

    ttd_s: dict[str, float]  # episode id -> time to detect, detected episodes only
    true_alerts: set[str]  # ids of the alerts that detect some episode
    false_alerts: list[Alert]  # the alerts that detect no episode
    # Laxer: the alerts about no episode's source during its span, whatever their kind (an
    # attacker's alert of another kind is not counted). The README's false-alert rate.
    unexplained: list[Alert]
    tallies: dict[str, TechniqueTally]  # every technique, in TECHNIQUES order


def match_episodes(alerts: Sequence[Alert], episodes: Sequence[Episode], window_s: float) -> Matching:
    """Match ``alerts`` to ``episodes``: the one definition of detected, time to detect and false.

    Each alert counts once, however many episodes it detects or fails to.
    """
    tallies = {t: TechniqueTally() for t in TECHNIQUES}
    ttd: dict[str, float] = {}
    true_ids: set[str] = set()
    explained: set[str] = set()
    for ep in episodes:
        tally = tallies[ep.technique]
        tally.episodes += 1
        for a in alerts:
            if not concerns(a, ep, window_s):
                continue
            explained.add(a.id)
            t = detection_time(a, ep, window_s)
            if t is None:
                continue
            true_ids.add(a.id)
            tally.detectors[a.detector] += 1
            ttd[ep.id] = min(ttd.get(ep.id, math.inf), max(0.0, t - _ts(ep.start)))
        if ep.id in ttd:
            tally.detected += 1
            tally.ttd_s.append(ttd[ep.id])
        else:
            tally.missed.append(ep)
    return Matching(
        ttd_s=ttd,
        true_alerts=true_ids,
        false_alerts=[a for a in alerts if a.id not in true_ids],
        unexplained=[a for a in alerts if a.id not in explained],
        tallies=tallies,
    )


def label_windows(windows: pd.DataFrame, labels: Labels, window_s: float) -> np.ndarray:
    """Per window: 1 attack, 0 benign, -1 ignored (the source's grace period after an episode)."""
    out = np.zeros(len(windows), dtype="int8")
    if not len(windows):
        return out
    ws = windows["window_start"].to_numpy(dtype="float64")
    we = windows["window_end"].to_numpy(dtype="float64") if "window_end" in windows else ws + window_s
    ip = windows["src_ip"].astype(str).to_numpy()
    pod = windows["pod"].astype(str).to_numpy() if "pod" in windows else np.full(len(windows), "")
    ns = windows["namespace"].astype(str).to_numpy() if "namespace" in windows else np.full(len(windows), "")
    for ep in labels.episodes:
        who = ip == ep.source.ip
        if ep.source.pod:
            who |= (pod == ep.source.pod) & (ns == ep.source.namespace)
        start, end = _ts(ep.start), _ts(ep.end)
        during = who & (ws < end) & (we > start)
        after = who & (ws >= end) & (ws < end + GRACE_WINDOWS * window_s) & (out != POSITIVE)
        out[after & ~during] = IGNORED
        out[during] = POSITIVE
    return out


def _quantiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "p90": None}
    arr = np.asarray(values, dtype="float64")
    return {"median": float(np.median(arr)), "p90": float(np.quantile(arr, 0.9))}


def _aucs(y: np.ndarray, score: np.ndarray) -> dict[str, float | None]:
    keep = y != IGNORED
    y, score = y[keep], score[keep]
    if len(np.unique(y)) < 2:
        return {"roc_auc": None, "pr_auc": None}
    return {
        "roc_auc": float(roc_auc_score(y, score)),
        "pr_auc": float(average_precision_score(y, score)),
    }


def false_alert_rates(false_alerts: int, hours: float, pods: int) -> dict[str, float]:
    """False alerts per hour and per hour per 100 pods (infinite when there is no data)."""
    per_hour = false_alerts / hours if hours > 0 else math.inf
    return {
        "false_alerts_per_hour": per_hour,
        "false_alerts_per_hour_per_100_pods": per_hour / (pods / 100.0) if pods > 0 else math.inf,
    }


def _summary(
    alerts: list[Alert], episodes: list[Episode], window_s: float, hours: float, pods: int
) -> tuple[dict[str, Any], Matching]:
    """Recall, precision, false-alert rates and time to detect of ``alerts`` over ``episodes``."""
    m = match_episodes(alerts, episodes, window_s)
    false = len(m.false_alerts)
    out: dict[str, Any] = {
        "episodes": len(episodes),
        "detected": len(m.ttd_s),
        "recall": len(m.ttd_s) / len(episodes) if episodes else None,
        "alerts": len(alerts),
        "true_alerts": len(m.true_alerts),
        "false_alerts": false,
        "precision": len(m.true_alerts) / len(alerts) if alerts else None,
        **false_alert_rates(false, hours, pods),
        "time_to_detect_s": _quantiles(list(m.ttd_s.values())),
    }
    return out, m


def evaluate(
    alerts: Iterable[Alert],
    labels: Labels,
    windows: pd.DataFrame,
    *,
    window_s: float,
    hours: float,
    pods: int,
    detectors: Iterable[str] = (),
) -> dict[str, Any]:
    """Every figure of ``models evaluate``: overall, per detector, per technique, per episode.

    Alerts are unique by id (a later version of an alert replaces the earlier, as in the store).
    """
    alerts = list({a.id: a for a in alerts}.values())
    episodes = list(labels.episodes)
    y = label_windows(windows, labels, window_s)
    score_cols = sorted(c for c in windows.columns if c.startswith("score_"))
    names = sorted({*detectors, *(c[len("score_") :] for c in score_cols), *(a.detector for a in alerts)})

    overall, matched = _summary(alerts, episodes, window_s, hours, pods)
    ttd = matched.ttd_s
    if score_cols:
        overall.update(_aucs(y, windows[score_cols].to_numpy(dtype="float64").max(axis=1)))
    else:
        overall.update({"roc_auc": None, "pr_auc": None})

    per_detector: dict[str, Any] = {}
    caught_by: dict[str, list[str]] = {ep.id: [] for ep in episodes}
    for name in names:
        mine = [a for a in alerts if a.detector == name]
        row, mine_matched = _summary(mine, episodes, window_s, hours, pods)
        det_ttd = mine_matched.ttd_s
        for ep_id in det_ttd:
            caught_by[ep_id].append(name)
        col = f"score_{name}"
        row.update(
            _aucs(y, windows[col].to_numpy(dtype="float64"))
            if col in windows
            else {"roc_auc": None, "pr_auc": None}
        )
        row["by_technique"] = {
            t: sum(1 for ep in episodes if ep.technique == t and ep.id in det_ttd)
            for t in TECHNIQUES
            if any(ep.technique == t for ep in episodes)
        }
        per_detector[name] = row

    per_technique: dict[str, Any] = {}
    for t, tally in matched.tallies.items():
        if not tally.episodes:
            continue
        per_technique[t] = {
            "kind": TECHNIQUE_KIND[t],
            "episodes": tally.episodes,
            "detected": tally.detected,
            "recall": tally.detected / tally.episodes,
            "time_to_detect_s": _quantiles(tally.ttd_s),
            "detectors": sorted(tally.detectors),
        }

    per_episode = [
        {
            "id": ep.id,
            "technique": ep.technique,
            "source": ep.source.key(),
            "start": ep.start.isoformat(),
            "end": ep.end.isoformat(),
            "detected": ep.id in ttd,
            "time_to_detect_s": ttd.get(ep.id),
            "detectors": sorted(caught_by[ep.id]),
        }
        for ep in episodes
    ]
    return {
        "window_s": window_s,
        "hours": hours,
        "pods": pods,
        "windows": len(windows),
        "attack_windows": int((y == POSITIVE).sum()),
        "overall": overall,
        "per_detector": per_detector,
        "per_technique": per_technique,
        "episodes": per_episode,
    }


def clean_json(obj: Any) -> Any:
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.generic):
        return clean_json(obj.item())
    return obj


def write_metrics(metrics: dict[str, Any], path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(clean_json(metrics), indent=1, sort_keys=True) + "\n")
    return out
