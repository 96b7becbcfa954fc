"""The store: alerts, decisions, per-minute flow rollups, checkpoints and batch marks.

One code path for SQLite (embedded, ``sqlite:///flowwarden.db``) and PostgreSQL
(``postgresql+psycopg://user@host/db``; plain ``postgresql://`` is accepted): SQLAlchemy
Core, upserts with ``ON CONFLICT`` on both. The constructor does no I/O; :meth:`Store.start`
connects and migrates, :meth:`Store.stop` releases the connections.

Exactly-once effects: every write method takes an optional ``conn``. The pipeline opens
``with store.transaction() as conn:`` and passes it to :meth:`Store.add_rollups` and
:meth:`Store.mark_batches`, so a batch's rollups and the mark that says "this batch is done"
commit together or not at all. A batch replayed after a crash is then either already marked
(skip it: :meth:`Store.seen_batches`) or was never written; and if two consumers race on it,
the second mark raises :class:`DuplicateBatch` and its transaction rolls back. Alerts need
no mark: :meth:`Store.upsert_alerts` is idempotent (an alert's id is derived from its
evidence), so the pipeline writes them as soon as they are raised, in their own transaction,
and a replay upserts the same rows again.

Several workers write to one PostgreSQL: every write method sends its rows in key order, so
two transactions that touch the same rollup or alert lock them in the same order and wait
for each other instead of deadlocking; :meth:`Store.in_transaction` runs a unit of work
again when the database still aborts it for a reason that a second try clears (deadlock,
serialization failure, a connection lost mid-transaction).
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from enum import Enum
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from flowwarden.dns_rollups import conform_dns_rollups, dns_rollup_dtypes, empty_dns_rollups
from flowwarden.errors import ConfigError, FlowwardenError, RecordError, ServiceUnavailable
from flowwarden.migrations import MIGRATIONS, Migration, SchemaTooNew, applied_versions, migrate
from flowwarden.records import SEVERITY_ORDER, Alert, Decision, Entity
from flowwarden.retry import RetryPolicy
from flowwarden.rollups import conform_rollups, empty_rollups, rollup_dtypes
from flowwarden.store_schema import (
    DATA_TABLES,
    DNS_ROLLUP_COLUMNS,
    DNS_ROLLUP_DIMENSIONS,
    DNS_ROLLUP_MAXES,
    ROLLUP_COLUMNS,
    ROLLUP_DIMENSIONS,
    alerts,
    consumed_batches,
    decisions,
    dns_rollups,
    flow_rollups,
    model_events,
    pipeline_state,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


def transient_cause(exc: BaseException) -> str | None:
    """Why running the same transaction again may succeed (it was rolled back whole), or None.

    One of ``deadlock``, ``serialization``, ``connection`` (refused, reset, lost
    mid-transaction), ``shutdown`` (the server is shutting down or starting up) or ``busy``
    (SQLite still locked after its busy timeout): the ``cause`` label of the retry metric.
    """
    if not isinstance(exc, sa.exc.DBAPIError):
        return None
    if exc.connection_invalidated:
        return "connection"
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate == "40P01":
        return "deadlock"
    if sqlstate == "40001":
        return "serialization"
    if sqlstate in ("57P01", "57P02", "57P03"):  # admin or crash shutdown, cannot connect now
        return "shutdown"
    if isinstance(sqlstate, str) and sqlstate.startswith("08"):  # connection exception class
        return "connection"
    if (
        sqlstate is None
        and isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError)
        and type(orig).__module__.startswith("psycopg")
    ):
        # psycopg gives no SQLSTATE when there is no server to give one: connection refused
        # or reset, server closed the connection unexpectedly.
        return "connection"
    if isinstance(orig, sqlite3.OperationalError) and getattr(orig, "sqlite_errorcode", None) in (
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
    ):
        return "busy"
    return None


__all__ = [
    "DATA_TABLES",
    "ROLLUP_COLUMNS",
    "DuplicateBatch",
    "SchemaTooNew",
    "Store",
    "UnknownDecision",
    "alert_from_row",
    "alert_to_row",
    "decision_from_row",
    "decision_to_row",
    "normalise_url",
]

BatchRef = tuple[str, int, int]
"""A consumed batch: (topic, partition, offset)."""

BLOCK_ACTIONS: tuple[str, ...] = ("block", "quarantine")
# Statuses of a block that was in place at some time (counted by rate guardrails).
WAS_APPLIED: tuple[str, ...] = ("applied", "expired", "revoked")
_CHUNK = 1000  # bound on the size of one IN (...) list


class DuplicateBatch(FlowwardenError):
    """A batch was already marked done for this consumer group: its effects are in the store."""


class UnknownDecision(FlowwardenError):
    """No decision with that id."""


_UNSET: Any = object()
_READ_ONLY = "flowwarden_read_only"  # execution option: a read transaction on SQLite


# --------------------------------------------------------------------------- URLs


def normalise_url(url: str) -> str:
    """Pick the psycopg 3 driver for PostgreSQL URLs; reject what the store cannot open."""
    url = url.strip()
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if url.startswith(("postgresql+psycopg://", "sqlite://")):
        return url
    raise ConfigError(
        f"store.url: {url!r} is not supported; use sqlite:///path/to/flowwarden.db "
        "or postgresql://user@host:5432/database"
    )


def _masked(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparsable url>"


def _make_engine(url: str) -> Engine:
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    database = parsed.database or ""
    if database in ("", ":memory:"):
        engine = sa.create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        parent = Path(database).expanduser().resolve().parent
        if not parent.is_dir():
            raise ConfigError(f"store.url: directory {parent} does not exist")
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin, so that DDL
        # is transactional and a read-then-write transaction cannot deadlock (BEGIN IMMEDIATE).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=30000")
        if database not in ("", ":memory:"):
            _set_wal(cur)
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Reads take no lock (WAL lets them run beside a writer); writes take it up front.
        read_only = conn.get_execution_options().get(_READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _set_wal(cur: Any, attempts: int = 100, pause_s: float = 0.05) -> None:
    """Switch a file database to WAL. The switch needs the database to itself and SQLite
    answers "locked" at once, without its busy handler, while another process is starting
    up on the same fresh file: retry, bounded."""
    for attempt in range(attempts):
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(pause_s)


def _insert(conn: Connection, table: sa.Table) -> Any:
    """``INSERT`` with the dialect's ``ON CONFLICT`` support (same API on both)."""
    return _insert_for(conn.dialect.name, table)


def _insert_for(dialect_name: str, table: sa.Table) -> Any:
    if dialect_name == "postgresql":
        return pg_dialect.insert(table)
    return sqlite_dialect.insert(table)


# --------------------------------------------------------------------------- conversions


def _claim_number(raw: bytes | None) -> int:
    """A stored claim (a decimal number); 0 for none, or for one that is not a number."""
    try:
        return int(bytes(raw).decode()) if raw else 0
    except (UnicodeDecodeError, ValueError):
        return 0


def _clean(text: str) -> str:
    """PostgreSQL text and JSON cannot hold NUL: it becomes U+FFFD on both dialects."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _clean_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _clean(v) if isinstance(v, str) else v for k, v in row.items()}


def _jsonable(value: Any, field: str) -> Any:
    """Plain JSON for a JSON column: numpy scalars unboxed, NaN/inf as null (JSON has none)."""
    if isinstance(value, str):
        return _clean(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return _jsonable(value.item(), field)
    if isinstance(value, Enum):
        return _jsonable(value.value, field)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {_clean(str(k)): _jsonable(v, field) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset | np.ndarray):
        return [_jsonable(v, field) for v in value]
    raise RecordError(field, f"a {type(value).__name__} cannot be stored as JSON")


def alert_to_row(alert: Alert, now: datetime | None = None) -> dict[str, Any]:
    """An :class:`Alert` as one flat ``alerts`` row."""
    e = alert.entity
    row = {
        "id": alert.id,
        "kind": alert.kind,
        "detector": alert.detector,
        "technique": alert.technique,
        "score": float(alert.score),
        "severity": alert.severity,
        "src_ip": e.ip,
        "namespace": e.namespace,
        "pod": e.pod,
        "workload": e.workload,
        "node": e.node,
        "window_start": alert.window_start,
        "window_end": alert.window_end,
        "first_seen": alert.first_seen,
        "last_seen": alert.last_seen,
        "targets": list(alert.targets),
        "target_ports": [int(p) for p in alert.target_ports],
        "summary": alert.summary,
        "evidence": _jsonable(alert.evidence, "evidence"),
        "example_flows": _jsonable(alert.example_flows, "example_flows"),
        "model_version": alert.model_version,
        "learning": bool(alert.learning),
        "created_at": alert.created_at,
        "updated_at": now or datetime.now(UTC),
    }
    return _clean_row(row)


def _entity_from_row(row: Mapping[Any, Any]) -> Entity:
    """The source entity that ``alerts`` and ``decisions`` rows both keep in flat columns."""
    return Entity(
        ip=row["src_ip"],
        namespace=row["namespace"],
        pod=row["pod"],
        workload=row["workload"],
        node=row["node"],
    )


def alert_from_row(row: Mapping[Any, Any]) -> Alert:
    """The :class:`Alert` an ``alerts`` row holds."""
    return Alert(
        id=row["id"],
        kind=row["kind"],
        detector=row["detector"],
        technique=row["technique"],
        score=row["score"],
        severity=row["severity"],
        entity=_entity_from_row(row),
        window_start=row["window_start"],
        window_end=row["window_end"],
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        targets=row["targets"],
        target_ports=row["target_ports"],
        summary=row["summary"],
        evidence=row["evidence"],
        example_flows=row["example_flows"],
        model_version=row["model_version"],
        learning=bool(row["learning"]),
        created_at=row["created_at"],
    )


def decision_to_row(decision: Decision, now: datetime | None = None) -> dict[str, Any]:
    """A :class:`Decision` as one flat ``decisions`` row."""
    s = decision.source
    row = {
        "id": decision.id,
        "alert_id": decision.alert_id,
        "action": decision.action,
        "src_ip": s.ip,
        "namespace": s.namespace,
        "pod": s.pod,
        "workload": s.workload,
        "node": s.node,
        "targets": list(decision.targets),
        "target_ports": [int(p) for p in decision.target_ports],
        "ttl_s": int(decision.ttl_s),
        "expires_at": decision.expires_at,
        "backend": decision.backend,
        "mode": decision.mode,
        "status": decision.status,
        "guardrail": decision.guardrail,
        "reason": decision.reason,
        "decided_by": decision.decided_by,
        "detector": decision.detector,
        "backend_result": _jsonable(decision.backend_result, "backend_result"),
        "created_at": decision.created_at,
        "updated_at": now or datetime.now(UTC),
    }
    return _clean_row(row)


def decision_from_row(row: Mapping[Any, Any]) -> Decision:
    """The :class:`Decision` a ``decisions`` row holds."""
    return Decision(
        id=row["id"],
        alert_id=row["alert_id"],
        action=row["action"],
        source=_entity_from_row(row),
        targets=row["targets"],
        target_ports=row["target_ports"],
        ttl_s=row["ttl_s"],
        expires_at=row["expires_at"],
        backend=row["backend"],
        mode=row["mode"],
        status=row["status"],
        guardrail=row["guardrail"],
        reason=row["reason"],
        decided_by=row["decided_by"],
        detector=row["detector"],
        backend_result=row["backend_result"],
        created_at=row["created_at"],
    )


# Fields of an alert that follow its newest version when the same id arrives again.
_ALERT_LATEST = (
    "technique",
    "namespace",
    "pod",
    "workload",
    "node",
    "targets",
    "target_ports",
    "summary",
    "evidence",
    "example_flows",
    "model_version",
    "learning",
)


def _merge_alert_rows(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The same merge as the SQL upsert, for two versions of one alert in the same call."""
    out = dict(old)
    out["score"] = max(old["score"], new["score"])
    if SEVERITY_ORDER[new["severity"]] > SEVERITY_ORDER[old["severity"]]:
        out["severity"] = new["severity"]
    out["first_seen"] = min(old["first_seen"], new["first_seen"])
    out["last_seen"] = max(old["last_seen"], new["last_seen"])
    out["window_end"] = max(old["window_end"], new["window_end"])
    if new["last_seen"] >= old["last_seen"]:
        for f in _ALERT_LATEST:
            out[f] = new[f]
    out["updated_at"] = new["updated_at"]
    return out


def _alert_upsert(conn: Connection) -> Any:
    """``INSERT … ON CONFLICT (id) DO UPDATE``: max score and severity, widest span, newest details."""
    stmt = _insert(conn, alerts)
    ex, t = stmt.excluded, alerts.c
    rank = dict(SEVERITY_ORDER)
    newer = ex.last_seen >= t.last_seen
    update: dict[str, Any] = {
        "score": sa.case((ex.score > t.score, ex.score), else_=t.score),
        "severity": sa.case(
            (sa.case(rank, value=ex.severity) > sa.case(rank, value=t.severity), ex.severity),
            else_=t.severity,
        ),
        "first_seen": sa.case((ex.first_seen < t.first_seen, ex.first_seen), else_=t.first_seen),
        "last_seen": sa.case((newer, ex.last_seen), else_=t.last_seen),
        "window_end": sa.case((ex.window_end > t.window_end, ex.window_end), else_=t.window_end),
        "updated_at": ex.updated_at,
    }
    for f in _ALERT_LATEST:
        update[f] = sa.case((newer, ex[f]), else_=t[f])
    return stmt.on_conflict_do_update(index_elements=[alerts.c.id], set_=update)


# --------------------------------------------------------------------------- rollups


def _rollup_upsert(
    dialect: Any, df: pd.DataFrame, table: sa.Table, dimensions: Sequence[str], maxes: Sequence[str] = ()
) -> tuple[str, list[tuple[Any, ...]], Callable[[tuple[Any, ...]], Any]]:
    """A rollup upsert as driver SQL, plain row tuples for one ``executemany``, and the
    function that gives a row tuple's primary key (to send rows in key order). Measures are
    added to what is stored, except ``maxes``, which keep the greater value.

    SQLAlchemy's per-row parameter processing cost five times the database's own work on
    a batch of thousands of rollups, so the statement is compiled once and the values are
    converted by column: the minute as SQLAlchemy's SQLite text format (its key compares as
    text there) or an aware datetime for PostgreSQL.
    """
    stmt = _insert_for(dialect.name, table)
    greatest = sa.func.greatest if dialect.name == "postgresql" else sa.func.max  # SQLite: scalar max
    names = [c.name for c in table.columns]
    update = {
        m: greatest(table.c[m], stmt.excluded[m]) if m in maxes else table.c[m] + stmt.excluded[m]
        for m in names
        if m not in dimensions
    }
    compiled = stmt.on_conflict_do_update(index_elements=list(dimensions), set_=update).compile(
        dialect=dialect
    )
    minute = df["minute"]
    columns: dict[str, list[Any]] = {c: df[c].tolist() for c in names if c != "minute"}
    if dialect.name == "sqlite":
        columns["minute"] = minute.dt.tz_convert(None).dt.strftime("%Y-%m-%d %H:%M:%S.%f").tolist()
    else:
        columns["minute"] = minute.dt.to_pydatetime().tolist()
    order = list(compiled.positiontup) if compiled.positional else None
    sql = str(compiled)
    if order is None:  # named placeholders (psycopg): the same values, by position
        for c in names:
            sql = sql.replace(f"%({c})s", "%s")
        order = sorted(names, key=lambda c: str(compiled).index(f"%({c})s"))
    key = itemgetter(*(order.index(c) for c in dimensions))
    return sql, list(zip(*(columns[c] for c in order), strict=True)), key


# --------------------------------------------------------------------------- the store


class Store:
    """Alerts, decisions, rollups, checkpoints and batch marks in SQLite or PostgreSQL."""

    def __init__(
        self,
        url: str,
        *,
        migrations: Sequence[Migration] = MIGRATIONS,
        on_retry: Callable[[str], None] | None = None,
        retry_deadline_s: float = 60.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.url = normalise_url(url)
        self._migrations = tuple(migrations)
        self._engine: Engine | None = None
        self.on_retry = on_retry  # called with the cause each time in_transaction tries again
        self.retry_deadline_s = retry_deadline_s  # settings.store.retry_deadline_s
        # RetryPolicy.from_settings(settings.retry, "store"); alone, short waits for a deadlock victim.
        self.retry = retry or RetryPolicy(target="store", initial_s=0.05, max_s=2.0)

    # ---- lifecycle

    def start(self) -> Store:
        """Connect and apply the migrations this database lacks. Returns ``self``."""
        if self._engine is not None:
            return self
        try:
            engine = _make_engine(self.url)
        except ModuleNotFoundError as exc:
            raise ServiceUnavailable(
                f"store: database driver missing ({exc.name}); pip install psycopg"
            ) from exc
        try:
            with engine.begin() as conn:
                migrate(conn, self._migrations)
        except SchemaTooNew:
            engine.dispose()
            raise
        except sa.exc.DBAPIError as exc:  # not reachable, no such database, not a database file
            engine.dispose()
            cause = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
            raise ServiceUnavailable(f"store at {_masked(self.url)} is not reachable: {cause}") from exc
        self._engine = engine
        return self

    def stop(self) -> None:
        """Close every pooled connection (idempotent)."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> Store:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise FlowwardenError("store is not started: call Store.start() first")
        return self._engine

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return sa.engine.make_url(self.url).get_backend_name()

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            versions = applied_versions(conn)
        return versions[-1] if versions else 0

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction: pass the connection to write methods; it commits on exit."""
        with self.engine.begin() as conn:
            yield conn

    def in_transaction(
        self,
        work: Callable[[Connection], T],
        *,
        attempts: int | None = None,
        deadline_s: float | None = None,
    ) -> T:
        """Run ``work(conn)`` in one transaction, again while the failure is transient.

        For units of work that are safe to repeat because a failed try left nothing behind:
        the database rolled the whole transaction back, or it never began (the server
        refused the connection, was restarting, dropped it). The one retry policy
        (:attr:`retry`, target ``store``) spaces the tries; no new try starts once
        ``deadline_s`` (default :attr:`retry_deadline_s`) has passed since the first, nor
        after ``attempts`` tries when given. A failure that is not transient, or the last
        one, is raised.
        """
        if attempts is not None and attempts < 1:
            raise ValueError("attempts must be at least 1")
        budget = self.retry_deadline_s if deadline_s is None else deadline_s
        policy = self.retry.with_limits(attempts=attempts, deadline_s=budget)

        def transient(exc: BaseException) -> bool:
            return isinstance(exc, sa.exc.DBAPIError) and transient_cause(exc) is not None

        def counted(exc: BaseException) -> None:
            why = transient_cause(exc)
            if self.on_retry is not None and why is not None:
                self.on_retry(why)

        def once() -> T:
            with self.engine.begin() as conn:
                return work(conn)

        started = time.monotonic()
        try:
            return policy.call(once, transient, on_retry=counted)
        except sa.exc.DBAPIError as exc:
            if transient_cause(exc) is not None:
                cause = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
                elapsed = time.monotonic() - started
                log.error("store transaction failed for good after %.1fs (%s)", elapsed, cause)
            raise

    @contextmanager
    def _write(self, conn: Connection | None) -> Iterator[Connection]:
        if conn is not None:
            yield conn
        else:
            with self.engine.begin() as own:
                yield own

    @contextmanager
    def _read(self, conn: Connection | None) -> Iterator[Connection]:
        if conn is not None:
            yield conn
        else:
            with self.engine.connect() as own:
                yield own.execution_options(**{_READ_ONLY: True})

    # ---- alerts

    def upsert_alerts(self, items: Iterable[Alert], *, conn: Connection | None = None) -> int:
        """Insert or merge alerts by id; a replay never duplicates. Returns the rows written.

        On a known id: the max score and severity are kept, ``first_seen``/``last_seen``/
        ``window_end`` widen, and the other details follow the version seen last.
        """
        now = datetime.now(UTC)
        merged: dict[str, dict[str, Any]] = {}
        for alert in items:
            row = alert_to_row(alert, now)
            merged[row["id"]] = _merge_alert_rows(merged[row["id"]], row) if row["id"] in merged else row
        if not merged:
            return 0
        with self._write(conn) as c:  # in id order: concurrent writers lock rows alike
            c.execute(_alert_upsert(c), [merged[k] for k in sorted(merged)])
        return len(merged)

    def get_alert(self, alert_id: str, *, conn: Connection | None = None) -> Alert | None:
        with self._read(conn) as c:
            row = c.execute(sa.select(alerts).where(alerts.c.id == alert_id)).mappings().first()
        return alert_from_row(row) if row else None

    def list_alerts(
        self,
        *,
        since: datetime | None = None,
        kind: str | None = None,
        detector: str | None = None,
        limit: int | None = None,
        conn: Connection | None = None,
    ) -> list[Alert]:
        """Alerts by ``window_start`` (oldest first), optionally from ``since`` on."""
        q = sa.select(alerts).order_by(alerts.c.window_start, alerts.c.id)
        if since is not None:
            q = q.where(alerts.c.window_start >= since)
        if kind is not None:
            q = q.where(alerts.c.kind == kind)
        if detector is not None:
            q = q.where(alerts.c.detector == detector)
        if limit is not None:
            q = q.limit(limit)
        with self._read(conn) as c:
            return [alert_from_row(r) for r in c.execute(q).mappings()]

    # ---- decisions

    def insert_decisions(self, items: Iterable[Decision], *, conn: Connection | None = None) -> int:
        """Record decisions; an id already stored is left as it is. Returns how many are new."""
        now = datetime.now(UTC)
        rows = list({r["id"]: r for r in (decision_to_row(d, now) for d in items)}.values())
        if not rows:
            return 0
        with self._write(conn) as c:
            stmt = _insert(c, decisions).on_conflict_do_nothing(index_elements=[decisions.c.id])
            inserted = c.execute(stmt.returning(decisions.c.id), rows).scalars().all()
        return len(inserted)

    def update_decision(
        self,
        decision_id: str,
        *,
        status: str | None = None,
        backend_result: Mapping[str, Any] | None = None,
        reason: str | None = None,
        guardrail: str | None = None,
        backend: str | None = None,
        expires_at: datetime | None = _UNSET,
        conn: Connection | None = None,
    ) -> Decision:
        """Change a decision's outcome (e.g. pending -> applied -> revoked); returns it updated.

        Values are validated as a :class:`Decision` before anything is written.
        """
        with self._write(conn) as c:
            row = c.execute(sa.select(decisions).where(decisions.c.id == decision_id)).mappings().first()
            if row is None:
                raise UnknownDecision(f"decision {decision_id!r} is not in the store")
            current = decision_from_row(row)
            changes: dict[str, Any] = {}
            if status is not None:
                changes["status"] = status
            if backend_result is not None:
                changes["backend_result"] = dict(backend_result)
            if reason is not None:
                changes["reason"] = reason
            if guardrail is not None:
                changes["guardrail"] = guardrail
            if backend is not None:
                changes["backend"] = backend
            if expires_at is not _UNSET:
                changes["expires_at"] = expires_at
            try:
                updated = Decision.model_validate({**current.model_dump(), **changes})
            except ValidationError as exc:
                err = exc.errors()[0]
                field = ".".join(str(p) for p in err["loc"]) or "decision"
                raise RecordError(field, f"{err['msg']} (got {err.get('input')!r})") from exc
            new_row = decision_to_row(updated)
            values = {k: new_row[k] for k in changes} | {"updated_at": new_row["updated_at"]}
            c.execute(sa.update(decisions).where(decisions.c.id == decision_id).values(**values))
        return updated

    def get_decision(self, decision_id: str, *, conn: Connection | None = None) -> Decision | None:
        with self._read(conn) as c:
            row = c.execute(sa.select(decisions).where(decisions.c.id == decision_id)).mappings().first()
        return decision_from_row(row) if row else None

    def list_decisions(
        self,
        status: str | Iterable[str] | None = None,
        since: datetime | None = None,
        *,
        alert_id: str | None = None,
        limit: int | None = None,
        conn: Connection | None = None,
    ) -> list[Decision]:
        """Decisions by ``created_at`` (oldest first), filtered by status(es) and time."""
        q = sa.select(decisions).order_by(decisions.c.created_at, decisions.c.id)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            q = q.where(decisions.c.status.in_(statuses))
        if since is not None:
            q = q.where(decisions.c.created_at >= since)
        if alert_id is not None:
            q = q.where(decisions.c.alert_id == alert_id)
        if limit is not None:
            q = q.limit(limit)
        with self._read(conn) as c:
            return [decision_from_row(r) for r in c.execute(q).mappings()]

    def active_blocks(self, now: datetime | None = None, *, conn: Connection | None = None) -> list[Decision]:
        """Applied blocks and quarantines not yet expired (no ``expires_at``: until revoked)."""
        now = now or datetime.now(UTC)
        q = (
            sa.select(decisions)
            .where(decisions.c.status == "applied", decisions.c.action.in_(BLOCK_ACTIONS))
            .where(sa.or_(decisions.c.expires_at.is_(None), decisions.c.expires_at > now))
            .order_by(decisions.c.created_at, decisions.c.id)
        )
        with self._read(conn) as c:
            return [decision_from_row(r) for r in c.execute(q).mappings()]

    def count_blocks_since(
        self, ts: datetime, *, statuses: Sequence[str] = WAS_APPLIED, conn: Connection | None = None
    ) -> int:
        """Blocks and quarantines created at or after ``ts`` that were put in place (rate guardrail)."""
        q = (
            sa.select(sa.func.count())
            .select_from(decisions)
            .where(decisions.c.action.in_(BLOCK_ACTIONS), decisions.c.status.in_(list(statuses)))
            .where(decisions.c.created_at >= ts)
        )
        with self._read(conn) as c:
            return int(c.execute(q).scalar_one())

    # ---- rollups

    def add_rollups(self, df: pd.DataFrame, *, conn: Connection | None = None) -> int:
        """Add rollup rows (from :func:`rollup_flows`) to what is stored; returns rows written."""
        frame = conform_rollups(df)
        if frame.empty:
            return 0
        return self._upsert_rollups(frame, flow_rollups, ROLLUP_DIMENSIONS, (), conn)

    def add_dns_rollups(self, df: pd.DataFrame, *, conn: Connection | None = None) -> int:
        """Add DNS rollup rows (from :func:`~flowwarden.dns_rollups.rollup_dns`); returns rows written."""
        frame = conform_dns_rollups(df)
        if frame.empty:
            return 0
        return self._upsert_rollups(frame, dns_rollups, DNS_ROLLUP_DIMENSIONS, DNS_ROLLUP_MAXES, conn)

    def _upsert_rollups(
        self,
        frame: pd.DataFrame,
        table: sa.Table,
        dimensions: Sequence[str],
        maxes: Sequence[str],
        conn: Connection | None,
    ) -> int:
        with self._write(conn) as c:
            sql, rows, key = _rollup_upsert(c.dialect, frame, table, dimensions, maxes)
            if c.dialect.name != "sqlite":  # SQLite locks the whole database up front: no row locks
                # In key order: two workers' transactions over shared keys (replicas of one
                # workload) take their row locks in the same order, so one waits instead of
                # deadlocking. Sorting the row tuples costs far less than sorting the frame.
                rows.sort(key=key)
            c.exec_driver_sql(sql, rows)
        return len(rows)

    def list_dns_rollups(
        self, *, since: datetime | None = None, until: datetime | None = None, conn: Connection | None = None
    ) -> pd.DataFrame:
        """Stored DNS rollups in ``[since, until)``, in key order."""
        frame = self._list_minutes(dns_rollups, DNS_ROLLUP_COLUMNS, since, until, conn)
        return empty_dns_rollups() if frame is None else dns_rollup_dtypes(frame)

    def list_rollups(
        self, *, since: datetime | None = None, until: datetime | None = None, conn: Connection | None = None
    ) -> pd.DataFrame:
        """Stored rollups in ``[since, until)`` as a frame with the rollup columns."""
        frame = self._list_minutes(flow_rollups, ROLLUP_COLUMNS, since, until, conn)
        return empty_rollups() if frame is None else rollup_dtypes(frame)

    def _list_minutes(
        self,
        table: sa.Table,
        columns: Sequence[str],
        since: datetime | None,
        until: datetime | None,
        conn: Connection | None,
    ) -> pd.DataFrame | None:
        """Rows of a per-minute table in ``[since, until)``, in key order (None: no rows)."""
        q = sa.select(*(table.c[c] for c in columns)).order_by(*table.primary_key.columns)
        if since is not None:
            q = q.where(table.c.minute >= since)
        if until is not None:
            q = q.where(table.c.minute < until)
        with self._read(conn) as c:
            rows = c.execute(q).all()
        return pd.DataFrame([tuple(r) for r in rows], columns=list(columns)) if rows else None

    def prune_rollups(self, before: datetime, *, conn: Connection | None = None) -> int:
        """Delete rollups (flow and DNS) of minutes before ``before`` (retention); returns how many rows."""
        with self._write(conn) as c:
            n = c.execute(sa.delete(flow_rollups).where(flow_rollups.c.minute < before)).rowcount
            n_dns = c.execute(sa.delete(dns_rollups).where(dns_rollups.c.minute < before)).rowcount
            return int(n) + int(n_dns)

    # ---- checkpoints

    def put_state(self, key: str, value: bytes, *, conn: Connection | None = None) -> None:
        """Store a checkpoint under ``key``, replacing the previous one."""
        if not isinstance(value, bytes | bytearray | memoryview):
            raise RecordError("value", f"state must be bytes, got {type(value).__name__}")
        row = {"key": key, "value": bytes(value), "updated_at": datetime.now(UTC)}
        with self._write(conn) as c:
            stmt = _insert(c, pipeline_state)
            c.execute(
                stmt.on_conflict_do_update(
                    index_elements=[pipeline_state.c.key],
                    set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
                ),
                row,
            )

    def get_state(self, key: str, *, conn: Connection | None = None) -> bytes | None:
        """The checkpoint stored under ``key``, or None."""
        with self._read(conn) as c:
            value = c.execute(sa.select(pipeline_state.c.value).where(pipeline_state.c.key == key)).scalar()
        return bytes(value) if value is not None else None

    def claim_state(self, key: str, *, conn: Connection | None = None) -> int:
        """Take over what ``key`` guards (a fencing token): one more than the last claim, stored.

        Whoever claimed last owns it; an earlier claimant's :meth:`holds_claim` is False from
        now on. The row is locked until the transaction ends, so a save that checks its claim
        either commits before this claim or sees it.
        """
        with self._write(conn) as c:
            raw = c.execute(
                sa.select(pipeline_state.c.value).where(pipeline_state.c.key == key).with_for_update()
            ).scalar()
            claim = _claim_number(raw) + 1
            self.put_state(key, str(claim).encode(), conn=c)
            return claim

    def holds_claim(self, key: str, claim: int, *, conn: Connection | None = None) -> bool:
        """True while ``claim`` is the newest claim on ``key``; it stays so until ``conn``'s
        transaction ends (the row is locked: a newer claim waits for it)."""
        with self._write(conn) as c:
            done = c.execute(
                sa.update(pipeline_state)
                .where(pipeline_state.c.key == key, pipeline_state.c.value == str(claim).encode())
                .values(updated_at=datetime.now(UTC))
            )
            return bool(done.rowcount)

    def delete_state(self, key: str, *, conn: Connection | None = None) -> bool:
        """Forget a checkpoint; True if there was one."""
        with self._write(conn) as c:
            return bool(c.execute(sa.delete(pipeline_state).where(pipeline_state.c.key == key)).rowcount)

    # ---- exactly-once bookkeeping

    def mark_batches(
        self,
        group_id: str,
        batches: Iterable[BatchRef],
        *,
        epoch: int = 0,
        conn: Connection | None = None,
    ) -> None:
        """Record batches as done for ``group_id``; raises :class:`DuplicateBatch` if any already was.

        ``epoch`` is the batches' partitions' epoch: the pipeline starts a new one when a
        partition's offsets start again, so the same offset then marks another batch.
        Call it with the transaction's ``conn`` that also wrote the batches' effects: the
        exception then rolls those effects back, so they are in the store once.
        """
        refs = sorted({(str(t), int(p), int(o)) for t, p, o in batches})
        if not refs:
            return
        now = datetime.now(UTC)
        rows = [
            {"group_id": group_id, "topic": t, "partition": p, "offset": o, "epoch": int(epoch)}
            | {"marked_at": now}
            for t, p, o in refs
        ]
        with self._write(conn) as c:
            stmt = _insert(c, consumed_batches).on_conflict_do_nothing(
                index_elements=list(consumed_batches.primary_key.columns)
            )
            cols = consumed_batches.c
            done = {
                tuple(r) for r in c.execute(stmt.returning(cols.topic, cols.partition, cols.offset), rows)
            }
            dupes = [r for r in refs if r not in done]
            if dupes:
                t, p, o = dupes[0]
                raise DuplicateBatch(
                    f"group {group_id!r}: batch {t}[{p}]@{o} epoch {epoch} (and {len(dupes) - 1} more) "
                    "already marked done"
                )

    def seen_batches(
        self,
        group_id: str,
        batches: Iterable[BatchRef],
        *,
        epoch: int = 0,
        conn: Connection | None = None,
    ) -> set[BatchRef]:
        """Which of ``batches`` (of ``epoch``) are already marked done for ``group_id``."""
        by_part: dict[tuple[str, int], list[int]] = {}
        for t, p, o in batches:
            by_part.setdefault((str(t), int(p)), []).append(int(o))
        seen: set[BatchRef] = set()
        cols = consumed_batches.c
        with self._read(conn) as c:
            for (topic, part), offsets in by_part.items():
                for i in range(0, len(offsets), _CHUNK):
                    q = sa.select(cols.offset).where(
                        cols.group_id == group_id,
                        cols.topic == topic,
                        cols.partition == part,
                        cols.epoch == int(epoch),
                        cols.offset.in_(offsets[i : i + _CHUNK]),
                    )
                    seen.update((topic, part, int(o)) for o in c.execute(q).scalars())
        return seen

    def committed_offsets(
        self, group_id: str, *, conn: Connection | None = None
    ) -> dict[tuple[str, int], int]:
        """Highest offset marked per (topic, partition) for ``group_id``, in its newest epoch."""
        cols = consumed_batches.c
        q = (
            sa.select(cols.topic, cols.partition, cols.epoch, sa.func.max(cols.offset))
            .where(cols.group_id == group_id)
            .group_by(cols.topic, cols.partition, cols.epoch)
            .order_by(cols.epoch)
        )
        with self._read(conn) as c:
            return {(t, int(p)): int(o) for t, p, _e, o in c.execute(q)}

    def prune_batches(self, before: datetime, *, conn: Connection | None = None) -> int:
        """Forget marks older than ``before`` (their offsets are long committed); returns how many."""
        with self._write(conn) as c:
            return int(
                c.execute(sa.delete(consumed_batches).where(consumed_batches.c.marked_at < before)).rowcount
            )

    # ---- model registry events

    def record_model_event(
        self,
        version: str,
        event: str,
        *,
        at: datetime | None = None,
        detail: str = "",
        conn: Connection | None = None,
    ) -> None:
        """Note a model promotion or rollback (dashboards annotate them)."""
        if not version:
            raise RecordError("version", "must not be empty")
        if event not in ("promote", "rollback"):
            raise RecordError("event", f"{event!r} is not one of promote, rollback")
        with self._write(conn) as c:
            c.execute(
                sa.insert(model_events).values(
                    version=version, event=event, at=at or datetime.now(UTC), detail=detail
                )
            )

    def list_model_events(self, *, conn: Connection | None = None) -> list[dict[str, Any]]:
        q = sa.select(model_events.c.version, model_events.c.event, model_events.c.at, model_events.c.detail)
        with self._read(conn) as c:
            return [dict(r) for r in c.execute(q.order_by(model_events.c.at, model_events.c.id)).mappings()]
