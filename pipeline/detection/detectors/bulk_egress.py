"""Bulk exfiltration: a burst of bytes out of the cluster (T1048).

Catches: an entity sending at least ``min_bytes`` outside in one window, either to an
address no pod of the cluster had talked to before (first seen after ``learn_s`` of
memory), or, even while learning, a staged upload: to an address first seen in an earlier
window at most ``fresh_s`` ago that had received at most ``fresh_max_prior`` bytes (an
attacker who touches an address with a few KB, then uploads to it a minute later, must
not hide in the engine's first minute); or, for a workload with at least ``baseline_age_s`` of
history, ``min_z`` robust deviations (log scale) above both its own baseline and its
workload's (so a new replica is judged by its peers) and at least ``min_bytes_baseline``.
Must not flag: a backup job uploading gigabytes to the object store the cluster already uses
(a known address; a fresh CronJob workload has no baseline to break), the next run of a
CronJob (a new pod uploading where its workload's previous pod did: ``young_ext_repeat``),
steady high-volume services, node image pulls (bytes in, not out), the cluster DNS.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
import pandas as pd

from flowwarden.pipeline.detection.detectors.base import (
    DETECTORS,
    Context,
    Detector,
    heavy_egress_mask,
    ratio_score,
)
from flowwarden.pipeline.detection.detectors.common import column, not_resolver
from flowwarden.plugins import Interval


@DETECTORS.register("bulk_egress")
class BulkEgress(Detector):
    name = "bulk_egress"
    kind = "exfiltration"
    technique = "T1048"
    defaults = {
        "min_bytes": 5e6,
        "learn_s": 60.0,
        "min_z": 4.0,
        "baseline_age_s": 3600.0,
        "min_bytes_baseline": 50e6,
        "fresh_s": 120.0,
        "fresh_max_prior": 64e3,
    }
    constraints = {
        "min_bytes": Interval(Real, 0, None, closed="neither"),
        "learn_s": Interval(Real, 0, None, closed="left"),
        "min_z": Interval(Real, 0, None, closed="left"),
        "baseline_age_s": Interval(Real, 0, None, closed="left"),
        "min_bytes_baseline": Interval(Real, 0, None, closed="neither"),
        "fresh_s": Interval(Real, 0, None, closed="left"),
        "fresh_max_prior": Interval(Real, 0, None, closed="left"),
    }
    evidence = ("bytes_out_ext", "young_ext_bytes", "ext_dsts", "new_ext_bytes")

    def score(self, ctx: Context) -> np.ndarray:
        w, p = ctx.windows, self.params
        x = w["bytes_out_ext"].to_numpy()
        age = w["young_ext_age"].to_numpy()
        young = w["young_ext_bytes"].to_numpy()
        prior = column(ctx, "young_ext_prior", np.inf)
        staged = (
            (age > 0)
            & (age <= p["fresh_s"])
            & (prior <= p["fresh_max_prior"])
            & (young - prior >= p["min_bytes"])
        )
        unknown = (ctx.appeared_after_learning(age, p["learn_s"]) & (young >= p["min_bytes"]) | staged) & (
            column(ctx, "young_ext_repeat") == 0
        )
        new_dst = np.where(unknown, ratio_score(x, p["min_bytes"], floor=0.7), 0.0)
        z_wl = ctx.zscore("bytes_out_ext", ctx.workload_base)
        z_ent = ctx.zscore("bytes_out_ext", ctx.entity_base)
        has_ent = ctx.entity_base["n"].fillna(0).to_numpy() >= 6
        old = (
            (ctx.workload_age >= p["baseline_age_s"])
            & (z_wl >= p["min_z"])
            & (~has_ent | (z_ent >= p["min_z"]))
        )
        baseline = np.where(old, ratio_score(x, p["min_bytes_baseline"], floor=0.6), 0.0)
        return np.where(not_resolver(ctx), np.maximum(new_dst, baseline), 0.0)

    def target_mask(self, flows: pd.DataFrame, ctx: Context) -> np.ndarray:
        return heavy_egress_mask(flows)
