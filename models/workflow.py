"""Train and evaluate: the steps behind ``flowwarden models train`` and ``models evaluate``.

The detection itself is *injected* (a :data:`DetectFn`): the CLI passes the pipeline's own
offline engine (``pipeline.offline.detect_flows``), so what is trained and measured here is
what runs live, while ``models/`` still imports only ``flowwarden`` (architecture rule).
"""

from __future__ import annotations

import glob
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flowwarden.errors import ConfigError
from flowwarden.labels import Labels
from flowwarden.models.estimators import BudgetThreshold, WindowAnomalyDetector, finite_features
from flowwarden.models.evaluation import clean_json, evaluate, label_windows, write_metrics
from flowwarden.models.registry import (
    LoadedModel,
    active_version,
    record_evaluation,
    save_model,
    sha256_frame,
)
from flowwarden.records import Alert
from flowwarden.settings import Settings

CALIBRATION_SHARE = 0.3  # the latest share of training windows sets the threshold, not the fit
EVAL_DIR = "evaluation"
WINDOW_KEEP = ("window_start", "window_end", "entity", "src_ip", "namespace", "pod", "workload")
Progress = Callable[[str, float], None]


@dataclass
class Detection:
    """What the pipeline's engine made of a frame of flows."""

    alerts: list[Alert]
    windows: pd.DataFrame
    state: bytes | None = None  # the engine's export_state() after the last flow


DetectFn = Callable[[pd.DataFrame, Settings, "LoadedModel | None"], Detection]


def _noop(_what: str, _done: float) -> None:
    return None


# ---------------------------------------------------------------------- inputs
def read_flows(pattern: str | Sequence[str]) -> pd.DataFrame:
    """Parquet flow files matching a glob (or a list of paths), in time order."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    paths = sorted(
        {p for pat in patterns for p in (glob.glob(pat) or ([pat] if Path(pat).is_file() else []))}
    )
    if not paths:
        raise ConfigError(f"flows: no Parquet file matches {', '.join(patterns)}")
    frames = []
    for p in paths:
        try:
            frames.append(pd.read_parquet(p))
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise ConfigError(f"flows: {p} is not a readable Parquet file ({exc})") from exc
    flows = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if "ts_end" not in flows.columns:
        raise ConfigError("flows: column 'ts_end' is missing (expected the flow schema)")
    return flows.sort_values("ts_end", kind="stable").reset_index(drop=True)


def read_inventory(path: str | Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"inventory: {path}: no such file") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"inventory: {path}: not JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise ConfigError(f"inventory: {path}: expected `kubectl get pods -A -o json` output with 'items'")
    return data


def count_pods(inventory: dict[str, Any] | None, windows: pd.DataFrame | None = None) -> int:
    """Pods with their own IP (the unit of the false-alert budget)."""
    if inventory is not None:
        pods = [
            it
            for it in inventory.get("items", [])
            if not (it.get("spec", {}) or {}).get("hostNetwork", False)
        ]
        if pods:
            return len(pods)
    if windows is not None and len(windows) and "pod" in windows:
        return max(1, int(windows.loc[windows["pod"].astype(str) != "", "entity"].nunique()))
    return 1


def data_hours(flows: pd.DataFrame) -> float:
    if not len(flows):
        return 0.0
    # ts_end, not ts_start: a long flow reported now may have started hours before the data.
    return max(float(flows["ts_end"].max()) - float(flows["ts_end"].min()), 1.0) / 3600.0


def exclude_episodes(flows: pd.DataFrame, labels: Labels | None, window_s: float) -> tuple[pd.DataFrame, int]:
    """Drop every flow *from* an episode's source during the episode (plus a window each side)."""
    if labels is None or not labels.episodes or not len(flows):
        return flows, 0
    src = flows["src_ip"].astype(str).to_numpy()
    t0 = flows["ts_start"].to_numpy(dtype="float64")
    t1 = flows["ts_end"].to_numpy(dtype="float64")
    drop = np.zeros(len(flows), dtype=bool)
    for ep in labels.episodes:
        start, end = ep.start.timestamp() - window_s, ep.end.timestamp() + window_s
        drop |= (src == ep.source.ip) & (t1 >= start) & (t0 <= end)
    return flows.loc[~drop].reset_index(drop=True), int(drop.sum())


def with_window(settings: Settings, window_s: float | None) -> Settings:
    if window_s is None or float(window_s) == settings.pipeline.window_s:
        return settings
    data = settings.model_dump()
    data["pipeline"]["window_s"] = float(window_s)
    return Settings.model_validate(data)


# ---------------------------------------------------------------------- training
def fit_on_windows(
    windows: pd.DataFrame,
    *,
    feature_names: Sequence[str],
    params: dict[str, Any],
    hours: float,
    pods: int,
    budget: float,
) -> tuple[WindowAnomalyDetector, BudgetThreshold]:
    """Fit on the earlier windows, set the threshold on the later ones (time-ordered)."""
    if len(windows) < 20:
        raise ConfigError(f"flows: only {len(windows)} benign windows to learn from; give more traffic")
    w = windows.sort_values(["window_start", "entity"], kind="stable").reset_index(drop=True)
    X = finite_features(w, feature_names)
    cut_ws = float(np.quantile(w["window_start"].to_numpy(), 1.0 - CALIBRATION_SHARE))
    fit_rows = (w["window_start"] < cut_ws).to_numpy()
    if fit_rows.sum() < 10 or (~fit_rows).sum() < 10:
        fit_rows = np.ones(len(w), dtype=bool)
    est = WindowAnomalyDetector(**params).fit(X[fit_rows])
    calib = X[~fit_rows] if (~fit_rows).any() else X
    calib_hours = hours * len(calib) / len(X)
    threshold = BudgetThreshold.fit(est.anomaly_score(calib), hours=calib_hours, pods=pods, budget=budget)
    return est, threshold


def train(
    flows: pd.DataFrame,
    *,
    settings: Settings,
    detect: DetectFn,
    feature_names: Sequence[str],
    out: Path,
    labels: Labels | None = None,
    pods: int | None = None,
    params: dict[str, Any] | None = None,
    budget: float = 1.0,
    version: str | None = None,
    parent: str | None = None,
    sources: Sequence[str] = (),
    progress: Progress = _noop,
) -> LoadedModel:
    """Learn baselines, seen edges and the forest from benign flows; write a model directory."""
    window_s = settings.pipeline.window_s
    benign, excluded = exclude_episodes(flows, labels, window_s)
    progress("detect", 0.1)
    det = detect(benign, settings, None)
    progress("fit", 0.6)
    n_pods = pods or count_pods(None, det.windows)
    hours = data_hours(benign)
    params = {"random_state": 0, **(params or {})}
    est, threshold = fit_on_windows(
        det.windows, feature_names=feature_names, params=params, hours=hours, pods=n_pods, budget=budget
    )
    progress("save", 0.9)
    if parent is None and out.parent.is_dir():
        parent = active_version(out.parent)
    meta = {
        "parent": parent,
        "window_s": window_s,
        "budget_false_alerts_per_hour_per_100_pods": budget,
        "training": {
            "start": float(benign["ts_start"].min()) if len(benign) else None,
            "end": float(benign["ts_end"].max()) if len(benign) else None,
            "flows": len(benign),
            "excluded_attack_flows": excluded,
            "episodes_excluded": len(labels.episodes) if labels is not None else 0,
            "windows": len(det.windows),
            "pods": n_pods,
            "hours": hours,
            "data_sha256": sha256_frame(flows),
            "sources": [Path(s).name for s in sources],
        },
    }
    model = save_model(
        out, estimator=est, threshold=threshold, state=det.state, metadata=meta, version=version
    )
    progress("done", 1.0)
    return model


# ---------------------------------------------------------------------- evaluation
def evaluate_model(
    model: LoadedModel | None,
    flows: pd.DataFrame,
    labels: Labels,
    *,
    settings: Settings,
    detect: DetectFn,
    pods: int | None = None,
    out_dir: Path | None = None,
    progress: Progress = _noop,
) -> dict[str, Any]:
    """Run the pipeline's engine with ``model`` over labelled flows; metrics (+ files in ``out_dir``)."""
    window_s = (model.window_s if model is not None else None) or settings.pipeline.window_s
    s = with_window(settings, window_s)
    progress("detect", 0.1)
    det = detect(flows, s, model)
    progress("score", 0.7)
    n_pods = pods or count_pods(None, det.windows)
    raw = model.score(det.windows) if model is not None and len(det.windows) else None
    windows = det.windows
    if raw is not None:
        windows = windows.assign(score_isolation_forest=raw)  # raw score for the curves, not the alerts
    metrics = evaluate(det.alerts, labels, windows, window_s=window_s, hours=data_hours(flows), pods=n_pods)
    metrics["model_version"] = model.version if model is not None else None
    metrics["threshold"] = model.threshold if model is not None else None
    if out_dir is not None:
        write_evaluation(out_dir, metrics, windows, det.alerts, labels, window_s, model)
    progress("done", 1.0)
    return metrics


def write_evaluation(
    out_dir: Path,
    metrics: dict[str, Any],
    windows: pd.DataFrame,
    alerts: list[Alert],
    labels: Labels,
    window_s: float,
    model: LoadedModel | None,
) -> None:
    """``metrics.json``, the scored windows (for the report's curves) and the alerts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(metrics, out_dir / "metrics.json")
    keep = [c for c in WINDOW_KEEP if c in windows.columns]
    feats = list(model.feature_names) if model is not None else []
    scores = [c for c in windows.columns if c.startswith("score_")]
    table = windows[[*keep, *[f for f in feats if f in windows.columns], *scores]].copy()
    table["label"] = label_windows(windows, labels, window_s)
    table.to_parquet(out_dir / "windows.parquet", index=False)
    (out_dir / "alerts.json").write_text(
        json.dumps([json.loads(a.to_json()) for a in alerts], indent=1) + "\n"
    )
    if model is not None and model.path is not None and out_dir.resolve().parent == model.path.resolve():
        summary = {k: metrics[k] for k in ("overall", "per_technique", "hours", "pods", "window_s")}
        record_evaluation(model.path, clean_json(summary))
