"""Bulk exfiltration: bytes out of the cluster far above the baseline (T1048).

Catches: an entity sending at least ``min_bytes`` outside in one window while that volume is
``min_z`` robust deviations (log scale) above both its own baseline and its workload's
(so a new replica is judged by its peers), once the workload has ``min_windows`` windows of
history.
Must not flag: a backup job's regular egress (its workload baseline, kept across runs since
CronJob runs share one workload, already holds such volumes), steady high-volume services,
anything while the workload is still learning.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.detectors.base import Context, Detector, ratio_score, register


@register
class BulkEgress(Detector):
    name = "bulk_egress"
    kind = "exfiltration"
    technique = "T1048"
    defaults = {"min_bytes": 20e6, "min_z": 4.0, "min_windows": 6.0}
    evidence = ("bytes_out_ext", "ext_dsts", "new_ext_bytes")

    def score(self, ctx: Context) -> np.ndarray:
        w, p = ctx.windows, self.params
        x = w["bytes_out_ext"].to_numpy()
        z_wl = ctx.zscore("bytes_out_ext", ctx.workload_base)
        z_ent = ctx.zscore("bytes_out_ext", ctx.entity_base)
        has_ent = ctx.entity_base["n"].fillna(0).to_numpy() >= p["min_windows"]
        learned = ctx.workload_base["n"].fillna(0).to_numpy() >= p["min_windows"]
        ok = learned & (z_wl >= p["min_z"]) & (~has_ent | (z_ent >= p["min_z"]))
        return np.where(ok, ratio_score(x, p["min_bytes"], floor=0.6), 0.0)

    def target_mask(self, flows: pd.DataFrame, ctx: Context) -> np.ndarray:
        return (flows["direction"] == "egress").to_numpy()
