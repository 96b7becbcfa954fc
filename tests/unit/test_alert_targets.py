"""Alert targets are what the enforcer may block: only the destinations the finding is about."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pandas as pd

from flowwarden.pipeline.detection.detectors.base import heavy_egress_mask
from flowwarden.pipeline.detection.detectors.control_plane_access import ControlPlaneAccess
from flowwarden.settings import Settings


def _flows(rows: list[tuple[str, int, int, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["dst_ip", "dst_port", "bytes_out", "direction"])


def test_an_upload_targets_its_destination_not_the_usual_saas_calls() -> None:
    flows = _flows(
        [
            ("192.0.2.10", 443, 50_000_000, "egress"),  # the upload
            ("203.0.113.20", 443, 4_000, "egress"),  # the pod's usual SaaS API
            ("203.0.113.20", 443, 3_000, "egress"),
            ("10.244.2.7", 8080, 9_000_000, "internal"),  # not egress at all
        ]
    )
    assert flows[heavy_egress_mask(flows)]["dst_ip"].unique().tolist() == ["192.0.2.10"]


def test_two_comparable_uploads_are_both_targets() -> None:
    flows = _flows([("192.0.2.10", 443, 6_000_000, "egress"), ("192.0.2.11", 443, 5_000_000, "egress")])
    assert heavy_egress_mask(flows).tolist() == [True, True]


def test_control_plane_targets_are_control_plane_endpoints_not_any_https() -> None:
    flows = _flows(
        [
            ("10.0.0.10", 2379, 100, "internal"),  # etcd
            ("10.96.0.1", 443, 100, "internal"),  # the kubernetes Service
            ("203.0.113.80", 443, 100, "egress"),  # ordinary HTTPS
        ]
    )
    ctx = cast(Any, SimpleNamespace(settings=Settings()))
    assert ControlPlaneAccess().target_mask(flows, ctx).tolist() == [True, True, False]
