"""Each detector on a literal table of entity-windows: fires on the attack, not on its hard negative."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from flowwarden.errors import ConfigError
from flowwarden.pipeline.detection.detectors import DETECTORS, Context, build_detectors
from flowwarden.pipeline.detection.detectors.isolation_forest import IsolationForestDetector
from flowwarden.pipeline.detection.engine import BASELINE_FEATURES
from flowwarden.pipeline.detection.state import Baselines
from flowwarden.records import WINDOW_COLUMNS
from flowwarden.settings import Settings
from tests.unit.flowkit import windows_frame


def _ctx(
    rows: list[dict[str, Any]], settings: Settings | None = None, base: Baselines | None = None
) -> Context:
    w = windows_frame(rows, list(WINDOW_COLUMNS))
    base = base or Baselines(list(BASELINE_FEATURES), half_life_s=3600, ttl_s=1e9, max_keys=100)
    ent = base.lookup(w["entity"]).reset_index(drop=True)
    wl = base.lookup(w["workload_key"]).reset_index(drop=True)
    return Context(w, ent, wl, settings or Settings())


def _score(name: str, rows: list[dict[str, Any]], **kw: Any) -> np.ndarray:
    return DETECTORS[name]().score(_ctx(rows, **kw))


def _learned(values: dict[str, float], n: int = 50, start: float = 0.0) -> Baselines:
    """A workload baseline that has seen ``values`` for ``n`` windows since t=0."""
    b = Baselines(list(BASELINE_FEATURES), half_life_s=3600, ttl_s=1e9, max_keys=100)
    keys = pd.Series(["shop/web"] * n)
    vals = pd.DataFrame({f: [values.get(f, 0.0)] * n for f in BASELINE_FEATURES})
    b.update(keys, start + np.arange(n) * 10.0, 10.0, vals)
    return b


def test_port_scan_one_host_many_ports_but_not_a_scraper() -> None:
    s = _score(
        "port_scan",
        [
            {"max_ports_per_dst": 100, "dst_ports": 100},
            {"max_ports_per_dst": 2, "dst_ports": 2, "int_peers": 80},
        ],
    )
    assert s[0] > 0.9 and s[1] == 0


def test_ip_sweep_failed_hosts_and_icmp() -> None:
    s = _score("ip_sweep", [{"failed_dsts": 40}, {"icmp_dsts": 25}, {"int_peers": 100, "failed_dsts": 1}])
    assert s[0] > 0.5 and s[1] > 0.5 and s[2] == 0


def test_fan_out_needs_history_and_new_edges() -> None:
    rows = [{"new_int_peers": 20, "new_int_edges": 6}, {"new_int_peers": 3, "new_int_edges": 1}]
    assert _score("fan_out", rows).tolist() == [0.0, 0.0]  # the workload is still learning
    s = _score("fan_out", rows, base=_learned({"flows": 10}))
    assert s[0] > 0.5 and s[1] == 0


def test_control_plane_access_respects_allowed_namespaces_and_nodes() -> None:
    rows: list[dict[str, Any]] = [
        {"cp_etcd": 3},
        {"cp_api": 1},
        {"cp_kubelet": 5, "namespace": "monitoring"},
        {"cp_api": 2, "is_node": True, "pod": "", "entity": "10.0.0.11"},
    ]
    s = _score("control_plane_access", rows)
    assert s[0] >= 0.9 and s[1] >= 0.8 and s[2] == 0 and s[3] == 0


def test_metadata_api_pods_not_nodes() -> None:
    s = _score("metadata_api", [{"metadata_api": 1}, {"metadata_api": 4, "is_node": True}])
    assert s[0] > 0.8 and s[1] == 0


def test_bulk_egress_new_address_or_far_above_an_old_baseline() -> None:
    base = _learned({"bytes_out_ext": 50_000}, n=400)  # an hour of history
    s = _score("bulk_egress", [{"bytes_out_ext": 200e6}, {"bytes_out_ext": 60_000}], base=base)
    assert s[0] > 0.6 and s[1] == 0
    backup = _learned({"bytes_out_ext": 150e6}, n=400)  # a workload that always sends this much
    assert _score("bulk_egress", [{"bytes_out_ext": 200e6}], base=backup)[0] == 0
    young = _learned(
        {"bytes_out_ext": 50_000}, n=10, start=4800.0
    )  # too little history for a baseline verdict...
    assert _score("bulk_egress", [{"bytes_out_ext": 200e6}], base=young)[0] == 0
    # ...but 200 MB to an address the cluster first saw 10 s ago (after learning) is enough
    rows = [
        {"bytes_out_ext": 200e6, "young_ext_bytes": 200e6, "young_ext_age": 10.0},
        {"bytes_out_ext": 200e6, "young_ext_bytes": 200e6, "young_ext_age": 4990.0},
    ]
    ctx = _ctx(rows, base=young)
    ctx.memory_since = 0.0
    s = DETECTORS["bulk_egress"]().score(ctx)
    assert s[0] > 0.7 and s[1] == 0  # the second address was known since the engine started


def test_new_destination_volume_only_after_learning() -> None:
    rows = [
        {"young_ext_bytes": 10e6, "young_ext_age": 60},
        {"young_ext_bytes": 10e6, "young_ext_age": 10_000},
    ]
    s = _score("new_destination_volume", rows, base=_learned({"flows": 1}, n=400))
    assert s[0] > 0.5 and s[1] == 0  # the second edge appeared while the workload was learning


def test_new_destination_volume_scores_nothing_before_its_quiet_bound() -> None:
    det = DETECTORS["new_destination_volume"]()
    rows: list[dict[str, Any]] = [
        {"window_start": ws, "window_end": ws + 10, "young_ext_bytes": 10e6, "young_ext_age": age}
        | {"young_ext_upload_ratio": 10.0}
        for ws in (0.0, 10.0, 50.0, 60.0, 70.0, 500.0)
        for age in (0.0, 10.0, 60.0)
    ]
    ctx = _ctx(rows)
    ctx.memory_since = 0.0
    s = det.score(ctx)
    ws = ctx.windows["window_start"].to_numpy()
    assert det.quiet_before(0.0) == 60.0 and DETECTORS["port_scan"]().quiet_before(0.0) == -np.inf
    assert (s[ws < 60.0] == 0).all() and (s[ws >= 60.0] > 0).any()


def test_beaconing_lone_new_destination_not_shared_saas() -> None:
    base = _learned({"flows": 1}, n=100)
    rows = [
        {"beacon_score": 0.95, "beacon_conns": 12, "beacon_peers": 1, "beacon_edge_age": 300},
        {"beacon_score": 0.95, "beacon_conns": 12, "beacon_peers": 4, "beacon_edge_age": 300},
        {"beacon_score": 0.5, "beacon_conns": 12, "beacon_peers": 1, "beacon_edge_age": 300},
    ]
    s = _score("beaconing", rows, base=base)
    assert s[0] > 0.9 and s[1] == 0 and s[2] == 0


def test_dns_tunnel_needs_many_odd_subdomains() -> None:
    rows = [
        {"dns_max_subdomains": 60, "dns_mean_len": 55, "dns_mean_entropy": 3.9},
        {"dns_max_subdomains": 60, "dns_mean_len": 20, "dns_mean_entropy": 2.0},
        {"dns_max_subdomains": 4, "dns_mean_len": 60, "dns_mean_entropy": 4.0},
    ]
    s = _score("dns_tunnel", rows)
    assert s[0] > 0.6 and s[1] == 0 and s[2] == 0


def test_isolation_forest_inactive_without_model_then_uses_it() -> None:
    det = DETECTORS["isolation_forest"]()
    assert isinstance(det, IsolationForestDetector)
    ctx = _ctx([{"bytes_out_ext": 1.0}, {"bytes_out_ext": 9e9}])
    assert not det.active and det.score(ctx).tolist() == [0.0, 0.0] and det.inactive_windows == 2

    class Model:
        version, feature_names, threshold = "t1", ["bytes_out_ext"], 0.7

        def score(self, features: pd.DataFrame) -> np.ndarray:
            return (features["bytes_out_ext"].to_numpy() > 1e6).astype(float) * 0.9

    det.set_model(Model())
    s = det.score(ctx)
    assert s.tolist() == [0.0, 0.9]
    assert det.kinds(ctx, s > 0).tolist() == ["exfiltration"]


def test_thresholds_overridable_and_unknown_names_rejected() -> None:
    settings = Settings()
    settings.pipeline.detectors = {"port_scan": {"min_ports": 200}}
    dets = {d.name: d for d in build_detectors(settings)}
    assert dets["port_scan"].score(_ctx([{"max_ports_per_dst": 100}])).tolist() == [0.0]
    assert set(dets) == set(DETECTORS)
    settings.pipeline.detectors = {"port_scan": {"min_prots": 2}}
    with pytest.raises(ConfigError, match="min_prots"):
        build_detectors(settings)
    settings.pipeline.detectors = {}
    settings.pipeline.disabled_detectors = ["nope"]
    with pytest.raises(ConfigError, match="nope"):
        build_detectors(settings)


def test_every_detector_documents_what_it_catches_and_must_not_flag() -> None:
    for name, cls in DETECTORS.items():
        doc = __import__(cls.__module__, fromlist=["x"]).__doc__ or ""
        assert "Catches" in doc and "Must not flag" in doc, name
        assert cls.kind in ("exfiltration", "lateral_movement")


def test_new_destination_volume_flags_a_first_upload_sooner() -> None:
    rows = [
        {"young_ext_bytes": 41_000, "young_ext_age": 0, "young_ext_upload_ratio": 10.0},  # upload-shaped
        {"young_ext_bytes": 41_000, "young_ext_age": 0, "young_ext_upload_ratio": 0.2},  # a download
    ]
    ctx = _ctx(rows)
    ctx.memory_since = 0.0
    s = DETECTORS["new_destination_volume"]().score(ctx)
    assert s[0] >= 0.5 and s[1] == 0


def test_fan_out_from_an_old_pod_of_a_serving_workload_but_not_from_nodes() -> None:
    rows: list[dict[str, Any]] = [
        {"recent_new_peers": 12},
        {"recent_new_peers": 12, "is_node": True, "pod": "", "entity": "10.0.0.11"},
    ]
    ctx = _ctx(rows)  # no workload history as a source: it only ever served
    ctx.memory_since = 0.0
    ctx.extra["pod_age"] = np.array([4000.0, 4000.0])
    s = DETECTORS["fan_out"]().score(ctx)
    assert s[0] > 0.5 and s[1] == 0
    ctx.extra["pod_age"] = np.array([10.0, 10.0])  # a brand-new pod of a brand-new workload: learning
    assert DETECTORS["fan_out"]().score(ctx)[0] == 0
