"""The compliance report's facts on a SQLite store: coverage, sensitive access, egress, outcomes."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from flowwarden.compliance import build_report, load_deployed_policies, outcome_of
from flowwarden.compliance_html import render_html
from flowwarden.errors import InputError
from flowwarden.policy import parse_policy
from flowwarden.rollups import rollup_flows
from flowwarden.settings import Settings
from flowwarden.store import Store
from tests.unit.test_store_sqlite import T0, make_alert, make_decision


def _flow(src_ns: str, src_wl: str, dst: str, port: int, *, dst_ns: str = "", nbytes: int = 100) -> dict:
    return {
        "ts_end": T0.timestamp() + 5,
        "node": "n1",
        "src_ip": "10.244.1.5",
        "dst_ip": dst,
        "dst_port": port,
        "bytes_out": nbytes,
        "bytes_in": 10,
        "pkts_out": 1,
        "pkts_in": 1,
        "state": "closed",
        "first": True,
        "dns_queries": 0,
        "dns_nxdomain": 0,
        "direction": "internal" if dst_ns else "egress",
        "src_namespace": src_ns,
        "src_pod": f"{src_wl}-1",
        "src_workload": src_wl,
        "dst_namespace": dst_ns,
        "dst_pod": "db-0" if dst_ns else "",
        "dst_workload": "db" if dst_ns else "",
    }


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'store.db'}").start()
    flows = [
        _flow("shop", "cart", "203.0.113.7", 443, nbytes=5000),
        _flow("shop", "cart", "198.51.100.9", 443, nbytes=70),
        _flow("shop", "web", "169.254.169.254", 80),
        _flow("shop", "web", "10.0.0.11", 10250),  # a node's kubelet
        _flow("ops", "operator", "10.96.0.1", 443),  # the kubernetes Service: the API server
        _flow("web", "front", "10.244.2.3", 5432, dst_ns="prod-db"),
    ]
    s.add_rollups(rollup_flows(pd.DataFrame(flows)))
    s.upsert_alerts([make_alert(0), make_alert(1), make_alert(2)])
    s.insert_decisions(
        [
            make_decision(0, status="simulated", mode="dry_run"),
            make_decision(1, status="refused", guardrail="max_new_blocks_per_minute"),
        ]
    )
    return s


def test_the_report_holds_coverage_sensitive_access_egress_and_outcomes(store: Store) -> None:
    settings = Settings(control_plane={"api_clients_namespaces": ["ops"]})
    policy = parse_policy({"namespaces": {"web": {"egress": []}}})
    report = build_report(
        store,
        settings,
        since=T0 - timedelta(hours=1),
        until=T0 + timedelta(hours=1),
        policy=policy,
        deployed={"prod-db": 2},
        verdicts={make_alert(2).id: "benign"},
    )
    assert report["namespaces_without_policies"] == ["ops", "shop"]
    cov = {n["namespace"]: n for n in report["namespaces"]}
    assert cov["prod-db"]["deployed_policies"] == 2 and cov["web"]["declared_policy"]
    sensitive = {(c["workload"], c["target"], c["allowed_namespace"]) for c in report["control_plane_access"]}
    assert sensitive == {
        ("web", "metadata-api", False),
        ("web", "kubelet", False),
        ("operator", "api-server", True),
    }
    shop = report["egress"]["shop"]
    assert shop["destinations"] == 2 and [d["address"] for d in shop["top"]] == [
        "203.0.113.7",
        "198.51.100.9",
    ]
    assert set(report["egress"]) == {"shop"}  # the control plane and the metadata API are not egress here
    outcomes = {a["id"]: (a["outcome"], a["verdict"]) for a in report["alerts"]}
    assert outcomes == {
        make_alert(0).id: ("blocked (dry-run)", ""),
        make_alert(1).id: ("refused (max_new_blocks_per_minute)", ""),
        make_alert(2).id: ("not enforced", "benign"),
    }
    assert report["summary"]["decisions"] == 2
    json.dumps(report)  # plain JSON values only
    page = render_html(report)
    assert "<script" not in page and "203.0.113.7" in page and "max_new_blocks_per_minute" in page


def test_a_namespace_of_the_inventory_that_sent_nothing_is_listed(store: Store) -> None:
    report = build_report(
        store, Settings(), since=T0 - timedelta(hours=1), until=T0, inventory={"idle": 3, "shop": 9}
    )
    rows = {n["namespace"]: n for n in report["namespaces"]}
    assert rows["idle"]["workloads"] == 3 and rows["idle"]["flows"] == 0 and not rows["idle"]["covered"]
    assert "idle" in report["namespaces_without_policies"] and rows["shop"]["workloads"] == 9


def test_outcome_prefers_the_strongest_decision() -> None:
    refused = make_decision(0, status="refused", guardrail="node_address")
    applied = make_decision(1, status="applied")
    assert outcome_of([refused, applied]) == "blocked"
    assert outcome_of([refused]) == "refused (node_address)"
    assert outcome_of([make_decision(2, status="expired")]) == "blocked (lifted)"
    assert outcome_of([]) == "not enforced"


def test_text_from_the_store_is_escaped_in_the_page(store: Store) -> None:
    store.upsert_alerts([make_alert(5, summary='<img src=x onerror="alert(1)">')])
    report = build_report(store, Settings(), since=T0 - timedelta(hours=1), until=T0 + timedelta(hours=1))
    page = render_html(report)
    assert "<img" not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("not json", "not JSON"),
        ('{"items": [{"kind": "Pod", "metadata": {"namespace": "a"}}]}', "items[0] is not a namespaced"),
        ('{"items": [{"kind": "NetworkPolicy", "metadata": {}}]}', "items[0] is not a namespaced"),
    ],
)
def test_a_bad_deployed_policies_file_says_how_to_make_one(tmp_path: Path, content: str, says: str) -> None:
    path = tmp_path / "netpol.json"
    path.write_text(content)
    with pytest.raises(InputError, match=r"netpol\.json") as err:
        load_deployed_policies(path)
    assert says in str(err.value)
    with pytest.raises(InputError, match="kubectl get networkpolicy -A -o json"):
        load_deployed_policies(tmp_path / "missing.json")


def test_a_kubectl_list_counts_policies_per_namespace(tmp_path: Path) -> None:
    items = [
        {"kind": "NetworkPolicy", "metadata": {"namespace": ns, "name": n}}
        for ns, n in (("shop", "a"), ("shop", "b"), ("db", "c"))
    ]
    path = tmp_path / "netpol.json"
    path.write_text(json.dumps({"kind": "List", "items": items}))
    assert load_deployed_policies(path) == {"shop": 2, "db": 1}
