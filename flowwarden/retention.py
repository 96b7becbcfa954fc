"""Store retention: what the store forgets, and when.

Without it the store grows for ever: one batch mark per consumed Kafka message and one
rollup row per (minute, edge, port). ``store.rollup_retention_days`` bounds the rollups
(flow and DNS) that the dashboards, the compliance report and ``policy recommend --since``
read; ``store.batch_mark_retention_days`` bounds the marks that make replays exactly-once,
which only need to outlive the flows topic's own retention (a mark is consulted when its
batch comes again, and a batch older than the topic's retention never does). Alerts,
decisions (the audit trail) and checkpoints are kept. 0 keeps a table for ever.

A running pipeline prunes every ``store.prune_interval_s``; ``flowwarden store prune`` does
it once (for a CronJob, or before a backup). Several workers pruning at once is harmless:
the deletes are idempotent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from flowwarden.settings import StoreSettings

log = logging.getLogger(__name__)
DAY_S = 86_400.0


class PrunableStore(Protocol):
    def prune_rollups(self, before: datetime) -> int: ...
    def prune_batches(self, before: datetime) -> int: ...


@dataclass(frozen=True)
class PruneResult:
    rollups_before: datetime | None  # None: kept for ever
    batches_before: datetime | None
    rollup_rows: int = 0
    batch_marks: int = 0


def cutoffs(settings: StoreSettings, now: datetime) -> tuple[datetime | None, datetime | None]:
    """The instants before which rollups and batch marks go (None: that table is kept)."""

    def before(days: float) -> datetime | None:
        return now - timedelta(seconds=days * DAY_S) if days > 0 else None

    return before(settings.rollup_retention_days), before(settings.batch_mark_retention_days)


def prune_store(store: PrunableStore, settings: StoreSettings, now: datetime | None = None) -> PruneResult:
    """Delete what is older than the retention; returns what went."""
    rollups_before, batches_before = cutoffs(settings, now or datetime.now(UTC))
    rows = store.prune_rollups(rollups_before) if rollups_before else 0
    marks = store.prune_batches(batches_before) if batches_before else 0
    if rows or marks:
        log.info("store pruned: %d rollup rows before %s, %d batch marks before %s",
                 rows, rollups_before, marks, batches_before)  # fmt: skip
    return PruneResult(rollups_before, batches_before, rows, marks)


class Pruner:
    """Prunes at most every ``store.prune_interval_s``, on a clock the caller gives (tests)."""

    def __init__(self, store: PrunableStore, settings: StoreSettings) -> None:
        self.store = store
        self.settings = settings
        self._next = 0.0

    def maybe_prune(self, now_s: float, wall: datetime | None = None) -> PruneResult | None:
        """Prune when due by ``now_s`` (any clock: a monotonic one is fine); the cut-offs are
        taken from ``wall`` (the current UTC time by default)."""
        if now_s < self._next:
            return None
        self._next = now_s + self.settings.prune_interval_s
        return prune_store(self.store, self.settings, wall)
