"""Overview: is traffic normal, who sends the most out, what fired, what is blocked."""

from __future__ import annotations

from flowwarden.dashboards.model import (
    Json,
    Row,
    bargauge,
    dashboard,
    promql,
    scope,
    sql,
    stat,
    table,
    timeseries,
)
from flowwarden.dashboards.queries import rule_alerts_per_workload

UID = "flowwarden-overview"

ROLLUP_SCOPE = scope("src_namespace", "src_workload")
ALERT_SCOPE = scope("namespace", "workload")


def build() -> Json:
    stats = [
        stat(
            "Flows/s (pipeline)",
            [promql("sum(rate(flowwarden_pipeline_flows_total[$__rate_interval]))")],
            unit="ops",
            description="Flow records the pipeline consumed per second, all partitions.",
        ),
        stat(
            "Egress bytes in range",
            [
                sql(
                    f"SELECT sum(bytes) AS egress_bytes FROM flow_rollups"
                    f" WHERE $__timeFilter(minute) AND direction = 'egress' AND {ROLLUP_SCOPE}"
                )
            ],
            unit="bytes",
            description="Bytes that left the cluster from the selected workloads.",
        ),
        stat(
            "Alerts in range",
            [
                sql(
                    f"SELECT count(*) AS alerts FROM alerts WHERE $__timeFilter(window_start) AND"
                    f" {ALERT_SCOPE}"
                )
            ],
            description="Alerts raised for the selected workloads, all detectors.",
        ),
        stat(
            "Active blocks (dry-run included)",
            [
                sql(
                    "SELECT count(*) AS active_blocks FROM decisions WHERE action <> 'unblock'"
                    " AND status IN ('applied', 'simulated') AND expires_at > now()"
                    f" AND {scope('namespace', 'workload')}"
                )
            ],
            description="Blocks in force now, from the decision log (dry-run ones recorded, not applied).",
        ),
    ]
    traffic = [
        timeseries(
            "Flows/s by direction",
            [
                sql(
                    f"SELECT minute AS time, direction, sum(flows) / 60.0 AS flows_per_s FROM flow_rollups"
                    f" WHERE $__timeFilter(minute) AND {ROLLUP_SCOPE} GROUP BY 1, 2 ORDER BY 1",
                    fmt="time_series",
                )
            ],
            unit="ops",
            stack=True,
            description="Per-minute flow rollups from the store, split by egress/ingress/internal.",
        ),
        timeseries(
            "Bytes/s by direction",
            [
                sql(
                    f"SELECT minute AS time, direction, sum(bytes) / 60.0 AS bytes_per_s FROM flow_rollups"
                    f" WHERE $__timeFilter(minute) AND {ROLLUP_SCOPE} GROUP BY 1, 2 ORDER BY 1",
                    fmt="time_series",
                )
            ],
            unit="Bps",
            stack=True,
        ),
    ]
    talkers = [
        bargauge(
            "Top egress talkers",
            [
                sql(
                    f"SELECT src_namespace || '/' || src_workload AS workload, sum(bytes) AS egress_bytes"
                    f" FROM flow_rollups WHERE $__timeFilter(minute) AND direction = 'egress' AND"
                    f" {ROLLUP_SCOPE}"
                    f" GROUP BY 1 ORDER BY 2 DESC LIMIT 10"
                )
            ],
            unit="bytes",
            description="The ten workloads that sent the most bytes out of the cluster in the range.",
        ),
        timeseries(
            "Alerts by kind",
            [
                sql(
                    f"SELECT $__timeGroupAlias(window_start, '5m'), kind, count(*) AS alerts FROM alerts"
                    f" WHERE $__timeFilter(window_start) AND {ALERT_SCOPE} GROUP BY 1, 2 ORDER BY 1",
                    fmt="time_series",
                )
            ],
            stack=True,
            description="Alerts per five minutes, exfiltration against lateral movement.",
        ),
    ]
    recent = [
        table(
            "Latest alerts",
            [
                sql(
                    f"SELECT window_start AS time, kind, detector, severity, round(score::numeric, 2) AS"
                    " score, CASE WHEN learning THEN 'learning' ELSE '' END AS learning,"
                    f" namespace AS namespace, workload AS workload, src_ip AS ip, summary"
                    f" FROM alerts WHERE $__timeFilter(window_start) AND {ALERT_SCOPE}"
                    f" ORDER BY window_start DESC LIMIT 50"
                )
            ],
            w=24,
            h=9,
        ),
        table(
            "Feed hits and policy violations per workload",
            [sql(rule_alerts_per_workload(ALERT_SCOPE))],
            w=24,
            h=8,
            description="Alerts of the threat_feed detector (a flow to a feed-listed address or name) "
            "and of policy_violation (a flow the declared policy does not allow), per workload.",
        ),
    ]
    return dashboard(
        UID,
        "flowwarden / Overview",
        "Traffic by direction, top egress talkers, alerts over time and active blocks.",
        [
            Row("Now", stats),
            Row("Traffic", traffic),
            Row("Talkers and alerts", talkers),
            Row("Alerts", recent),
        ],
        tags=["overview"],
    )
