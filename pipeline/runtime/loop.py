"""What every stage shares: the loop (start, step until told to stop, stop) and the rule that
offsets are committed only once everything produced from them has reached the bus."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Self

from prometheus_client import Counter

from flowwarden.bus import Producer

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
    """A stage is driven one :meth:`step` at a time, so tests and benchmarks can drive it too."""

    clock: Callable[[], float]

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
