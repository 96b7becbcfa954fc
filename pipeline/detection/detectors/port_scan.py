"""Port scan (T1046 network service discovery).

Catches: one source probing many ports of one host: ``min_ports`` distinct ports of one
destination in a window, or failed ones over the last minute (a slow scan spreads its probes
over many windows); or many ports across hosts with mostly failed connections
(``dst_ports >= min_total_ports`` and ``failed_share >= min_failed_share``).
Must not flag: a client using a service's two ports (service and metrics), a Prometheus
scraper (many hosts, one port each, successful), clients retrying a deleted pod's port.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import pandas as pd

from flowwarden.pipeline.detection.detectors.base import DETECTORS, Context, Detector, ratio_score
from flowwarden.plugins import Interval


@DETECTORS.register("port_scan")
class PortScan(Detector):
    name = "port_scan"
    kind = "lateral_movement"
    technique = "T1046"
    defaults = {"min_ports": 8.0, "min_total_ports": 30.0, "min_failed_share": 0.5}
    constraints = {
        "min_ports": Interval(Integral, 1, None, closed="left"),
        "min_total_ports": Interval(Integral, 1, None, closed="left"),
        "min_failed_share": Interval(Real, 0, 1),
    }
    evidence = ("max_ports_per_dst", "recent_ports_per_dst", "dst_ports", "failed_share")

    early = True

    def early_min_rows(self) -> int:
        return int(min(self.params["min_ports"], self.params["min_total_ports"]))

    def early_rows(self, lean: pd.DataFrame) -> np.ndarray:
        return lean["rejected"].to_numpy() | lean["syn_only"].to_numpy()

    def score(self, ctx: Context) -> np.ndarray:
        w, p = ctx.windows, self.params
        ports = np.maximum(w["max_ports_per_dst"].to_numpy(), w["recent_ports_per_dst"].to_numpy())
        one_host = ratio_score(ports, p["min_ports"])
        spread = ratio_score(w["dst_ports"].to_numpy(), p["min_total_ports"])
        spread = np.where(w["failed_share"].to_numpy() >= p["min_failed_share"], spread, 0.0)
        return np.maximum(one_host, spread)

    def target_mask(self, flows: pd.DataFrame, ctx: Context) -> np.ndarray:
        return flows["state"].isin(["rejected", "syn_only"]).to_numpy()
