"""Fixtures for the machine's real PostgreSQL (127.0.0.1:5432, trust auth) and for SQLite.

* ``pg_url`` (session): a fresh database ``fw_test_<uuid>`` created for this test session and
  dropped at its end; a ``postgresql+psycopg://`` URL.
* ``pg_store`` (per test): a started :class:`~flowwarden.store.Store` on it, every data table
  emptied first, so tests do not see each other's rows.
* ``fresh_pg_url`` (per test): a database of its own, for tests that need an empty schema
  (migrations) or run several processes against it.
* ``sqlite_store`` (per test): a started store in ``tmp_path``.

PostgreSQL that is not up fails the test with how to start it; it is never skipped.
"""

from __future__ import annotations

import getpass
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa

if TYPE_CHECKING:  # imported in the fixtures: collecting the other suites stays light
    from flowwarden.store import Store

PG_HOST = os.environ.get("FLOWWARDEN_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("FLOWWARDEN_TEST_PG_PORT", "5432"))
PG_ADMIN_DB = os.environ.get("FLOWWARDEN_TEST_PG_DB", "test")


def _admin_urls() -> list[str]:
    """Roles to try, in order: ``postgres``, then the current user (both trust auth)."""
    users = [os.environ.get("FLOWWARDEN_TEST_PG_USER", "postgres"), getpass.getuser()]
    return [f"postgresql+psycopg://{u}@{PG_HOST}:{PG_PORT}/{PG_ADMIN_DB}" for u in dict.fromkeys(users)]


def _admin_engine() -> sa.Engine:
    errors = []
    for url in _admin_urls():
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.OperationalError as exc:
            errors.append(f"{engine.url.username}: {str(exc.orig).strip().splitlines()[-1]}")
            engine.dispose()
            continue
        return engine
    pytest.fail(
        f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} database {PG_ADMIN_DB!r} ({'; '.join(errors)}). "
        "Start it with `pg_ctlcluster 15 main start` (see `pg_lsclusters`), "
        f"and make sure the database exists: `createdb -h {PG_HOST} -U postgres {PG_ADMIN_DB}`."
    )


def _create_database(admin: sa.Engine) -> tuple[str, str]:
    name = f"fw_test_{uuid.uuid4().hex[:16]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    return name, url


def _drop_database(admin: sa.Engine, name: str) -> None:
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def _pg_admin() -> Iterator[sa.Engine]:
    engine = _admin_engine()
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pg_url(_pg_admin: sa.Engine) -> Iterator[str]:
    """A database of this test session on the machine's PostgreSQL, dropped at the end."""
    name, url = _create_database(_pg_admin)
    try:
        yield url
    finally:
        _drop_database(_pg_admin, name)


@pytest.fixture
def fresh_pg_url(_pg_admin: sa.Engine) -> Iterator[str]:
    """A database of this test alone (no tables yet), dropped after it."""
    name, url = _create_database(_pg_admin)
    try:
        yield url
    finally:
        _drop_database(_pg_admin, name)


def truncate_store(store: Store) -> None:
    """Empty every data table (the schema and its migration records stay)."""
    from flowwarden.store import DATA_TABLES

    with store.transaction() as conn:
        if store.dialect == "postgresql":
            names = ", ".join(f'"{t.name}"' for t in DATA_TABLES)
            conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY"))
        else:
            for table in DATA_TABLES:
                conn.execute(table.delete())


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[Store]:
    """A started store on the session's PostgreSQL database, its tables empty."""
    from flowwarden.store import Store

    store = Store(pg_url).start()
    truncate_store(store)
    try:
        yield store
    finally:
        store.stop()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    """A started store in a SQLite file of this test."""
    from flowwarden.store import Store

    store = Store(f"sqlite:///{tmp_path / 'flowwarden.db'}").start()
    try:
        yield store
    finally:
        store.stop()
