"""What every stage shares: the loop (start, step until told to stop, stop) and the rule that
offsets are committed only once everything produced from them has reached the bus."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Self

from prometheus_client import Counter

from flowwarden.bus import Consumer, Producer
from flowwarden.pipeline.runtime.batches import PartitionKey

log = logging.getLogger(__name__)


def delivered(producer: Producer, timeout_s: float, commits: Counter) -> bool:
    """Whether everything produced so far reached the bus, so the offsets behind it may be
    committed. Messages that failed are sent again and the commit waits for a later turn
    (counted as ``postponed``): nothing is lost, at worst re-sent after a crash."""
    if not producer.flush(timeout_s):
        log.warning("producer flush timed out: commit postponed")
        commits.labels(status="postponed").inc()
        return False
    failed = producer.take_failed()
    if failed:
        log.warning("resending %d messages that failed to produce; commit postponed", len(failed))
        for f in failed:
            producer.send(f.topic, f.value, key=f.key, partition=f.partition, headers=f.headers)
        commits.labels(status="postponed").inc()
        return False
    return True


class SteppedStage:
    """A stage is driven one :meth:`step` at a time, so tests and benchmarks can drive it too.

    It follows its consumer's assignment (:meth:`_track_assignment` after each poll, which
    calls :meth:`_partitions_revoked` and :meth:`_partitions_assigned`) and its lag per
    partition (``_lag``, None when the consumer cannot tell).
    """

    clock: Callable[[], float]
    consumer: Consumer | None
    _assigned: set[PartitionKey]
    _lag: dict[int, int] | None
    _lag_at: float

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def step(self) -> int:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run(self, stop_event: threading.Event, *, max_seconds: float | None = None) -> None:
        """Loop until ``stop_event`` is set (or ``max_seconds`` have passed)."""
        deadline = None if max_seconds is None else self.clock() + max_seconds
        while not stop_event.is_set():
            if deadline is not None and self.clock() >= deadline:
                break
            self.step()

    def _lagging(self) -> frozenset[int]:
        """Partitions that may have messages on the broker not fetched yet.

        Those behind at the last lag check, and those assigned since (lag unknown). When the
        consumer cannot tell its lag at all, none: the aligner's idle timeout decides alone.
        """
        if self._lag is None:
            return frozenset()
        return frozenset(p for _, p in self._assigned if self._lag.get(p, 1) > 0)

    def _track_assignment(self, now: float) -> None:
        """Notice partitions revoked and assigned since the last poll (the poll moves them)."""
        assert self.consumer is not None
        try:
            assigned = {(t, int(p)) for t, p in self.consumer.assignment()}
        except Exception:  # the assignment is advisory here; never fatal
            return
        if assigned == self._assigned:
            return
        gone = self._assigned - assigned
        new = assigned - self._assigned
        if gone:
            self._partitions_revoked(gone)
            log.info("partitions revoked %s", sorted(p for _, p in gone))
        if new:
            self._partitions_assigned(new, now)
            self._lag_at = -math.inf  # ask for their lag at once
            log.info("partitions assigned %s", sorted(p for _, p in new))
        self._assigned = assigned

    def _partitions_revoked(self, gone: set[PartitionKey]) -> None:
        """What was consumed from them and not committed comes again at their new owner."""

    def _partitions_assigned(self, new: set[PartitionKey], now: float) -> None:
        """Partitions this stage reads from now on."""
