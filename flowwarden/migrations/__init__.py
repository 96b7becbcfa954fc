"""Ordered schema migrations, recorded in the ``schema_migrations`` table.

A fresh database is created from the latest table definitions
(:mod:`flowwarden.store_schema`) and stamped with every version; an existing one gets only the
migrations it lacks, in order, inside one transaction (so a failed upgrade leaves it as it
was). A database stamped with a version this code does not know is refused: an older
process must never write into a newer schema.

To change the schema: edit the table in :mod:`flowwarden.store_schema` *and* append a
:class:`Migration` here that makes the same change to an existing database.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from flowwarden.errors import FlowwardenError
from flowwarden.store_schema import (
    alerts,
    consumed_batches,
    create_views,
    dns_rollups,
    flow_rollups,
    metadata,
    schema_migrations,
)

# Any constant: serialises concurrent start-ups (pipeline and enforcer) on PostgreSQL.
_PG_LOCK_KEY = 0x466C6F77  # "Flow"


class SchemaTooNew(FlowwardenError):
    """The database was migrated by a newer flowwarden than this one."""


@dataclass(frozen=True)
class Migration:
    """One step from ``version - 1`` to ``version``."""

    version: int
    name: str
    upgrade: Callable[[Connection], None]


def _initial(conn: Connection) -> None:
    metadata.create_all(conn, checkfirst=True)


def _batch_epochs(conn: Connection) -> None:
    """``consumed_batches`` gains ``epoch`` in its key: an offset is a batch only within one
    epoch of its partition (the pipeline starts a new one when a topic's offsets restart)."""
    if "epoch" in {c["name"] for c in sa.inspect(conn).get_columns(consumed_batches.name)}:
        return  # made by a version-1 start of this code (the tables are always the latest)
    if conn.dialect.name == "postgresql":
        for sql in (
            "ALTER TABLE consumed_batches ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE consumed_batches DROP CONSTRAINT pk_consumed_batches",
            "ALTER TABLE consumed_batches ADD CONSTRAINT pk_consumed_batches PRIMARY KEY "
            '(group_id, topic, "partition", epoch, "offset")',
        ):
            conn.execute(sa.text(sql))
        return
    # SQLite cannot change a primary key in place: build the table anew and copy the marks.
    conn.execute(sa.text("DROP INDEX IF EXISTS ix_consumed_batches_marked_at"))
    conn.execute(sa.text("ALTER TABLE consumed_batches RENAME TO consumed_batches_v1"))
    consumed_batches.create(conn)
    conn.execute(
        sa.text(
            'INSERT INTO consumed_batches (group_id, topic, "partition", "offset", marked_at, epoch) '
            'SELECT group_id, topic, "partition", "offset", marked_at, 0 FROM consumed_batches_v1'
        )
    )
    conn.execute(sa.text("DROP TABLE consumed_batches_v1"))


def _rollup_dns(conn: Connection) -> None:
    """``flow_rollups`` gains the DNS measures that flow records carry from wire version 2."""
    have = {c["name"] for c in sa.inspect(conn).get_columns(flow_rollups.name)}
    for col in ("dns_queries", "dns_nxdomain"):
        if col not in have:  # a table made by this version already has them
            conn.execute(sa.text(f"ALTER TABLE flow_rollups ADD COLUMN {col} BIGINT NOT NULL DEFAULT 0"))


def _alert_learning(conn: Connection) -> None:
    """``alerts`` gains ``learning``: raised while its entity or workload was still learning."""
    if "learning" in {c["name"] for c in sa.inspect(conn).get_columns(alerts.name)}:
        return  # a table made by this version already has it
    false = "FALSE" if conn.dialect.name == "postgresql" else "0"
    conn.execute(sa.text(f"ALTER TABLE alerts ADD COLUMN learning BOOLEAN NOT NULL DEFAULT {false}"))


def _dns_rollups(conn: Connection) -> None:
    """``dns_rollups``: DNS per asking workload and registered domain, per minute."""
    dns_rollups.create(conn, checkfirst=True)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial tables", _initial),
    Migration(2, "epoch in batch marks", _batch_epochs),
    Migration(3, "DNS measures in flow rollups", _rollup_dns),
    Migration(4, "learning flag on alerts", _alert_learning),
    Migration(5, "service graph edges view", create_views),
    Migration(6, "DNS rollups by workload and domain", _dns_rollups),
)
"""Every migration, in order; the last one's version is the code's schema version."""


def applied_versions(conn: Connection) -> list[int]:
    """Versions recorded in the database, ascending (empty for a fresh database)."""
    if not sa.inspect(conn).has_table(schema_migrations.name):
        return []
    rows = conn.execute(sa.select(schema_migrations.c.version).order_by(schema_migrations.c.version))
    return [int(v) for v in rows.scalars()]


def migrate(conn: Connection, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Bring the database on ``conn`` (inside a transaction) to the latest version.

    Returns the versions applied now (empty when already up to date). Raises
    :class:`SchemaTooNew` when the database knows versions this code does not.
    """
    known = [m.version for m in migrations]
    if known != sorted(set(known)) or not known:
        raise ValueError(f"migrations must have strictly increasing versions, got {known}")
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK_KEY)))
    done = applied_versions(conn)
    unknown = sorted(set(done) - set(known))
    if unknown:
        raise SchemaTooNew(
            f"the store's schema is at version {max(done)} but this flowwarden knows only up to "
            f"{known[-1]} (unknown versions {unknown}): upgrade flowwarden, or point store.url "
            "at another database"
        )
    now = datetime.now(UTC)
    if not done:
        # Fresh database: the table definitions already are the latest schema.
        metadata.create_all(conn, checkfirst=True)
        todo = list(migrations)
    else:
        todo = [m for m in migrations if m.version not in done]
        for m in todo:
            m.upgrade(conn)
    if todo:
        conn.execute(
            sa.insert(schema_migrations),
            [{"version": m.version, "name": m.name, "applied_at": now} for m in todo],
        )
    return [m.version for m in todo]
