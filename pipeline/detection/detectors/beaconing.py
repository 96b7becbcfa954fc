"""Beaconing to an external address (T1071 application layer protocol: C2 or slow exfiltration).

Catches: an entity whose connections to one external address are machine-regular, jitter
of 0-50 % included (the beacon score of :func:`pipeline.features.beacon_features`
``>= min_score``; ``pipeline.beacon_max_jitter`` sets the jitter still read as regular),
at most one every ``min_interval_s`` (the median interval: a burst of paged API calls is
not a beacon), over at least ``pipeline.beacon_min_conns`` connections (a pipeline
setting, not a threshold of this detector: the beacon features are computed with it, so
both read the one value), to an address new to the cluster (first seen after ``learn_s``
of memory) that at most ``max_peers`` pods of the workload use.
Must not flag: SaaS calls and health checks (addresses the cluster has used since before,
called by every replica), NTP, nodes' agents (node sources unless ``include_nodes`` is 1),
a long transfer such as a backup upload (its interim records every 10 s repeat one start
time: one connection, not a regular series), the cluster DNS forwarding its clients'
queries upstream.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import pandas as pd

from flowwarden.pipeline.detection.detectors.base import DETECTORS, Context, Detector, heavy_egress_mask
from flowwarden.pipeline.detection.detectors.common import column, not_resolver
from flowwarden.plugins import Interval


@DETECTORS.register("beaconing")
class Beaconing(Detector):
    name = "beaconing"
    kind = "exfiltration"
    technique = "T1071"
    defaults = {
        "min_score": 0.8,
        "learn_s": 60.0,
        "max_peers": 1.0,
        "include_nodes": 0.0,
        "min_interval_s": 2.0,
    }
    constraints = {
        "min_score": Interval(Real, 0, 1),
        "min_interval_s": Interval(Real, 0, None, closed="left"),
        "learn_s": Interval(Real, 0, None, closed="left"),
        "max_peers": Interval(Integral, 1, None, closed="left"),
        "include_nodes": Interval(Integral, 0, 1),
    }
    evidence = ("beacon_score", "beacon_conns", "beacon_peers", "beacon_edge_age")

    def score(self, ctx: Context) -> np.ndarray:
        w, p = ctx.windows, self.params
        s = w["beacon_score"].to_numpy()
        ok = (
            (s >= p["min_score"])
            & (w["beacon_conns"].to_numpy() >= ctx.settings.pipeline.beacon_min_conns)
            & ctx.appeared_after_learning(w["beacon_edge_age"].to_numpy(), p["learn_s"])
            & (w["beacon_peers"].to_numpy() <= p["max_peers"])
            & ~(column(ctx, "beacon_interval", np.nan) < p["min_interval_s"])
            & not_resolver(ctx)
        )
        if not p["include_nodes"]:
            ok &= ~w["is_node"].to_numpy(dtype=bool)
        return np.where(ok, np.clip(s, 0.0, 1.0), 0.0)

    def target_mask(self, flows: pd.DataFrame, ctx: Context) -> np.ndarray:
        return heavy_egress_mask(flows)
