"""A pod reading the cloud instance metadata API (T1552.005).

Catches: any connection from a pod to ``cluster.metadata_api`` (169.254.169.254 by default),
where node credentials live.
Must not flag: node processes and host-network pods (the kubelet, cloud agents) reading it:
their source address is a node's, so they are not pods (``is_node``).
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import pandas as pd

from flowwarden.pipeline.detection.detectors.base import DETECTORS, Context, Detector
from flowwarden.plugins import Interval


@DETECTORS.register("metadata_api")
class MetadataApi(Detector):
    name = "metadata_api"
    kind = "lateral_movement"
    technique = "T1552.005"
    defaults = {"min_connections": 1.0}
    constraints = {"min_connections": Interval(Integral, 1, None, closed="left")}
    evidence = ("metadata_api",)

    early = True

    def early_min_rows(self) -> int:
        return int(self.params["min_connections"])

    def early_rows(self, lean: pd.DataFrame) -> np.ndarray:
        return lean["metadata_api"].to_numpy()

    def score(self, ctx: Context) -> np.ndarray:
        w = ctx.windows
        n = w["metadata_api"].to_numpy()
        hit = (n >= self.params["min_connections"]) & ~w["is_node"].to_numpy(dtype=bool)
        return np.where(hit, 0.85 + 0.1 * np.minimum(n / 10.0, 1.0), 0.0)

    def target_mask(self, flows: pd.DataFrame, ctx: Context) -> np.ndarray:
        return flows["dst_ip"].isin(ctx.settings.cluster.metadata_api).to_numpy()
