"""The offline model workflow through the real CLI and the pipeline's own engine.

Must show (issue 6): train on one seed's benign traffic, evaluate on another seed with
attacks, per-technique results in the report; the same seed and data give the same model
and metrics; training on labelled data drops the attack episodes; ``tune`` meets the
false-alert budget with recall at least that of the defaults.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flowwarden import simulator
from flowwarden.cli import app
from flowwarden.labels import TECHNIQUES, Labels

pytestmark = pytest.mark.integration


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models-data")
    simulator.simulate(minutes=16, pods=40, seed=11, benign_only=True).save(root / "benign")
    simulator.simulate(minutes=16, pods=40, seed=12, attacks="all").save(root / "attacks")
    return {"benign": root / "benign", "attacks": root / "attacks"}


def _train(data: dict[str, Path], out: Path, *extra: str) -> dict[str, Any]:
    b = data["benign"]
    run("models", "train", "--flows", str(b / "*.parquet"), "--inventory", str(b / "inventory.json"),
        "--seed", "3", "--out", str(out), *extra)  # fmt: skip
    return dict(json.loads((out / "metadata.json").read_text()))


def _evaluate(data: dict[str, Path], model: Path) -> dict[str, Any]:
    a = data["attacks"]
    out = run("models", "evaluate", "--model", str(model), "--flows", str(a / "flows.parquet"),
              "--labels", str(a / "labels.json"), "--inventory", str(a / "inventory.json"))  # fmt: skip
    assert "metrics written" in out
    return dict(json.loads((model / "evaluation" / "metrics.json").read_text()))


def test_train_evaluate_report_on_other_seeds(data: dict[str, Path], tmp_path: Path) -> None:
    meta = _train(data, tmp_path / "reg" / "v1")
    tr = meta["training"]
    assert meta["version"] == "v1" and tr["windows"] > 1000 and tr["excluded_attack_flows"] == 0
    assert len(tr["data_sha256"]) == 64 and tr["pods"] >= 40
    metrics = _evaluate(data, tmp_path / "reg" / "v1")
    assert set(metrics["per_technique"]) == set(TECHNIQUES)
    overall = metrics["overall"]
    assert overall["recall"] >= 0.75, overall
    assert overall["false_alerts_per_hour_per_100_pods"] <= 10, overall
    assert metrics["per_detector"]["isolation_forest"]["roc_auc"] > 0.6
    # Evaluation summary lands in the model's metadata, which still verifies.
    assert run("models", "list", "--registry", str(tmp_path / "reg")).count(" ok") == 1
    listed = json.loads((tmp_path / "reg" / "v1" / "metadata.json").read_text())
    assert listed["evaluation"]["overall"]["recall"] == overall["recall"]

    # Same seed, same data: same bytes and same metrics.
    _train(data, tmp_path / "again" / "v1")
    for name in ("estimator.skops", "threshold.json", "state.bin"):
        assert (tmp_path / "reg" / "v1" / name).read_bytes() == (
            tmp_path / "again" / "v1" / name
        ).read_bytes()
    assert _evaluate(data, tmp_path / "again" / "v1") == metrics

    report = tmp_path / "report.html"
    run("models", "report", "--model", str(tmp_path / "reg" / "v1"), "--out", str(report))
    page = report.read_text()
    assert page.count("data:image/png;base64,") >= 5
    for technique in TECHNIQUES:
        assert f"<td>{technique}</td>" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page


def test_training_on_labelled_data_drops_the_episodes(data: dict[str, Path], tmp_path: Path) -> None:
    a = data["attacks"]
    run("models", "train", "--flows", str(a / "flows.parquet"), "--labels", str(a / "labels.json"),
        "--inventory", str(a / "inventory.json"), "--n-estimators", "20",
        "--out", str(tmp_path / "v2"))  # fmt: skip
    tr = json.loads((tmp_path / "v2" / "metadata.json").read_text())["training"]
    assert tr["excluded_attack_flows"] > 100 and tr["episodes_excluded"] >= len(TECHNIQUES)


def test_tune_meets_the_budget_with_recall_at_least_the_defaults(
    data: dict[str, Path], tmp_path: Path
) -> None:
    a = data["attacks"]  # tune keeps its own time split inside this run
    out = run("models", "tune", "--flows", str(a / "flows.parquet"), "--labels", str(a / "labels.json"),
              "--inventory", str(a / "inventory.json"), "--window-sizes", "10,20", "--budget", "1",
              "--out", str(tmp_path / "tuned"))  # fmt: skip
    assert "tuned:" in out
    summary = json.loads((tmp_path / "tuned" / "tuning.json").read_text())
    best, default = summary["best"]["confirmed"], summary["default"]["confirmed"]
    assert summary["budget_met"] is True
    assert best["false_alerts_per_hour_per_100_pods"] <= 1.0
    assert best["recall"] >= default["recall"] and best["recall"] > 0.5
    assert {c["window_s"] for c in summary["candidates"]} == {10.0, 20.0}
    meta = json.loads((tmp_path / "tuned" / "metadata.json").read_text())
    assert meta["window_s"] == summary["best"]["window_s"] and meta["tuning"]["best"] == summary["best"]
    # Judged only after the split: the later episodes, none the forest learned from.
    split = datetime.fromisoformat(summary["split"])
    later = [ep for ep in Labels.load(a / "labels.json").episodes if ep.end >= split]
    judged = json.loads((tmp_path / "tuned" / "evaluation" / "metrics.json").read_text())
    assert 0 < len(later) < len(Labels.load(a / "labels.json").episodes)
    assert {e["id"] for e in judged["episodes"]} == {ep.id for ep in later}
    assert meta["training"]["end"] == split.timestamp()
