"""Novelty detectors over entity-window features, following the scikit-learn contract.

:class:`WindowAnomalyDetector` chains a signed ``log1p`` (window counters span many orders of
magnitude), a :class:`~sklearn.preprocessing.RobustScaler` (medians and IQRs, so a few loud
windows in the training history do not set the scale) and a novelty detector: an
IsolationForest by default, or LocalOutlierFactor (``novelty=True``) or OneClassSVM fitted
on a sample, since both scale badly with the number of windows.

Sign convention, stated once: ``score_samples`` and ``decision_function`` follow
scikit-learn (higher = more normal; ``decision_function = score_samples - offset_``, negative
means outlier), while :meth:`WindowAnomalyDetector.anomaly_score` is what the pipeline uses:
in [0, 1], higher = more anomalous.

The alert threshold is its own object (:class:`BudgetThreshold`), fitted from benign scores
against a false-alert budget, so one fitted detector can serve several operating points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.ensemble import IsolationForest
from sklearn.ensemble._iforest import _average_path_length
from sklearn.neighbors import LocalOutlierFactor
from sklearn.preprocessing import RobustScaler
from sklearn.svm import OneClassSVM
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

Method = Literal["isolation_forest", "lof", "ocsvm"]
METHODS: tuple[str, ...] = ("isolation_forest", "lof", "ocsvm")


def finite_features(frame: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """The named columns as finite float64: a missing value is 0 and an infinite ratio is
    merely huge, so one odd window can never stop the scoring of a batch."""
    values = np.nan_to_num(frame[list(names)].to_numpy(dtype="float64"), nan=0.0, posinf=1e300, neginf=-1e300)
    return pd.DataFrame(values, columns=list(names), index=frame.index)


def signed_log1p(x: np.ndarray) -> np.ndarray:
    """``log1p`` that keeps the sign, so any real input is valid (counters are >= 0 anyway)."""
    return np.sign(x) * np.log1p(np.abs(x))


def forest_score_samples(forest: IsolationForest, Z: np.ndarray) -> np.ndarray | None:
    """``forest.score_samples(Z)``, the same numbers, without scikit-learn's dispatch per tree.

    scikit-learn sends each tree through joblib and its input checks, a fixed cost per tree
    and call that dominates the pipeline's calls (a few thousand windows, 200 trees; a
    worker with one engine per partition makes four calls where one engine makes one). The
    arithmetic is scikit-learn's own, in its order (``_compute_score_samples``: depths
    summed tree by tree), so the scores are equal to the last bit; the test suite checks it.
    None when the forest lacks the fitted attributes this reads (another scikit-learn
    release): the caller then asks scikit-learn.
    """
    path_lengths = getattr(forest, "_decision_path_lengths", None)
    leaf_lengths = getattr(forest, "_average_path_length_per_tree", None)
    max_samples = getattr(forest, "_max_samples", None)
    if path_lengths is None or leaf_lengths is None or max_samples is None:
        return None
    X = np.asarray(Z, dtype=np.float32)
    subsample = forest._max_features != X.shape[1]
    depths = np.zeros(len(X), dtype=np.float64)
    for tree, features, decision, leaf in zip(
        forest.estimators_, forest.estimators_features_, path_lengths, leaf_lengths, strict=True
    ):
        leaves = tree.tree_.apply(np.ascontiguousarray(X[:, features]) if subsample else X)
        depths += decision[leaves] + leaf[leaves] - 1.0
    denominator = len(forest.estimators_) * _average_path_length([max_samples])
    scores = 2 ** (-np.divide(depths, denominator, out=np.ones_like(depths), where=denominator != 0))
    return np.asarray(-scores, dtype=np.float64)


class WindowAnomalyDetector(OutlierMixin, BaseEstimator):
    """Signed log, robust scaling and a novelty detector over window features.

    Parameters
    ----------
    method : "isolation_forest", "lof" or "ocsvm".
    n_estimators, max_samples, max_features : the IsolationForest's.
    n_neighbors : LocalOutlierFactor's.
    nu, gamma : OneClassSVM's.
    max_train_samples : LOF and OCSVM are fitted on at most this many rows (a seeded sample).
    log_transform : apply the signed ``log1p`` before scaling.
    random_state : seed of the forest and of the sample.
    """

    def __init__(
        self,
        *,
        method: Method = "isolation_forest",
        n_estimators: int = 200,
        max_samples: int | float | str = "auto",
        max_features: float = 1.0,
        n_neighbors: int = 20,
        nu: float = 0.01,
        gamma: str | float = "scale",
        max_train_samples: int = 5000,
        log_transform: bool = True,
        random_state: int | None = None,
    ) -> None:
        self.method = method
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.max_features = max_features
        self.n_neighbors = n_neighbors
        self.nu = nu
        self.gamma = gamma
        self.max_train_samples = max_train_samples
        self.log_transform = log_transform
        self.random_state = random_state

    # ------------------------------------------------------------------ fitting
    def fit(self, X: Any, y: Any = None) -> WindowAnomalyDetector:
        """Learn the benign scale and shape from ``X`` (``y`` is ignored: novelty detection)."""
        if self.method not in METHODS:
            raise ValueError(f"method: {self.method!r} is not one of {', '.join(METHODS)}")
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        Z = self._transform_fit(X)
        rng = check_random_state(self.random_state)
        if self.method == "isolation_forest":
            est: Any = IsolationForest(
                n_estimators=self.n_estimators,
                max_samples=self.max_samples,
                max_features=self.max_features,
                random_state=rng.randint(np.iinfo(np.int32).max),
            )
            est.fit(Z)
        else:
            if len(Z) > self.max_train_samples:
                Z = Z[np.sort(rng.choice(len(Z), self.max_train_samples, replace=False))]
            if self.method == "lof":
                est = LocalOutlierFactor(n_neighbors=min(self.n_neighbors, len(Z) - 1), novelty=True)
            else:
                est = OneClassSVM(nu=self.nu, gamma=self.gamma)
            est.fit(Z)
        self.estimator_ = est
        self.offset_ = float(np.ravel(est.offset_)[0])
        train = est.score_samples(Z)
        # Calibration of LOF / OCSVM raw scores into [0, 1]: 0.5 at the training's 1% tail.
        self.calibration_ = (float(np.quantile(train, 0.01)), float(np.std(train)) or 1.0)
        return self

    def _transform_fit(self, X: np.ndarray) -> np.ndarray:
        Z = signed_log1p(X) if self.log_transform else X
        self.scaler_ = RobustScaler().fit(Z)
        return np.asarray(self.scaler_.transform(Z))

    def _transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        Z = signed_log1p(X) if self.log_transform else X
        return np.asarray(self.scaler_.transform(Z))

    # ------------------------------------------------------------------ scoring
    def score_samples(self, X: Any) -> np.ndarray:
        """The inner detector's score: higher = more normal (scikit-learn's sign)."""
        Z = self._transform(X)
        if isinstance(self.estimator_, IsolationForest):
            fast = forest_score_samples(self.estimator_, Z)
            if fast is not None:
                return fast
        return np.asarray(self.estimator_.score_samples(Z), dtype=np.float64)

    def decision_function(self, X: Any) -> np.ndarray:
        """``score_samples - offset_``: negative for outliers."""
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """+1 for inliers, -1 for outliers (at the inner detector's own offset)."""
        return np.where(self.decision_function(X) >= 0, 1, -1)

    def anomaly_score(self, X: Any) -> np.ndarray:
        """In [0, 1], higher = more anomalous: what the pipeline thresholds.

        IsolationForest: the paper's ``2^(-E[h(x)] / c(n))`` (0.5 is its natural border).
        LOF / OCSVM: a logistic of the raw score, 0.5 at the training windows' 1% tail.
        """
        s = self.score_samples(X)
        if self.method == "isolation_forest":
            return np.clip(-s, 0.0, 1.0)
        tail, scale = self.calibration_
        return 1.0 / (1.0 + np.exp(np.clip((s - tail) / scale, -50, 50)))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


@dataclass(frozen=True)
class BudgetThreshold:
    """The alert threshold on :meth:`WindowAnomalyDetector.anomaly_score`, set by a budget.

    ``fit`` picks the lowest threshold at which the benign windows it is given would raise
    no more than ``budget`` (false alerts per hour per 100 pods), counting each flagged
    window as one alert (pessimistic: the pipeline merges consecutive windows of an entity
    into one alert), plus ``margin`` of headroom.
    """

    value: float = 0.6
    budget: float = 1.0  # false alerts per hour per 100 pods
    margin: float = 0.02
    benign_windows: int = 0
    allowed_false_windows: int = 0

    @classmethod
    def fit(
        cls, scores: np.ndarray, *, hours: float, pods: int, budget: float = 1.0, margin: float = 0.02
    ) -> BudgetThreshold:
        if hours <= 0 or pods <= 0:
            raise ValueError(f"hours ({hours}) and pods ({pods}) must be positive to apply a budget")
        s = np.sort(np.asarray(scores, dtype="float64"))[::-1]
        allowed = math.floor(budget * hours * pods / 100.0)
        if len(s) == 0:
            value = 0.5 + margin
        elif allowed >= len(s):
            value = float(s[-1])
        else:
            value = float(np.nextafter(s[allowed], np.inf))  # strictly above the (allowed+1)-th highest
        value = float(min(1.0, value + margin))
        return cls(
            value=value, budget=budget, margin=margin, benign_windows=len(s), allowed_false_windows=allowed
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BudgetThreshold:
        return cls(**d)
