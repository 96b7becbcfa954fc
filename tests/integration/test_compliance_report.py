"""``flowwarden report compliance`` on a PostgreSQL store the pipeline and the enforcer filled.

The JSON is checked against what the store holds (alerts, decisions, rollups) and what the
simulator did (its metadata-API and control-plane attackers, its exfiltration targets); the
HTML is opened in headless Chromium (no console message; the check is proven able to fail in
``test_report_browser``) and must load nothing from outside the file.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from flowwarden.cli import run
from flowwarden.store import Store
from tests.integration.test_report_browser import chromium, console_messages
from tests.support.seed_store import SeededStore, seed_store

pytestmark = pytest.mark.integration

POLICY = {
    "namespaces": {"payments": {"egress": [{"to": {"namespaces": ["payments"]}, "ports": ["5432/tcp"]}]}}
}
DEPLOYED = {
    "apiVersion": "v1",
    "kind": "List",
    "items": [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "default-deny", "namespace": "shop"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        }
    ],
}


@pytest.fixture(scope="module")
def report(
    pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[SeededStore, dict[str, Any], Path]]:
    tmp = tmp_path_factory.mktemp("compliance")
    s = seed_store(pg_url, tmp, seed=3, enforce=True)
    (tmp / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    (tmp / "netpol.json").write_text(json.dumps(DEPLOYED))
    config = tmp / "flowwarden.yaml"
    config.write_text(yaml.safe_dump({"store": {"url": pg_url}}))
    with Store(pg_url) as store:
        first = store.list_alerts()[0]
    verdict = ["alerts", "resolve", first.id, "--benign", "--reason", "a test", "-c", str(config)]
    assert run(verdict) == 0
    out = tmp / "out"
    args = ["report", "compliance", "--since", "2h", "--out", str(out), "-c", str(config)]
    args += ["--policy", str(tmp / "policy.yaml"), "--deployed", str(tmp / "netpol.json")]
    args += ["--inventory", str(s.inventory)]
    assert run(args) == 0
    doc = json.loads((out / "compliance.json").read_text())
    doc["_benign"] = first.id
    yield s, doc, out


def _sql(url: str, text: str) -> list[tuple[Any, ...]]:
    with Store(url) as store, store.engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(text).fetchall()]


def test_namespaces_without_policies_are_those_neither_declared_nor_deployed(report: Any) -> None:
    s, doc, _ = report
    seen = {
        r[0]
        for r in _sql(s.pg_url, "SELECT DISTINCT src_namespace FROM flow_rollups WHERE src_namespace <> ''")
    }
    seen |= {
        r[0]
        for r in _sql(s.pg_url, "SELECT DISTINCT dst_namespace FROM flow_rollups WHERE dst_namespace <> ''")
    }
    pods = json.loads(s.inventory.read_text())["items"]
    seen |= {p["metadata"]["namespace"] for p in pods}  # the inventory's, even those that sent nothing
    assert {"shop", "payments"} <= seen
    assert set(doc["namespaces_without_policies"]) == seen - {"shop", "payments"}
    rows = {n["namespace"]: n for n in doc["namespaces"]}
    assert rows["shop"]["deployed_policies"] == 1 and not rows["shop"]["declared_policy"]
    assert rows["payments"]["declared_policy"] and rows["payments"]["covered"]
    ((flows,),) = _sql(s.pg_url, "SELECT sum(flows) FROM flow_rollups WHERE src_namespace = 'shop'")
    assert rows["shop"]["flows"] == int(flows)


def test_control_plane_and_metadata_access_names_the_attackers(report: Any) -> None:
    s, doc, _ = report
    found = {(c["namespace"], c["workload"], c["target"]) for c in doc["control_plane_access"]}
    for technique, targets in (("metadata_api", {"metadata-api"}), ("control_plane_access", None)):
        episodes = [e for e in s.labels.episodes if e.technique == technique]
        assert episodes, technique
        for e in episodes:
            hits = {t for ns, wl, t in found if (ns, wl) == (e.source.namespace, e.source.workload)}
            assert hits and (targets is None or hits & targets), (technique, e.source, found)


def test_egress_destinations_hold_the_exfiltration_targets(report: Any) -> None:
    s, doc, _ = report
    bulk = [e for e in s.labels.episodes if e.technique == "bulk_exfiltration"]
    assert bulk
    for e in bulk:
        ns = doc["egress"][e.source.namespace]
        addresses = {d["address"] for d in ns["top"]}
        assert set(e.targets) & addresses, (e.targets, addresses)
    for ns in doc["egress"].values():
        assert ns["destinations"] >= len(ns["top"])
        sizes = [d["bytes_out"] for d in ns["top"]]
        assert sizes == sorted(sizes, reverse=True)


def test_alerts_and_blocks_with_their_outcome_are_the_stores(report: Any) -> None:
    s, doc, _ = report
    since = s.time_from - timedelta(hours=2)
    with Store(s.pg_url) as store:
        alerts = {a.id: a for a in store.list_alerts(since=since)}
        decisions = store.list_decisions(since=since)
    assert {a["id"] for a in doc["alerts"]} == set(alerts)
    assert {d["id"] for d in doc["decisions"]} == {d.id for d in decisions if d.action != "unblock"}
    by_alert: dict[str, set[str]] = {}
    for d in decisions:
        by_alert.setdefault(d.alert_id, set()).add(d.status)
    outcomes = {a["id"]: a["outcome"] for a in doc["alerts"]}
    for aid, statuses in by_alert.items():
        if aid not in outcomes:
            continue
        if "simulated" in statuses or "applied" in statuses:
            assert outcomes[aid].startswith("blocked"), (aid, statuses)
        elif statuses == {"refused"}:
            assert outcomes[aid].startswith("refused ("), (aid, statuses)
    assert all(outcomes[a] == "not enforced" for a in outcomes if a not in by_alert)
    assert sum(doc["summary"]["alerts_by_outcome"].values()) == len(alerts)
    verdicts = {a["id"]: a["verdict"] for a in doc["alerts"]}
    assert verdicts[doc["_benign"]] == "benign"
    assert sum(bool(v) for v in verdicts.values()) == 1


def test_the_html_is_self_contained_and_renders_in_headless_chromium(report: Any, tmp_path: Path) -> None:
    _, doc, out = report
    page = out / "compliance.html"
    text = page.read_text()
    assert not re.search(r"<script|<link|<img|<iframe|\bsrc=|url\(", text), "the page loads something"
    for a in doc["alerts"]:
        assert html.escape(a["summary"], quote=True) in text
    for ns in doc["namespaces_without_policies"]:
        assert f"<td>{ns}</td>" in text
    log, shot = chromium(page, tmp_path)
    assert console_messages(log) == []
    pixels = imread(shot)
    assert float(np.std(pixels[..., :3])) > 0.01, "the screenshot is blank"
    print(f"\ncompliance report: {json.dumps(doc['summary'])}; {len(text)} bytes of HTML")
