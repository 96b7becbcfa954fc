"""A never-seen edge from a lower to a higher trust level (T1021 remote services).

Catches: a pod opening a connection its workload never used (workload to workload, port)
from a namespace of a lower trust level into one of a higher level
(``cluster.namespace_trust``, levels lowest first in ``cluster.trust_levels``: a ``dmz`` web
pod reaching into ``restricted`` ``prod-db`` for the first time), at least ``min_edges`` such
edges in a window, once its workload has ``learn_s`` seconds of history. The score rises
with the number of levels climbed. Unlabelled namespaces take no part unless
``cluster.namespace_trust_default`` names a level.
Must not flag: edges already learned (the web tier's usual database calls), traffic inside a
level or down to a lower one, anything while the workload is still learning, nodes.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import pandas as pd

from flowwarden.pipeline.detection.detectors.base import DETECTORS, Context, Detector
from flowwarden.pipeline.detection.detectors.common import column
from flowwarden.pipeline.detection.trust import TrustMap
from flowwarden.plugins import Interval


@DETECTORS.register("trust_boundary")
class TrustBoundary(Detector):
    name = "trust_boundary"
    kind = "lateral_movement"
    technique = "T1021"
    defaults = {"min_edges": 1.0, "learn_s": 60.0}
    constraints = {
        "min_edges": Interval(Integral, 1, None, closed="left"),
        "learn_s": Interval(Real, 0, None, closed="left"),
    }
    evidence = ("new_int_edges", "new_int_peers")

    reads_novelty = True

    def score(self, ctx: Context) -> np.ndarray:
        w, p = ctx.windows, self.params
        edges = column(ctx, "trust_up_edges")
        gap = column(ctx, "trust_up_gap")
        s = np.where(edges >= p["min_edges"], np.minimum(0.6 + 0.15 * gap + 0.05 * (edges - 1), 1.0), 0.0)
        learned = (ctx.workload_age >= p["learn_s"]) & ~w["is_node"].to_numpy(dtype=bool)
        return np.where(learned, s, 0.0)

    def target_mask(self, flows: pd.DataFrame, ctx: Context) -> np.ndarray:
        """The window's internal flows that climb a trust level (their destinations)."""
        tm = TrustMap(ctx.settings.cluster)
        internal = (flows["direction"] == "internal").to_numpy()
        src, dst = (flows[c].to_numpy(dtype=object) for c in ("src_namespace", "dst_namespace"))
        up = tm.up(src, dst)
        return internal & (up > 0)

    def describe(self, flows: pd.DataFrame) -> dict[str, object]:
        """The namespace pairs crossed upwards (``web->prod-db``)."""
        pairs = (flows["src_namespace"].astype(str) + "->" + flows["dst_namespace"].astype(str)).unique()
        return {"trust_crossings": sorted(pairs.tolist())[:10]}
