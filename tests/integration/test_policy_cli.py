"""``flowwarden policy recommend|simulate|diff`` through the CLI's entry point, on the store's
rollups (real PostgreSQL, and SQLite) and on a Parquet file of flows: alert edges left out and
listed, the declared format loaded by flowwarden's own loader, a stale policy's missing and
unused rules, a clear error for an empty range."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from flowwarden.cli import run
from flowwarden.errors import ExitCode
from flowwarden.policy import load_policy
from flowwarden.records import Alert, Entity
from flowwarden.store import Store

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(second=0, microsecond=0)
PODS = {  # name -> (namespace, workload, ip)
    "web": ("shop", "web", "10.244.1.5"),
    "cart": ("shop", "cart", "10.244.1.6"),
    "db": ("data", "db", "10.244.2.7"),
}


def pod(name: str) -> dict[str, Any]:
    ns, wl, ip = PODS[name]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{wl}-7c9f8d6b5-abcde",
            "namespace": ns,
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"app": wl, "pod-template-hash": "7c9f8d6b5"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": f"{wl}-7c9f8d6b5", "controller": True}],
        },
        "spec": {"nodeName": "node-a"},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "10.0.0.11"},
    }


def rollup(minute: datetime, src: str, dst: str, port: int, flows: int = 2) -> dict[str, Any]:
    """One rollup row; ``src``/``dst`` a pod name of PODS or an address."""
    row: dict[str, Any] = {"minute": minute, "node": "node-a", "direction": "egress", "dst_port": port}
    for side, who in (("src", src), ("dst", dst)):
        ns, wl, _ = PODS.get(who, ("", "", ""))
        row |= {f"{side}_namespace": ns, f"{side}_workload": wl, f"{side}_external": "" if ns else who}
    counts = dict.fromkeys(
        ("bytes", "bytes_out", "bytes_in", "packets", "rejected", "dns_queries", "dns_nxdomain"), 0
    )
    return row | counts | {"flows": flows}


OBSERVED = [  # (src, dst, port)
    ("web", "db", 5432),
    ("cart", "db", 5432),  # the open alert's edge
    ("web", "203.0.113.10", 443),
    ("198.51.100.40", "web", 443),
]


def open_alert() -> Alert:
    ns, wl, ip = PODS["cart"]
    return Alert(
        kind="lateral_movement",
        detector="new_edge",
        score=0.8,
        severity="high",
        entity=Entity(ip=ip, namespace=ns, workload=wl, pod="cart-7c9f8d6b5-abcde"),
        window_start=NOW - timedelta(hours=2),
        window_end=NOW - timedelta(hours=2) + timedelta(seconds=10),
        targets=[PODS["db"][2]],
        target_ports=[5432],
    )


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    """The pod inventory file."""
    path = tmp_path / "pods.json"
    path.write_text(json.dumps({"items": [pod(n) for n in PODS]}))
    return path


def seed(store: Store) -> None:
    rows = [
        rollup(NOW - timedelta(days=d, minutes=m), s, t, p)
        for d in (0, 3)
        for m in (5, 6)
        for s, t, p in OBSERVED
    ]
    rows.append(rollup(NOW - timedelta(minutes=7), "cart", "db", 0, 40))  # a scan rolled up: no rule
    store.add_rollups(pd.DataFrame(rows))
    store.upsert_alerts([open_alert()])


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    status = run([*args, "--output", "json"])
    out = capsys.readouterr().out
    return status, json.loads(out) if out.strip() else {}


@pytest.mark.parametrize("backend", ["pg_store", "sqlite_store"])
def test_recommend_simulate_diff_from_the_store(
    backend: str,
    request: pytest.FixtureRequest,
    cluster: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store: Store = request.getfixturevalue(backend)
    seed(store)
    monkeypatch.setenv("FLOWWARDEN_STORE__URL", store.engine.url.render_as_string(hide_password=False))
    out = tmp_path / "rec"
    inv = ["--inventory", str(cluster)]
    status, data = cli(capsys, "policy", "recommend", "--since", "7d", "--out", str(out), *inv)
    assert status == 0, data
    assert data["edges"] == 5  # the four observed and the rolled-up scan
    assert [(d["source"], d["target"], d["port"], d["why"]) for d in data["excluded_alert_edges"]] == [
        ("shop/cart", "data/db", 5432, "open")
    ]
    assert sorted(Path(f).name for f in data["files"]) == ["data.yaml", "shop.yaml"]

    status, sim = cli(capsys, "policy", "simulate", "--policies", str(out), "--since", "7d", *inv)
    assert status == 0
    assert sim["flows"] == 4 * 4 * 2 + 40 and sim["allowed"] == 3 * 4 * 2  # cart->db and the scan denied
    assert {d.split(" (")[0] for d in sim["denied"]["shop"]} == {
        "shop/cart -> data/db:5432/tcp|udp",
        "shop/cart -> data/db:0/tcp|udp",
    }

    # A deliberately stale deployed policy: db admits only an old client, web egress is gone.
    stale = {
        "kind": "List",
        "items": [
            {
                "kind": "NetworkPolicy",
                "metadata": {"name": "db", "namespace": "data"},
                "spec": {
                    "podSelector": {"matchLabels": {"app": "db"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "old-reporting"}}}]}],
                },
            }
        ],
    }
    deployed = tmp_path / "deployed.json"
    deployed.write_text(json.dumps(stale))
    status, diff = cli(capsys, "policy", "diff", "--deployed", str(deployed), "--since", "7d", *inv)
    assert status == 0
    assert any(d.startswith("shop/web -> data/db:5432") for d in diff["denied"]["shop"])  # missing
    assert diff["unused"] == ["data/db#ingress[0]"]

    status, data = cli(
        capsys, "policy", "recommend", "--since", "7d", "--format", "declared", "--out", str(out), *inv
    )
    assert status == 0
    policy = load_policy(out / "flowwarden-policy.yaml")
    assert policy.namespaces["data"].workloads["db"].ingress is not None
    evidence = json.loads((out / "flowwarden-policy.evidence.json").read_text())
    assert evidence["excluded_alert_edges"][0]["alert"] == open_alert().id


def test_an_empty_range_is_a_clear_error(
    pg_store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWWARDEN_STORE__URL", pg_store.engine.url.render_as_string(hide_password=False))
    args = ["policy", "recommend", "--since", "2020-01-01", "--until", "2020-01-08", "--out", str(tmp_path)]
    status, data = cli(capsys, *args)
    assert status == ExitCode.BAD_INPUT
    assert "holds no flows from 2020-01-01 00:00 to 2020-01-08 00:00" in json.dumps(data)


def test_recommend_and_simulate_on_parquet_with_alerts_jsonl(
    cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = []
    for i, (src, dst, port) in enumerate(OBSERVED):
        s_ip = PODS[src][2] if src in PODS else src
        d_ip = PODS[dst][2] if dst in PODS else dst
        ts = NOW.timestamp() - 600 + i
        rows.append(
            {
                "ts_start": ts,
                "ts_end": ts + 1,
                "src_ip": s_ip,
                "dst_ip": d_ip,
                "dst_port": port,
                "proto": 6,
                "first": True,
                "server_name": "cdn.example.com" if dst == "203.0.113.10" else "",
            }
        )
    flows = tmp_path / "flows.parquet"
    pd.DataFrame(rows).to_parquet(flows)
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_text(open_alert().to_json() + "\n")
    out = tmp_path / "rec"
    inv = ["--inventory", str(cluster)]
    args = ["policy", "recommend", "--flows", str(flows), "--alerts", str(alerts), "--out", str(out), *inv]
    status, data = cli(capsys, *args, "--format", "calico")
    assert status == 0, data
    assert [(d["source"], d["target"]) for d in data["excluded_alert_edges"]] == [("shop/cart", "data/db")]
    assert (out / "_global.yaml").exists() and (out / "shop.calico-enterprise.yaml").exists()
    status, data = cli(capsys, *args)
    assert status == 0
    status, sim = cli(capsys, "policy", "simulate", "--policies", str(out), "--flows", str(flows), *inv)
    assert status == 0
    assert sim["flows"] == 4 and sim["allowed"] == 3
    assert [d.split(" (")[0] for d in sim["denied"]["shop"]] == ["shop/cart -> data/db:5432/6"]
