"""Flow batches in flight in a worker: merged across partitions in event time, then committed.

:class:`PartitionAligner` holds batches back so the partitions a worker owns advance together
(a backlog read one partition at a time would otherwise push the watermark past the others'
data); :class:`CommitTracker` knows, per partition, up to which offset every window a batch
touched has closed, which is as far as a commit may go.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from flowwarden.bus import Message
from flowwarden.pipeline.runtime.sinks import BatchId

PartitionKey = tuple[str, int]


@dataclass(slots=True)
class PendingBatch:
    """One consumed message on its way through the stage."""

    message: Message
    flows: pd.DataFrame | pa.Table | None  # valid rows; None when the whole batch went to the DLQ
    max_ts_end: float  # -inf when there is no valid row
    fed: bool = False
    bound: float = math.inf  # every window this batch touched starts at or before this
    epoch: int = 0  # of its partition's offsets: bumped when they start again (a topic recreated)

    @property
    def key(self) -> PartitionKey:
        return (self.message.topic, self.message.partition)

    @property
    def id(self) -> BatchId:
        return (self.message.topic, self.message.partition, self.message.offset, self.epoch)

    @property
    def n_flows(self) -> int:
        return 0 if self.flows is None else len(self.flows)


class PartitionAligner:
    """Release batches in event-time order across the partitions this worker owns.

    A batch is released once its newest flow is no newer than the slowest *active*
    partition's newest flow. A partition that delivered nothing for ``idle_s`` (wall clock)
    stops holding the others back, and more than ``max_flows`` buffered releases everything:
    the hold-back is bounded in time and memory.
    """

    def __init__(self, *, idle_s: float = 2.0, max_flows: int = 2_000_000) -> None:
        self.idle_s = idle_s
        self.max_flows = max_flows
        self.buffered_flows = 0
        self._pending: dict[PartitionKey, deque[PendingBatch]] = {}
        self._frontier: dict[PartitionKey, float] = {}
        self._last_seen: dict[PartitionKey, float] = {}

    def __len__(self) -> int:
        return sum(len(q) for q in self._pending.values())

    def add(self, batch: PendingBatch, mono_now: float) -> None:
        key = batch.key
        self._pending.setdefault(key, deque()).append(batch)
        self._last_seen[key] = mono_now
        self._frontier[key] = max(self._frontier.get(key, -math.inf), batch.max_ts_end)
        self.buffered_flows += batch.n_flows

    def expect(self, keys: Iterable[PartitionKey], mono_now: float) -> None:
        """Partitions just assigned: hold the others back (up to ``idle_s``) until they speak."""
        for key in keys:
            self._last_seen.setdefault(key, mono_now)

    def forget(self, keys: Iterable[PartitionKey]) -> None:
        for key in keys:
            self._last_seen.pop(key, None)
            self._frontier.pop(key, None)

    def threshold(self, mono_now: float, lagging: frozenset[int] = frozenset()) -> float:
        """Newest event time every active partition has reached.

        A partition is active while it spoke within ``idle_s`` or is known to be behind
        (``lagging``: the broker holds messages for it that were not fetched yet, e.g. a
        slow fetch on a busy machine): a quiet partition with nothing to say holds no one.
        """
        active = [k for k, t in self._last_seen.items() if mono_now - t < self.idle_s or k[1] in lagging]
        if not active or self.buffered_flows > self.max_flows:
            return math.inf
        return min(self._frontier.get(k, -math.inf) for k in active)

    def release(
        self, mono_now: float, *, everything: bool = False, lagging: frozenset[int] = frozenset()
    ) -> list[PendingBatch]:
        limit = math.inf if everything else self.threshold(mono_now, lagging)
        out: list[PendingBatch] = []
        for q in self._pending.values():
            while q and q[0].max_ts_end <= limit:
                b = q.popleft()
                self.buffered_flows -= b.n_flows
                out.append(b)
        return out


class CommitTracker:
    """Per partition, the consumed batches not yet committed, in offset order."""

    def __init__(self) -> None:
        self._pending: dict[PartitionKey, deque[PendingBatch]] = {}

    def __len__(self) -> int:
        return sum(len(q) for q in self._pending.values())

    def add(self, batch: PendingBatch) -> None:
        self._pending.setdefault(batch.key, deque()).append(batch)

    def ready(self, floor: float | None) -> list[PendingBatch]:
        """Per partition, the last batch of the leading run that is fully accounted for.

        Accounted: fed to the engine, and every window it touched has closed (the oldest
        open window starts after the batch's bound).
        """
        out = []
        for q in self._pending.values():
            last = None
            for b in q:
                if not b.fed or (floor is not None and floor <= b.bound):
                    break
                last = b
            if last is not None:
                out.append(last)
        return out

    def drop_through(self, batches: Iterable[PendingBatch]) -> None:
        """Forget everything up to and including these (committed) batches."""
        for b in batches:
            q = self._pending.get(b.key)
            while q and q[0].message.offset <= b.message.offset:
                q.popleft()

    def forget(self, keys: Iterable[PartitionKey]) -> None:
        for key in keys:
            self._pending.pop(key, None)

    def timestamp_at(self, key: PartitionKey, offset: int) -> int | None:
        """The broker timestamp of the pending message at ``offset`` (None: not pending here)."""
        for b in self._pending.get(key, ()):
            if b.message.offset == offset:
                return b.message.timestamp_ms
        return None

    def pending_timestamps(self) -> list[tuple[str, int, int, int]]:
        """(topic, partition, offset, timestamp) of every message not yet committed."""
        return [
            (b.message.topic, b.message.partition, b.message.offset, b.message.timestamp_ms)
            for q in self._pending.values()
            for b in q
        ]
