"""What the lab showed missing, detector by detector: each fires on its lab episode's shape and
stays quiet on its hard negative (literal windows), then end to end through the engine."""

from __future__ import annotations

from typing import Any

import numpy as np

from flowwarden import attack
from flowwarden.kube import PodInventory
from flowwarden.pipeline.detection.detectors import DETECTORS, Context
from flowwarden.pipeline.detection.engine import BASELINE_FEATURES, DetectionEngine
from flowwarden.pipeline.detection.features import DETAIL_COLUMNS
from flowwarden.pipeline.detection.state import Baselines
from flowwarden.pipeline.runtime.offline import detect_flows
from flowwarden.records import DNS_AGGREGATES, FLOW_DEFAULTS, WINDOW_COLUMNS
from flowwarden.settings import Settings
from tests.unit.flowkit import T0, flows, pod, windows_frame


def _ctx(rows: list[dict[str, Any]], memory_since: float = 0.0) -> Context:
    """Windows at t=5000 with the detail columns; the engine's memory starts at ``memory_since``."""
    w = windows_frame(rows, [*WINDOW_COLUMNS, *DETAIL_COLUMNS], beacon_interval=10.0)
    base = Baselines(list(BASELINE_FEATURES), half_life_s=3600, ttl_s=1e9, max_keys=100)
    ent = base.lookup(w["entity"]).reset_index(drop=True)
    ctx = Context(w, ent, ent.copy(), Settings())
    ctx.memory_since = memory_since
    return ctx


def _score(name: str, rows: list[dict[str, Any]], memory_since: float = 0.0) -> np.ndarray:
    return DETECTORS[name]().score(_ctx(rows, memory_since))


# ------------------------------------------------------------------ brute force


HYDRA = {
    "auth_sessions": 20,
    "auth_hosts": 2,
    "auth_port": 22,
    "auth_session_bytes": 2800,
    "auth_edge_age": 240,
}


def test_brute_force_many_short_sessions_on_few_hosts_over_a_young_edge() -> None:
    rows: list[dict[str, Any]] = [
        HYDRA,
        {**HYDRA, "auth_edge_age": 4990},  # the workload's own database clients, known since the start
        {**HYDRA, "auth_hosts": 12},  # many hosts: a sweep (fan_out / port_scan)
        {**HYDRA, "auth_session_bytes": 2e6},  # real sessions carrying data, not login attempts
        {**HYDRA, "auth_sessions": 4},  # a few logins
        {**HYDRA, "is_node": True, "pod": "", "entity": "10.0.0.11"},  # a kubelet and the API server
    ]
    s = _score("brute_force", rows)
    assert s[0] > 0.8 and s[1:].tolist() == [0.0] * 5
    assert _score("brute_force", [HYDRA], memory_since=4900.0)[0] == 0  # still learning
    det = DETECTORS["brute_force"]
    assert det.kind == "lateral_movement" and det.technique == "T1110"
    assert attack.tactic_name(det.technique) == "Credential Access"


def test_brute_force_thresholds_are_settings_with_ranges() -> None:
    from flowwarden.errors import ConfigError
    from flowwarden.pipeline.detection.detectors import build_detectors

    s = Settings()
    s.pipeline.detectors = {"brute_force": {"min_sessions": 30}}
    det = {d.name: d for d in build_detectors(s)}["brute_force"]
    assert det.score(_ctx([HYDRA])).tolist() == [0.0]
    s.pipeline.detectors = {"brute_force": {"min_sessions": 1}}
    try:
        build_detectors(s)
    except ConfigError as exc:
        assert "min_sessions" in str(exc)
    else:
        raise AssertionError("min_sessions=1 accepted")


# ------------------------------------------------------------------ beaconing, DNS, bulk


def test_beaconing_needs_a_beacon_interval_not_a_burst_and_never_the_resolver() -> None:
    row = {"beacon_score": 0.95, "beacon_conns": 12, "beacon_peers": 1, "beacon_edge_age": 300}
    s = _score(
        "beaconing",
        [row, {**row, "beacon_interval": 0.2}, {**row, "is_resolver": True, "entity": "10.96.0.10"}],
    )
    assert s[0] > 0.9 and s[1] == 0 and s[2] == 0


def test_dns_tunnel_never_on_the_cluster_dns() -> None:
    tunnel = {"dns_max_subdomains": 290, "dns_mean_len": 70, "dns_mean_entropy": 4.2, "dns_queries": 300}
    s = _score("dns_tunnel", [tunnel, {**tunnel, "is_resolver": True, "entity": "10.96.0.10"}])
    assert s[0] > 0.9 and s[1] == 0


def test_bulk_egress_staged_upload_even_while_learning_but_not_a_cronjobs_next_run() -> None:
    staged = {"bytes_out_ext": 30e6, "young_ext_bytes": 30.004e6, "young_ext_age": 40, "young_ext_prior": 4e3}
    rows: list[dict[str, Any]] = [
        staged,
        {**staged, "young_ext_repeat": 1},  # the workload's previous pod uploaded there
        {**staged, "young_ext_prior": 9e6, "young_ext_bytes": 39e6},  # a steady upload since it began
        {**staged, "young_ext_age": 0, "young_ext_prior": 0},  # first contact in the engine's first minute
        {**staged, "is_resolver": True},
    ]
    s = _score("bulk_egress", rows, memory_since=4980.0)  # 20 s of memory: learning
    assert s[0] > 0.7 and s[1:].tolist() == [0.0] * 4
    # After learning, an address new to the cluster needs no staging, but a repeat stays quiet.
    late = [{**staged, "young_ext_prior": 9e6}, {**staged, "young_ext_repeat": 1}]
    assert (_score("bulk_egress", late) > 0).tolist() == [True, False]
    assert (_score("new_destination_volume", late) > 0).tolist() == [True, False]


# ------------------------------------------------------------------ end to end

ATTACKER = "10.244.1.13"
PODS = [
    pod("frontend-6b9f8d7c5-abcde", ATTACKER, owner=("ReplicaSet", "frontend-6b9f8d7c5")),
    pod("checkout-7f6d5c4b3-pq9rs", "10.244.1.11", owner=("ReplicaSet", "checkout-7f6d5c4b3")),
    pod("coredns-7db6d8ff4d-x1", "10.244.0.5", ns="kube-system", owner=("ReplicaSet", "coredns-7db6d8ff4d")),
]
INV = PodInventory.from_dict({"items": PODS})


def _background(t0: float, t1: float) -> list[dict[str, Any]]:
    """The frontend's own work and a scraper-like internal poll: regular, known, benign."""
    rows = []
    for t in np.arange(t0, t1, 5.0):
        rows.append({"ts_start": t, "src_ip": ATTACKER, "dst_ip": "10.244.1.11", "dst_port": 8080})
        rows.append({"ts_start": t + 1, "src_ip": "10.244.1.11", "dst_ip": "203.0.113.10", "dst_port": 443})
    return rows


def _run(rows: list[dict[str, Any]]) -> list[Any]:
    keys = {k for r in rows for k in r if k in FLOW_DEFAULTS}
    df = flows([{**{k: FLOW_DEFAULTS[k] for k in keys}, **r} for r in rows])
    return detect_flows(df, settings=Settings(), inventory=INV, keep_windows=False).alerts


def test_engine_brute_force_on_the_attacking_pod() -> None:
    rows = _background(T0, T0 + 400)
    # hydra, 4 tasks, two hosts: ~2 logins a second, each a short SSH session.
    for i in range(40):
        t = T0 + 300 + 0.5 * i
        rows.append(
            {
                "ts_start": t,
                "ts_end": t + 0.9,
                "src_ip": ATTACKER,
                "src_port": 40000 + i,
                "dst_ip": "10.0.0.11" if i % 2 else "10.0.0.12",
                "dst_port": 22,
                "bytes_out": 2800,
                "bytes_in": 3200,
            }
        )
    # The pod's own database session in the same window: never a target.
    rows.append(
        {
            "ts_start": T0 + 250,
            "ts_end": T0 + 305,
            "src_ip": ATTACKER,
            "dst_ip": "10.244.1.11",
            "dst_port": 5432,
        }
    )
    alerts = _run(rows)
    bf = [a for a in alerts if a.detector == "brute_force"]
    assert bf and {a.entity.pod for a in bf} == {"frontend-6b9f8d7c5-abcde"}
    assert set(bf[0].targets) <= {"10.0.0.11", "10.0.0.12"} and bf[0].target_ports == [22]
    assert bf[0].technique == "T1110" and bf[0].tactic == "Credential Access"
    assert {a.detector for a in alerts} <= {"brute_force", "fan_out"}


def test_engine_jittered_beacon_to_a_new_address_but_not_the_steady_saas_check() -> None:
    rng = np.random.default_rng(3)
    rows = _background(T0, T0 + 700)
    t = T0 + 300.0
    for _ in range(24):  # small POSTs every 10 s ± 40 % for four minutes
        rows.append(
            {
                "ts_start": t,
                "src_ip": ATTACKER,
                "dst_ip": "198.51.100.66",
                "dst_port": 80,
                "bytes_out": int(rng.integers(690, 830)),
                "bytes_in": 620,
            }
        )
        t += 10.0 * (1 + rng.uniform(-0.4, 0.4))
    alerts = _run(rows)
    assert [(a.detector, a.entity.pod) for a in alerts] == [("beaconing", "frontend-6b9f8d7c5-abcde")]
    assert alerts[0].targets == ["198.51.100.66"]


def _dns(t: float, src: str, dst: str, sport: int, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"ts_start": t, "src_ip": src, "src_port": sport, "dst_ip": dst, "dst_port": 53}
    row.update({c: FLOW_DEFAULTS[c] for c in DNS_AGGREGATES}, proto=17, state="udp", bytes_out=9000)
    row.update(kw)
    return row


def test_engine_dns_tunnel_on_the_querying_pod_never_on_the_cluster_dns() -> None:
    rows = _background(T0, T0 + 400)
    for k in range(4):  # iodine: one socket, a record every 10 s with ~80 queries
        agg = dict(
            dns_qname=f"x{k}aaaa.t.attacker.example",
            dns_queries=80,
            dns_names=80,
            dns_name_max_len=110,
            dns_name_mean_len=96.0,
            dns_label_entropy=4.4,
            dns_top_domain="attacker.example",
            dns_top_domain_names=80,
            dns_qtypes="NULL",
        )
        t = T0 + 300 + 10 * k
        first = k == 0
        rows.append({**_dns(t, ATTACKER, "10.96.0.10", 41000, **agg), "first": first, "final": k == 3})
        # The resolver (service address and its pod) forwards the same queries upstream.
        rows.append(_dns(t + 0.1, "10.96.0.10", "198.51.100.66", 53000 + k, **agg))
        rows.append(_dns(t + 0.2, "10.244.0.5", "198.51.100.66", 54000 + k, **agg))
    alerts = _run(rows)
    tunnel = [a for a in alerts if a.detector == "dns_tunnel"]
    assert [a.entity.pod for a in tunnel] == ["frontend-6b9f8d7c5-abcde"]
    assert tunnel[0].evidence["domain"] == "attacker.example"
    assert not [a for a in alerts if a.entity.ip in ("10.96.0.10", "10.244.0.5")]


def test_engine_staged_bulk_upload_inside_the_first_minute_alerts() -> None:
    """The lab's upload: a few KB to a new address, 40 s later 30 MB to it; the engine
    started 5 s before the first contact (cold start, still learning)."""
    rows = _background(T0, T0 + 120)
    rows.append(
        {
            "ts_start": T0 + 5,
            "src_ip": ATTACKER,
            "dst_ip": "198.51.100.77",
            "dst_port": 443,
            "bytes_out": 3000,
        }
    )
    for k in range(4):  # the upload's records: 3 MB/s
        rows.append(
            {
                "ts_start": T0 + 45,
                "ts_end": T0 + 50 + 10 * k,
                "src_ip": ATTACKER,
                "src_port": 45000,
                "dst_ip": "198.51.100.77",
                "dst_port": 443,
                "bytes_out": 30_000_000,
                "bytes_in": 60_000,
                "first": k == 0,
                "final": k == 3,
            }
        )
    alerts = _run(rows)
    bulk = [a for a in alerts if a.detector == "bulk_egress"]
    assert [a.entity.pod for a in bulk] == ["frontend-6b9f8d7c5-abcde"]
    assert bulk[0].targets == ["198.51.100.77"] and bulk[0].window_start.timestamp() < T0 + 60


def test_engine_cronjob_next_runs_are_silent_when_the_first_ran_while_learning() -> None:
    """The lab's backup: a new Job pod every 4 minutes uploads a dump to the same object store."""
    runs = [f"backup-2993945{i}-x{i}xxx" for i in range(4)]
    inv = PodInventory.from_dict(
        {
            "items": [
                *PODS,
                *(
                    pod(name, f"10.244.2.{40 + i}", ns="data", owner=("Job", name.rsplit("-", 1)[0]))
                    for i, name in enumerate(runs)
                ),
            ]
        }
    )
    rows = _background(T0, T0 + 960)
    for i in range(len(runs)):
        t = T0 + 90 + 240 * i  # the first run after the engine's first minute
        rows += [
            {
                "ts_start": t,
                "ts_end": t + 2,
                "src_ip": f"10.244.2.{40 + i}",
                "dst_ip": "203.0.113.20",
                "dst_port": 443,
                "bytes_out": 8_000_000,
                "bytes_in": 20_000,
            }
        ]
    df = flows(rows).sort_values("ts_end", kind="stable")
    # Streamed in 5 s batches, as the live pipeline sees it: early firing scores open windows too.
    eng = DetectionEngine(Settings(), inventory=inv)
    alerts = []
    for _, batch in df.groupby(np.floor(df["ts_end"].to_numpy() / 5.0), sort=True):
        alerts += eng.process(batch).alerts
    alerts += eng.flush().alerts
    assert {a.entity.pod for a in alerts} == {runs[0]}, [(a.detector, a.entity.pod) for a in alerts]


def _two_replicas_upload_to_one_address() -> tuple[PodInventory, list[dict[str, Any]]]:
    """Two frontend replicas with background traffic; each uploads 8 MB to 198.51.100.77,
    the second four minutes after the first."""
    replicas = [
        pod(f"frontend-6b9f8d7c5-r{i}", f"10.244.1.{30 + i}", owner=("ReplicaSet", "frontend-6b9f8d7c5"))
        for i in range(2)
    ]
    inv = PodInventory.from_dict({"items": [*PODS, *replicas]})
    rows = _background(T0, T0 + 900)
    for i in range(2):
        src = f"10.244.1.{30 + i}"
        rows += [
            {"ts_start": t, "src_ip": src, "dst_ip": "10.244.1.11", "dst_port": 8080}
            for t in np.arange(T0, T0 + 900, 7.0)
        ]
        t = T0 + 500 + 240 * i
        rows.append(
            {
                "ts_start": t,
                "ts_end": t + 2,
                "src_ip": src,
                "dst_ip": "198.51.100.77",
                "dst_port": 443,
                "bytes_out": 8_000_000,
            }
        )
    return inv, rows


def test_engine_an_alerted_upload_keeps_its_address_new_for_the_workloads_other_pods() -> None:
    """Out of learning, an exfiltration alert is no precedent: the next replica sending to the
    same address is alerted too (only a person's --benign makes it the workload's normal)."""
    inv, rows = _two_replicas_upload_to_one_address()
    alerts = detect_flows(flows(rows), settings=Settings(), inventory=inv, keep_windows=False).alerts
    assert {a.entity.pod for a in alerts} == {"frontend-6b9f8d7c5-r0", "frontend-6b9f8d7c5-r1"}, [
        (a.detector, a.entity.pod) for a in alerts
    ]


def test_engine_resolve_benign_makes_the_upload_the_workloads_normal_malicious_keeps_it_new() -> None:
    inv, rows = _two_replicas_upload_to_one_address()
    df = flows(rows).sort_values("ts_end", kind="stable")
    cut = T0 + 600  # after the first replica's upload, before the second's

    def run(benign: bool) -> set[str]:
        eng = DetectionEngine(Settings(), inventory=inv)
        first = eng.process(df[df["ts_end"] < cut]).alerts
        assert {a.entity.pod for a in first} == {"frontend-6b9f8d7c5-r0"}
        for a in first:
            assert eng.resolve(a, benign=benign) == 1
        later = eng.process(df[df["ts_end"] >= cut]).alerts + eng.flush().alerts
        return {a.entity.pod for a in later}

    assert run(benign=True) == set()
    assert run(benign=False) == {"frontend-6b9f8d7c5-r1"}
