"""Volume to an address new to the whole cluster (T1030 data transfer size limits: slow exfiltration).

Catches: an entity whose bytes to one external address that no pod had talked to before
(first seen after ``learn_s`` of memory, within ``young_s``) add up to ``min_bytes``: slow,
low exfiltration that no single window shows; or, sooner, ``min_upload_bytes`` sent in an
upload-shaped exchange (bytes out at least ``min_upload_ratio`` times bytes in, this window).
Must not flag: SaaS APIs, object stores and registries the cluster already uses (known
addresses, or in the history a model ships), the next run of a CronJob (a new pod sending
where its workload's previous pod did, unalerted: ``young_ext_repeat``), the cluster DNS
forwarding its clients' queries, nodes pulling images (node sources are left
to the node's own policy unless ``include_nodes`` is 1).
"""

from __future__ import annotations

from numbers import Integral, Real

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
from flowwarden.pipeline.detection.features import YOUNG_EDGE_S
from flowwarden.plugins import Interval


@DETECTORS.register("new_destination_volume")
class NewDestinationVolume(Detector):
    name = "new_destination_volume"
    kind = "exfiltration"
    technique = "T1030"
    defaults = {
        "min_bytes": 256e3,
        "min_upload_bytes": 32e3,
        "min_upload_ratio": 4.0,
        "learn_s": 60.0,
        "young_s": 3600.0,
        "include_nodes": 0.0,
    }
    constraints = {
        "min_bytes": Interval(Real, 0, None, closed="neither"),
        "min_upload_bytes": Interval(Real, 0, None, closed="neither"),
        "min_upload_ratio": Interval(Real, 0, None, closed="neither"),
        "learn_s": Interval(Real, 0, None, closed="left"),
        # The young-address features only hold addresses younger than YOUNG_EDGE_S.
        "young_s": Interval(Real, 0, YOUNG_EDGE_S),
        "include_nodes": Interval(Integral, 0, 1),
    }
    evidence = ("young_ext_bytes", "new_ext_dsts", "bytes_out_ext")

    early = True
    reads_novelty = True

    def early_rows(self, lean: pd.DataFrame) -> np.ndarray:
        big = lean["bytes_out"].to_numpy() >= min(self.params["min_upload_bytes"], self.params["min_bytes"])
        return lean["ext"].to_numpy() & big

    def score(self, ctx: Context) -> np.ndarray:
        w, p = ctx.windows, self.params
        age = w["young_ext_age"].to_numpy()
        ok = ctx.appeared_after_learning(age, p["learn_s"]) & (age <= p["young_s"])
        ok &= (column(ctx, "young_ext_repeat") == 0) & not_resolver(ctx)
        if not p["include_nodes"]:
            ok &= ~w["is_node"].to_numpy(dtype=bool)
        sent = w["young_ext_bytes"].to_numpy()
        volume = ratio_score(sent, p["min_bytes"], floor=0.55)
        upload = w["young_ext_upload_ratio"].to_numpy() >= p["min_upload_ratio"]
        first_upload = np.where(upload, ratio_score(sent, p["min_upload_bytes"], floor=0.5), 0.0)
        return np.where(ok, np.maximum(volume, first_upload), 0.0)

    def quiet_before(self, memory_since: float) -> float:
        # An address counts only if first seen once the memory had ``learn_s`` (its first
        # window starts then or later), and no window holds an address seen after it.
        return memory_since + float(self.params["learn_s"])

    def target_mask(self, flows: pd.DataFrame, ctx: Context) -> np.ndarray:
        return heavy_egress_mask(flows)
