"""Anomaly score from an IsolationForest over the window features (models helper's model).

Catches: combinations of features no single rule covers, judged against benign history the
model was trained on. Inactive (logged once, counted) until a model is loaded; the alert
kind follows the features that stand out (egress volume or DNS: exfiltration, ATT&CK T1041;
otherwise lateral movement, T1046 Network Service Discovery).
Must not flag: anything the benign training history held (hard negatives included);
the model's own ``threshold`` sets the operating point, ``min_score`` can only raise it.
"""

from __future__ import annotations

import logging
from numbers import Real
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from flowwarden.pipeline.detection.detectors.base import DETECTORS, Context, Detector
from flowwarden.plugins import Interval

log = logging.getLogger(__name__)


@DETECTORS.register("isolation_forest")
class IsolationForestDetector(Detector):
    name = "isolation_forest"
    kind = "lateral_movement"
    technique = "T1046"  # its lateral-movement alerts; see ``techniques``
    # What the model covers, by the kind an alert is given (:meth:`kinds`): unusual internal
    # peers and ports are network service discovery, unusual egress volume or DNS names
    # exfiltration over the channel the workload already uses.
    techniques: ClassVar[dict[str, str]] = {"lateral_movement": "T1046", "exfiltration": "T1041"}
    defaults = {"min_score": 0.0}
    constraints = {"min_score": Interval(Real, 0, 1)}
    evidence = ("bytes_out_ext", "int_peers", "dst_ports", "dns_names")
    needs_model = True

    model: Any = None
    inactive_windows = 0
    _warned = False

    def set_model(self, model: Any) -> None:
        self.model = model

    @property
    def active(self) -> bool:
        return self.model is not None

    def score(self, ctx: Context) -> np.ndarray:
        n = len(ctx.windows)
        if self.model is None:
            if not self._warned:
                log.info("isolation_forest detector inactive: no model loaded")
                self._warned = True
            self.inactive_windows += n
            return np.zeros(n)
        missing = [f for f in self.model.feature_names if f not in ctx.windows.columns]
        if missing:
            if not self._warned:
                log.warning("isolation_forest model needs unknown features %s; inactive", missing)
                self._warned = True
            self.inactive_windows += n
            return np.zeros(n)
        scores = np.asarray(self.model.score(ctx.windows[list(self.model.feature_names)]), dtype="float64")
        thr = max(float(self.model.threshold), self.params["min_score"])
        return np.where(scores >= thr, np.clip(scores, 0.0, 1.0), 0.0)

    def technique_for(self, kind: str) -> str:
        return self.techniques.get(kind, self.technique)

    def kinds(self, ctx: Context, hit: np.ndarray) -> np.ndarray:
        w = ctx.windows[hit]
        exfil = (w["bytes_out_ext"].to_numpy() > np.maximum(w["bytes_out_int"].to_numpy(), 1e6)) | (
            w["dns_max_subdomains"].to_numpy() >= 10
        )
        return np.where(exfil, "exfiltration", "lateral_movement").astype(object)

    def target_mask(self, flows: pd.DataFrame, ctx: Context) -> np.ndarray:
        return np.ones(len(flows), dtype=bool)
