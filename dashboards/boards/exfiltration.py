"""Exfiltration: who sends how much out, against their own past, to where, and over DNS."""

from __future__ import annotations

from flowwarden.dashboards.model import Json, Row, dashboard, scope, sql, table, timeseries
from flowwarden.dashboards.queries import rule_evidence_per_workload
from flowwarden.settings import PipelineSettings

UID = "flowwarden-exfiltration"

ROLLUP_SCOPE = scope("src_namespace", "src_workload")
ALERT_SCOPE = scope("namespace", "workload")
TOP = 8  # workloads drawn in the per-workload graphs
LOOKBACK_DAYS = round(PipelineSettings().seen_edges_ttl_days)


def _top_egress() -> str:
    return (
        f"SELECT src_namespace || '/' || src_workload FROM flow_rollups"
        f" WHERE $__timeFilter(minute) AND direction = 'egress' AND {ROLLUP_SCOPE}"
        f" GROUP BY 1 ORDER BY sum(bytes) DESC LIMIT {TOP}"
    )


def build() -> Json:
    egress = [
        timeseries(
            "Egress bytes/s per workload",
            [
                sql(
                    f"SELECT minute AS time, src_namespace || '/' || src_workload AS workload,"
                    f" sum(bytes) / 60.0 AS bytes_per_s FROM flow_rollups"
                    f" WHERE $__timeFilter(minute) AND direction = 'egress'"
                    f" AND src_namespace || '/' || src_workload IN ({_top_egress()})"
                    f" GROUP BY 1, 2 ORDER BY 1",
                    fmt="time_series",
                )
            ],
            unit="Bps",
            description=f"The {TOP} workloads with the most egress bytes in the range.",
        ),
        timeseries(
            "Egress against baseline",
            [
                sql(
                    f"WITH per_minute AS ("
                    f" SELECT minute, src_namespace || '/' || src_workload AS workload, sum(bytes) AS bytes"
                    f" FROM flow_rollups WHERE direction = 'egress'"
                    f" AND minute >= $__timeFrom()::timestamptz - interval '1 hour' AND minute <="
                    " $__timeTo()::timestamptz"
                    f" AND src_namespace || '/' || src_workload IN ({_top_egress()}) GROUP BY 1, 2)"
                    f" SELECT minute AS time, workload, bytes,"
                    f" coalesce(avg(bytes) OVER (PARTITION BY workload ORDER BY minute"
                    f" RANGE BETWEEN interval '60 minutes' PRECEDING AND interval '1 minute' PRECEDING), 0)"
                    f" AS baseline FROM per_minute WHERE $__timeFilter(minute) ORDER BY 1",
                    fmt="time_series",
                )
            ],
            unit="bytes",
            description="Bytes per minute against the workload's mean of the hour before (its baseline); "
            "a bulk upload stands far above the dashed line.",
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": "baseline.*"},
                    "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}],
                }
            ],
        ),
    ]
    destinations = [
        table(
            f"New external destinations (unseen in the {LOOKBACK_DAYS} days before)",
            [
                sql(
                    "WITH seen AS (SELECT DISTINCT dst_external FROM flow_rollups WHERE direction = 'egress'"
                    f" AND minute >= $__timeFrom()::timestamptz - interval '{LOOKBACK_DAYS} days'"
                    " AND minute < $__timeFrom()::timestamptz)"
                    " SELECT dst_external AS destination, min(minute) AS first_seen, sum(flows) AS flows,"
                    " sum(bytes) AS bytes, string_agg(DISTINCT src_namespace || '/' || src_workload, ', ')"
                    " AS sources FROM flow_rollups WHERE $__timeFilter(minute) AND direction = 'egress'"
                    f" AND dst_external <> '' AND dst_external NOT IN (SELECT dst_external FROM seen)"
                    f" AND {ROLLUP_SCOPE} GROUP BY 1 ORDER BY bytes DESC LIMIT 50"
                )
            ],
            description="External addresses contacted in the range and not in the lookback before it "
            "(the pipeline's memory of seen destinations).",
            unit="",
            w=12,
            h=9,
        ),
        table(
            "DNS-tunnel indicators",
            [
                sql(
                    f"SELECT src_namespace || '/' || src_workload AS workload, sum(flows) AS dns_queries,"
                    f" round(sum(flows) / greatest(extract(epoch FROM max(minute) - min(minute)) / 60.0 + 1,"
                    " 1), 1)"
                    f" AS queries_per_min, sum(bytes) / greatest(sum(flows), 1) AS bytes_per_query,"
                    f" count(DISTINCT dst_namespace || dst_workload || dst_external) AS resolvers"
                    f" FROM flow_rollups WHERE $__timeFilter(minute) AND dst_port = 53 AND {ROLLUP_SCOPE}"
                    f" GROUP BY 1 ORDER BY bytes_per_query DESC, dns_queries DESC LIMIT 20"
                )
            ],
            description="A tunnel shows many queries with large payloads (long random names, TXT answers).",
            w=12,
            h=9,
        ),
    ]
    alerts = [
        table(
            "Exfiltration alerts with evidence",
            [
                sql(
                    f"SELECT window_start AS time, severity, round(score::numeric, 2) AS score, detector,"
                    " technique, CASE WHEN learning THEN 'learning' ELSE '' END AS learning,"
                    f" namespace || '/' || workload AS workload, src_ip AS ip, summary,"
                    f" evidence::text AS evidence FROM alerts WHERE kind = 'exfiltration'"
                    f" AND $__timeFilter(window_start) AND {ALERT_SCOPE} ORDER BY score DESC, window_start"
                    " DESC"
                    f" LIMIT 100"
                )
            ],
            w=24,
            h=10,
            description="Evidence: the features that stood out against the entity's baseline.",
        ),
        table(
            "Feed hits and policy violations per workload",
            [sql(rule_evidence_per_workload(ALERT_SCOPE))],
            w=24,
            h=8,
            description="Per workload: threat_feed alerts with the feeds they hit, policy_violation "
            "alerts with the rules they broke (from the alerts' evidence).",
        ),
    ]
    return dashboard(
        UID,
        "flowwarden / Exfiltration",
        "Egress per workload against its baseline, new external destinations, DNS tunnels, alerts.",
        [Row("Egress", egress), Row("Destinations and DNS", destinations), Row("Alerts", alerts)],
        tags=["exfiltration"],
    )
