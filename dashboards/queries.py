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

from flowwarden.dashboards.model import ALL_VALUE, POSTGRES_UID, PROMETHEUS_UID, Json

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
    datasource_uid: str
    text: str
    fmt: str = "table"


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


def interpolate_promql(expr: str, ctx: QueryContext) -> str:
    """Expand the interval macros Grafana offers PromQL (``$__rate_interval`` and friends)."""
    span = int((ctx.time_to - ctx.time_from).total_seconds())
    text = (
        expr.replace("$__rate_interval", ctx.rate_interval)
        .replace("$__interval", ctx.rate_interval)
        .replace("$__range", f"{max(span, 1)}s")
    )
    if "$" in text.replace("$labels", ""):
        raise ValueError(f"unexpanded variable or macro in PromQL: {text}")
    return text


def panel_queries(name: str, board: Json) -> Iterator[PanelQuery]:
    """Every query of a dashboard: its panels, its annotations and its template variables."""
    for panel in board["panels"]:
        for t in panel.get("targets", []):
            uid = t["datasource"]["uid"]
            text = t.get("rawSql") if uid == POSTGRES_UID else t.get("expr")
            if uid not in (POSTGRES_UID, PROMETHEUS_UID) or not text:
                raise ValueError(f"{name}: panel {panel['title']!r} target {t['refId']}: no query for {uid}")
            yield PanelQuery(
                name, panel["title"], panel["type"], t["refId"], uid, text, t.get("format", "table")
            )
    for ann in board["annotations"]["list"]:
        if "target" in ann:
            t = ann["target"]
            yield PanelQuery(
                name,
                f"annotation: {ann['name']}",
                "annotation",
                t["refId"],
                ann["datasource"]["uid"],
                t["rawSql"],
            )
    for var in board["templating"]["list"]:
        yield PanelQuery(
            name, f"variable: {var['name']}", "variable", var["name"], var["datasource"]["uid"], var["query"]
        )
