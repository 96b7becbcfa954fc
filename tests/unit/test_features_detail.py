"""Features the lab showed missing: DNS aggregates and the resolver, short authentication
sessions, jitter-tolerant periodicity, a CronJob's next run (from literal flow frames)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from flowwarden.kube import PodInventory
from flowwarden.pipeline.detection.connections import ConnectionLog
from flowwarden.pipeline.detection.enrich import enrich_flows
from flowwarden.pipeline.detection.features import (
    Prepared,
    auth_features,
    beacon_features,
    detail_features,
    edge_table,
    novelty_features,
    prepare,
    to_lean,
    window_features,
)
from flowwarden.pipeline.detection.state import SeenEdges, Vocab
from flowwarden.records import DNS_AGGREGATES, FLOW_DEFAULTS
from flowwarden.settings import Settings
from tests.unit.flowkit import T0, flows, pod

DNS = "10.96.0.10"
INV = PodInventory.from_dict(
    {
        "items": [
            pod("web-5d9c8f7b6-aaaaa", "10.244.1.9"),
            pod("web-5d9c8f7b6-bbbbb", "10.244.1.10"),
            pod("backup-1-xxxxx", "10.244.2.40", ns="data", owner=("Job", "backup-1")),
            pod("backup-2-yyyyy", "10.244.2.41", ns="data", owner=("Job", "backup-2")),
            pod(
                "coredns-7db6d8ff4d-abcde",
                "10.244.0.5",
                ns="kube-system",
                owner=("ReplicaSet", "coredns-7db6d8ff4d"),
            ),
        ]
    }
)


def _prepared(df: pd.DataFrame, vocab: Vocab, settings: Settings | None = None) -> Prepared:
    s = settings or Settings()
    e = enrich_flows(df, INV, s)
    lean = to_lean(e, vocab, s, INV.node_ips)
    lean["window_start"] = np.floor(lean["ts_end"] / 10) * 10
    p = prepare(lean, vocab, 10.0)
    assert p is not None
    return p


def _dns_row(t: float, src: str, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"ts_start": t, "src_ip": src, "dst_ip": DNS, "dst_port": 53, "proto": 17}
    row.update({c: FLOW_DEFAULTS[c] for c in DNS_AGGREGATES}, state="udp")
    row.update(kw)
    return row


def test_dns_aggregates_count_every_query_of_a_record_and_skip_the_resolver() -> None:
    tunnel = dict(
        dns_qname="aaaa.t.attacker.example",
        dns_queries=300,
        dns_names=300,
        dns_name_mean_len=70.0,
        dns_label_entropy=4.2,
        dns_top_domain="attacker.example",
        dns_top_domain_names=290,
    )
    df = flows(
        [
            _dns_row(T0 + 1, "10.244.1.9", **tunnel),  # one socket, 300 queries
            _dns_row(T0 + 2, "10.244.1.10", dns_qname="api.stripe.com"),  # a plain lookup
            _dns_row(T0 + 3, "10.244.1.10", dns_qname="web.shop.svc.cluster.local"),
            # The resolver forwards the tunnel upstream: its own flows carry the same names.
            {**_dns_row(T0 + 4, DNS, **tunnel), "dst_ip": "198.51.100.66"},
            {**_dns_row(T0 + 5, "10.244.0.5", **tunnel), "dst_ip": "198.51.100.66"},
        ]
    )
    vocab = Vocab()
    p = _prepared(df, vocab)
    w = pd.concat([p.keys, window_features(p)], axis=1).set_index("entity")
    pod_a = w.loc["shop/web-5d9c8f7b6-aaaaa"]
    assert pod_a["dns_queries"] == 300 and pod_a["dns_names"] == 300
    assert pod_a["dns_max_subdomains"] == 290
    assert pod_a["dns_mean_len"] == 70.0 and pod_a["dns_mean_entropy"] == 4.2
    pod_b = w.loc["shop/web-5d9c8f7b6-bbbbb"]
    assert pod_b["dns_queries"] == 2 and pod_b["dns_names"] == 2
    assert pod_b["dns_max_subdomains"] == 1  # cluster.local is never a tunnel domain
    for resolver in (DNS, "kube-system/coredns-7db6d8ff4d-abcde"):
        assert w.loc[resolver, "dns_queries"] == 0 and w.loc[resolver, "dns_max_subdomains"] == 0
    nov, e, _ = novelty_features(p, edge_table(p, vocab), SeenEdges(ttl_s=1e9, max_edges=100))
    beacon = beacon_features(
        p, ConnectionLog(horizon_s=600, max_pairs=100), SeenEdges(ttl_s=1, max_edges=1), vocab, 6
    )
    detail = pd.concat([p.keys, detail_features(p, e, nov, beacon, Settings())], axis=1).set_index("entity")
    assert (
        detail.loc[DNS, "is_resolver"] and detail.loc["kube-system/coredns-7db6d8ff4d-abcde", "is_resolver"]
    )
    assert not detail.loc["shop/web-5d9c8f7b6-aaaaa", "is_resolver"]


def _ssh(t: float, dst: str, sport: int, **kw: Any) -> dict[str, Any]:
    row = {"ts_start": t, "ts_end": t + 0.8, "src_ip": "10.244.1.9", "dst_ip": dst, "dst_port": 22}
    row.update(src_port=sport, bytes_out=2800, bytes_in=3200)
    row.update(kw)
    return row


def test_auth_sessions_count_short_ended_sessions_per_edge() -> None:
    rows = [_ssh(T0 + 0.3 * i, "10.0.0.11" if i % 2 else "10.0.0.12", 40000 + i) for i in range(12)]
    # The same session's interim record (first=True, final=False) does not count twice.
    rows += [{**_ssh(T0 + 0.1, "10.0.0.12", 40000), "final": False}]
    rows += [_ssh(T0 + 5, "10.0.0.13", 50000 + i, state="rejected", bytes_in=0) for i in range(10)]  # refused
    # A pool: long sessions to the database are no login attempts.
    rows += [
        {
            **_ssh(T0 - 100 + i, "10.244.2.3", 51000 + i),
            "ts_end": T0 + 9,
            "dst_port": 5432,
            "src_ip": "10.244.1.10",
        }
        for i in range(10)
    ]
    vocab = Vocab()
    p = _prepared(flows(rows), vocab)
    _, e, _ = novelty_features(p, edge_table(p, vocab), SeenEdges(ttl_s=1e9, max_edges=100))
    out = pd.concat([p.keys, auth_features(p, e, [22, 5432])], axis=1).set_index("entity")
    a = out.loc["shop/web-5d9c8f7b6-aaaaa"]
    assert a["auth_sessions"] == 12 and a["auth_hosts"] == 2 and a["auth_port"] == 22
    assert a["auth_session_bytes"] == (12 * 2800 + 2800) / 12 and a["auth_edge_age"] == 0
    assert out.loc["shop/web-5d9c8f7b6-bbbbb", "auth_sessions"] == 0


def _beacon_score(times: np.ndarray, sizes: np.ndarray) -> tuple[float, float]:
    rows = [
        {
            "ts_start": T0 + t,
            "src_ip": "10.244.1.9",
            "dst_ip": "198.51.100.66",
            "dst_port": 80,
            "bytes_out": int(b),
        }
        for t, b in zip(times, sizes, strict=True)
    ]
    vocab = Vocab()
    df = flows(rows)
    df["ts_end"] = T0 + float(times.max()) + 0.1  # one window holds them all
    p = _prepared(df, vocab)
    seen = SeenEdges(ttl_s=1e9, max_edges=100)
    out = beacon_features(p, ConnectionLog(horizon_s=3600, max_pairs=100), seen, vocab, 6, 0.5)
    return float(out["beacon_score"].iloc[0]), float(out["beacon_interval"].iloc[0])


def test_beacon_score_holds_under_jitter_but_not_for_random_traffic() -> None:
    rng = np.random.default_rng(7)
    sizes = rng.integers(690, 830, 12)
    for jitter in (0.0, 0.2, 0.4, 0.5):
        gaps = 10.0 * (1 + rng.uniform(-jitter, jitter, 11))
        score, interval = _beacon_score(np.r_[0.0, np.cumsum(gaps)], sizes)
        assert score >= 0.85, (jitter, score)
        assert 6.0 <= interval <= 14.0
    poisson = np.r_[0.0, np.cumsum(rng.exponential(10.0, 11))]
    assert _beacon_score(poisson, sizes)[0] < 0.7
    # Regular times, but sizes all over the place: not a heartbeat.
    assert _beacon_score(np.arange(12) * 10.0, rng.integers(100, 50_000, 12))[0] < 0.8


def _upload(t: float, src: str, nbytes: int) -> dict[str, Any]:
    return {"ts_start": t, "src_ip": src, "dst_ip": "203.0.113.20", "dst_port": 443, "bytes_out": nbytes}


def test_a_cronjobs_next_run_repeats_its_workload_but_one_pods_own_first_contact_does_not() -> None:
    vocab = Vocab()
    seen = SeenEdges(ttl_s=1e9, max_edges=1000)
    inv = PodInventory.from_dict(
        {
            "items": [
                pod("backup-29939455-aaaaa", "10.244.2.40", ns="data", owner=("Job", "backup-29939455")),
                pod("backup-29939459-bbbbb", "10.244.2.41", ns="data", owner=("Job", "backup-29939459")),
            ]
        }
    )

    def step(rows: list[dict[str, Any]]) -> pd.DataFrame:
        s = Settings()
        lean = to_lean(enrich_flows(flows(rows), inv, s), vocab, s, inv.node_ips)
        lean["window_start"] = np.floor(lean["ts_end"] / 10) * 10
        p = prepare(lean, vocab, 10.0)
        assert p is not None
        from flowwarden.pipeline.detection.features import commit_edges

        nov, _, edges = novelty_features(p, edge_table(p, vocab), seen)
        commit_edges(edges, seen)
        return pd.concat([p.keys, nov], axis=1).set_index("entity")

    first = step([_upload(T0 + 1, "10.244.2.40", 4_000), _upload(T0 + 5, "10.244.2.40", 9_000_000)])
    assert first.loc["data/backup-29939455-aaaaa", "young_ext_repeat"] == 0  # its own first contact
    later = step([_upload(T0 + 241, "10.244.2.40", 2_000)])
    assert later.loc["data/backup-29939455-aaaaa", "young_ext_repeat"] == 0  # the same pod: still its own
    nxt = step([_upload(T0 + 242, "10.244.2.41", 9_000_000)])
    row = nxt.loc["data/backup-29939459-bbbbb"]
    assert row["workload"] == "backup" and row["young_ext_repeat"] == 1  # the workload's previous run
