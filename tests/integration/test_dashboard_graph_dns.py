"""The service-graph and DNS dashboards' queries against a PostgreSQL store the pipeline filled.

Beyond "every panel returns rows" (``test_dashboard_queries``), the answers are checked
against what the store and the simulator hold: the graph's nodes are its edges' ends, its red
edges are the alerts' targets, the namespace variable narrows it, the DNS totals are the
simulated flows' DNS aggregates and the odd names are the tunnel's domain.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from flowwarden.dashboards.catalog import load_committed
from flowwarden.dashboards.queries import QueryContext, interpolate_sql, panel_queries
from flowwarden.store import Store
from tests.support.seed_store import SeededStore, seed_store

pytestmark = pytest.mark.integration

ALL: dict[str, list[str] | None] = {"namespace": None, "workload": None}


@pytest.fixture(scope="module")
def seeded(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SeededStore, Store]]:
    s = seed_store(pg_url, tmp_path_factory.mktemp("graph-dns"), seed=5, enforce=False)
    store = Store(pg_url).start()
    try:
        yield s, store
    finally:
        store.stop()


def _query(board: str, panel: str, ref: str = "A") -> str:
    b = load_committed()[board]
    (q,) = [q for q in panel_queries(board, b) if q.panel.startswith(panel) and q.ref == ref]
    return q.text


def _rows(
    store: Store, text: str, s: SeededStore, variables: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    ctx = QueryContext(s.time_from, s.time_to, variables or ALL)
    with store.engine.connect() as conn:
        result = conn.exec_driver_sql(interpolate_sql(text, ctx))
        cols = list(result.keys())
        return [dict(zip(cols, r, strict=True)) for r in result.fetchall()]


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float | Decimal) else float("nan")


def _sql(store: Store, text: str) -> list[tuple[Any, ...]]:
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(text).fetchall()]


def test_service_graph_nodes_edges_and_red_alert_edges(seeded: tuple[SeededStore, Store]) -> None:
    s, store = seeded
    edges = _rows(store, _query("service-graph", "Service and threat graph", "edges"), s)
    nodes = _rows(store, _query("service-graph", "Service and threat graph", "nodes"), s)
    ids = {n["id"] for n in nodes}
    assert {e["source"] for e in edges} | {e["target"] for e in edges} == ids
    kinds = {n["subtitle"] for n in nodes}
    assert "address" in kinds and len(kinds) > 2, "workloads of several namespaces and addresses"
    red = [e for e in edges if e["highlighted"]]
    assert red and {e["color"] for e in red} == {"red"}
    assert {e["color"] for e in edges if not e["highlighted"]} <= {"gray"}
    # Every red edge to an outside address is named by an alert of its source workload.
    alerted = {
        (f"{ns}/{wl}", t)
        for ns, wl, targets in _sql(store, "SELECT namespace, workload, targets::text FROM alerts")
        for t in json.loads(targets)
    }
    external_red = [e for e in red if "/" not in e["target"]]
    assert external_red, "an exfiltration target is red"
    assert all((e["source"], e["target"]) in alerted for e in external_red)
    # Inside the cluster: red edges leave workloads with a lateral-movement alert, and not all
    # of their edges are red (only those on the alert's ports during it).
    moving = {
        f"{ns}/{wl}"
        for ns, wl in _sql(store, "SELECT namespace, workload FROM alerts WHERE kind = 'lateral_movement'")
    }
    internal_red = [e for e in red if "/" in e["target"]]
    assert internal_red and all(e["source"] in moving for e in internal_red)
    assert any(not e["highlighted"] for e in edges if e["source"] in moving and "/" in e["target"])
    # ...and every alerted (workload, outside address) pair the graph shows is red.
    shown = {(e["source"], e["target"]): e for e in edges if "/" not in e["target"]}
    assert all(shown[p]["highlighted"] for p in alerted if p in shown)
    # Flows and bytes are the store's own: the view adds nothing and loses nothing.
    ((view_flows,),) = _sql(
        store, "SELECT sum(flows) FROM service_edges WHERE direction IN ('internal', 'egress')"
    )
    ((rollup_flows,),) = _sql(
        store, "SELECT sum(flows) FROM flow_rollups WHERE direction IN ('internal', 'egress')"
    )
    assert view_flows == rollup_flows > 0
    print(f"\nservice graph: {len(nodes)} nodes, {len(edges)} edges, {len(red)} red")


def test_namespace_variable_narrows_the_graph_and_the_matrix(seeded: tuple[SeededStore, Store]) -> None:
    s, store = seeded
    matrix = _rows(store, _query("service-graph", "Namespace-to-namespace matrix"), s)
    namespaces = sorted({m["source_namespace"] for m in matrix})
    assert "(no pod)" in {m["dst"] for m in matrix}
    ns = namespaces[0]
    narrowed = _rows(
        store,
        _query("service-graph", "Service and threat graph", "edges"),
        s,
        {"namespace": [ns], "workload": None},
    )
    assert narrowed
    assert all(e["source"].startswith(f"{ns}/") or e["target"].startswith(f"{ns}/") for e in narrowed)
    per_ns = {m["dst"]: _num(m["flows"]) for m in matrix if m["source_namespace"] == ns}
    ((flows,),) = _sql(
        store,
        f"SELECT sum(flows) FROM flow_rollups WHERE src_namespace = '{ns}'"
        " AND direction IN ('internal', 'egress')",
    )
    assert sum(per_ns.values()) == float(flows)


def test_dns_dashboard_counts_the_flows_dns_aggregates(seeded: tuple[SeededStore, Store]) -> None:
    s, store = seeded
    ((total,),) = [tuple(r.values()) for r in _rows(store, _query("dns", "DNS queries in range"), s)]
    sent = int(s.flows["dns_queries"].sum())
    assert sent > 0 and int(total) == sent
    per_workload = _rows(store, _query("dns", "Workloads: queries"), s)
    assert per_workload and all(0 <= _num(r["nxdomain_rate"]) <= 1 for r in per_workload)
    top = _rows(store, _query("dns", "Queries per workload"), s)
    assert len({r["workload"] for r in top}) <= 8
    assert all(isinstance(r["time"], datetime) for r in top)
    resolvers = _rows(store, _query("dns", "Resolvers asked"), s)
    assert "cluster DNS" in {r["kind"] for r in resolvers}
    for panel in ("NXDOMAIN rate", "Failing resolutions", "NXDOMAIN share", "Failed DNS flows"):
        assert _rows(store, _query("dns", panel), s), panel


def test_dns_dashboard_shows_the_tunnels_long_names(seeded: tuple[SeededStore, Store]) -> None:
    s, store = seeded
    tunnels = [e for e in s.labels.episodes if e.technique == "dns_tunnel"]
    assert tunnels, "the simulator ran a DNS tunnel"
    odd = _rows(store, _query("dns", "Long or high-entropy names"), s)
    assert odd, "the tunnel's alert is listed"
    domains = {r["domain"] for r in odd}
    assert domains & {t for e in tunnels for t in e.targets}
    assert all(_num(r["mean_label_len"]) >= 40 or _num(r["entropy_bits"]) >= 3.2 for r in odd)
    top = _rows(store, _query("dns", "Top alerted names"), s)
    assert domains <= {r["name"] for r in top}


def test_dns_rollups_show_every_workloads_domains_and_the_tunnel_first_by_names(
    seeded: tuple[SeededStore, Store],
) -> None:
    s, store = seeded
    asked = _rows(store, _query("dns", "Top domains asked"), s)
    assert asked and all(int(r["askers"]) >= 1 and r["asked_by"] for r in asked)
    # Every query of the range is in some domain's row (the panel shows the top 30 of them).
    ((total,),) = _sql(store, "SELECT sum(queries) FROM dns_rollups")
    assert int(total) == int(s.flows["dns_queries"].sum())
    tunnels = {t for e in s.labels.episodes if e.technique == "dns_tunnel" for t in e.targets}
    odd = _rows(store, _query("dns", "Many, long or random-looking names"), s)
    assert odd[0]["domain"] in tunnels, odd[:3]
    others = [int(r["names_in_one_flow"]) for r in odd if r["domain"] not in tunnels]
    assert int(odd[0]["names_in_one_flow"]) > 5 * max(others), odd[:5]
    assert _rows(store, _query("dns", "Unanswered queries and NXDOMAIN"), s)


def test_dns_resolution_times_add_up_to_the_records(seeded: tuple[SeededStore, Store]) -> None:
    s, store = seeded
    dns = s.flows[s.flows["dns_rtt_n"] > 0]
    assert len(dns), "the simulator times its resolutions"
    series = _rows(store, _query("dns", "Resolution time"), s)
    assert series and all(0 < _num(r["mean_ms"]) <= _num(r["slowest_ms"]) for r in series)
    assert max(_num(r["slowest_ms"]) for r in series) == pytest.approx(float(dns["dns_rtt_max_ms"].max()))
    slow = _rows(store, _query("dns", "Slow or failing resolutions"), s)
    assert slow and _num(slow[0]["slowest_ms"]) == pytest.approx(float(dns["dns_rtt_max_ms"].max()))
    # Names the cluster DNS answers itself are fast; the slowest ones went upstream.
    assert not slow[0]["domain"].endswith("cluster.local")
    ((n, total),) = _sql(store, "SELECT sum(rtt_n), sum(rtt_ms_sum) FROM dns_rollups")
    assert int(n) == int(dns["dns_rtt_n"].sum())
    assert float(total) == pytest.approx(float((dns["dns_rtt_mean_ms"] * dns["dns_rtt_n"]).sum()))


def test_the_pictures_of_the_new_dashboards_are_in_the_docs() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs"
    text = (docs / "dashboards.md").read_text()
    for name in ("service-graph", "dns"):
        assert f"img/dashboard-{name}.svg" in text and (docs / "img" / f"dashboard-{name}.svg").exists()
