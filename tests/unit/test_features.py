"""Window features from literal flow frames: every feature named in the issue is checked."""

from __future__ import annotations

import numpy as np
import pandas as pd

from flowwarden.kube import PodInventory
from flowwarden.pipeline.detection.connections import ConnectionLog
from flowwarden.pipeline.detection.enrich import enrich_flows
from flowwarden.pipeline.detection.features import (
    beacon_features,
    edge_table,
    novelty_features,
    prepare,
    to_lean,
    window_features,
)
from flowwarden.pipeline.detection.state import SeenEdges, Vocab
from flowwarden.records import WINDOW_FEATURES
from flowwarden.settings import Settings
from tests.unit.flowkit import T0, flows, pod

INV = PodInventory.from_dict(
    {
        "items": [
            pod("web-5d9c8f7b6-aaaaa", "10.244.1.9"),
            pod("web-5d9c8f7b6-bbbbb", "10.244.1.10"),
            pod("db-0", "10.244.2.3", owner=("StatefulSet", "db")),
            pod(
                "kube-proxy-x",
                "10.0.0.11",
                ns="kube-system",
                owner=("DaemonSet", "kube-proxy"),
                host_network=True,
            ),
        ]
    }
)


def _prepared(df: pd.DataFrame, settings: Settings, vocab: Vocab, ws: float | None = None):
    e = enrich_flows(df, INV, settings)
    lean = to_lean(e, vocab, settings, INV.node_ips)
    lean["window_start"] = np.floor(lean["ts_end"] / 10) * 10 if ws is None else ws
    p = prepare(lean, vocab, 10.0)
    assert p is not None
    return p


def _windows(df: pd.DataFrame, settings: Settings | None = None) -> pd.DataFrame:
    s = settings or Settings()
    vocab = Vocab()
    p = _prepared(df, s, vocab)
    feats = window_features(p)
    nov, _, _ = novelty_features(p, edge_table(p, vocab), SeenEdges(ttl_s=1e9, max_edges=1000))
    return pd.concat([p.keys, feats, nov], axis=1).set_index("entity")


def test_volume_destinations_ports_and_failures() -> None:
    a = "10.244.1.9"
    df = flows(
        [
            {"ts_start": T0 + 1, "src_ip": a, "dst_ip": "93.184.216.34", "dst_port": 443, "bytes_out": 5000},
            {"ts_start": T0 + 2, "src_ip": a, "dst_ip": "93.184.216.35", "dst_port": 443, "bytes_out": 7000},
            {"ts_start": T0 + 3, "src_ip": a, "dst_ip": "10.244.2.3", "dst_port": 5432, "bytes_out": 300},
            {"ts_start": T0 + 4, "src_ip": a, "dst_ip": "10.244.2.3", "dst_port": 22, "state": "rejected"},
            {"ts_start": T0 + 5, "src_ip": a, "dst_ip": "10.244.7.7", "dst_port": 22, "state": "syn_only"},
            {"ts_start": T0 + 6, "src_ip": "10.244.1.10", "dst_ip": "10.244.2.3", "dst_port": 5432},
        ]
    )
    w = _windows(df)
    r = w.loc["shop/web-5d9c8f7b6-aaaaa"]
    assert r["flows"] == 5 and r["bytes_out_ext"] == 12000 and r["bytes_out_int"] == 2300
    assert r["ext_dsts"] == 2 and r["int_peers"] == 2 and r["dst_ports"] == 3
    assert r["max_ports_per_dst"] == 2
    assert r["failed_conns"] == 2 and r["failed_dsts"] == 2
    assert r["rejected_share"] == 0.2 and r["syn_only_share"] == 0.2
    assert r["new_ext_dsts"] == 2 and r["new_ext_bytes"] == 12000
    assert r["workload"] == "web" and not r["is_node"]
    # the second replica's edge to db:5432 was new in this window for the workload too
    assert w.loc["shop/web-5d9c8f7b6-bbbbb", "new_edges"] == 1
    assert {f for f in WINDOW_FEATURES if not f.startswith(("beacon_", "recent_"))} <= set(w.columns)


def test_control_plane_metadata_and_node_sources() -> None:
    s = Settings()
    a = "10.244.1.9"
    df = flows(
        [
            {"ts_start": T0 + 1, "src_ip": a, "dst_ip": "10.0.0.11", "dst_port": 2379},
            {"ts_start": T0 + 1, "src_ip": a, "dst_ip": "10.0.0.11", "dst_port": 10250},
            {"ts_start": T0 + 1, "src_ip": a, "dst_ip": "10.96.0.1", "dst_port": 443},
            {"ts_start": T0 + 1, "src_ip": a, "dst_ip": "169.254.169.254", "dst_port": 80},
            {"ts_start": T0 + 1, "src_ip": "10.0.0.11", "dst_ip": "169.254.169.254", "dst_port": 80},
        ]
    )
    w = _windows(df, s)
    r = w.loc["shop/web-5d9c8f7b6-aaaaa"]
    assert (r["cp_etcd"], r["cp_kubelet"], r["cp_api"], r["metadata_api"]) == (1, 1, 1, 1)
    node = w.loc["10.0.0.11"]
    assert node["is_node"] and node["metadata_api"] == 1


def test_dns_features_and_cluster_names_excluded() -> None:
    a = "10.244.1.9"
    tunnel = [
        {
            "ts_start": T0 + i * 0.1,
            "src_ip": a,
            "dst_ip": "10.96.0.10",
            "dst_port": 53,
            "proto": 17,
            "state": "udp",
            "dns_qname": f"{'x9q' * 5}{i:04d}k2j8.data.evil.example",
        }
        for i in range(30)
    ]
    internal = [
        {
            "ts_start": T0 + i * 0.1,
            "src_ip": "10.244.1.10",
            "dst_ip": "10.96.0.10",
            "dst_port": 53,
            "proto": 17,
            "state": "udp",
            "dns_qname": f"svc{i}.shop.svc.cluster.local",
        }
        for i in range(30)
    ]
    w = _windows(flows(tunnel + internal))
    t = w.loc["shop/web-5d9c8f7b6-aaaaa"]
    assert t["dns_queries"] == 30 and t["dns_names"] == 30 and t["dns_max_subdomains"] == 30
    assert t["dns_mean_len"] > 30 and t["dns_mean_entropy"] > 2.5
    assert w.loc["shop/web-5d9c8f7b6-bbbbb", "dns_max_subdomains"] == 0


def test_long_lived_connections() -> None:
    df = flows(
        [
            {
                "ts_start": T0 - 600,
                "ts_end": T0 + 1,
                "src_ip": "10.244.1.9",
                "dst_ip": "10.244.2.3",
                "first": True,
            },
            {  # an active-timeout record of a flow that started long before
                "ts_start": T0 + 2,
                "ts_end": T0 + 3,
                "src_ip": "10.244.1.9",
                "dst_ip": "10.244.2.3",
                "final": False,
                "first": False,
            },
            {  # a first sight (interim, reported a second after its start): not long-lived yet
                "ts_start": T0 + 4,
                "ts_end": T0 + 4.5,
                "src_ip": "10.244.1.9",
                "dst_ip": "10.244.2.3",
                "final": False,
                "first": True,
            },
        ]
    )
    w = _windows(df).loc["shop/web-5d9c8f7b6-aaaaa"]
    assert w["long_lived"] == 2
    assert w["flows"] == 2, "connections are counted by their first record"


def test_beacon_score_separates_regular_from_random() -> None:
    s = Settings()
    rng = np.random.default_rng(3)
    regular = [
        {
            "ts_start": T0 + 30.0 * i,
            "src_ip": "10.244.1.9",
            "dst_ip": "203.0.113.5",
            "dst_port": 443,
            "bytes_out": 512,
        }
        for i in range(20)
    ]
    noisy_t = np.sort(rng.uniform(0, 600, 20))
    noisy = [
        {
            "ts_start": T0 + t,
            "src_ip": "10.244.1.10",
            "dst_ip": "203.0.113.6",
            "dst_port": 443,
            "bytes_out": int(rng.integers(100, 50000)),
        }
        for t in noisy_t
    ]
    vocab = Vocab()
    p = _prepared(flows(regular + noisy), s, vocab, ws=T0 + 600)
    seen = SeenEdges(ttl_s=1e9, max_edges=100)
    novelty_features(p, edge_table(p, vocab), seen)
    out = beacon_features(p, ConnectionLog(horizon_s=3600, max_pairs=1000), seen, vocab, 6)
    out.index = p.keys["entity"]
    score = out["beacon_score"].to_dict()
    assert score["shop/web-5d9c8f7b6-aaaaa"] > 0.9
    assert score["shop/web-5d9c8f7b6-bbbbb"] < 0.7
    assert out.loc["shop/web-5d9c8f7b6-aaaaa", "beacon_conns"] == 20


def test_state_is_bounded_by_ttl_and_size_and_counts_evictions() -> None:
    from flowwarden.pipeline.detection.state import Baselines

    seen = SeenEdges(ttl_s=100.0, max_edges=3)
    hashes = np.array([11, 12, 13, 14, 15], dtype="uint64")
    seen.update(
        hashes, seen.positions(hashes), np.arange(5.0), np.array([0.0, 50, 150, 160, 170]), np.ones(5)
    )
    assert seen.expire(200.0) == 2 and seen.evicted == 2  # two older than the TTL
    assert len(seen) == 3 and np.isnan(seen.first_seen(np.array([11], dtype="uint64")))[0]
    more = np.array([16, 17], dtype="uint64")
    seen.update(more, seen.positions(more), np.zeros(2), np.array([190.0, 195.0]), np.ones(2))
    assert seen.expire(200.0) == 2 and len(seen) == 3  # the size limit keeps the freshest
    assert not np.isnan(seen.first_seen(np.array([17], dtype="uint64")))[0]

    base = Baselines(["flows"], half_life_s=3600, ttl_s=100, max_keys=2)
    base.update(
        pd.Series(["a", "b", "c"]), np.array([0.0, 150.0, 160.0]), 10.0, pd.DataFrame({"flows": [1, 2, 3]})
    )
    assert base.expire(200.0) == 1 and len(base) == 2 and base.evicted == 1
    got = base.lookup(pd.Series(["a", "b"]))
    assert np.isnan(got["n"].iloc[0]) and got["n"].iloc[1] == 1


def test_baseline_is_robust_to_one_outlier() -> None:
    from flowwarden.pipeline.detection.state import Baselines

    base = Baselines(["bytes_out_ext"], half_life_s=6 * 3600, ttl_s=1e9, max_keys=10)
    for i in range(100):
        base.update(pd.Series(["w"]), np.array([i * 10.0]), 10.0, pd.DataFrame({"bytes_out_ext": [1000.0]}))
    before = base.lookup(pd.Series(["w"]))["m_bytes_out_ext"].iloc[0]
    base.update(pd.Series(["w"]), np.array([1000.0]), 10.0, pd.DataFrame({"bytes_out_ext": [1e9]}))
    after = base.lookup(pd.Series(["w"]))["m_bytes_out_ext"].iloc[0]
    assert abs(before - np.log1p(1000.0)) < 1e-9
    assert after - before < 0.2  # one huge window moves the log-scale mean by ~1/n only


def test_vocabulary_ids_are_stable_and_decode() -> None:
    v = Vocab()
    a = v.encode(pd.Series(["x", "", "y", "x"], dtype="str"))
    b = v.encode(pd.Series(["y", "z"], dtype="str"))
    assert a.tolist()[1] == 0 and a[0] == a[3] and b[0] == a[2]
    assert v.decode(b).tolist() == ["y", "z"]
    assert v.hash_of(a)[0] == v.hash_of(a)[3] != v.hash_of(b)[1]


def test_a_long_transfer_is_one_connection_not_a_beacon() -> None:
    """A backup upload reports an interim record every 10 s with the same start: not periodic."""
    from flowwarden.pipeline.detection.engine import DetectionEngine

    upload = [
        {
            "ts_start": T0,
            "ts_end": T0 + 10.0 * (i + 1),
            "src_ip": "10.244.1.9",
            "dst_ip": "203.0.113.77",
            "dst_port": 443,
            "bytes_out": 5_000_000,
            "final": i == 29,
        }
        for i in range(30)
    ]
    regular = [
        {"ts_start": T0 + 10.0 * i, "src_ip": "10.244.1.10", "dst_ip": "203.0.113.78", "dst_port": 443}
        for i in range(30)
    ]
    engine = DetectionEngine(Settings(), inventory=INV)
    engine.process(flows(upload + regular).sort_values("ts_end", ignore_index=True))
    w = engine.flush().windows
    last = w.sort_values("window_start").groupby("entity").last()
    assert last.loc["shop/web-5d9c8f7b6-aaaaa", "beacon_conns"] == 0  # one connection: never scored
    assert (
        last["beacon_conns"].to_dict()["shop/web-5d9c8f7b6-bbbbb"] >= 20
    )  # 30 starts, some windows still open
    assert last["beacon_score"].to_dict()["shop/web-5d9c8f7b6-bbbbb"] > 0.9


def test_baseline_does_not_depend_on_how_many_windows_close_together() -> None:
    """Three windows folded in one call learn what three calls of one window each learn."""
    from flowwarden.pipeline.detection.state import Baselines

    rng = np.random.default_rng(5)
    keys = pd.Series(["a", "b", "a", "a", "b", "a"])  # "a" has two replicas in window 10
    ws = np.array([10.0, 10.0, 0.0, 20.0, 20.0, 10.0])
    vals = pd.DataFrame({"flows": rng.integers(1, 1000, len(keys)).astype(float)})

    together = Baselines(["flows"], half_life_s=60, ttl_s=1e9, max_keys=10)
    together.update(keys, ws, 10.0, vals)
    one_by_one = Baselines(["flows"], half_life_s=60, ttl_s=1e9, max_keys=10)
    for w in (0.0, 10.0, 20.0):
        sel = ws == w
        one_by_one.update(keys[sel].reset_index(drop=True), ws[sel], 10.0, vals[sel].reset_index(drop=True))

    got, want = together.table.sort_index(), one_by_one.table.sort_index()
    pd.testing.assert_frame_equal(got, want)
    assert got.loc["a", "n"] == 4 and got.loc["a", "first"] == 0 and got.loc["a", "last"] == 30
    # "b": two windows in one call are two steps (the second moves the mean halfway, 1/n), not
    # one step over their average (which would leave a deviation of 0).
    x1, x2 = np.log1p(vals["flows"].to_numpy()[[1, 4]])
    b = got.loc["b"]
    assert np.isclose(b["m_flows"], (x1 + x2) / 2)
    assert np.isclose(b["d_flows"], abs(x2 - x1) / 2) and x1 != x2
