"""The store's contract on the machine's real PostgreSQL (same test bodies as on SQLite)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings

from flowwarden.errors import ServiceUnavailable
from flowwarden.records import Alert
from flowwarden.rollups import rollup_flows
from flowwarden.store import Store
from flowwarden.store_schema import ROLLUP_DIMENSIONS
from tests.support.netns import wait_for
from tests.support.postgres import truncate_store
from tests.unit.test_store_sqlite import T0, StoreContract, alerts, make_alert, make_flows

pytestmark = pytest.mark.integration


class TestStorePostgres(StoreContract):
    @pytest.fixture
    def store(self, pg_store: Store) -> Store:
        return pg_store

    @pytest.fixture
    def fresh_url(self, fresh_pg_url: str) -> str:
        return fresh_pg_url


def test_grafana_reads_timestamptz_and_json(pg_store: Store) -> None:
    """Panels query flat columns with SQL: time columns are timestamptz, details are JSON."""
    pg_store.upsert_alerts([make_alert(1), make_alert(2, score=0.9)])
    pg_store.add_rollups(rollup_flows(make_flows()))
    with pg_store.engine.connect() as conn:
        types: dict[str, str] = dict(
            conn.execute(
                sa.text(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name IN ('alerts', 'flow_rollups')"
                )
            ).all()
        )
        assert types["window_start"] == "timestamp with time zone"
        assert types["minute"] == "timestamp with time zone"
        assert types["evidence"] == "json"
        rows = conn.execute(
            sa.text(
                "SELECT window_start AS time, score, evidence->'baseline'->>'median' AS median "
                "FROM alerts WHERE window_start >= :t ORDER BY 1"
            ),
            {"t": T0},
        ).all()
        assert [(r.time, r.score, r.median) for r in rows] == [
            (T0 + timedelta(seconds=10), 0.5, "1.5"),
            (T0 + timedelta(seconds=20), 0.9, "1.5"),
        ]
        per_minute = conn.execute(
            sa.text("SELECT minute AS time, sum(bytes) FROM flow_rollups GROUP BY 1 ORDER BY 1")
        ).all()
        assert [int(b) for _, b in per_minute] == [8410, 30, 10]


def test_unreachable_postgres_is_a_clear_error() -> None:
    store = Store("postgresql://postgres@127.0.0.1:1/nothing")
    with pytest.raises(ServiceUnavailable, match=r"127\.0\.0\.1:1.*not reachable"):
        store.start()


# --------------------------------------------------------------------------- concurrent writers


def _waiting_on_a_lock(store: Store, pid: int) -> bool:
    with store.engine.connect() as conn:
        event = conn.execute(
            sa.text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
        ).scalar()
    return bool(event == "Lock")


def test_workers_writing_shared_rollups_wait_for_each_other_instead_of_deadlocking(pg_store: Store) -> None:
    """Two workers' transactions over the same rollup keys, given in opposite orders, both commit.

    Replicas of one workload land on different workers, so their rollup rows share keys.
    Holding key A, the first writer then writes B while the second writes (B, A): unless both
    lock in key order, each waits on the other and PostgreSQL aborts one (what CI once hit).
    """
    keyed = rollup_flows(make_flows()).sort_values(list(ROLLUP_DIMENSIONS), ignore_index=True)
    assert len(keyed) >= 2
    first, last = keyed.iloc[[0]], keyed.iloc[[-1]]
    errors: list[BaseException] = []
    pids: list[int] = []

    def second_writer() -> None:
        try:
            with pg_store.transaction() as conn:
                pids.append(int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()))
                pg_store.add_rollups(keyed.iloc[[-1, 0]], conn=conn)
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    with pg_store.transaction() as conn:
        pg_store.add_rollups(first, conn=conn)
        other = threading.Thread(target=second_writer, name="second-writer")
        other.start()
        wait_for(lambda: bool(pids), timeout=30, what="the second writer's connection")
        wait_for(lambda: _waiting_on_a_lock(pg_store, pids[0]), timeout=30, what="the second writer to wait")
        pg_store.add_rollups(last, conn=conn)  # deadlocks here if the second writer holds B
    other.join(timeout=60)
    assert not other.is_alive()
    assert not errors, errors
    stored = pg_store.list_rollups().set_index(list(ROLLUP_DIMENSIONS))
    for row in (first, last):
        key = tuple(row[list(ROLLUP_DIMENSIONS)].iloc[0])
        assert int(stored.loc[key, "flows"]) == 2 * int(row["flows"].iloc[0])


def test_a_deadlock_victim_is_run_again_whole(fresh_pg_url: str) -> None:
    """``in_transaction`` repeats a unit of work that PostgreSQL aborted as a deadlock victim.

    A real deadlock: this transaction holds row 1 and asks for row 2 while another holds 2
    and waits for 1. The other one detects late (``deadlock_timeout`` 30 s), so this one is
    the victim; its first try's update of row 1 must be rolled back, not applied twice.
    """
    retried: list[str] = []
    with Store(fresh_pg_url, on_retry=retried.append) as store:
        with store.transaction() as conn:
            conn.exec_driver_sql("CREATE TABLE probe (k int PRIMARY KEY, v int NOT NULL)")
            conn.exec_driver_sql("INSERT INTO probe VALUES (1, 0), (2, 0)")
        other_pid: list[int] = []
        errors: list[BaseException] = []

        def other() -> None:
            try:
                with store.transaction() as oc:
                    oc.exec_driver_sql("SET LOCAL deadlock_timeout = '30s'")
                    other_pid.append(int(oc.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()))
                    oc.exec_driver_sql("UPDATE probe SET v = v + 1 WHERE k = 2")
                    oc.exec_driver_sql("UPDATE probe SET v = v + 1 WHERE k = 1")
            except BaseException as exc:  # reported by the test below
                errors.append(exc)

        tries: list[int] = []
        thread = threading.Thread(target=other, name="other-writer")

        def work(conn: sa.Connection) -> int:
            tries.append(1)
            conn.exec_driver_sql("UPDATE probe SET v = v + 1 WHERE k = 1")
            if len(tries) == 1:
                thread.start()
                wait_for(lambda: bool(other_pid), timeout=30, what="the other writer's connection")
                wait_for(
                    lambda: _waiting_on_a_lock(store, other_pid[0]), timeout=30, what="the other to wait"
                )
            conn.exec_driver_sql("UPDATE probe SET v = v + 1 WHERE k = 2")
            return len(tries)

        assert store.in_transaction(work) == 2
        assert retried == ["deadlock"], "the retry metric's cause"
        thread.join(timeout=60)
        assert not thread.is_alive() and not errors, errors
        with store.engine.connect() as conn:
            assert dict(conn.exec_driver_sql("SELECT k, v FROM probe").all()) == {1: 2, 2: 2}

        def violates(conn: sa.Connection) -> None:  # not transient: raised at once
            tries.append(1)
            conn.exec_driver_sql("INSERT INTO probe VALUES (1, 0)")

        tries.clear()
        with pytest.raises(sa.exc.IntegrityError):
            store.in_transaction(violates)
        assert len(tries) == 1


# --------------------------------------------------------------------------- SIGKILL, then replay

KILL_GROUP = "kill-test"


def kill_batch(b: int) -> pd.DataFrame:
    """Batch ``b`` of the replayed stream: the sample flows, a minute later each time."""
    flows = make_flows()
    flows["ts_start"] += 60.0 * b
    flows["ts_end"] += 60.0 * b
    flows["bytes_out"] *= b + 1
    return flows


def replay_worker(url: str, n_batches: int, pause_at: int = -1, flag_dir: str = "") -> None:
    """What the pipeline does per batch: skip if marked, else effects and mark in one transaction.

    At batch ``pause_at`` it stops *inside* the transaction, after writing the effects and
    before the mark, says so with ``flag_dir/paused``, and waits there to be killed.
    """
    with Store(url) as store:
        for b in range(n_batches):
            ref = ("flows", b % 3, b)
            with store.transaction() as conn:
                if store.seen_batches(KILL_GROUP, [ref], conn=conn):
                    continue
                store.add_rollups(rollup_flows(kill_batch(b)), conn=conn)
                store.upsert_alerts([make_alert(b)], conn=conn)
                if b == pause_at:
                    (Path(flag_dir) / "paused").touch()
                    threading.Event().wait(timeout=60)  # nothing sets it: the test kills us here
                    raise SystemExit("not killed within 60 s")
                store.mark_batches(KILL_GROUP, [ref], conn=conn)


def _spawn(
    url: str, n_batches: int, pause_at: int = -1, flag_dir: Path | None = None
) -> subprocess.Popen[bytes]:
    code = (
        "import sys; from tests.integration.test_store_postgres import replay_worker as w; "
        "w(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, url, str(n_batches), str(pause_at), str(flag_dir or "")],
        cwd=Path(__file__).parents[2],
        stderr=subprocess.PIPE,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def kill_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kill.db'}"
    return str(request.getfixturevalue("fresh_pg_url"))


def test_sigkill_mid_transaction_then_replay_leaves_every_batch_once(kill_url: str, tmp_path: Path) -> None:
    n, pause_at = 120, 50
    worker = _spawn(kill_url, n, pause_at, tmp_path)
    try:
        wait_for(
            lambda: (tmp_path / "paused").exists() or worker.poll() is not None,
            timeout=60,
            what="the worker to reach batch 50",
        )
        assert worker.poll() is None, worker.communicate()[1].decode()[-2000:]
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
    assert worker.returncode == -signal.SIGKILL

    with Store(kill_url) as store:
        # The batch killed mid-transaction left nothing; the 50 before it are complete.
        assert len(store.list_alerts()) == pause_at
        assert len(store.seen_batches(KILL_GROUP, [("flows", b % 3, b) for b in range(n)])) == pause_at

        again = _spawn(kill_url, n)
        _, err = again.communicate(timeout=120)
        assert again.returncode == 0, err.decode()[-2000:]

        expected = rollup_flows(pd.concat([kill_batch(b) for b in range(n)], ignore_index=True))
        expected = expected.sort_values(list(expected.columns[:10])).reset_index(drop=True)
        pd.testing.assert_frame_equal(store.list_rollups(), expected)
        assert len(store.list_alerts()) == n
        assert store.committed_offsets(KILL_GROUP) == {("flows", p): max(range(p, n, 3)) for p in range(3)}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(alert=alerts())
def test_any_alert_round_trips_on_postgres(pg_store: Store, alert: Alert) -> None:
    truncate_store(pg_store)  # examples share the fixture; an earlier one may have this id
    pg_store.upsert_alerts([alert])
    assert pg_store.get_alert(alert.id) == alert
