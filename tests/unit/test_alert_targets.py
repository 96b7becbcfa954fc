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


def test_examples_read_from_the_build_frame_match_those_of_the_window_frame() -> None:
    import numpy as np
    import pandas as pd

    from flowwarden.pipeline.detection.alerts import EXAMPLE_COLUMNS, AlertBuilder, _examples
    from flowwarden.settings import Settings

    rng = np.random.default_rng(5)
    n = 40
    frame = pd.DataFrame(
        {
            c: pd.array(rng.choice(["a", "b", ""], n), dtype="str")
            if c not in ("ts_start", "ts_end", "dst_port", "proto", "bytes_out", "bytes_in")
            else rng.integers(0, 5, n)
            for c in EXAMPLE_COLUMNS
        }
    ).assign(extra=1.5)
    frame["ts_start"] = frame["ts_start"] + 0.25
    builder = AlertBuilder(Settings())
    for pos in (np.array([3, 7, 7, 1, 30, 12, 5]), np.arange(n), np.zeros(0, dtype="int64")):
        assert builder._examples_at(frame, pos) == _examples(frame.iloc[pos])
