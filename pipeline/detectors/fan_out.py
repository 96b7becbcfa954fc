"""Fan-out to never-seen internal peers (T1021 remote services).

Catches: a pod that suddenly opens connections to many internal peers its workload has never
talked to (``new_int_peers >= min_new_peers`` over at least ``min_new_edges`` distinct new
workload-level edges), once the workload has ``learn_s`` seconds of history.
Must not flag: a Prometheus scraper (its edges are known per destination *workload*, so new
replicas are not new edges), a rolling deployment (a new replica inherits its workload's
edges; a new version adds a few new edges, below the thresholds), anything during learning.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.detectors.base import Context, Detector, ratio_score, register


@register
class FanOut(Detector):
    name = "fan_out"
    kind = "lateral_movement"
    technique = "T1021"
    defaults = {"min_new_peers": 8.0, "min_new_edges": 3.0, "learn_s": 120.0}
    evidence = ("new_int_peers", "new_int_edges", "int_peers")

    def score(self, ctx: Context) -> np.ndarray:
        w, p = ctx.windows, self.params
        s = ratio_score(w["new_int_peers"].to_numpy(), p["min_new_peers"])
        ok = (w["new_int_edges"].to_numpy() >= p["min_new_edges"]) & (ctx.workload_age >= p["learn_s"])
        return np.where(ok, s, 0.0)

    def target_mask(self, flows: pd.DataFrame, ctx: Context) -> np.ndarray:
        return (flows["direction"] == "internal").to_numpy()
