"""Host discovery sweep (T1018 remote system discovery).

Catches: one source trying many internal addresses that do not answer or refuse
(``failed_dsts >= min_failed_hosts``), or pinging many hosts (``icmp_dsts >= min_icmp_hosts``).
Must not flag: a Prometheus scraper's fan-out (many hosts, all answering, edges known),
a service mesh sidecar's health checks, a pod talking to a few dead endpoints during a
rolling deployment (a handful of failures, below ``min_failed_hosts``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.detectors.base import Context, Detector, ratio_score, register


@register
class IpSweep(Detector):
    name = "ip_sweep"
    kind = "lateral_movement"
    technique = "T1018"
    defaults = {"min_failed_hosts": 10.0, "min_icmp_hosts": 10.0}
    evidence = ("failed_dsts", "icmp_dsts", "int_peers", "failed_share")

    def score(self, ctx: Context) -> np.ndarray:
        w, p = ctx.windows, self.params
        failed = ratio_score(w["failed_dsts"].to_numpy(), p["min_failed_hosts"])
        icmp = ratio_score(w["icmp_dsts"].to_numpy(), p["min_icmp_hosts"])
        return np.maximum(failed, icmp)

    def target_mask(self, flows: pd.DataFrame, ctx: Context) -> np.ndarray:
        return flows["state"].isin(["rejected", "syn_only", "icmp"]).to_numpy()
