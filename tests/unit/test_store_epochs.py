"""Batch marks carry the epoch of their partition's offsets (issue 22), and the migration adds it.

The same offset in another epoch is another batch: after a topic is recreated its offsets
start again at 0, and the store must not take the new batches for ones it already holds.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from flowwarden.migrations import MIGRATIONS
from flowwarden.store import Store

V1_CONSUMED_BATCHES = """
CREATE TABLE consumed_batches (
    group_id VARCHAR(255) NOT NULL,
    topic VARCHAR(255) NOT NULL,
    "partition" INTEGER NOT NULL,
    "offset" BIGINT NOT NULL,
    marked_at DATETIME NOT NULL,
    CONSTRAINT pk_consumed_batches PRIMARY KEY (group_id, topic, "partition", "offset")
)
"""


def test_the_same_offset_in_another_epoch_is_another_batch(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path / 'fw.db'}") as store:
        store.mark_batches("g", [("flows", 0, 5), ("flows", 0, 6)])
        assert store.seen_batches("g", [("flows", 0, 5)], epoch=1) == set()
        store.mark_batches("g", [("flows", 0, 5)], epoch=1)  # no DuplicateBatch
        assert store.seen_batches("g", [("flows", 0, 5), ("flows", 0, 6)], epoch=1) == {("flows", 0, 5)}
        assert store.seen_batches("g", [("flows", 0, 5), ("flows", 0, 6)]) == {
            ("flows", 0, 5),
            ("flows", 0, 6),
        }
        # The newest epoch's progress, not the old epoch's higher offset.
        assert store.committed_offsets("g") == {("flows", 0): 5}


def test_a_version_1_database_gets_the_epoch_and_keeps_its_marks(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fw.db'}"
    with Store(url, migrations=MIGRATIONS[:1]) as old:
        # The table as version 1 of the code made it (the tables are always made at their latest).
        with old.transaction() as conn:
            conn.exec_driver_sql("DROP TABLE consumed_batches")
            conn.exec_driver_sql(V1_CONSUMED_BATCHES)
            conn.exec_driver_sql(
                "INSERT INTO consumed_batches VALUES ('g', 'flows', 1, 42, '2026-12-01 00:00:00.000000')"
            )
        assert old.schema_version() == 1
    with Store(url) as store:
        assert store.schema_version() == MIGRATIONS[-1].version
        columns = {c["name"] for c in sa.inspect(store.engine).get_columns("consumed_batches")}
        assert "epoch" in columns
        assert store.seen_batches("g", [("flows", 1, 42)]) == {("flows", 1, 42)}
        store.mark_batches("g", [("flows", 1, 42)], epoch=1)
        assert store.seen_batches("g", [("flows", 1, 42)], epoch=1) == {("flows", 1, 42)}
