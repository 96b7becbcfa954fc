"""A workload pod reaching the control plane (T1613 container and resource discovery).

Catches: a pod (not a node, not host-network) connecting to etcd (2379-2380), the kubelet
(10250), the scheduler (10259), the controller manager (10257), or the API server (6443 on a
node, 443 on the ``kubernetes`` Service address), unless its namespace is in
``control_plane.api_clients_namespaces`` (operators, controllers, the monitoring stack that
scrapes the kubelet). Any single connection counts: ``min_connections``.
Must not flag: kube-system components, node processes (kubelet to API server), monitoring.
"""

from __future__ import annotations

import ipaddress
from numbers import Integral

import numpy as np
import pandas as pd

from flowwarden.pipeline.detection.detectors.base import DETECTORS, Context, Detector
from flowwarden.plugins import Interval

CP_FEATURES = ("cp_api", "cp_etcd", "cp_kubelet", "cp_scheduler", "cp_controller_manager")


@DETECTORS.register("control_plane_access")
class ControlPlaneAccess(Detector):
    name = "control_plane_access"
    kind = "lateral_movement"
    technique = "T1613"
    defaults = {"min_connections": 1.0}
    constraints = {"min_connections": Interval(Integral, 1, None, closed="left")}
    evidence = CP_FEATURES

    early = True

    def early_min_rows(self) -> int:
        return int(self.params["min_connections"])

    def early_rows(self, lean: pd.DataFrame) -> np.ndarray:
        return np.logical_or.reduce([lean[c].to_numpy() for c in CP_FEATURES])

    def score(self, ctx: Context) -> np.ndarray:
        w = ctx.windows
        allowed = w["namespace"].isin(ctx.settings.control_plane.api_clients_namespaces).to_numpy()
        eligible = ~w["is_node"].to_numpy(dtype=bool) & ~allowed
        api = w["cp_api"].to_numpy()
        other = w[list(CP_FEATURES[1:])].to_numpy().sum(axis=1)
        n = self.params["min_connections"]
        s = np.where(other >= n, 0.9 + 0.1 * np.minimum(other / 20.0, 1.0), np.where(api >= n, 0.8, 0.0))
        return np.where(eligible, s, 0.0)

    def target_mask(self, flows: pd.DataFrame, ctx: Context) -> np.ndarray:
        """Control-plane ports, and 443 only on the API server's addresses (not any HTTPS)."""
        cp, cluster = ctx.settings.control_plane, ctx.settings.cluster
        api_ips = {
            *cp.api_server_ips,
            *(str(next(ipaddress.ip_network(c).hosts())) for c in cluster.service_cidrs),
        }
        on_port = flows["dst_port"].isin(cp.ports()).to_numpy()
        https_api = (flows["dst_port"] == 443).to_numpy() & flows["dst_ip"].isin(api_ips).to_numpy()
        return on_port | https_api
