"""Volume to a never-seen external destination (T1030 data transfer size limits / slow exfiltration).

Catches: an entity whose bytes to one external edge first seen recently (``young_s``) add up
to ``min_bytes``, where the edge appeared after the workload had ``learn_s`` seconds of
history: slow, low exfiltration that no single window shows.
Must not flag: SaaS APIs and backup targets the workload already used while learning (or in
the history a model ships), destinations shared by the workload's peers since long ago.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.detectors.base import Context, Detector, ratio_score, register


@register
class NewDestinationVolume(Detector):
    name = "new_destination_volume"
    kind = "exfiltration"
    technique = "T1030"
    defaults = {"min_bytes": 2e6, "learn_s": 120.0, "young_s": 3600.0}
    evidence = ("young_ext_bytes", "new_ext_dsts", "bytes_out_ext")

    def score(self, ctx: Context) -> np.ndarray:
        w, p = ctx.windows, self.params
        age = w["young_ext_age"].to_numpy()
        appeared_after_learning = (ctx.workload_age - age) >= p["learn_s"]
        ok = appeared_after_learning & (age <= p["young_s"])
        return np.where(ok, ratio_score(w["young_ext_bytes"].to_numpy(), p["min_bytes"], floor=0.55), 0.0)

    def target_mask(self, flows: pd.DataFrame, ctx: Context) -> np.ndarray:
        return (flows["direction"] == "egress").to_numpy()
