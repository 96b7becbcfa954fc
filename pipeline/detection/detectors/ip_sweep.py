"""Host discovery sweep (T1018 remote system discovery).

Catches: one source trying many internal addresses that do not answer or refuse: at least
``min_failed_hosts`` distinct failed destinations in a window or over the last minute, or
pinging ``min_icmp_hosts`` hosts in a window.
Must not flag: a Prometheus scraper's fan-out (many hosts, all answering), clients retrying
a few deleted pods' addresses during a rolling deployment (a handful, below the threshold).
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import pandas as pd

from flowwarden.pipeline.detection.detectors.base import DETECTORS, Context, Detector, ratio_score
from flowwarden.plugins import Interval


@DETECTORS.register("ip_sweep")
class IpSweep(Detector):
    name = "ip_sweep"
    kind = "lateral_movement"
    technique = "T1018"
    defaults = {"min_failed_hosts": 8.0, "min_icmp_hosts": 10.0}
    constraints = {
        "min_failed_hosts": Interval(Integral, 1, None, closed="left"),
        "min_icmp_hosts": Interval(Integral, 1, None, closed="left"),
    }
    evidence = ("failed_dsts", "recent_failed_dsts", "icmp_dsts", "int_peers", "failed_share")

    early = True

    def early_min_rows(self) -> int:
        return int(self.params["min_failed_hosts"])

    def early_rows(self, lean: pd.DataFrame) -> np.ndarray:
        return lean["rejected"].to_numpy() | lean["syn_only"].to_numpy()

    def score(self, ctx: Context) -> np.ndarray:
        w, p = ctx.windows, self.params
        hosts = np.maximum(w["failed_dsts"].to_numpy(), w["recent_failed_dsts"].to_numpy())
        failed = ratio_score(hosts, p["min_failed_hosts"])
        icmp = ratio_score(w["icmp_dsts"].to_numpy(), p["min_icmp_hosts"])
        return np.maximum(failed, icmp)

    def target_mask(self, flows: pd.DataFrame, ctx: Context) -> np.ndarray:
        return flows["state"].isin(["rejected", "syn_only", "icmp"]).to_numpy()
