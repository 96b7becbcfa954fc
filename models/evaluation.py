"""Scoring detections against labelled episodes: pure functions, no I/O but :func:`write_metrics`.

An episode is *detected* when an alert of the episode's kind, whose entity matches the
episode's source (same IP, or same namespace/pod), overlaps ``[start, end + 2 windows]``.
An alert that matches no episode is a *false alert*. Rates are per hour of data and per
hour per 100 pods, because an analyst's burden grows with the cluster (the base-rate
fallacy: a "low" per-window rate still buries people in a big cluster).

Window-level ROC-AUC and PR-AUC use the detectors' per-window scores: a window is positive
when its entity is an episode's source and it overlaps the episode; the source's windows in
the grace period after the episode are left out (neither clean nor attack).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
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


def detection_time(alert: Alert, ep: Episode, window_s: float) -> float | None:
    """When ``alert`` detects ``ep`` (the close of its first window in the episode's span), else None."""
    if alert.kind != TECHNIQUE_KIND[ep.technique] or not entity_matches(alert, ep):
        return None
    start, end = _ts(ep.start), _ts(ep.end) + GRACE_WINDOWS * window_s
    a0, a1 = _ts(alert.window_start), _ts(alert.window_end)
    if a0 > end or a1 < start:
        return None
    first_window = max(a0, math.floor(start / window_s) * window_s)
    return first_window + window_s


def label_windows(windows: pd.DataFrame, labels: Labels, window_s: float) -> np.ndarray:
    """Per window: 1 attack, 0 benign, -1 ignored (the source's grace period after an episode)."""
    out = np.zeros(len(windows), dtype="int8")
    if not len(windows):
        return out
    ws = windows["ws"].to_numpy(dtype="float64")
    we = windows["we"].to_numpy(dtype="float64") if "we" in windows else ws + window_s
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


def _rates(false_alerts: int, hours: float, pods: int) -> dict[str, float]:
    per_hour = false_alerts / hours if hours > 0 else math.inf
    return {
        "false_alerts_per_hour": per_hour,
        "false_alerts_per_hour_per_100_pods": per_hour / (pods / 100.0) if pods > 0 else math.inf,
    }


def _summary(
    alerts: list[Alert], episodes: list[Episode], window_s: float, hours: float, pods: int
) -> tuple[dict[str, Any], dict[str, float]]:
    """Recall, precision, false-alert rates and time to detect of ``alerts`` over ``episodes``."""
    true_ids: set[str] = set()
    ttd: dict[str, float] = {}
    for ep in episodes:
        for a in alerts:
            t = detection_time(a, ep, window_s)
            if t is None:
                continue
            true_ids.add(a.id)
            delay = max(0.0, t - _ts(ep.start))
            ttd[ep.id] = min(ttd.get(ep.id, math.inf), delay)
    false = sum(1 for a in alerts if a.id not in true_ids)
    out: dict[str, Any] = {
        "episodes": len(episodes),
        "detected": len(ttd),
        "recall": len(ttd) / len(episodes) if episodes else None,
        "alerts": len(alerts),
        "true_alerts": len(true_ids),
        "false_alerts": false,
        "precision": len(true_ids) / len(alerts) if alerts else None,
        **_rates(false, hours, pods),
        "time_to_detect_s": _quantiles(list(ttd.values())),
    }
    return out, ttd


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

    overall, ttd = _summary(alerts, episodes, window_s, hours, pods)
    if score_cols:
        overall.update(_aucs(y, windows[score_cols].to_numpy(dtype="float64").max(axis=1)))
    else:
        overall.update({"roc_auc": None, "pr_auc": None})

    per_detector: dict[str, Any] = {}
    caught_by: dict[str, list[str]] = {ep.id: [] for ep in episodes}
    for name in names:
        mine = [a for a in alerts if a.detector == name]
        row, det_ttd = _summary(mine, episodes, window_s, hours, pods)
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
    for t in TECHNIQUES:
        eps = [ep for ep in episodes if ep.technique == t]
        if not eps:
            continue
        found = [ep for ep in eps if ep.id in ttd]
        per_technique[t] = {
            "kind": TECHNIQUE_KIND[t],
            "episodes": len(eps),
            "detected": len(found),
            "recall": len(found) / len(eps),
            "time_to_detect_s": _quantiles([ttd[ep.id] for ep in found]),
            "detectors": sorted({d for ep in eps for d in caught_by[ep.id]}),
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
