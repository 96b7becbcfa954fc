"""Namespaces as trust boundaries: cross-namespace weight in fan-out, ``trust_boundary`` alerts."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from flowwarden.errors import ConfigError
from flowwarden.kube import PodInventory
from flowwarden.pipeline.detection.engine import DetectionEngine
from flowwarden.pipeline.detection.trust import TrustMap
from flowwarden.records import Alert
from flowwarden.settings import ClusterSettings, Settings, load_settings
from tests.unit.flowkit import T0, flows, pod

WEB = "10.244.1.10"
WEB_PEERS = [f"10.244.1.{20 + i}" for i in range(4)]
DB = "10.244.2.20"
DB_PEERS = [f"10.244.2.{30 + i}" for i in range(4)]
TRUST = {"namespace_trust": {"web": "dmz", "shop": "internal", "prod-db": "restricted"}}


def _inventory() -> PodInventory:
    items = [pod("web-1", WEB, ns="web", owner=("ReplicaSet", "web-5d9c8f7b6"))]
    items += [
        pod(f"cache-{i}", ip, ns="web", owner=("StatefulSet", f"cache{i}")) for i, ip in enumerate(WEB_PEERS)
    ]
    items.append(pod("pg-0", DB, ns="prod-db", owner=("StatefulSet", "pg")))
    items += [
        pod(f"db-{i}", ip, ns="prod-db", owner=("StatefulSet", f"db{i}")) for i, ip in enumerate(DB_PEERS)
    ]
    return PodInventory.from_dict({"items": items})


def _conn(src: str, dst: str, port: int, t: float) -> dict[str, Any]:
    return {"ts_start": t, "src_ip": src, "dst_ip": dst, "dst_port": port}


def _run(settings: Settings, attack: list[dict[str, Any]]) -> list[Alert]:
    """Ten minutes of web-1 calling pg-0:5432 and db-1 calling web-1, then ``attack``."""
    engine = DetectionEngine(settings, inventory=_inventory())
    learn = [_conn(WEB, DB, 5432, T0 + 10 * i + 1) for i in range(60)]
    learn += [_conn(DB_PEERS[1], WEB, 8080, T0 + 10 * i + 2) for i in range(60)]
    alerts: dict[str, Alert] = {}
    for batch in (flows(learn), flows(attack)):
        for a in engine.process(batch).alerts:
            alerts[a.id] = a
    for a in engine.flush().alerts:
        alerts[a.id] = a
    return list(alerts.values())


def _by(alerts: list[Alert], detector: str) -> list[Alert]:
    return [a for a in alerts if a.detector == detector]


def test_a_never_seen_edge_up_the_trust_levels_alerts_with_its_target() -> None:
    t = T0 + 700
    alerts = _run(Settings(cluster=TRUST), [_conn(WEB, DB, 22, t)])
    hits = _by(alerts, "trust_boundary")
    assert len(hits) == 1
    a = hits[0]
    assert a.entity.namespace == "web" and a.kind == "lateral_movement" and a.technique == "T1021"
    assert a.targets == [DB] and a.target_ports == [22]
    assert a.evidence["trust_crossings"] == ["web->prod-db"]


def test_learned_edges_downward_and_same_level_edges_do_not_alert() -> None:
    t = T0 + 700
    attack = [_conn(WEB, DB, 5432, t), _conn(WEB, WEB_PEERS[0], 6379, t), _conn(DB_PEERS[1], WEB, 9090, t)]
    assert _by(_run(Settings(cluster=TRUST), attack), "trust_boundary") == []


def test_without_trust_levels_nothing_is_a_boundary() -> None:
    assert _by(_run(Settings(), [_conn(WEB, DB, 22, T0 + 700)]), "trust_boundary") == []


def test_unlabelled_namespaces_take_the_default_level() -> None:
    cluster = {"namespace_trust": {"prod-db": "restricted"}, "namespace_trust_default": "internal"}
    hits = _by(_run(Settings(cluster=cluster), [_conn(WEB, DB, 22, T0 + 700)]), "trust_boundary")
    assert len(hits) == 1 and hits[0].targets == [DB]


def test_four_new_peers_across_namespaces_are_a_fan_out_but_not_inside_one() -> None:
    t = T0 + 700
    across = _run(Settings(), [_conn(WEB, ip, 8080, t) for ip in DB_PEERS])
    inside = _run(Settings(), [_conn(WEB, ip, 8080, t) for ip in WEB_PEERS])
    assert len(_by(across, "fan_out")) == 1
    assert sorted(_by(across, "fan_out")[0].targets) == sorted(DB_PEERS)
    assert _by(inside, "fan_out") == []
    # Weight 1 restores the plain count: four peers are under the threshold of five.
    flat = _run(
        Settings(cluster={"cross_namespace_weight": 1.0}), [_conn(WEB, ip, 8080, t) for ip in DB_PEERS]
    )
    assert _by(flat, "fan_out") == []


def test_pair_weights_override_the_cross_namespace_weight() -> None:
    tm = TrustMap(ClusterSettings(namespace_pair_weights={"web->prod-db": 3.0}))
    src = np.array(["web", "web", "web", "shop", ""], dtype=object)
    dst = np.array(["prod-db", "web", "shop", "prod-db", "prod-db"], dtype=object)
    assert tm.weight(src, dst).tolist() == [3.0, 1.0, 1.25, 1.25, 1.0]


def test_trust_levels_are_ordered_lowest_first() -> None:
    tm = TrustMap(ClusterSettings(**TRUST))
    src = np.array(["web", "prod-db", "shop", "other", "web"], dtype=object)
    dst = np.array(["prod-db", "web", "prod-db", "prod-db", "shop"], dtype=object)
    assert tm.up(src, dst).tolist() == [2, 0, 1, 0, 1]


@pytest.mark.parametrize(
    ("cluster", "says"),
    [
        ({"namespace_trust": {"prod-db": "secret"}}, "unknown trust level"),
        ({"namespace_trust_default": "secret"}, "unknown trust level"),
        ({"trust_levels": ["dmz", "dmz"]}, "trust_levels must be distinct"),
        ({"namespace_pair_weights": {"web-prod-db": 2.0}}, "src-namespace->dst-namespace"),
        ({"namespace_pair_weights": {"web->prod-db": 0.5}}, "weight from 1 to 10"),
    ],
)
def test_bad_trust_settings_name_the_key_and_the_fix(
    tmp_path: Any, cluster: dict[str, Any], says: str
) -> None:
    path = tmp_path / "flowwarden.yaml"
    path.write_text(json.dumps({"cluster": cluster}))
    with pytest.raises(ConfigError, match="cluster") as err:
        load_settings(path)
    assert says in str(err.value)
