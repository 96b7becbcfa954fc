"""Expand panel queries the way Grafana does, so they can run outside Grafana.

There is no Grafana server in tests or CI; to prove that every panel's SQL and PromQL
works, we expand the subset of Grafana's macros and template variables the dashboards use
(and refuse any other, so a new macro cannot slip in untested), then run the text against
the real PostgreSQL and Prometheus.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from flowwarden.dashboards.model import (
    ALL_VALUE,
    CLUSTER_ALL,
    POSTGRES_TYPE,
    PROMETHEUS_TYPE,
    Json,
)

_DURATION = re.compile(r"^'?(\d+)([smhd])'?$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class QueryContext:
    """What Grafana would know when running a panel: the range and the variables' values."""

    time_from: datetime
    time_to: datetime
    variables: dict[str, list[str] | None] = field(default_factory=dict)  # None: "All"
    rate_interval: str = "1m"


@dataclass(frozen=True)
class PanelQuery:
    """One query of one panel (or of an annotation or a template variable)."""

    dashboard: str
    panel: str
    panel_type: str
    ref: str
    datasource_type: str  # POSTGRES_TYPE or PROMETHEUS_TYPE
    text: str
    fmt: str = "table"
    datasource_ref: str = ""  # what the panel names: a variable such as ${datasource}


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds(duration: str) -> int:
    m = _DURATION.match(duration.strip())
    if not m:
        raise ValueError(f"interval {duration!r}: expected e.g. '5m'")
    return int(m.group(1)) * _SECONDS[m.group(2)]


def _sqlstring(values: list[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def _variable(name: str, fmt: str | None, ctx: QueryContext) -> str:
    if name not in ctx.variables:
        raise ValueError(f"template variable ${name} has no value in this context")
    values = ctx.variables[name]
    if values is None:
        return ALL_VALUE  # Grafana inserts a custom "All" value raw, unformatted
    if fmt in (None, "sqlstring", "singlequote"):
        return _sqlstring(values)
    if fmt == "regex":
        return "(" + "|".join(re.escape(v) for v in values) + ")"
    raise ValueError(f"template variable format :{fmt} is not supported here")


_SQL_MACRO = re.compile(r"\$__(\w+)\(([^()]*)\)")
_VAR = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(?!__)(\w+)")


def interpolate_sql(raw: str, ctx: QueryContext) -> str:
    """Expand Grafana's PostgreSQL macros and the template variables."""

    def macro(m: re.Match[str]) -> str:
        name, args = m.group(1), [a.strip() for a in m.group(2).split(",")] if m.group(2).strip() else []
        if name == "timeFilter" and len(args) == 1:
            return f"{args[0]} BETWEEN '{_iso(ctx.time_from)}' AND '{_iso(ctx.time_to)}'"
        if name == "timeFrom" and not args:
            return f"'{_iso(ctx.time_from)}'"
        if name == "timeTo" and not args:
            return f"'{_iso(ctx.time_to)}'"
        if name in ("timeGroup", "timeGroupAlias") and len(args) == 2:
            step = _seconds(args[1])
            expr = f"floor(extract(epoch from {args[0]})/{step})*{step}"
            return f'{expr} AS "time"' if name == "timeGroupAlias" else expr
        raise ValueError(f"SQL macro $__{name}({m.group(2)}) is not supported")

    text = _SQL_MACRO.sub(macro, raw)
    if "$__" in text:
        raise ValueError(f"unexpanded Grafana macro in: {text[text.index('$__') :][:40]}")
    return _VAR.sub(lambda m: _variable(m.group(1) or m.group(3), m.group(2), ctx), text)


_PROM_SPECIAL = re.compile(r"[\\^$.|?*+()\[\]{}]")
_PROM_VARS = ("cluster",)  # the template variables PromQL may use (regex-formatted)


def _prom_variable(name: str, ctx: QueryContext) -> str:
    """A variable as Grafana formats it for Prometheus: a regex of the escaped values."""
    values = ctx.variables.get(name)
    if values is None:
        return CLUSTER_ALL
    # Regex metacharacters escaped, the backslash doubled inside PromQL's quoted string.
    escaped = [_PROM_SPECIAL.sub(lambda m: "\\\\" + m.group(0), v) for v in values]
    return "(" + "|".join(escaped) + ")" if len(escaped) > 1 else escaped[0]


def interpolate_promql(expr: str, ctx: QueryContext) -> str:
    """Expand the interval macros Grafana offers PromQL (``$__rate_interval`` and friends) and
    the ``cluster`` variable (no value or "All": any cluster)."""
    span = int((ctx.time_to - ctx.time_from).total_seconds())
    text = (
        expr.replace("$__rate_interval", ctx.rate_interval)
        .replace("$__interval", ctx.rate_interval)
        .replace("$__range", f"{max(span, 1)}s")
    )
    for name in _PROM_VARS:
        text = text.replace("${" + name + "}", _prom_variable(name, ctx))
    if "$" in text.replace("$labels", ""):
        raise ValueError(f"unexpanded variable or macro in PromQL: {text}")
    return text


_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")


def label_values_query(text: str) -> tuple[str, str]:
    """(series selector, label) of a Prometheus variable's ``label_values(selector, label)``."""
    m = _LABEL_VALUES.match(text.strip())
    if not m:
        raise ValueError(
            f"Prometheus variable query {text!r}: only label_values(selector, label) is supported"
        )
    return (m.group("selector") or "").strip(), m.group("label")


def _source(datasource: Json, where: str) -> tuple[str, str]:
    """(type, reference) of a panel's data source, which must name a variable, never a uid."""
    ref = str(datasource.get("uid", ""))
    if not (ref.startswith("${") and ref.endswith("}")):
        raise ValueError(f"{where}: data source {ref!r} is not a template variable")
    kind = datasource.get("type")
    if kind not in (POSTGRES_TYPE, PROMETHEUS_TYPE):
        raise ValueError(f"{where}: data source type {kind!r} is not PostgreSQL or Prometheus")
    return str(kind), ref


def panel_queries(name: str, board: Json) -> Iterator[PanelQuery]:
    """Every query of a dashboard: its panels, its annotations and its template variables."""
    for panel in board["panels"]:
        for t in panel.get("targets", []):
            where = f"{name}: panel {panel['title']!r} target {t['refId']}"
            kind, ref = _source(t["datasource"], where)
            text = t.get("rawSql") if kind == POSTGRES_TYPE else t.get("expr")
            if not text:
                raise ValueError(f"{where}: no query for {kind}")
            yield PanelQuery(
                name, panel["title"], panel["type"], t["refId"], kind, text, t.get("format", "table"), ref
            )
    for ann in board["annotations"]["list"]:
        if "target" in ann:
            t = ann["target"]
            kind, ref = _source(ann["datasource"], f"{name}: annotation {ann['name']!r}")
            yield PanelQuery(
                name, f"annotation: {ann['name']}", "annotation", t["refId"], kind, t["rawSql"], "table", ref
            )
    for var in board["templating"]["list"]:
        if var["type"] == "datasource":
            continue  # it picks a data source; it runs no query
        kind, ref = _source(var["datasource"], f"{name}: variable {var['name']!r}")
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        yield PanelQuery(name, f"variable: {var['name']}", "variable", var["name"], kind, query, "table", ref)


# --- Declared policy and threat feeds (issue 17): both boards show their alerts per workload.
RULE_DETECTORS = "('threat_feed', 'policy_violation')"


def rule_alerts_per_workload(alert_scope: str) -> str:
    """Feed-hit and policy-violation alerts per namespace/workload (alerts carry the detector)."""
    return (
        "SELECT namespace || '/' || workload AS workload,"
        " count(*) FILTER (WHERE detector = 'threat_feed') AS feed_hit_alerts,"
        " count(*) FILTER (WHERE detector = 'policy_violation') AS policy_violation_alerts,"
        " max(last_seen) AS last_seen"
        f" FROM alerts WHERE detector IN {RULE_DETECTORS} AND $__timeFilter(window_start) AND {alert_scope}"
        " GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 20"
    )


def rule_evidence_per_workload(alert_scope: str) -> str:
    """Per namespace/workload and detector: the feeds hit or the policy rules broken (from the
    alerts' evidence, ``feeds`` / ``policy_rules``): no schema change needed."""
    return (
        "SELECT namespace || '/' || workload AS workload, detector, count(DISTINCT id) AS alerts,"
        " coalesce(string_agg(DISTINCT item, ', '), '') AS feeds_or_rules, max(last_seen) AS last_seen"
        " FROM alerts LEFT JOIN LATERAL jsonb_array_elements_text(coalesce(evidence::jsonb ->"
        " CASE WHEN detector = 'threat_feed' THEN 'feeds' ELSE 'policy_rules' END, '[]'::jsonb))"
        " AS listed(item) ON true"
        f" WHERE detector IN {RULE_DETECTORS} AND $__timeFilter(window_start) AND {alert_scope}"
        " GROUP BY 1, 2 ORDER BY alerts DESC, 1, 2 LIMIT 50"
    )
