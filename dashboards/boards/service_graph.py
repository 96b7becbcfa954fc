"""Service graph: the cluster as a graph of workloads and addresses, threats in red.

Fed by the store's ``service_edges`` view (migration 5: one row per flow rollup, each side
named as a graph node). An edge is red when it is part of an alert open in the range: its
target is an address (of no known pod) an alert of the source workload names, or it is a never-seen
edge that carried a lateral-movement alert's ports from its source during the alert. The
namespace variable keeps the edges that leave or enter the selected namespaces.
"""

from __future__ import annotations

from flowwarden.dashboards.model import ALL_VALUE, Json, Panel, Row, dashboard, sql, table
from flowwarden.settings import PipelineSettings

UID = "flowwarden-service-graph"

MAX_EDGES = 300
LOOKBACK_DAYS = round(PipelineSettings().seen_edges_ttl_days)
NS_SCOPE = (
    f"({ALL_VALUE} IN (${{namespace:sqlstring}}) OR src_namespace IN (${{namespace:sqlstring}})"
    f" OR dst_namespace IN (${{namespace:sqlstring}}))"
)
# Alerts open in the range: seen at some point of it.
OPEN_ALERTS = "last_seen >= $__timeFrom() AND first_seen <= $__timeTo()"


def graph_cte() -> str:
    """The range's heaviest edges, each with ``red`` when an open alert covers it."""
    return (
        "WITH e AS (SELECT source, target, min(target_kind) AS target_kind, sum(flows) AS flows,"
        " sum(bytes) AS bytes FROM service_edges WHERE $__timeFilter(minute) AND source <> ''"
        f" AND target <> '' AND direction IN ('internal', 'egress') AND {NS_SCOPE}"
        f" GROUP BY 1, 2 ORDER BY 5 DESC LIMIT {MAX_EDGES}),"
        " seen AS (SELECT DISTINCT source, target FROM service_edges WHERE direction = 'internal'"
        f" AND minute >= $__timeFrom()::timestamptz - interval '{LOOKBACK_DAYS} days'"
        " AND minute < $__timeFrom()::timestamptz),"
        " hit AS (SELECT DISTINCT a.namespace || '/' || a.workload AS source, t.ip AS target"
        " FROM alerts a CROSS JOIN LATERAL json_array_elements_text(a.targets) AS t(ip)"
        f" WHERE {OPEN_ALERTS}),"
        # Inside the cluster an alert names pod addresses, not workloads: its edges are the
        # source's flows on the alert's target ports during the alert (port 0: a rolled-up scan).
        " moving AS (SELECT DISTINCT v.source, v.target FROM alerts a JOIN service_edges v"
        " ON v.source = a.namespace || '/' || a.workload AND v.target_kind = 'workload'"
        " AND v.minute >= date_trunc('minute', a.first_seen) AND v.minute <= a.last_seen"
        " AND (v.dst_port = 0 OR v.dst_port::text IN (SELECT json_array_elements_text(a.target_ports)))"
        f" WHERE a.kind = 'lateral_movement' AND {OPEN_ALERTS}),"
        " g AS (SELECT e.*, (EXISTS (SELECT 1 FROM hit h WHERE h.source = e.source AND h.target = e.target)"
        " OR (EXISTS (SELECT 1 FROM moving m WHERE m.source = e.source AND m.target = e.target)"
        " AND NOT EXISTS (SELECT 1 FROM seen s WHERE s.source = e.source AND s.target = e.target)))"
        " AS red FROM e)"
    )


def graph_edges_sql() -> str:
    return (
        f"{graph_cte()} SELECT source || '->' || target AS id, source, target, flows AS mainstat,"
        " bytes AS secondarystat, CASE WHEN red THEN 'red' ELSE 'gray' END AS color, red AS highlighted,"
        " CASE WHEN red THEN 'in an open alert' ELSE 'no alert' END AS detail__alert FROM g"
    )


def graph_nodes_sql() -> str:
    return (
        f"{graph_cte()}, ends AS (SELECT source AS id FROM g UNION SELECT target FROM g)"
        " SELECT ends.id,"
        " CASE WHEN position('/' IN ends.id) > 0 THEN split_part(ends.id, '/', 2) ELSE ends.id END AS title,"
        " CASE WHEN position('/' IN ends.id) > 0 THEN split_part(ends.id, '/', 1) ELSE 'address' END"
        " AS subtitle,"
        " coalesce((SELECT sum(flows) FROM g WHERE g.source = ends.id), 0) AS mainstat,"
        " coalesce((SELECT sum(bytes) FROM g WHERE g.target = ends.id), 0) AS secondarystat,"
        " CASE WHEN EXISTS (SELECT 1 FROM g WHERE (g.source = ends.id OR g.target = ends.id) AND g.red)"
        " THEN 'red' ELSE 'green' END AS color FROM ends"
    )


def matrix_sql() -> str:
    """Namespace to namespace (to an address of no known pod: ``(no pod)``), flows and bytes."""
    return (
        "SELECT src_namespace AS source_namespace,"
        " CASE WHEN target_kind = 'address' THEN '(no pod)' ELSE dst_namespace END AS dst,"
        " sum(flows) AS flows FROM service_edges WHERE $__timeFilter(minute) AND src_namespace <> ''"
        f" AND direction IN ('internal', 'egress') AND {NS_SCOPE} GROUP BY 1, 2 ORDER BY 1, 2"
    )


def red_edges_sql() -> str:
    return (
        f"{graph_cte()} SELECT source, target, target_kind, flows, bytes FROM g WHERE red"
        " ORDER BY bytes DESC LIMIT 50"
    )


def build() -> Json:
    graph = Panel(
        "nodeGraph",
        "Service and threat graph (red: in an open alert)",
        [sql(graph_edges_sql(), ref="edges"), sql(graph_nodes_sql(), ref="nodes")],
        w=24,
        h=16,
        options={
            "nodes": {"mainStatUnit": "short", "secondaryStatUnit": "bytes"},
            "edges": {"mainStatUnit": "short", "secondaryStatUnit": "bytes"},
        },
        description="Nodes: workloads (namespace/workload) and addresses of no known pod (outside the "
        "cluster, nodes, services, unused pod addresses); edges: flows (main "
        f"stat) and bytes, the {MAX_EDGES} heaviest of the range. Red: the edge's target is an "
        "address an open alert of the source names, or the edge is new (unseen in the "
        f"{LOOKBACK_DAYS} days before) and carried an open lateral-movement alert's target ports from "
        "its source during the alert.",
    )
    matrix = table(
        "Namespace-to-namespace matrix",
        [sql(matrix_sql())],
        transformations=[
            {
                "id": "groupingToMatrix",
                "options": {
                    "columnField": "dst",
                    "rowField": "source_namespace",
                    "valueField": "flows",
                    "emptyValue": "zero",
                },
            }
        ],
        description="Rows: source namespace; columns: destination namespace, or (no pod): an address of "
        "no known pod; cells: flows.",
        w=12,
        h=10,
    )
    red = table(
        "Edges in open alerts",
        [sql(red_edges_sql())],
        description="The red edges of the graph, heaviest first.",
        w=12,
        h=10,
    )
    return dashboard(
        UID,
        "flowwarden / Service graph",
        "Workloads and the addresses they reach as a graph (flows and bytes per edge, edges in open alerts "
        "in red) and the namespace-to-namespace matrix.",
        [Row("Service and threat graph", [graph]), Row("Namespaces and threats", [matrix, red])],
        tags=["service-graph", "lateral-movement"],
    )
