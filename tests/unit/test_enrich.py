"""Enrichment: IP to pod honouring lifetimes, workloads from owners, nodes, direction (flowwarden.kube)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from flowwarden.errors import ConfigError
from flowwarden.kube import FileSource, PodInventory, workload_of
from flowwarden.pipeline.detection.enrich import enrich_flows
from flowwarden.records import conform_flows
from flowwarden.settings import Settings
from tests.unit.flowkit import T0, flows, pod


def test_workload_from_owner_references() -> None:
    assert workload_of("web-5d9c8f7b6-x2k4p", [{"kind": "ReplicaSet", "name": "web-5d9c8f7b6"}]) == "web"
    assert workload_of("db-0", [{"kind": "StatefulSet", "name": "db"}]) == "db"
    assert workload_of("backup-29383920-abcde", [{"kind": "Job", "name": "backup-29383920"}]) == "backup"
    assert workload_of("agent-7x", [{"kind": "DaemonSet", "name": "agent"}]) == "agent"
    assert workload_of("bare", []) == "bare"


def test_reused_ip_maps_to_the_pod_alive_at_the_time() -> None:
    inv = PodInventory.from_dict(
        {
            "items": [
                pod(
                    "old-1",
                    "10.244.1.5",
                    owner=("ReplicaSet", "old-5d9c8f7b6"),
                    created="2027-01-15T08:00:00Z",
                    deleted="2027-01-15T08:01:00Z",
                ),
                pod(
                    "new-1",
                    "10.244.1.5",
                    owner=("ReplicaSet", "new-7f8g9h6j5"),
                    created="2027-01-15T08:05:00Z",
                ),
            ]
        }
    )
    t_old = pd.Timestamp("2027-01-15T08:00:30Z").timestamp()
    t_new = pd.Timestamp("2027-01-15T08:06:00Z").timestamp()
    t_gap = pd.Timestamp("2027-01-15T08:03:00Z").timestamp()
    got = inv.lookup(pd.Series(["10.244.1.5"] * 3), pd.Series([t_old, t_new, t_gap]))
    assert got["pod"].tolist() == ["old-1", "new-1", ""]
    assert got["workload"].tolist() == ["old", "new", ""]


def test_a_finished_job_pod_lets_go_of_its_ip_when_its_containers_finish() -> None:
    """A Succeeded pod stays listed with its IP until deleted; the IP is free from its finish."""
    job = pod(
        "backup-29383920-abcde",
        "10.244.1.9",
        owner=("Job", "backup-29383920"),
        created="2027-01-15T08:00:00Z",
    )
    job["status"] |= {
        "phase": "Succeeded",
        "initContainerStatuses": [{"state": {"terminated": {"finishedAt": "2027-01-15T08:00:10Z"}}}],
        "containerStatuses": [
            {"state": {"terminated": {"finishedAt": "2027-01-15T08:02:00Z"}}},
            {"state": {"running": {"startedAt": "2027-01-15T08:00:11Z"}}},
        ],
    }
    failed = pod("probe-1", "10.244.1.10", owner=None, created="2027-01-15T08:00:00Z")
    failed["status"] |= {"phase": "Failed", "containerStatuses": [{"state": {"terminated": {}}}]}
    inv = PodInventory.from_dict({"items": [job, failed]})
    at = [pd.Timestamp(f"2027-01-15T08:{m}Z").timestamp() for m in ("01:00", "02:20", "02:40", "30:00")]
    got = inv.lookup(pd.Series(["10.244.1.9"] * 4 + ["10.244.1.10"]), pd.Series([*at, at[-1]]))
    # Running, then the deletion grace after its last container, then free.
    assert got["workload"].tolist() == ["backup", "backup", "", "", "probe-1"]  # no finish time: kept


def test_host_network_pods_make_node_addresses() -> None:
    inv = PodInventory.from_dict(
        {
            "items": [
                pod(
                    "kube-proxy-abc",
                    "10.0.0.11",
                    ns="kube-system",
                    owner=("DaemonSet", "kube-proxy"),
                    host_network=True,
                ),
                pod("web-5d9c8f7b6-aaaaa", "10.244.1.9"),
            ]
        }
    )
    assert inv.node_ips == {"10.0.0.11": "node-1"}
    got = inv.lookup(pd.Series(["10.0.0.11", "10.244.1.9"]), pd.Series([T0, T0]))
    assert got["pod"].tolist() == ["", "web-5d9c8f7b6-aaaaa"]


def test_enrich_fills_metadata_and_direction() -> None:
    inv = PodInventory.from_dict(
        {
            "items": [
                pod("web-5d9c8f7b6-aaaaa", "10.244.1.9"),
                pod("db-0", "10.244.2.3", owner=("StatefulSet", "db")),
            ]
        }
    )
    df = flows(
        [
            {"ts_start": T0, "src_ip": "10.244.1.9", "dst_ip": "10.244.2.3"},
            {"ts_start": T0, "src_ip": "10.244.1.9", "dst_ip": "93.184.216.34"},
            {"ts_start": T0, "src_ip": "198.51.100.7", "dst_ip": "10.244.1.9"},
            {"ts_start": T0, "src_ip": "198.51.100.7", "dst_ip": "203.0.113.9"},
        ]
    )
    out = enrich_flows(df, inv, Settings())
    assert out["direction"].tolist() == ["internal", "egress", "ingress", "external"]
    assert out["src_workload"].tolist() == ["web", "web", "", ""]
    assert out["dst_workload"].tolist() == ["db", "", "web", ""]
    assert out["dst_namespace"].iloc[0] == "shop"
    # Looked-up metadata is categorical (codes over the inventory's strings: nothing copied
    # per flow); conforming to the schema gives the plain string column back.
    assert isinstance(out["src_pod"].dtype, pd.CategoricalDtype)
    assert str(conform_flows(out)["src_pod"].dtype) == str(df["src_pod"].dtype)
    assert conform_flows(out)["src_workload"].tolist() == ["web", "web", "", ""]


def test_inventory_file_reload_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "pods.json"
    path.write_text(json.dumps({"items": [pod("a-5d9c8f7b6-aaaaa", "10.244.1.1")]}))
    source = FileSource(path).start()
    inv = source.current()
    assert source.current() is inv
    path.write_text(json.dumps({"items": [pod("b-5d9c8f7b6-bbbbb", "10.244.1.2")]}))
    import os

    os.utime(path, ns=(1, 1))
    fresh = source.current()
    assert fresh is not inv and fresh.pods["pod"].tolist() == ["b-5d9c8f7b6-bbbbb"]
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        PodInventory.from_file(path)
    with pytest.raises(ConfigError, match=r"items\[0\].metadata.name"):
        PodInventory.from_dict({"items": [{"metadata": {}}]})
    with pytest.raises(ConfigError, match="podIP"):
        PodInventory.from_dict({"items": [pod("x", "not-an-ip")]})


def test_inventory_from_the_kubernetes_api_objects() -> None:
    """The API's typed pod list gives the same inventory as the kubectl JSON."""
    import kubernetes.client as k

    def v1pod(name: str, ip: str, owner: str, kind: str = "ReplicaSet", host: bool = False) -> k.V1Pod:
        return k.V1Pod(
            metadata=k.V1ObjectMeta(
                name=name,
                namespace="shop",
                owner_references=[k.V1OwnerReference(api_version="apps/v1", kind=kind, name=owner, uid="u")],
            ),
            spec=k.V1PodSpec(containers=[], node_name="node-1", host_network=host),
            status=k.V1PodStatus(pod_ip=ip, host_ip="10.0.0.11"),
        )

    inv = PodInventory.from_pod_list(
        k.V1PodList(
            items=[
                v1pod("web-5d9c8f7b6-aaaaa", "10.244.1.9", "web-5d9c8f7b6"),
                v1pod("agent-x", "10.0.0.11", "agent", kind="DaemonSet", host=True),
            ]
        )
    )
    got = inv.lookup(pd.Series(["10.244.1.9", "10.0.0.11"]), pd.Series([T0, T0]))
    assert got["workload"].tolist() == ["web", ""] and inv.node_ips == {"10.0.0.11": "node-1"}
