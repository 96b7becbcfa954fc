"""Store retention: rollups and batch marks past their retention go, the rest stays."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from flowwarden.dns_rollups import rollup_dns
from flowwarden.retention import Pruner, prune_store
from flowwarden.rollups import rollup_flows
from flowwarden.settings import StoreSettings
from flowwarden.store import Store
from flowwarden.store_schema import consumed_batches
from tests.unit.test_store_sqlite import make_dns_flows, make_flows

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def _fill(store: Store, days_ago: float) -> None:
    shift = (NOW - timedelta(days=days_ago)).timestamp()
    flows = make_flows().assign(ts_end=lambda f: f["ts_end"] + shift)
    store.add_rollups(rollup_flows(flows))
    store.add_dns_rollups(rollup_dns(make_dns_flows().assign(ts_end=lambda f: f["ts_end"] + shift)))
    when = NOW - timedelta(days=days_ago)
    with store.transaction() as conn:
        store.mark_batches("g", [("flows", 0, int(days_ago * 1000))], conn=conn)
        marks = consumed_batches.c
        conn.execute(
            sa.update(consumed_batches).where(marks.offset == int(days_ago * 1000)).values(marked_at=when)
        )


def test_prune_keeps_what_is_younger_than_the_retention(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path / 's.db'}") as store:
        for days in (40.0, 10.0, 1.0):
            _fill(store, days)
        settings = StoreSettings(rollup_retention_days=30, batch_mark_retention_days=7)
        result = prune_store(store, settings, NOW)
        assert result.rollup_rows > 0 and result.batch_marks == 2
        minutes = pd.concat([store.list_rollups()["minute"], store.list_dns_rollups()["minute"]])
        assert minutes.min() >= pd.Timestamp(NOW - timedelta(days=30))
        assert len(store.list_rollups()) == 2 * len(rollup_flows(make_flows()))  # 10 and 1 days ago
        assert store.seen_batches("g", [("flows", 0, 1000)]) == {("flows", 0, 1000)}
        assert store.seen_batches("g", [("flows", 0, 10000)]) == set()
        # Pruning again finds nothing; 0 keeps a table for ever.
        assert prune_store(store, settings, NOW).rollup_rows == 0
        forever = StoreSettings(rollup_retention_days=0, batch_mark_retention_days=0)
        assert prune_store(store, forever, NOW + timedelta(days=3650)) == prune_store(
            store, forever, NOW + timedelta(days=3650)
        )
        assert len(store.list_rollups()) > 0


def test_the_pruner_runs_at_most_once_per_interval(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path / 's.db'}") as store:
        pruner = Pruner(store, StoreSettings(prune_interval_s=3600))
        assert pruner.maybe_prune(100.0, NOW) is not None
        assert pruner.maybe_prune(3699.0, NOW) is None
        result = pruner.maybe_prune(3700.0, NOW)
        assert result is not None and result.rollups_before == NOW - timedelta(days=30)


def test_store_prune_and_info_commands(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with Store(f"sqlite:///{db}") as store:
        _fill(store, 400.0)
    env = {"FLOWWARDEN_STORE__URL": f"sqlite:///{db}", "PATH": "/usr/bin:/bin"}
    cli = [sys.executable, "-m", "flowwarden.cli"]
    out = subprocess.run([*cli, "store", "prune"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "batch marks deleted\t1" in out.stdout
    info = subprocess.run([*cli, "store", "info"], env=env, capture_output=True, text=True, timeout=60)
    assert "flow_rollups\t0" in info.stdout and "consumed_batches\t0" in info.stdout, info.stdout
