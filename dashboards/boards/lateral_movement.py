"""Lateral movement: who talks to whom inside the cluster, new edges, scans, sensitive targets."""

from __future__ import annotations

from flowwarden.dashboards.model import Json, Panel, Row, dashboard, scope, sql, table, timeseries
from flowwarden.settings import ClusterSettings, ControlPlaneSettings, PipelineSettings

UID = "flowwarden-lateral-movement"

ROLLUP_SCOPE = scope("src_namespace", "src_workload")
ALERT_SCOPE = scope("namespace", "workload")
MAX_EDGES = 200
LOOKBACK_DAYS = round(PipelineSettings().seen_edges_ttl_days)


def _edges_cte() -> str:
    """Workload edges in the range, each marked new when the lookback before the range lacks it.

    The lookback is the pipeline's own memory of seen edges (``seen_edges_ttl_days``); one range
    scan of it (the primary key starts with ``minute``), never the whole history.
    """
    days = LOOKBACK_DAYS
    return (
        "WITH edges AS ("
        " SELECT src_namespace AS sns, src_workload AS swl, dst_namespace AS dns, dst_workload AS dwl,"
        " sum(flows) AS flows, sum(bytes) AS bytes FROM flow_rollups"
        " WHERE $__timeFilter(minute) AND direction = 'internal' AND src_workload <> ''"
        f" AND dst_workload <> '' AND {ROLLUP_SCOPE} GROUP BY 1, 2, 3, 4 ORDER BY 5 DESC LIMIT {MAX_EDGES}),"
        " seen AS (SELECT DISTINCT src_namespace AS sns, src_workload AS swl, dst_namespace AS dns,"
        " dst_workload AS dwl FROM flow_rollups WHERE direction = 'internal'"
        f" AND minute >= $__timeFrom()::timestamptz - interval '{days} days'"
        " AND minute < $__timeFrom()::timestamptz),"
        " marked AS (SELECT e.sns || '/' || e.swl AS source, e.dns || '/' || e.dwl AS target, e.flows,"
        " e.bytes,"
        " s.sns IS NULL AS never_seen FROM edges e LEFT JOIN seen s"
        " ON s.sns = e.sns AND s.swl = e.swl AND s.dns = e.dns AND s.dwl = e.dwl)"
    )


def _control_plane_case() -> tuple[str, str]:
    """(SQL CASE naming the sensitive target, SQL condition selecting those flows)."""
    cp, cluster = ControlPlaneSettings(), ClusterSettings()
    named = [
        ([cp.api_server_port], "api-server"),
        (cp.etcd_ports, "etcd"),
        ([cp.kubelet_port], "kubelet"),
        ([cp.scheduler_port], "scheduler"),
        ([cp.controller_manager_port], "controller-manager"),
    ]
    metadata = ", ".join(f"'{ip}'" for ip in cluster.metadata_api)
    whens = " ".join(
        f"WHEN dst_port IN ({', '.join(str(p) for p in ports)}) THEN '{name}'" for ports, name in named
    )
    case = f"CASE WHEN dst_external IN ({metadata}) THEN 'cloud-metadata' {whens} END"
    ports = ", ".join(str(p) for p in cp.ports())
    return case, f"(dst_external IN ({metadata}) OR dst_port IN ({ports}))"


def build() -> Json:
    edges = _edges_cte()
    matrix = [
        table(
            "Namespace-to-namespace flows",
            [
                sql(
                    f"SELECT src_namespace, dst_namespace, sum(flows) AS flows FROM flow_rollups"
                    f" WHERE $__timeFilter(minute) AND direction = 'internal' AND src_namespace <> ''"
                    f" AND dst_namespace <> '' AND {ROLLUP_SCOPE} GROUP BY 1, 2 ORDER BY 1, 2"
                )
            ],
            transformations=[
                {
                    "id": "groupingToMatrix",
                    "options": {
                        "columnField": "dst_namespace",
                        "rowField": "src_namespace",
                        "valueField": "flows",
                        "emptyValue": "zero",
                    },
                }
            ],
            description="Rows: source namespace; columns: destination namespace; cells: flows.",
            w=10,
            h=12,
        ),
        Panel(
            "nodeGraph",
            f"Workload edges (red: new, unseen in the {LOOKBACK_DAYS} days before)",
            [
                sql(
                    f"{edges} SELECT source || '->' || target AS id, source, target, flows AS mainstat,"
                    f" bytes AS secondarystat, CASE WHEN never_seen THEN 'red' ELSE 'gray' END AS color,"
                    f" never_seen AS highlighted, CASE WHEN never_seen THEN 'new' ELSE 'known' END"
                    f" AS detail__edge FROM marked",
                    ref="edges",
                ),
                sql(
                    f"{edges}, ends AS (SELECT source AS id FROM marked UNION SELECT target FROM marked)"
                    f" SELECT ends.id, split_part(ends.id, '/', 2) AS title, split_part(ends.id, '/', 1) AS"
                    " subtitle,"
                    f" coalesce((SELECT sum(flows) FROM marked m WHERE m.source = ends.id), 0) AS mainstat"
                    f" FROM ends",
                    ref="nodes",
                ),
            ],
            w=14,
            h=12,
            options={"nodes": {"mainStatUnit": "short"}, "edges": {"mainStatUnit": "short"}},
            description="Edges first seen in the store inside the selected range are red and highlighted.",
        ),
    ]
    case, sensitive = _control_plane_case()
    scans = [
        table(
            "Scan candidates",
            [
                sql(
                    f"SELECT src_namespace || '/' || src_workload AS workload, count(DISTINCT dst_port) AS"
                    " ports,"
                    f" count(DISTINCT dst_namespace || '/' || dst_workload || dst_external) AS destinations,"
                    f" sum(rejected) AS rejected, sum(flows) AS flows FROM flow_rollups"
                    f" WHERE $__timeFilter(minute) AND {ROLLUP_SCOPE} GROUP BY 1"
                    f" ORDER BY ports DESC, rejected DESC LIMIT 20"
                )
            ],
            description="Sources by distinct destination ports and rejected connections (SYN answered by RST "
            "or unanswered).",
            w=12,
            h=9,
        ),
        timeseries(
            "Rejected connections per workload",
            [
                sql(
                    f"SELECT minute AS time, src_namespace || '/' || src_workload AS workload, sum(rejected)"
                    " AS rejected"
                    f" FROM flow_rollups WHERE $__timeFilter(minute) AND {ROLLUP_SCOPE}"
                    f" AND src_namespace || '/' || src_workload IN (SELECT src_namespace || '/' ||"
                    " src_workload"
                    f" FROM flow_rollups WHERE $__timeFilter(minute) GROUP BY 1 HAVING sum(rejected) > 0"
                    f" ORDER BY sum(rejected) DESC LIMIT 8) GROUP BY 1, 2 ORDER BY 1",
                    fmt="time_series",
                )
            ],
            w=12,
            h=9,
        ),
    ]
    sensitive_panels = [
        table(
            "Control-plane and metadata access",
            [
                sql(
                    f"SELECT src_namespace || '/' || src_workload AS workload, {case} AS target, dst_port AS"
                    " port,"
                    f" sum(flows) AS flows, sum(bytes) AS bytes, min(minute) AS first_seen, max(minute) AS"
                    " last_seen"
                    f" FROM flow_rollups WHERE $__timeFilter(minute) AND {sensitive} AND {ROLLUP_SCOPE}"
                    f" GROUP BY 1, 2, 3 ORDER BY flows DESC LIMIT 50"
                )
            ],
            description="Pods reaching the API server, etcd, kubelets or the cloud metadata service; "
            "outside the operators' namespaces this is rarely benign.",
            w=24,
            h=8,
        ),
        table(
            "Lateral-movement alerts",
            [
                sql(
                    f"SELECT window_start AS time, severity, round(score::numeric, 2) AS score, detector,"
                    " technique, CASE WHEN learning THEN 'learning' ELSE '' END AS learning,"
                    f" namespace || '/' || workload AS workload, src_ip AS ip, summary,"
                    f" evidence::text AS evidence FROM alerts WHERE kind = 'lateral_movement'"
                    f" AND $__timeFilter(window_start) AND {ALERT_SCOPE} ORDER BY score DESC, window_start"
                    " DESC"
                    f" LIMIT 100"
                )
            ],
            w=24,
            h=10,
        ),
    ]
    return dashboard(
        UID,
        "flowwarden / Lateral movement",
        "Namespace matrix, workload edge graph with new edges marked, scans, control-plane and metadata"
        " access.",
        [
            Row("Who talks to whom", matrix),
            Row("Scans", scans),
            Row("Sensitive targets and alerts", sensitive_panels),
        ],
        tags=["lateral-movement"],
    )
