"""The window anomaly detectors honour scikit-learn's contract and their documented signs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.utils.estimator_checks import estimator_checks_generator

from flowwarden.models.estimators import (
    BudgetThreshold,
    Method,
    WindowAnomalyDetector,
    forest_score_samples,
)

ESTIMATORS = [
    WindowAnomalyDetector(n_estimators=20, random_state=0),
    WindowAnomalyDetector(method="lof", n_neighbors=5, random_state=0),
    WindowAnomalyDetector(method="ocsvm", nu=0.1, random_state=0),
]
# Every check scikit-learn generates, except the array-API ones (numpy only, by design).
CHECKS = [
    pytest.param(est, check, id=f"{est.method}-{getattr(check, 'func', check).__name__}")
    for est in ESTIMATORS
    for est, check in estimator_checks_generator(est, legacy=True)
    if "array_api" not in getattr(check, "func", check).__name__
]


@pytest.mark.parametrize(("estimator", "check"), CHECKS)
def test_sklearn_conformance(estimator: WindowAnomalyDetector, check: Any) -> None:
    check(estimator)


def _benign(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "flows": rng.poisson(20, n).astype(float),
            "bytes_out_ext": rng.lognormal(8, 0.5, n),
            "dst_ports": rng.integers(1, 4, n).astype(float),
        }
    )


@pytest.mark.parametrize("method", ["isolation_forest", "lof", "ocsvm"])
def test_anomaly_score_is_higher_for_outliers(method: Method) -> None:
    X = _benign()
    det = WindowAnomalyDetector(method=method, n_estimators=50, random_state=1).fit(X)
    outlier = pd.DataFrame({"flows": [900.0], "bytes_out_ext": [5e9], "dst_ports": [800.0]})
    normal = det.anomaly_score(X)
    odd = det.anomaly_score(outlier)
    assert np.all((normal >= 0) & (normal <= 1)) and 0 <= odd[0] <= 1
    assert odd[0] > np.quantile(normal, 0.99)
    # scikit-learn's sign: lower score_samples for the outlier, and the documented identity.
    assert det.score_samples(outlier)[0] < np.median(det.score_samples(X))
    np.testing.assert_allclose(det.decision_function(X), det.score_samples(X) - det.offset_)
    assert det.predict(outlier)[0] == -1


def test_same_seed_same_scores() -> None:
    X = _benign()
    a = WindowAnomalyDetector(n_estimators=30, random_state=7).fit(X).anomaly_score(X)
    b = WindowAnomalyDetector(n_estimators=30, random_state=7).fit(X).anomaly_score(X)
    c = WindowAnomalyDetector(n_estimators=30, random_state=8).fit(X).anomaly_score(X)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_unknown_method_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="method"):
        WindowAnomalyDetector(method="svm").fit(_benign())  # type: ignore[arg-type]


def test_feature_names_are_checked() -> None:
    det = WindowAnomalyDetector(n_estimators=10, random_state=0).fit(_benign())
    with pytest.raises(ValueError, match="feature names"):
        det.anomaly_score(_benign().rename(columns={"flows": "conns"}))


def test_budget_threshold_lets_through_at_most_the_budget() -> None:
    scores = np.linspace(0.3, 0.7, 1000)
    # 10 hours of 200 pods at 1 per hour per 100 pods: 20 windows may exceed it.
    thr = BudgetThreshold.fit(scores, hours=10, pods=200, budget=1.0, margin=0.0)
    assert thr.allowed_false_windows == 20
    assert int((scores >= thr.value).sum()) == 20
    strict = BudgetThreshold.fit(scores, hours=0.1, pods=60, budget=1.0, margin=0.0)
    assert int((scores >= strict.value).sum()) == 0
    assert BudgetThreshold.from_dict(thr.to_dict()) == thr
    with pytest.raises(ValueError, match="pods"):
        BudgetThreshold.fit(scores, hours=1, pods=0)


@pytest.mark.parametrize("max_features", [1.0, 0.6])
def test_the_forest_scores_are_scikit_learns_to_the_last_bit(max_features: float) -> None:
    """The pipeline scores through :func:`forest_score_samples`, not scikit-learn's dispatch:
    the alerts must not move by a rounding step (features subsampled or not)."""
    rng = np.random.default_rng(4)
    forest = IsolationForest(n_estimators=50, max_features=max_features, random_state=7)
    forest.fit(rng.normal(size=(600, 9)))
    probe = rng.normal(scale=3.0, size=(400, 9))
    fast = forest_score_samples(forest, probe)
    assert fast is not None
    assert np.array_equal(fast, forest.score_samples(probe))
    fitted = WindowAnomalyDetector(n_estimators=40, random_state=3).fit(rng.gamma(2.0, size=(500, 4)))
    z = fitted._transform(probe[:, :4])
    assert np.array_equal(fitted.score_samples(probe[:, :4]), fitted.estimator_.score_samples(z))
