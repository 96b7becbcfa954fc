"""The labelled cluster-traffic simulator: schema, determinism, labels, inventory, hard negatives."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from flowwarden.cli import app
from flowwarden.errors import ConfigError
from flowwarden.labels import TECHNIQUES, Labels
from flowwarden.records import FLOW_SCHEMA, validate_flows
from flowwarden.settings import Settings, load_settings
from flowwarden.simulator import Simulation, iter_batches, simulate
from flowwarden.simulator.cluster import Cluster
from flowwarden.simulator.context import EXTERNALS

SETTINGS = Settings()
POD_NET = ipaddress.ip_network(SETTINGS.cluster.pod_cidrs[0])
FILES = ("flows.parquet", "labels.json", "inventory.json")


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return simulate(minutes=10, pods=100, seed=1)


@pytest.fixture(scope="module")
def benign() -> Simulation:
    return simulate(minutes=10, pods=60, seed=5, benign_only=True)


def _in_pod_net(ips: pd.Series) -> np.ndarray:
    return np.array([ipaddress.ip_address(ip) in POD_NET for ip in ips])


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# --------------------------------------------------------------------------- the CLI


def test_cli_writes_the_three_files_deterministically(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["simulate", "--minutes", "10", "--pods", "100", "--seed", "1"]
    a = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    # Another process with another hash seed: no set or dict order leaks into the output.
    cmd = [
        sys.executable,
        "-c",
        "from flowwarden.cli import main; main()",
        *args,
        "--out",
        str(tmp_path / "b"),
    ]
    b = subprocess.run(cmd, env={**os.environ, "PYTHONHASHSEED": "123"}, capture_output=True, timeout=120)
    c = runner.invoke(app, [*args[:-1], "2", "--out", str(tmp_path / "c")])
    assert a.exit_code == 0, a.output
    assert b.returncode == 0, b.stderr
    assert c.exit_code == 0
    assert "episodes" in a.output
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "flows.parquet").read_bytes() != (tmp_path / "c" / "flows.parquet").read_bytes()
    labels = Labels.load(tmp_path / "a" / "labels.json")
    assert {e.technique for e in labels.episodes} == set(TECHNIQUES)
    flows = pd.read_parquet(tmp_path / "a" / "flows.parquet")
    assert dict(flows.dtypes.astype(str)) == FLOW_SCHEMA
    inv = json.loads((tmp_path / "a" / "inventory.json").read_text())
    assert inv["kind"] == "List" and inv["items"]


def test_cli_rejects_an_unknown_technique_naming_the_valid_ones(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["simulate", "--minutes", "1", "--attacks", "port_scan,nope", "--out", str(tmp_path)]
    )
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError)
    assert "nope" in str(result.exception) and "dns_tunnel" in str(result.exception)
    assert not (tmp_path / "flows.parquet").exists()


# --------------------------------------------------------------------------- flows


def test_flows_have_the_schema_sorted_and_no_kubernetes_metadata(sim: Simulation) -> None:
    f = sim.flows
    assert dict(f.dtypes.astype(str)) == FLOW_SCHEMA
    validate_flows(f)
    assert np.all(np.diff(f["ts_end"].to_numpy()) >= 0)
    for col in (
        "direction",
        "src_namespace",
        "src_pod",
        "src_workload",
        "dst_namespace",
        "dst_pod",
        "dst_workload",
    ):
        assert (f[col] == "").all(), col
    t0, t1 = sim.start.timestamp(), sim.end.timestamp()
    assert f["ts_end"].min() >= t0 and f["ts_end"].max() <= t1
    assert len(f) == len(sim.flow_episode)
    assert (f["src_port"] >= 1024).all() and (f["dst_port"] > 0).all()
    assert (f["bytes_out"] > 0).all() and (f["pkts_out"] > 0).all()
    assert set(f["proto"]) == {6, 17}
    assert not (f["src_ip"] == f["dst_ip"]).any()  # loopback traffic is never on the wire
    per_pod_s = len(f) / (10 * 60 * 100)
    assert 0.5 < per_pod_s < 5, per_pod_s  # a realistic, pipeline-friendly volume
    assert set(f["state"]) >= {"closed", "established", "rejected", "syn_only", "udp"}


def test_same_seed_same_frame_different_seed_different(sim: Simulation) -> None:
    again = simulate(minutes=10, pods=100, seed=1)
    pd.testing.assert_frame_equal(sim.flows, again.flows)
    assert sim.labels == again.labels and sim.inventory == again.inventory
    other = simulate(minutes=10, pods=100, seed=2)
    assert len(other.flows) != len(sim.flows) or not other.flows.equals(sim.flows)


def test_interim_records_are_deltas_of_long_lived_connections(sim: Simulation) -> None:
    f = sim.flows
    interim = f[~f["final"]]
    assert len(interim) > 100
    # Long TCP connections, and the DNS tunnel's one socket (records every 10 s).
    assert set(interim["state"]) == {"established", "udp"}
    assert (interim.loc[interim["state"] == "udp", "dst_port"] == 53).all()
    # A connection's records share its 5-tuple and start; each carries only its own interval.
    key = ["src_ip", "src_port", "dst_ip", "dst_port", "ts_start"]
    per_conn = interim.groupby(key).size()
    assert per_conn.max() >= 50  # one record per 10 s over the whole 10 minutes
    assert (interim["ts_start"] < sim.start.timestamp()).any()  # opened before the run


def test_daily_cycle_shapes_the_request_rate() -> None:
    night = simulate(
        minutes=5, pods=60, seed=3, benign_only=True, start=datetime(2026, 11, 27, 3, tzinfo=UTC)
    )
    day = simulate(minutes=5, pods=60, seed=3, benign_only=True, start=datetime(2026, 11, 27, 15, tzinfo=UTC))

    def calls(s: Simulation) -> int:
        return int(((s.flows["dst_port"] == 8080) & s.flows["final"]).sum())

    assert calls(day) > 2 * calls(night)


# --------------------------------------------------------------------------- labels


def test_labels_list_every_technique_with_its_kind_and_mitre(sim: Simulation) -> None:
    eps = sim.labels.episodes
    assert sorted(e.technique for e in eps) == sorted(TECHNIQUES)
    for e in eps:
        assert e.mitre and e.kind in ("exfiltration", "lateral_movement")
        assert e.source.namespace not in ("kube-system", "monitoring", "flowwarden", "ingress")
        assert e.source.pod and e.source.workload and e.start < e.end
        assert e.targets


def test_every_episode_flow_matches_its_labels(sim: Simulation) -> None:
    f = sim.flows
    for i, e in enumerate(sim.labels.episodes):
        mine = f[sim.flow_episode == i]
        assert len(mine) > 0, e.technique
        assert (mine["src_ip"] == e.source.ip).all(), e.technique
        if e.technique == "dns_tunnel":
            assert mine["dns_qname"].str.endswith("." + e.targets[0]).all()
            assert mine["dns_qname"].str.len().mean() > 50
        else:
            assert mine["dst_ip"].isin(e.targets).all(), e.technique
        assert mine["ts_end"].min() >= e.start.timestamp() - 1e-3, e.technique
        assert mine["ts_end"].max() <= e.end.timestamp() + 5.0, e.technique


def test_attack_shapes(sim: Simulation) -> None:
    f = sim.flows
    by = {e.technique: f[sim.flow_episode == i] for i, e in enumerate(sim.labels.episodes)}
    scan = by["port_scan"]
    assert scan["dst_port"].nunique() >= 50 and scan["dst_ip"].nunique() <= 3
    assert scan["state"].isin(["rejected", "syn_only"]).mean() > 0.8
    sweep = by["ip_sweep"]
    assert sweep["dst_ip"].nunique() >= 30 and sweep["dst_port"].nunique() <= 2
    fan = by["fan_out"]
    assert fan["dst_ip"].nunique() >= 10 and fan["dst_port"].isin([22, 80, 8080]).all()
    assert (fan["state"] == "closed").all() and (fan["bytes_in"] > 0).all()
    cp = by["control_plane_access"]
    assert set(cp["dst_port"]) == {6443, 2379, 10250}
    assert (by["metadata_api"]["dst_ip"] == "169.254.169.254").all()
    assert by["bulk_exfiltration"]["bytes_out"].sum() > 100e6
    slow = by["slow_exfiltration"].sort_values("ts_start")
    gaps = np.diff(slow["ts_start"].to_numpy())
    # Jittered as C2 frameworks do (0-50 % of the sleep): regular, not metronomic.
    assert len(slow) >= 8 and 0.6 * np.median(gaps) <= gaps.min() and gaps.max() <= 1.6 * np.median(gaps)
    # The tunnel: one socket, its records carry the queries as aggregates (as the collector's do).
    tunnel = by["dns_tunnel"]
    assert tunnel["src_port"].nunique() == 1 and tunnel["first"].sum() == 1 and tunnel["final"].sum() == 1
    assert tunnel["dns_queries"].sum() >= 20 and (tunnel["dns_names"] == tunnel["dns_queries"]).all()
    assert tunnel["dns_top_domain"].nunique() == 1 and (tunnel["dns_name_mean_len"] > 40).all()
    assert (tunnel["dns_qname"].str.endswith(tunnel["dns_top_domain"].iloc[0])).all()
    # Exfiltration goes to addresses no benign flow ever touches.
    benign_dst = set(f.loc[sim.flow_episode == -1, "dst_ip"])
    assert not benign_dst & set(by["bulk_exfiltration"]["dst_ip"])
    assert not benign_dst & set(by["slow_exfiltration"]["dst_ip"])


def test_intensity_scales_the_attacks() -> None:
    def volume(intensity: float) -> tuple[float, int]:
        s = simulate(
            minutes=10, pods=60, seed=4, intensity=intensity, attacks=["bulk_exfiltration", "port_scan"]
        )
        by = {e.technique: s.flows[s.flow_episode == i] for i, e in enumerate(s.labels.episodes)}
        return float(by["bulk_exfiltration"]["bytes_out"].sum()), len(by["port_scan"])

    quiet, loud = volume(0.3), volume(3.0)
    assert loud[0] > 4 * quiet[0] and loud[1] > 4 * quiet[1]


def test_intensity_per_technique_and_the_address_plan_follow_the_settings() -> None:
    settings = load_settings(
        cluster={"node_ips": ["10.0.5.1", "10.0.5.2", "10.0.5.3"], "cluster_dns": ["10.96.0.53"]},
        control_plane={"api_server_port": 16443},
    )
    s = simulate(
        minutes=5, pods=40, seed=8, intensity={"port_scan": 0.3, "dns_tunnel": 3.0}, settings=settings
    )
    level = {e.technique: e.intensity for e in s.labels.episodes}
    assert level["port_scan"] == 0.3 and level["dns_tunnel"] == 3.0 and level["fan_out"] == 1.0
    f = s.flows
    assert {"10.0.5.1", "10.0.5.2", "10.0.5.3"} <= set(f.loc[f["dst_port"] == 16443, "dst_ip"])
    assert (f.loc[f["dns_qname"] != "", "dst_ip"] == "10.96.0.53").all()
    with pytest.raises(ConfigError, match="teleport"):
        simulate(minutes=1, pods=30, intensity={"teleport": 2.0})
    with pytest.raises(ConfigError, match="intensity"):
        simulate(minutes=1, pods=30, intensity=0)


def test_long_runs_repeat_techniques_from_distinct_sources() -> None:
    s = simulate(minutes=30, pods=80, seed=9, attacks=["port_scan", "bulk_exfiltration", "dns_tunnel"])
    eps = s.labels.episodes
    assert len(eps) == 9
    assert sorted({e.technique for e in eps}) == ["bulk_exfiltration", "dns_tunnel", "port_scan"]
    assert len({e.source.pod for e in eps}) == len(eps)
    assert max(e.end for e in eps).timestamp() - min(e.start for e in eps).timestamp() > 20 * 60


def test_attack_names_are_checked() -> None:
    with pytest.raises(ConfigError, match="valid: all, none, port_scan"):
        simulate(minutes=1, pods=30, attacks=["port_scan", "teleport"])
    assert simulate(minutes=2, pods=30, attacks="none").labels.episodes == []


# --------------------------------------------------------------------------- inventory


def test_inventory_is_kubectl_shaped_and_covers_every_pod_ip(sim: Simulation) -> None:
    items = json.loads(json.dumps(sim.inventory))["items"]
    kinds = {i["metadata"]["ownerReferences"][0]["kind"] for i in items}
    assert kinds >= {"ReplicaSet", "StatefulSet", "DaemonSet", "Job", "Node"}
    for it in items:
        assert {"name", "namespace", "labels", "creationTimestamp", "ownerReferences", "uid"} <= set(
            it["metadata"]
        )
        assert it["spec"]["nodeName"] and "hostNetwork" in it["spec"]
        assert it["status"]["podIP"] and it["status"]["podIPs"] == [{"ip": it["status"]["podIP"]}]
        ref = it["metadata"]["ownerReferences"][0]
        if ref["kind"] == "ReplicaSet":
            assert it["metadata"]["name"].startswith(ref["name"] + "-")
            assert ref["name"].rsplit("-", 1)[1] == it["metadata"]["labels"]["pod-template-hash"]
    # Every pod-network address in the flows belongs to a pod alive at that moment.
    spans: dict[str, list[tuple[float, float]]] = {}
    for it in items:
        if it["spec"]["hostNetwork"]:
            continue
        end = (
            _ts(it["metadata"]["deletionTimestamp"]) + 30 if "deletionTimestamp" in it["metadata"] else np.inf
        )
        spans.setdefault(it["status"]["podIP"], []).append((_ts(it["metadata"]["creationTimestamp"]), end))
    f = sim.flows
    for side in ("src_ip", "dst_ip"):
        sel = f[_in_pod_net(f[side]) & (sim.flow_episode == -1)]
        for ip, g in sel.groupby(side):
            assert ip in spans, f"{side} {ip} not in the inventory"
            lo, hi = g["ts_start"].to_numpy(), g["ts_end"].to_numpy()
            # The pipeline looks pods up by ts_start; a terminating pod has a grace period.
            covered = np.zeros(len(g), dtype=bool)
            for a, b in spans[ip]:
                covered |= (lo >= a - 1) & (hi <= b + 10)
            assert covered.all(), f"{side} {ip}: flows outside its pod's lifetime"
    # Attacks: only a sweep touches addresses no pod has, and nothing answers there.
    known = set(spans) | {i["status"]["podIP"] for i in items}
    attack = f[sim.flow_episode >= 0]
    sweep = [i for i, e in enumerate(sim.labels.episodes) if e.technique == "ip_sweep"]
    unknown = attack[_in_pod_net(attack["dst_ip"]) & ~attack["dst_ip"].isin(known)]
    assert np.isin(sim.flow_episode[unknown.index], sweep).all()
    assert len(unknown) and (unknown["state"] == "syn_only").all()
    assert attack["src_ip"].isin(known).all()
    # Every attack source is a pod of the inventory.
    names = {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items}
    assert all((e.source.namespace, e.source.pod) in names for e in sim.labels.episodes)


def test_rolling_deployment_replaces_pods_mid_run(sim: Simulation) -> None:
    items = sim.inventory["items"]
    t0, t1 = sim.start.timestamp(), sim.end.timestamp()
    catalog = [i for i in items if i["metadata"]["labels"].get("app") == "catalog"]
    gone = [i for i in catalog if "deletionTimestamp" in i["metadata"]]
    fresh = [i for i in catalog if t0 < _ts(i["metadata"]["creationTimestamp"]) < t1]
    assert gone and len(gone) == len(fresh)
    assert {i["status"]["podIP"] for i in gone}.isdisjoint({i["status"]["podIP"] for i in fresh})
    rs = {i["metadata"]["ownerReferences"][0]["name"] for i in catalog}
    assert len(rs) == 2  # the old and the new ReplicaSet
    # The new version opens a new edge: catalog -> redis.
    redis = {i["status"]["podIP"] for i in items if i["metadata"]["labels"].get("app") == "redis"}
    new_ips = {i["status"]["podIP"] for i in fresh}
    f = sim.flows
    assert (f["src_ip"].isin(new_ips) & f["dst_ip"].isin(redis)).any()


# --------------------------------------------------------------------------- hard negatives


def test_hard_negatives_are_present_and_unlabelled(benign: Simulation) -> None:
    f, items = benign.flows, benign.inventory["items"]
    assert benign.labels.episodes == [] and (benign.flow_episode == -1).all()
    ip_of = {i["metadata"]["name"]: i["status"]["podIP"] for i in items}
    prom = next(ip for name, ip in ip_of.items() if name.startswith("prometheus-"))
    scrapes = f[f["src_ip"] == prom]
    per_min = scrapes.groupby((scrapes["ts_start"] // 60).astype(int))["dst_ip"].nunique()
    assert per_min.median() > 50  # a huge fan-out, every minute
    job = [i for i in items if i["metadata"]["ownerReferences"][0]["kind"] == "Job"]
    assert job and job[0]["status"]["phase"] in ("Running", "Succeeded")
    backup = f[f["src_ip"] == job[0]["status"]["podIP"]]
    assert backup.loc[backup["dst_ip"] == EXTERNALS["objects"].ip, "bytes_out"].sum() > 1.5e9
    saas = f[f["dst_ip"] == EXTERNALS["crm"].ip]
    assert saas["src_ip"].nunique() >= 1
    for _, calls in saas.groupby("src_ip"):
        gaps = np.diff(np.sort(calls["ts_start"].to_numpy()))
        assert len(calls) >= 8 and abs(np.median(gaps) - 60) < 2 and gaps.std() < 1.0
    node_ips = {n for n in f.loc[f["dst_ip"] == "169.254.169.254", "src_ip"]}
    assert node_ips and not any(ipaddress.ip_address(ip) in POD_NET for ip in node_ips)
    assert (f["state"] == "rejected").sum() > 10  # a few benign refusals
    assert (f["dst_ip"] == "10.96.0.10").sum() > 100 and (f["dns_qname"] != "").sum() > 100


def test_hard_negatives_are_described_for_false_alert_reports(benign: Simulation, tmp_path: Path) -> None:
    kinds = {h["kind"] for h in benign.hard_negatives}
    assert kinds == {
        "scraper_fan_out",
        "backup_egress",
        "saas_beacon",
        "rolling_deployment",
        "node_metadata_api",
        "cronjob_repeat",
        "db_session_churn",
    }
    runs = [h for h in benign.hard_negatives if h["kind"] == "cronjob_repeat"]
    assert len(runs) >= 2 and len({h["source"]["pod"] for h in runs}) == len(runs)  # a new pod each run
    assert len({h["source"]["workload"] for h in runs}) == 1
    f = benign.flows
    for h in benign.hard_negatives:
        assert _ts(h["start"]) <= _ts(h["end"])
        if h["source"]["ip"]:  # the source really sends to its targets
            sent = f[f["src_ip"] == h["source"]["ip"]]
            nets = [ipaddress.ip_network(t) for t in h["targets"]]
            assert any(any(ipaddress.ip_address(d) in n for n in nets) for d in sent["dst_ip"].unique()), h
    benign.save(tmp_path)
    saved = json.loads((tmp_path / "hard_negatives.json").read_text())
    assert saved["hard_negatives"] == benign.hard_negatives


def test_the_backup_runs_at_night_when_the_run_covers_it() -> None:
    s = simulate(
        minutes=10, pods=40, seed=13, benign_only=True, start=datetime(2026, 11, 27, 1, 58, tzinfo=UTC)
    )
    (backup,) = [h for h in s.hard_negatives if h["kind"] == "backup_egress"]
    night = datetime(2026, 11, 27, 2, tzinfo=UTC).timestamp()
    assert night <= _ts(backup["start"]) <= night + 60


def test_short_runs_still_include_the_backup() -> None:
    s = simulate(minutes=3, pods=40, seed=11, benign_only=True)
    assert any(i["metadata"]["ownerReferences"][0]["kind"] == "Job" for i in s.inventory["items"])
    assert s.flows.loc[s.flows["dst_ip"] == EXTERNALS["objects"].ip, "bytes_out"].sum() > 5e8


# --------------------------------------------------------------------------- batches


def test_iter_batches_cut_the_same_flows_in_time_order() -> None:
    full = simulate(minutes=2, pods=40, seed=6)
    batches = list(iter_batches(minutes=2, pods=40, seed=6, batch_s=5.0))
    assert len(batches) >= 20
    for b in batches:
        assert len(b) and b["ts_end"].max() - b["ts_end"].min() < 5.0
    pd.testing.assert_frame_equal(pd.concat(batches, ignore_index=True), full.flows)
    with pytest.raises(ConfigError, match="batch_s"):
        next(iter_batches(minutes=1, batch_s=0))


def test_short_runs_and_small_clusters_still_hold_every_technique() -> None:
    s = simulate(minutes=1, pods=27, seed=12)
    counts = np.bincount(s.flow_episode + 1, minlength=len(s.labels.episodes) + 1)[1:]
    assert sorted(e.technique for e in s.labels.episodes) == sorted(TECHNIQUES)
    assert (counts > 0).all()
    assert all(e.end <= s.end and e.start >= s.start for e in s.labels.episodes)
    with pytest.raises(ConfigError, match="pods"):
        simulate(minutes=1, pods=5)
    with pytest.raises(ConfigError, match=r"cluster\.pod_cidrs"):
        simulate(minutes=1, pods=200, settings=load_settings(cluster={"pod_cidrs": ["10.244.0.0/22"]}))


def test_pod_addresses_are_reused_after_a_pod_is_gone() -> None:
    t0 = datetime(2026, 11, 27, 10, tzinfo=UTC).timestamp()
    cluster = Cluster(pods=40, rng=np.random.default_rng(1), start=t0, settings=SETTINGS)
    new = cluster.roll("shop/catalog", t0 + 60, 10.0)
    job = cluster.add_job_pod(namespace="data", cronjob="backup", created=t0 + 400, finished=t0 + 500)
    old_ips = {cluster.pods[p].ip for p in cluster.all_pod_indices("shop/catalog")} - {
        cluster.pods[p].ip for p in new
    }
    assert cluster.pods[job].ip in old_ips
    items = cluster.inventory(t0 + 600)["items"]
    owners = [i for i in items if i["status"]["podIP"] == cluster.pods[job].ip]
    first, second = sorted(owners, key=lambda i: i["metadata"]["creationTimestamp"])
    assert _ts(first["metadata"]["deletionTimestamp"]) < _ts(second["metadata"]["creationTimestamp"])
    assert second["status"]["phase"] == "Succeeded"
    finished = second["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]
    assert _ts(finished) == t0 + 500
    # A job created before any address is released gets a fresh one.
    early = cluster.add_job_pod(namespace="data", cronjob="backup", created=t0 + 10, finished=t0 + 20)
    assert cluster.pods[early].ip not in old_ips
