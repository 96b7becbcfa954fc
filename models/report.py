"""``models report``: one self-contained HTML file (plots as base64 PNG, no script, no network).

Reads a model directory and its evaluation (``metrics.json`` and ``windows.parquet`` written
by ``models evaluate``): ROC and PR curves per detector, benign vs attack score
distributions, the per-technique table, time to detect, what drives the forest's scores
(permutation importance: how much the anomaly score moves when one feature is shuffled)
and the threshold against the false-alert budget.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from flowwarden.errors import ConfigError
from flowwarden.models.estimators import finite_features
from flowwarden.models.evaluation import IGNORED, POSITIVE
from flowwarden.models.registry import LoadedModel

IMPORTANCE_ROWS = 1500
IMPORTANCE_TOP = 15
CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto}.muted{color:#777}.bad{color:#b00}.good{color:#070}
"""


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return html.escape(str(x))


def _score_columns(windows: pd.DataFrame) -> list[str]:
    return sorted(c for c in windows.columns if c.startswith("score_"))


def curves(windows: pd.DataFrame) -> str:
    y = windows["label"].to_numpy()
    keep = y != IGNORED
    y = (y[keep] == POSITIVE).astype(int)
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(12, 5))
    if len(np.unique(y)) < 2:
        plt.close(fig)
        return '<p class="muted">No attack windows (or no benign ones): no curves.</p>'
    for col in _score_columns(windows):
        s = windows[col].to_numpy(dtype="float64")[keep]
        if not np.any(s[y == 1] > 0):
            continue
        fpr, tpr, _ = roc_curve(y, s)
        prec, rec, _ = precision_recall_curve(y, s)
        roc_ax.plot(fpr, tpr, label=col[len("score_") :])
        pr_ax.plot(rec, prec, label=col[len("score_") :])
    roc_ax.plot([0, 1], [0, 1], color="#bbb", linestyle="--")
    roc_ax.set(xlabel="false positive rate (windows)", ylabel="true positive rate", title="ROC")
    pr_ax.set(xlabel="recall (windows)", ylabel="precision", title="Precision-recall")
    pr_ax.axhline(y.mean(), color="#bbb", linestyle="--")
    roc_ax.legend(fontsize=8)
    pr_ax.legend(fontsize=8)
    return _png(fig)


def distributions(windows: pd.DataFrame, threshold: float | None) -> str:
    if "score_isolation_forest" not in windows:
        return '<p class="muted">No anomaly scores.</p>'
    y = windows["label"].to_numpy()
    s = windows["score_isolation_forest"].to_numpy(dtype="float64")
    fig, ax = plt.subplots(figsize=(12, 4))
    bins = list(np.linspace(float(s.min(initial=0.0)), float(max(s.max(initial=1.0), threshold or 0)), 60))
    ax.hist(s[y == 0], bins=bins, alpha=0.6, label=f"benign windows ({int((y == 0).sum())})", density=True)
    if (y == POSITIVE).any():
        ax.hist(
            s[y == POSITIVE],
            bins=bins,
            alpha=0.6,
            label=f"attack windows ({int((y == 1).sum())})",
            density=True,
        )
    if threshold is not None:
        ax.axvline(threshold, color="#b00", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="anomaly score (isolation forest)", ylabel="density", title="Score distributions")
    ax.set_yscale("log")
    ax.legend()
    return _png(fig)


def time_to_detect(metrics: dict[str, Any]) -> str:
    delays = [
        e["time_to_detect_s"] for e in metrics.get("episodes", []) if e.get("time_to_detect_s") is not None
    ]
    if not delays:
        return '<p class="muted">No episode detected: no time to detect.</p>'
    by_tech: dict[str, list[float]] = {}
    for e in metrics["episodes"]:
        if e.get("time_to_detect_s") is not None:
            by_tech.setdefault(e["technique"], []).append(float(e["time_to_detect_s"]))
    fig, ax = plt.subplots(figsize=(12, 4))
    names = sorted(by_tech)
    ax.boxplot([by_tech[n] for n in names], orientation="horizontal")
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.set(xlabel="seconds from episode start to the first alert", title="Time to detect")
    return _png(fig)


def importances(
    model: LoadedModel, windows: pd.DataFrame, seed: int = 0
) -> tuple[str, list[tuple[str, float]]]:
    """Permutation importance on the anomaly score: mean |change| when one feature is shuffled."""
    feats = [f for f in model.feature_names if f in windows.columns]
    if len(feats) != len(model.feature_names) or not len(windows):
        return '<p class="muted">Evaluation windows lack the model features.</p>', []
    rng = np.random.default_rng(seed)
    sample = windows.iloc[rng.permutation(len(windows))[:IMPORTANCE_ROWS]]
    X = finite_features(sample, feats).reset_index(drop=True)
    base = model.score(X)
    out = []
    for f in feats:
        col = X[f].to_numpy()
        if np.all(col == col[0]):
            out.append((f, 0.0))
            continue
        shuffled = X.assign(**{f: rng.permutation(col)})
        out.append((f, float(np.mean(np.abs(model.score(shuffled) - base)))))
    out.sort(key=lambda t: -t[1])
    top = out[:IMPORTANCE_TOP][::-1]
    fig, ax = plt.subplots(figsize=(12, 5))
    ax.barh([n for n, _ in top], [v for _, v in top], color="#4a7")
    ax.set(xlabel="mean |change of anomaly score| when shuffled", title="What drives the forest's scores")
    return _png(fig), out


def budget_plot(windows: pd.DataFrame, metrics: dict[str, Any], model: LoadedModel) -> str:
    """False alert windows per hour per 100 pods of the forest alone, as the threshold moves."""
    if "score_isolation_forest" not in windows:
        return ""
    y = windows["label"].to_numpy()
    s = np.sort(windows["score_isolation_forest"].to_numpy(dtype="float64")[y == 0])
    hours, pods = float(metrics.get("hours") or 0), int(metrics.get("pods") or 0)
    if not len(s) or hours <= 0 or pods <= 0:
        return ""
    grid = np.linspace(max(0.0, float(s.min())), max(float(s.max()), model.threshold) + 0.02, 200)
    above = len(s) - np.searchsorted(s, grid, side="left")
    rate = above / hours / (pods / 100.0)
    budget = model.metadata.get("budget_false_alerts_per_hour_per_100_pods", 1.0)
    fig, ax = plt.subplots(figsize=(12, 4))
    ax.plot(grid, np.maximum(rate, 1e-3), label="benign windows above threshold (per h per 100 pods)")
    ax.axhline(budget, color="#a60", linestyle="--", label=f"budget {budget:g}")
    ax.axvline(model.threshold, color="#b00", label=f"threshold {model.threshold:.3f}")
    ax.set_yscale("log")
    ax.set(
        xlabel="threshold", ylabel="false alert windows / h / 100 pods", title="Threshold against the budget"
    )
    ax.legend()
    return _png(fig)


def tuning_plot(tuning: dict[str, Any] | None) -> str:
    """Every candidate of ``models tune``: recall against false alerts, the budget, the pick."""
    if not tuning or not tuning.get("candidates"):
        return '<p class="muted">Not tuned (no tuning.json in the model directory).</p>'
    cands = tuning["candidates"]
    budget = float(tuning["budget_false_alerts_per_hour_per_100_pods"])
    fig, ax = plt.subplots(figsize=(12, 4))
    for w in sorted({c["window_s"] for c in cands}):
        mine = [c for c in cands if c["window_s"] == w]
        ax.scatter(
            [max(c["false_alerts_per_hour_per_100_pods"], 1e-2) for c in mine],
            [c["recall"] for c in mine],
            s=14,
            alpha=0.6,
            label=f"window {w:g} s",
        )
    best = tuning["best"]
    ax.scatter(
        [max(best["false_alerts_per_hour_per_100_pods"], 1e-2)], [best["recall"]], marker="*", s=250,
        color="#b00", label="chosen",
    )  # fmt: skip
    ax.axvline(budget, color="#a60", linestyle="--", label=f"budget {budget:g}")
    ax.set_xscale("log")
    ax.set(
        xlabel="false alerts / h / 100 pods (judged period)",
        ylabel="episode recall",
        title="Tuning candidates",
    )
    ax.legend(fontsize=8)
    met = "met" if tuning.get("budget_met") else "NOT met"
    return f"<p>Split at {html.escape(str(tuning.get('split')))}; budget {met}.</p>" + _png(fig)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render(
    model: LoadedModel, metrics: dict[str, Any], windows: pd.DataFrame, tuning: dict[str, Any] | None = None
) -> str:
    o = metrics["overall"]
    meta = model.metadata
    tr = meta.get("training", {})
    budget = meta.get("budget_false_alerts_per_hour_per_100_pods", 1.0)
    rate = o.get("false_alerts_per_hour_per_100_pods")
    verdict = (
        f'<span class="good">within the budget of {budget:g}</span>'
        if rate is not None and rate <= budget
        else f'<span class="bad">over the budget of {budget:g}</span>'
    )
    tech_rows = [
        [
            t,
            r["kind"],
            r["episodes"],
            r["detected"],
            r["recall"],
            r["time_to_detect_s"]["median"],
            r["time_to_detect_s"]["p90"],
            ", ".join(r["detectors"]) or "-",
        ]
        for t, r in metrics["per_technique"].items()
    ]
    det_rows = [
        [
            d,
            r["alerts"],
            r["true_alerts"],
            r["false_alerts"],
            r["precision"],
            r["recall"],
            r["false_alerts_per_hour_per_100_pods"],
            r["roc_auc"],
            r["pr_auc"],
        ]
        for d, r in metrics["per_detector"].items()
    ]
    ep_rows = [
        [
            e["id"],
            e["technique"],
            e["source"],
            e["start"],
            e["detected"],
            e["time_to_detect_s"],
            ", ".join(e["detectors"]),
        ]
        for e in metrics.get("episodes", [])
    ]
    fi_html, fi = importances(model, windows)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>flowwarden model {html.escape(model.version)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Model {html.escape(model.version)}</h1>",
        _table(
            [
                "method",
                "threshold",
                "window (s)",
                "parent",
                "trained on windows",
                "training pods",
                "data sha256",
            ],
            [
                [
                    meta.get("method"),
                    model.threshold,
                    meta.get("window_s"),
                    meta.get("parent") or "-",
                    tr.get("windows"),
                    tr.get("pods"),
                    str(tr.get("data_sha256", ""))[:16],
                ]
            ],
        ),
        "<h2>Overall</h2>",
        f"<p>{metrics['windows']} windows ({metrics['attack_windows']} attack), {metrics['pods']} pods, "
        f"{_fmt(metrics['hours'])} h. False alerts per hour per 100 pods: {_fmt(rate)}, {verdict}.</p>",
        _table(
            [
                "recall",
                "precision",
                "alerts",
                "false alerts",
                "false/h",
                "false/h/100 pods",
                "ttd median s",
                "ttd p90 s",
                "ROC-AUC",
                "PR-AUC",
            ],
            [
                [
                    o["recall"],
                    o["precision"],
                    o["alerts"],
                    o["false_alerts"],
                    o["false_alerts_per_hour"],
                    rate,
                    o["time_to_detect_s"]["median"],
                    o["time_to_detect_s"]["p90"],
                    o.get("roc_auc"),
                    o.get("pr_auc"),
                ]
            ],
        ),
        "<h2>Per technique</h2>",
        _table(
            ["technique", "kind", "episodes", "detected", "recall", "ttd median s", "ttd p90 s", "detectors"],
            tech_rows,
        ),
        "<h2>Per detector</h2>",
        _table(
            [
                "detector",
                "alerts",
                "true",
                "false",
                "precision",
                "recall",
                "false/h/100 pods",
                "ROC-AUC",
                "PR-AUC",
            ],
            det_rows,
        ),
        "<h2>ROC and precision-recall (window scores)</h2>",
        curves(windows),
        "<h2>Score distributions: benign vs attack windows</h2>",
        distributions(windows, model.threshold),
        "<h2>Threshold against the false-alert budget</h2>",
        budget_plot(windows, metrics, model),
        "<h2>Tuning</h2>",
        tuning_plot(tuning),
        "<h2>Time to detect</h2>",
        time_to_detect(metrics),
        "<h2>Features that drive the forest</h2>",
        fi_html,
        _table(["feature", "importance"], [[n, v] for n, v in fi[:IMPORTANCE_TOP]]),
        "<h2>Episodes</h2>",
        _table(["id", "technique", "source", "start", "detected", "ttd s", "detectors"], ep_rows),
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(model: LoadedModel, evaluation_dir: Path, out: Path) -> Path:
    metrics_path, windows_path = evaluation_dir / "metrics.json", evaluation_dir / "windows.parquet"
    if not metrics_path.is_file() or not windows_path.is_file():
        raise ConfigError(
            f"evaluation: {evaluation_dir} has no metrics.json/windows.parquet; "
            "run `flowwarden models evaluate` first"
        )
    metrics = json.loads(metrics_path.read_text())
    windows = pd.read_parquet(windows_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tuning_path = model.path / "tuning.json" if model.path is not None else None
    tuning = (
        json.loads(tuning_path.read_text()) if tuning_path is not None and tuning_path.is_file() else None
    )
    out.write_text(render(model, metrics, windows, tuning))
    return out
