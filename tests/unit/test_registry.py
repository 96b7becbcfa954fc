"""The model registry: verified loading, tamper refusal, determinism, promote and roll back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flowwarden.models.estimators import BudgetThreshold, Method, WindowAnomalyDetector
from flowwarden.models.registry import (
    ACTIVE_FILE,
    ESTIMATOR_FILE,
    METADATA_FILE,
    THRESHOLD_FILE,
    LoadedModel,
    ModelError,
    active_version,
    history,
    list_models,
    load_default,
    load_model,
    load_version,
    promote,
    rollback,
    save_model,
)


def _windows(seed: int = 0, n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "flows": rng.poisson(15, n).astype(float),
            "bytes_out_ext": rng.lognormal(7, 1, n),
            "int_peers": rng.integers(0, 5, n).astype(float),
        }
    )


def _save(directory: Path, seed: int = 0, state: bytes | None = b"state") -> LoadedModel:
    X = _windows()
    est = WindowAnomalyDetector(n_estimators=25, random_state=seed).fit(X)
    thr = BudgetThreshold.fit(est.anomaly_score(X), hours=1.0, pods=100)
    return save_model(directory, estimator=est, threshold=thr, state=state, metadata={"window_s": 10.0})


def test_round_trip_scores_like_the_estimator(tmp_path: Path) -> None:
    saved = _save(tmp_path / "v1")
    loaded = load_model(tmp_path / "v1")
    X = _windows(seed=3)
    assert loaded.version == "v1" and loaded.feature_names == list(X.columns)
    assert loaded.state == b"state" and loaded.window_s == 10.0
    assert loaded.threshold == saved.threshold
    scores = loaded.score(X[["int_peers", "flows", "bytes_out_ext"]])  # columns picked by name
    np.testing.assert_array_equal(scores, saved.estimator.anomaly_score(X))
    assert scores.min() >= 0 and scores.max() <= 1
    meta = json.loads((tmp_path / "v1" / METADATA_FILE).read_text())
    assert set(meta["files"]) == {ESTIMATOR_FILE, THRESHOLD_FILE, "state.bin"}
    assert meta["libraries"]["scikit-learn"] and meta["feature_names"] == list(X.columns)
    with pytest.raises(ModelError, match="int_peers"):
        loaded.score(X.drop(columns=["int_peers"]))
    # A missing value or an infinite ratio never stops the scoring of a batch.
    odd = X.head(3).assign(flows=[np.nan, np.inf, -np.inf])
    assert np.isfinite(loaded.score(odd)).all()


@pytest.mark.parametrize("method", ["lof", "ocsvm"])
def test_every_method_loads_with_the_trusted_types_only(tmp_path: Path, method: Method) -> None:
    X = _windows()
    est = WindowAnomalyDetector(method=method, random_state=0).fit(X)
    thr = BudgetThreshold.fit(est.anomaly_score(X), hours=1.0, pods=100)
    save_model(tmp_path / method, estimator=est, threshold=thr)
    loaded = load_model(tmp_path / method)
    assert loaded.state is None and loaded.estimator.method == method
    np.testing.assert_allclose(loaded.score(X), est.anomaly_score(X))


def test_same_seed_and_data_give_the_same_bytes(tmp_path: Path) -> None:
    _save(tmp_path / "a", seed=5)
    _save(tmp_path / "b", seed=5)
    _save(tmp_path / "c", seed=6)
    for name in (ESTIMATOR_FILE, THRESHOLD_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / ESTIMATOR_FILE).read_bytes() != (tmp_path / "c" / ESTIMATOR_FILE).read_bytes()


@pytest.mark.parametrize("name", [ESTIMATOR_FILE, THRESHOLD_FILE, "state.bin"])
def test_a_tampered_file_is_refused(tmp_path: Path, name: str) -> None:
    _save(tmp_path / "v1")
    path = tmp_path / "v1" / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=rf"{name}: sha256 .* does not match"):
        load_model(tmp_path / "v1")


def test_metadata_that_does_not_match_is_refused(tmp_path: Path) -> None:
    _save(tmp_path / "v1")
    meta_path = tmp_path / "v1" / METADATA_FILE
    meta = json.loads(meta_path.read_text())
    meta["feature_names"] = ["flows", "bytes_out_ext", "dst_ports"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="feature_names do not match"):
        load_model(tmp_path / "v1")
    meta["feature_names"] = ["flows", "bytes_out_ext", "int_peers"]
    meta["threshold"] = 0.01
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="threshold"):
        load_model(tmp_path / "v1")
    del meta["files"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="'files' is missing"):
        load_model(tmp_path / "v1")
    (tmp_path / "v1" / ESTIMATOR_FILE).unlink()
    with pytest.raises(ModelError):
        load_model(tmp_path / "v1")


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    _save(tmp_path / "v1")
    (tmp_path / "v1" / "state.bin").unlink()
    with pytest.raises(ModelError, match=r"state\.bin: listed in metadata but missing"):
        load_model(tmp_path / "v1")


def test_promote_and_rollback(tmp_path: Path) -> None:
    reg = tmp_path / "registry"
    _save(reg / "v1", seed=1)
    _save(reg / "v2", seed=2)
    assert active_version(reg) is None
    assert promote(reg, "v1").version == "v1"
    assert promote(reg, "v2").version == "v2"
    assert active_version(reg) == "v2" and history(reg) == ["v1", "v2"]
    assert [r["version"] for r in list_models(reg) if r["active"]] == ["v2"]
    assert rollback(reg) == "v1"
    assert active_version(reg) == "v1" and load_version(reg, "v1").version == "v1"
    assert rollback(reg) is None
    assert active_version(reg) is None and not (reg / ACTIVE_FILE).exists()
    with pytest.raises(ModelError, match="nothing to roll back"):
        rollback(reg)


def test_promote_refuses_unknown_and_tampered_versions(tmp_path: Path) -> None:
    reg = tmp_path / "registry"
    _save(reg / "v1", seed=1)
    _save(reg / "v2", seed=2)
    promote(reg, "v1")
    with pytest.raises(ModelError, match=r"'v9' not found .*known: v1, v2"):
        promote(reg, "v9")
    with pytest.raises(ModelError, match="must be letters"):
        promote(reg, "../v1")
    (reg / "v2" / THRESHOLD_FILE).write_text("{}")
    with pytest.raises(ModelError, match="does not match"):
        promote(reg, "v2")
    assert active_version(reg) == "v1"
    rows = {r["version"]: r for r in list_models(reg)}
    assert rows["v1"]["status"] == "ok" and rows["v2"]["status"].startswith("refused")


def test_the_shipped_default_model_verifies_and_fits_the_pipeline() -> None:
    from flowwarden.records import WINDOW_FEATURES

    model = load_default()
    assert model is not None
    # Retrain it (docs/models.md) when the pipeline renames or drops a feature.
    assert model.feature_names and set(model.feature_names) <= set(WINDOW_FEATURES)
    assert model.state is not None and 0 < model.threshold <= 1
    scores = model.score(pd.DataFrame(np.zeros((3, len(WINDOW_FEATURES))), columns=list(WINDOW_FEATURES)))
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))
    # Its warm-start state is one the engine of this checkout can import (else: retrain it).
    from flowwarden.pipeline.detection.engine import DetectionEngine
    from flowwarden.settings import Settings

    engine = DetectionEngine(Settings(), model=model)
    assert engine.model is model and len(engine.workload_base) > 0
