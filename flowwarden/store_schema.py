"""The store's tables, as SQLAlchemy Core: one definition for SQLite and PostgreSQL.

The tables are flat on purpose: Grafana reads them with plain SQL (``SELECT window_start AS
time, score FROM alerts``), so every field a panel filters or groups by is its own column,
and only free-form detail (evidence, example flows, backend answers) is JSON.

These definitions are always the *latest* schema. A fresh database is created from them
directly; an existing one is brought up to date by :mod:`flowwarden.migrations`. Changing a
table here therefore needs a migration that makes the same change to an existing database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from flowwarden.errors import RecordError


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on both dialects.

    PostgreSQL stores ``timestamptz`` (what Grafana reads as time); SQLite has no timezone, so
    the value is stored as naive UTC text (whose text order is time order) and comes back
    aware. Naive datetimes are taken as UTC; ints and floats as epoch seconds, as in flows.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = datetime.fromtimestamp(float(value), UTC)
        if isinstance(value, datetime) and type(value) is not datetime:
            value = value.to_pydatetime() if hasattr(value, "to_pydatetime") else value  # pandas.Timestamp
        if not isinstance(value, datetime):
            raise RecordError(
                "timestamp", f"expected a datetime or epoch seconds, got {type(value).__name__}"
            )
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Plain ``json`` on PostgreSQL, not ``jsonb``: it keeps the text as written, so floats come
# back bit-exact (jsonb turns 3.2e16 into the integer 32000000000000000) and keys keep their
# order; panels still read inside it with ->, ->> and ::text.
JSONType = sa.JSON()

metadata = sa.MetaData()


def _text(name: str, **kw: Any) -> sa.Column[str]:
    """A text column that is never NULL ("" for unknown): GROUP BY and equality just work."""
    return sa.Column(name, sa.Text, nullable=False, server_default="", **kw)


schema_migrations = sa.Table(
    "schema_migrations",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("applied_at", UTCDateTime, nullable=False),
)

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("detector", sa.String(64), nullable=False),
    _text("technique"),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("src_ip", sa.String(64), nullable=False),
    _text("namespace"),
    _text("pod"),
    _text("workload"),
    _text("node"),
    sa.Column("window_start", UTCDateTime, nullable=False),
    sa.Column("window_end", UTCDateTime, nullable=False),
    sa.Column("first_seen", UTCDateTime, nullable=False),
    sa.Column("last_seen", UTCDateTime, nullable=False),
    sa.Column("targets", JSONType, nullable=False),
    sa.Column("target_ports", JSONType, nullable=False),
    _text("summary"),
    sa.Column("evidence", JSONType, nullable=False),
    sa.Column("example_flows", JSONType, nullable=False),
    _text("model_version"),
    sa.Column("learning", sa.Boolean, nullable=False, server_default=sa.false()),  # migration 4
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index("ix_alerts_window_start", "window_start"),
    sa.Index("ix_alerts_kind_detector", "kind", "detector"),
    sa.Index("ix_alerts_src", "namespace", "workload"),
)

decisions = sa.Table(
    "decisions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    _text("alert_id"),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("src_ip", sa.String(64), nullable=False),
    _text("namespace"),
    _text("pod"),
    _text("workload"),
    _text("node"),
    sa.Column("targets", JSONType, nullable=False),
    sa.Column("target_ports", JSONType, nullable=False),
    sa.Column("ttl_s", sa.Integer, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=True),
    _text("backend"),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    _text("guardrail"),
    _text("reason"),
    _text("decided_by"),
    _text("detector"),
    sa.Column("backend_result", JSONType, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index("ix_decisions_status_expires", "status", "expires_at"),
    sa.Index("ix_decisions_created_at", "created_at"),
    sa.Index("ix_decisions_alert_id", "alert_id"),
)

ROLLUP_DIMENSIONS: tuple[str, ...] = (
    "minute",
    "node",
    "src_namespace",
    "src_workload",
    "src_external",
    "dst_namespace",
    "dst_workload",
    "dst_external",
    "direction",
    "dst_port",
)
ROLLUP_MEASURES: tuple[str, ...] = (
    "bytes",
    "bytes_out",
    "bytes_in",
    "packets",
    "flows",
    "rejected",
    "dns_queries",
    "dns_nxdomain",
)
ROLLUP_COLUMNS: tuple[str, ...] = ROLLUP_DIMENSIONS + ROLLUP_MEASURES

flow_rollups = sa.Table(
    "flow_rollups",
    metadata,
    sa.Column("minute", UTCDateTime, nullable=False),
    _text("node"),
    _text("src_namespace"),
    _text("src_workload"),
    _text("src_external"),  # the source IP when it is no known pod, else ""
    _text("dst_namespace"),
    _text("dst_workload"),
    _text("dst_external"),  # the destination IP when it is no known pod, else ""
    _text("direction"),
    sa.Column("dst_port", sa.Integer, nullable=False),  # 0 when aggregated
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("bytes_out", sa.BigInteger, nullable=False),
    sa.Column("bytes_in", sa.BigInteger, nullable=False),
    sa.Column("packets", sa.BigInteger, nullable=False),
    sa.Column("flows", sa.BigInteger, nullable=False),
    sa.Column("rejected", sa.BigInteger, nullable=False),
    sa.Column("dns_queries", sa.BigInteger, nullable=False, server_default="0"),  # migration 3
    sa.Column("dns_nxdomain", sa.BigInteger, nullable=False, server_default="0"),
    sa.PrimaryKeyConstraint(*ROLLUP_DIMENSIONS, name="pk_flow_rollups"),
)

# Per-minute DNS by asking workload and registered domain (migration 6): the DNS dashboard's
# top names and odd names for every workload, not only those an alert named. Summed like
# flow_rollups; ``max_name_len`` and ``max_record_names`` keep the greatest value on upsert.
DNS_ROLLUP_DIMENSIONS: tuple[str, ...] = (
    "minute",
    "node",
    "src_namespace",
    "src_workload",
    "src_external",
    "domain",
)
DNS_ROLLUP_SUMS: tuple[str, ...] = (
    "records",
    "queries",
    "names",
    "nxdomain",
    "unanswered",
    "entropy_sum",
    "rtt_n",
    "rtt_ms_sum",
)
DNS_ROLLUP_MAXES: tuple[str, ...] = ("max_name_len", "max_record_names", "rtt_ms_max")
DNS_ROLLUP_MEASURES: tuple[str, ...] = DNS_ROLLUP_SUMS + DNS_ROLLUP_MAXES
DNS_ROLLUP_COLUMNS: tuple[str, ...] = DNS_ROLLUP_DIMENSIONS + DNS_ROLLUP_MEASURES

dns_rollups = sa.Table(
    "dns_rollups",
    metadata,
    sa.Column("minute", UTCDateTime, nullable=False),
    _text("node"),
    _text("src_namespace"),
    _text("src_workload"),
    _text("src_external"),  # the source IP when it is no known pod, else ""
    _text("domain"),  # registered domain (public-suffix aware), or OTHER_DOMAINS past the cap
    sa.Column("records", sa.BigInteger, nullable=False),  # DNS flow records
    sa.Column("queries", sa.BigInteger, nullable=False),
    sa.Column("names", sa.BigInteger, nullable=False),  # distinct names per record, summed
    sa.Column("nxdomain", sa.BigInteger, nullable=False),
    sa.Column("unanswered", sa.BigInteger, nullable=False),  # UDP queries without a response packet
    sa.Column("entropy_sum", sa.Float, nullable=False),  # label entropy x names: mean = sum / names
    sa.Column("max_name_len", sa.Integer, nullable=False),
    # The most distinct names one flow record carried: a tunnel's one socket sends hundreds.
    sa.Column("max_record_names", sa.Integer, nullable=False),
    # Resolution time: responses paired with their queries, the sum and the slowest (ms).
    sa.Column("rtt_n", sa.BigInteger, nullable=False),
    sa.Column("rtt_ms_sum", sa.Float, nullable=False),
    sa.Column("rtt_ms_max", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint(*DNS_ROLLUP_DIMENSIONS, name="pk_dns_rollups"),
)

pipeline_state = sa.Table(
    "pipeline_state",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("value", sa.LargeBinary, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

consumed_batches = sa.Table(
    "consumed_batches",
    metadata,
    sa.Column("group_id", sa.String(255), nullable=False),
    sa.Column("topic", sa.String(255), nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("marked_at", UTCDateTime, nullable=False),
    # Bumped by the pipeline when a partition's offsets start again (a topic deleted and
    # recreated, a broker that lost its data): the same offset then is another batch.
    sa.Column("epoch", sa.Integer, nullable=False, server_default="0"),
    sa.PrimaryKeyConstraint("group_id", "topic", "partition", "epoch", "offset", name="pk_consumed_batches"),
    sa.Index("ix_consumed_batches_marked_at", "marked_at"),
)

model_events = sa.Table(
    "model_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("version", sa.String(128), nullable=False),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    _text("detail"),
    sa.Index("ix_model_events_at", "at"),
)

# The service graph's edges (migration 5): one row per rollup with each side named as a node
# of the graph, a workload ("namespace/workload") or an address of no known pod.
SERVICE_EDGES_VIEW = "service_edges"
SERVICE_EDGES_SQL = (
    "SELECT minute, src_namespace, dst_namespace, direction, dst_port,"
    " CASE WHEN src_namespace <> '' THEN src_namespace || '/' || src_workload ELSE src_external END"
    " AS source,"
    " CASE WHEN dst_namespace <> '' THEN dst_namespace || '/' || dst_workload ELSE dst_external END"
    " AS target,"
    " CASE WHEN dst_namespace <> '' THEN 'workload' ELSE 'address' END AS target_kind,"
    " flows, bytes, bytes_out, bytes_in, rejected FROM flow_rollups"
)


def create_views(conn: Any) -> None:
    """The views over the tables (created with them, and by migration 5 on an older store)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"CREATE OR REPLACE VIEW {SERVICE_EDGES_VIEW} AS {SERVICE_EDGES_SQL}")
    else:
        conn.exec_driver_sql(f"CREATE VIEW IF NOT EXISTS {SERVICE_EDGES_VIEW} AS {SERVICE_EDGES_SQL}")


sa.event.listen(metadata, "after_create", lambda target, conn, **kw: create_views(conn))
sa.event.listen(
    metadata,
    "before_drop",
    lambda target, conn, **kw: conn.exec_driver_sql(f"DROP VIEW IF EXISTS {SERVICE_EDGES_VIEW}"),
)

DATA_TABLES: tuple[sa.Table, ...] = (
    alerts,
    decisions,
    flow_rollups,
    dns_rollups,
    pipeline_state,
    consumed_batches,
    model_events,
)
"""Every table that holds data (not the migration bookkeeping)."""
