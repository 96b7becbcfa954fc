"""Small typed builders for Grafana dashboard JSON (schema of Grafana 11.6).

Plain dicts rather than an SDK: the generated JSON is what Grafana stores, so reading the
builders should tell exactly what lands in it. Every panel carries its data-source
reference, and that reference is a template variable, never a uid: ``${datasource}``
(Prometheus) and ``${store}`` (flowwarden's PostgreSQL store), so the dashboards import into
any Grafana whatever its data sources are called. The provisioning files under
``dashboards/provisioning`` define data sources with the uids below for a Grafana of our own
(docker-compose); the variables pick them there like any other.

Variables: ``datasource``, ``store``, ``cluster`` (the ``cluster`` label Prometheus puts on
flowwarden's series: every PromQL selector is narrowed by it), ``namespace`` and ``workload``
(every SQL query is narrowed by them; the store holds one cluster, chosen with ``store``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

SCHEMA_VERSION = 39  # Grafana 11.x dashboard schema
GRID_WIDTH = 24

# The uids of the data sources the provisioning files create (a Grafana of our own).
POSTGRES_UID = "flowwarden-postgres"
PROMETHEUS_UID = "flowwarden-prometheus"
POSTGRES_TYPE = "grafana-postgresql-datasource"
PROMETHEUS_TYPE = "prometheus"
# What panels name: the data-source template variables.
PROMETHEUS_VAR = "datasource"
POSTGRES_VAR = "store"
POSTGRES: dict[str, str] = {"type": POSTGRES_TYPE, "uid": f"${{{POSTGRES_VAR}}}"}
PROMETHEUS: dict[str, str] = {"type": PROMETHEUS_TYPE, "uid": f"${{{PROMETHEUS_VAR}}}"}

# A custom "All" value: Grafana inserts it raw (unformatted), so SQL can test for it.
ALL_VALUE = "'__all__'"
# The cluster variable's "All": a regex matching any cluster label (and its absence).
CLUSTER_ALL = ".*"
CLUSTER_MATCHER = 'cluster=~"${cluster}"'
_METRIC = re.compile(r"\b(flowwarden_[A-Za-z0-9_]+)(\{([^{}]*)\})?")


def with_cluster(expr: str) -> str:
    """Every flowwarden series selector in ``expr`` narrowed to the ``cluster`` variable."""

    def add(m: re.Match[str]) -> str:
        inner = m.group(3)
        return f"{m.group(1)}{{{CLUSTER_MATCHER}{', ' + inner if inner else ''}}}"

    return _METRIC.sub(add, expr)


Json = dict[str, Any]
SqlFormat = Literal["table", "time_series"]


def sql(raw: str, *, fmt: SqlFormat = "table", ref: str = "A") -> Json:
    """A PostgreSQL query target (raw SQL; Grafana macros such as ``$__timeFilter``)."""
    return {
        "refId": ref,
        "datasource": dict(POSTGRES),
        "editorMode": "code",
        "format": fmt,
        "rawQuery": True,
        "rawSql": " ".join(raw.split()),
    }


def promql(expr: str, *, legend: str = "__auto", ref: str = "A", instant: bool = False) -> Json:
    """A Prometheus query target."""
    return {
        "refId": ref,
        "datasource": dict(PROMETHEUS),
        "editorMode": "code",
        "expr": with_cluster(" ".join(expr.split())),
        "legendFormat": legend,
        "range": not instant,
        "instant": instant,
    }


def scope(ns_col: str, wl_col: str) -> str:
    """The SQL condition that applies the namespace and workload template variables."""
    return (
        f"({ALL_VALUE} IN (${{namespace:sqlstring}}) OR {ns_col} IN (${{namespace:sqlstring}}))"
        f" AND ({ALL_VALUE} IN (${{workload:sqlstring}}) OR {wl_col} IN (${{workload:sqlstring}}))"
    )


@dataclass
class Panel:
    """One visualisation; its grid position is assigned when the dashboard is laid out."""

    kind: str
    title: str
    targets: list[Json]
    w: int = 12
    h: int = 8
    description: str = ""
    unit: str = ""
    options: Json = field(default_factory=dict)
    defaults: Json = field(default_factory=dict)
    overrides: list[Json] = field(default_factory=list)
    transformations: list[Json] = field(default_factory=list)

    def to_json(self, panel_id: int, x: int, y: int) -> Json:
        datasource = self.targets[0]["datasource"] if self.targets else dict(POSTGRES)
        defaults: Json = {**self.defaults}
        if self.unit:
            defaults["unit"] = self.unit
        return {
            "id": panel_id,
            "type": self.kind,
            "title": self.title,
            "description": self.description,
            "datasource": dict(datasource),
            "gridPos": {"x": x, "y": y, "w": self.w, "h": self.h},
            "targets": self.targets,
            "options": self.options,
            "fieldConfig": {"defaults": defaults, "overrides": self.overrides},
            "transformations": self.transformations,
        }


@dataclass
class Row:
    """A band of panels laid left to right under a collapsible heading."""

    title: str
    panels: list[Panel]


def _variable(name: str, label: str, query: str) -> Json:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": dict(POSTGRES),
        "query": " ".join(query.split()),
        "definition": " ".join(query.split()),
        "refresh": 2,  # on time-range change
        "multi": True,
        "includeAll": True,
        "allValue": ALL_VALUE,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "sort": 1,
        "hide": 0,
    }


def _datasource_variable(name: str, label: str, ds_type: str) -> Json:
    """Pick a data source of a type; no default named, so Grafana offers its own default first."""
    return {
        "name": name,
        "label": label,
        "type": "datasource",
        "query": ds_type,
        "regex": "",
        "refresh": 1,
        "multi": False,
        "includeAll": False,
        "current": {},
        "options": [],
        "hide": 0,
    }


def cluster_variable() -> Json:
    """The clusters whose flowwarden series Prometheus holds (its ``cluster`` label)."""
    query = 'label_values({__name__=~"flowwarden_.+"}, cluster)'
    return {
        "name": "cluster",
        "label": "Cluster",
        "type": "query",
        "datasource": dict(PROMETHEUS),
        "query": query,  # a classic label_values() query: every Grafana version reads it
        "definition": query,
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": CLUSTER_ALL,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "sort": 1,
        "hide": 0,
    }


def template_variables() -> list[Json]:
    """The data sources, the cluster, then namespace and workload (chained): the scope."""
    namespace = _variable(
        "namespace",
        "Namespace",
        "SELECT DISTINCT src_namespace FROM flow_rollups WHERE src_namespace <> '' ORDER BY 1",
    )
    workload = _variable(
        "workload",
        "Workload",
        f"SELECT DISTINCT src_workload FROM flow_rollups WHERE src_workload <> ''"
        f" AND ({ALL_VALUE} IN (${{namespace:sqlstring}}) OR src_namespace IN (${{namespace:sqlstring}}))"
        f" ORDER BY 1",
    )
    return [
        _datasource_variable(PROMETHEUS_VAR, "Prometheus", PROMETHEUS_TYPE),
        _datasource_variable(POSTGRES_VAR, "Store (PostgreSQL)", POSTGRES_TYPE),
        cluster_variable(),
        namespace,
        workload,
    ]


def alert_annotation() -> Json:
    """Alerts drawn as annotations over every time series (region = the alert's window)."""
    query = (
        "SELECT window_start AS time, window_end AS timeend,"
        " kind || ' ' || detector || ': ' || namespace || '/' || workload"
        " || ' (' || severity || ', score ' || round(score::numeric, 2) || ')' AS text,"
        " kind || ',' || severity AS tags"
        " FROM alerts WHERE $__timeFilter(window_start) AND " + scope("namespace", "workload")
    )
    return {
        "name": "Alerts",
        "datasource": dict(POSTGRES),
        "enable": True,
        "hide": False,
        "iconColor": "red",
        "target": sql(query, ref="Anno"),
    }


def dashboard(uid: str, title: str, description: str, rows: list[Row], *, tags: list[str]) -> Json:
    """Lay the rows out on Grafana's 24-column grid and build the dashboard JSON."""
    panels: list[Json] = []
    next_id = 1
    y = 0
    for row in rows:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"x": 0, "y": y, "w": GRID_WIDTH, "h": 1},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        x = 0
        band_h = 0
        for p in row.panels:
            if p.w > GRID_WIDTH:
                raise ValueError(f"{uid}: panel {p.title!r} wider than the grid ({p.w})")
            if x + p.w > GRID_WIDTH:
                y += band_h
                x, band_h = 0, 0
            panels.append(p.to_json(next_id, x, y))
            next_id += 1
            x += p.w
            band_h = max(band_h, p.h)
        y += band_h
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["flowwarden", *tags],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "utc",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [
            {
                "type": "dashboards",
                "tags": ["flowwarden"],
                "asDropdown": True,
                "title": "flowwarden",
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                alert_annotation(),
            ]
        },
        "templating": {"list": template_variables()},
        "panels": panels,
    }


# ----------------------------------------------------------------- panel shorthands


def timeseries(
    title: str,
    targets: list[Json],
    *,
    unit: str = "",
    w: int = 12,
    h: int = 8,
    description: str = "",
    stack: bool = False,
    overrides: list[Json] | None = None,
) -> Panel:
    custom: Json = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "spanNulls": False}
    if stack:
        custom = {**custom, "stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 40}
    return Panel(
        "timeseries",
        title,
        targets,
        w=w,
        h=h,
        description=description,
        unit=unit,
        defaults={"custom": custom},
        overrides=overrides or [],
        options={
            "legend": {"displayMode": "table", "placement": "right", "calcs": ["sum"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )


def stat(
    title: str, targets: list[Json], *, unit: str = "", w: int = 6, h: int = 4, description: str = ""
) -> Panel:
    return Panel(
        "stat",
        title,
        targets,
        w=w,
        h=h,
        description=description,
        unit=unit,
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
        },
    )


def table(
    title: str,
    targets: list[Json],
    *,
    w: int = 12,
    h: int = 8,
    description: str = "",
    transformations: list[Json] | None = None,
    unit: str = "",
) -> Panel:
    return Panel(
        "table",
        title,
        targets,
        w=w,
        h=h,
        description=description,
        unit=unit,
        transformations=transformations or [],
        options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
    )


def bargauge(
    title: str, targets: list[Json], *, unit: str = "", w: int = 12, h: int = 8, description: str = ""
) -> Panel:
    return Panel(
        "bargauge",
        title,
        targets,
        w=w,
        h=h,
        description=description,
        unit=unit,
        options={
            "orientation": "horizontal",
            "displayMode": "gradient",
            "showUnfilled": True,
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": True},
        },
    )


def barchart(
    title: str,
    targets: list[Json],
    *,
    x_field: str,
    unit: str = "",
    w: int = 12,
    h: int = 8,
    description: str = "",
) -> Panel:
    return Panel(
        "barchart",
        title,
        targets,
        w=w,
        h=h,
        description=description,
        unit=unit,
        options={
            "xField": x_field,
            "orientation": "horizontal",
            "stacking": "normal",
            "legend": {"displayMode": "list", "placement": "bottom"},
            "showValue": "auto",
        },
    )
