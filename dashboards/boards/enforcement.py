"""Enforcement: what the hook did with alerts, what the guardrails refused, what is blocked now."""

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

UID = "flowwarden-enforcement"

DECISION_SCOPE = scope("namespace", "workload")


def build() -> Json:
    now = [
        stat(
            "Applied blocks (enforcer)",
            [promql("sum(flowwarden_enforcer_active_blocks)")],
            description="Rules the enforcer holds in the kernel or cluster now (0 in dry-run).",
        ),
        stat(
            "Decisions/s",
            [promql("sum(rate(flowwarden_enforcer_decisions_total[$__rate_interval]))")],
            unit="ops",
        ),
        stat(
            "Refusals in range",
            [
                sql(
                    f"SELECT count(*) AS refusals FROM decisions WHERE status = 'refused'"
                    f" AND $__timeFilter(created_at) AND {DECISION_SCOPE}"
                )
            ],
        ),
        stat(
            "Apply p95",
            [
                promql(
                    "histogram_quantile(0.95, sum by (le) (rate(flowwarden_enforcer_apply_seconds_bucket"
                    "[$__rate_interval])))"
                )
            ],
            unit="s",
            description="Time a backend takes to put a rule in place.",
        ),
    ]
    decisions = [
        timeseries(
            "Decisions by mode and backend",
            [
                sql(
                    f"SELECT $__timeGroupAlias(created_at, '5m'), mode || ' / ' || backend AS mode_backend,"
                    f" count(*) AS decisions FROM decisions WHERE $__timeFilter(created_at) AND"
                    f" {DECISION_SCOPE}"
                    f" GROUP BY 1, 2 ORDER BY 1",
                    fmt="time_series",
                )
            ],
            stack=True,
            description="From the store's decision log: enforce, dry_run and approval per backend.",
        ),
        timeseries(
            "Decisions/s by status (enforcer metrics)",
            [
                promql(
                    "sum by (mode, backend, status)"
                    " (rate(flowwarden_enforcer_decisions_total[$__rate_interval]))",
                    legend="{{mode}} {{backend}} {{status}}",
                )
            ],
            unit="ops",
        ),
    ]
    refusals = [
        bargauge(
            "Refusals by guardrail",
            [
                sql(
                    f"SELECT guardrail, count(*) AS refusals FROM decisions WHERE status = 'refused'"
                    f" AND $__timeFilter(created_at) AND {DECISION_SCOPE} GROUP BY 1 ORDER BY 2 DESC"
                )
            ],
            description="Which guardrail said no: allowlists, protected addresses, prefix and rate limits.",
        ),
        timeseries(
            "Refusals/s by guardrail (enforcer metrics)",
            [
                promql(
                    "sum by (guardrail) (rate(flowwarden_enforcer_refusals_total[$__rate_interval]))",
                    legend="{{guardrail}}",
                )
            ],
            unit="ops",
        ),
    ]
    blocks = [
        table(
            "Active blocks with their TTL",
            [
                sql(
                    f"SELECT namespace || '/' || workload AS workload, src_ip, targets::text AS targets,"
                    " action,"
                    f" backend, mode, status, created_at, expires_at,"
                    f" greatest(extract(epoch FROM expires_at - now()), 0)::bigint AS ttl_left_s"
                    f" FROM decisions WHERE action <> 'unblock' AND status IN ('applied', 'simulated',"
                    " 'pending')"
                    f" AND expires_at > now() AND {DECISION_SCOPE} ORDER BY expires_at LIMIT 200"
                )
            ],
            description="Blocks in force now (dry-run ones marked simulated) and how long they have left.",
            w=24,
            h=9,
        ),
        table(
            "Decision log",
            [
                sql(
                    f"SELECT created_at AS time, action, status, guardrail, mode, backend,"
                    f" namespace || '/' || workload AS workload, src_ip, detector, reason"
                    f" FROM decisions WHERE $__timeFilter(created_at) AND {DECISION_SCOPE}"
                    f" ORDER BY created_at DESC LIMIT 200"
                )
            ],
            w=24,
            h=9,
        ),
    ]
    return dashboard(
        UID,
        "flowwarden / Enforcement",
        "Decisions by mode and backend, refusals by guardrail, active blocks with their TTL.",
        [Row("Now", now), Row("Decisions", decisions), Row("Guardrails", refusals), Row("Blocks", blocks)],
        tags=["enforcement"],
    )
