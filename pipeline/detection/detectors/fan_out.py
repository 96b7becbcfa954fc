"""Fan-out to never-seen internal peers (T1021 remote services).

Catches: a pod connecting to at least ``min_new_peers`` distinct internal addresses over
edges its workload never used (workload to workload-or-address, port), counted over the last
minute, once the workload has ``learn_s`` seconds of history (or, for a workload that only
ever served and suddenly acts as a client, once its pod and the engine's memory are that old).
Edges of an alerted fan-out are not learned, so the next pod doing the same still stands out.
Nodes (host network: kubelets, etcd peers, CNI agents talk to every node) are left out unless
``include_nodes`` is 1.
Must not flag: a Prometheus scraper (its edges are known per destination *workload*, so new
replicas are not new edges), a rolling deployment (a new replica inherits its workload's
edges; the new version's one new dependency is a single edge to a few pods), anything while
the workload is still learning. A new peer in another namespace counts
``cluster.cross_namespace_weight`` (1.25) peers, or its pair's ``cluster.namespace_pair_weights``.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import pandas as pd

from flowwarden.pipeline.detection.detectors.base import DETECTORS, Context, Detector, ratio_score
from flowwarden.pipeline.detection.detectors.common import column
from flowwarden.plugins import Interval


@DETECTORS.register("fan_out")
class FanOut(Detector):
    name = "fan_out"
    kind = "lateral_movement"
    technique = "T1021"
    defaults = {"min_new_peers": 5.0, "learn_s": 60.0, "include_nodes": 0.0}
    constraints = {
        "min_new_peers": Interval(Integral, 1, None, closed="left"),
        "learn_s": Interval(Real, 0, None, closed="left"),
        "include_nodes": Interval(Integral, 0, 1),
    }
    evidence = ("new_int_peers", "recent_new_peers", "new_int_edges", "int_peers")

    def score(self, ctx: Context) -> np.ndarray:
        w, p = ctx.windows, self.params
        # A new peer in another namespace weighs more (cluster.cross_namespace_weight; trust.py).
        weighted = column(ctx, "new_int_peers_weighted", default=-1.0)
        new_peers = np.where(weighted >= 0, weighted, w["new_int_peers"].to_numpy())
        peers = np.maximum(new_peers, w["recent_new_peers"].to_numpy())
        s = ratio_score(peers, p["min_new_peers"])
        # Learned: the workload has initiated traffic for a while, or (a workload that only ever
        # served, now suddenly a client) its pod is old and the engine has been watching.
        pod_age = ctx.extra.get("pod_age", np.zeros(len(w)))
        watched = ctx.appeared_after_learning(np.zeros(len(w)), p["learn_s"])
        learned = (ctx.workload_age >= p["learn_s"]) | ((pod_age >= p["learn_s"]) & watched)
        if not p["include_nodes"]:
            learned &= ~w["is_node"].to_numpy(dtype=bool)
        return np.where(learned, s, 0.0)

    def target_mask(self, flows: pd.DataFrame, ctx: Context) -> np.ndarray:
        return (flows["direction"] == "internal").to_numpy()
