"""Brute force against an authentication service (T1110: SSH, RDP, databases, Redis, the API server).

Catches: an entity opening at least ``min_sessions`` short sessions (each ended within
:data:`~pipeline.detection.features.SHORT_SESSION_S`, at most ``max_session_bytes`` sent)
in one window to an authentication port (``pipeline.auth_ports``: 22, 3389, 5432, 3306,
6379, 6443 by default) on at most ``max_hosts`` hosts (password guessing: hydra, sshpass in
a loop, bad tokens against the API server), over an edge its workload first used after
``learn_s`` of memory and at most ``young_s`` ago.
Must not flag: an application's own database or cache clients (an edge the workload has
used since before, however many connections it churns), connection pools (long-lived
sessions), a new version's pool to a new cache (its sessions stay open), scanners touching
each port once (that is :mod:`.port_scan`), nodes (kubelets and agents talk to the API
server all day) unless ``include_nodes`` is 1, anything while learning.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import pandas as pd

from flowwarden.pipeline.detection.detectors.base import DETECTORS, Context, Detector, ratio_score
from flowwarden.pipeline.detection.detectors.common import column
from flowwarden.pipeline.detection.features import SHORT_SESSION_S
from flowwarden.plugins import Interval


@DETECTORS.register("brute_force")
class BruteForce(Detector):
    name = "brute_force"
    kind = "lateral_movement"
    technique = "T1110"
    defaults = {
        "min_sessions": 8.0,
        "max_hosts": 3.0,
        "max_session_bytes": 64e3,
        "learn_s": 60.0,
        "young_s": 3600.0,
        "include_nodes": 0.0,
    }
    constraints = {
        "min_sessions": Interval(Integral, 2, None, closed="left"),
        "max_hosts": Interval(Integral, 1, None, closed="left"),
        "max_session_bytes": Interval(Real, 0, None, closed="neither"),
        "learn_s": Interval(Real, 0, None, closed="left"),
        "young_s": Interval(Real, 0, None, closed="left"),
        "include_nodes": Interval(Integral, 0, 1),
    }
    evidence = ("auth_sessions", "auth_hosts", "auth_port", "auth_session_bytes", "auth_edge_age")

    def score(self, ctx: Context) -> np.ndarray:
        p = self.params
        sessions = column(ctx, "auth_sessions")
        age = column(ctx, "auth_edge_age")
        ok = (
            (column(ctx, "auth_hosts") <= p["max_hosts"])
            & (column(ctx, "auth_session_bytes") <= p["max_session_bytes"])
            & ctx.appeared_after_learning(age, p["learn_s"])
            & (age <= p["young_s"])
        )
        if not p["include_nodes"]:
            ok &= ~ctx.windows["is_node"].to_numpy(dtype=bool)
        return np.where(ok, ratio_score(sessions, p["min_sessions"], floor=0.6), 0.0)

    def target_mask(self, flows: pd.DataFrame, ctx: Context) -> np.ndarray:
        """The short sessions on the authentication port that has the most of them: the guessed
        hosts are the targets, never the pod's own long-lived database or cache connections."""
        ports = np.asarray(ctx.settings.pipeline.auth_ports, dtype="int64")
        port = flows["dst_port"].to_numpy(dtype="int64")
        dur = flows["ts_end"].to_numpy(dtype="float64") - flows["ts_start"].to_numpy(dtype="float64")
        short = (
            np.isin(port, ports)
            & flows["final"].to_numpy(dtype=bool)
            & (dur <= SHORT_SESSION_S)
            & ~flows["state"].isin(["rejected", "syn_only"]).to_numpy()
        )
        if not short.any():
            return short
        top = pd.Series(port[short]).value_counts().index[0]
        return short & (port == top)
