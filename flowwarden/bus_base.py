"""The bus interface every stage codes against; :mod:`flowwarden.bus` re-exports it.

Two implementations share it: :class:`~flowwarden.bus_memory.MemoryBus` (embedded mode,
one process) and :class:`~flowwarden.bus_kafka.KafkaBus` (kafka-python). Semantics are
Kafka's: topics with partitions, consumer groups that split partitions between members,
and offsets that move only when the caller commits the messages it has finished with
(at-least-once; exactly-once is the store's batch bookkeeping on top).
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from flowwarden.errors import FlowwardenError

log = logging.getLogger("flowwarden.bus")

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class Message:
    """One consumed message: where it sits (topic, partition, offset) and what it holds."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int
    headers: Headers = ()

    def header(self, name: str) -> bytes | None:
        """The first header called ``name`` (None when absent)."""
        for k, v in self.headers:
            if k == name:
                return v
        return None


@dataclass(frozen=True, slots=True)
class FailedSend:
    """A message the producer could not deliver, with the error: the caller decides (spool, retry)."""

    topic: str
    value: bytes
    key: bytes | None
    partition: int | None
    headers: Headers
    error: str


class CommitFailed(FlowwardenError):
    """Offsets could not be committed (the group rebalanced): the messages will come again."""


ErrorCallback = Callable[[FailedSend], None]


class Producer(ABC):
    """Sends messages asynchronously in batches; failures are counted and kept, never silent.

    ``failed`` holds every message that could not be delivered (kept up to
    ``max_failed_kept``; ``failed_count`` counts them all) and ``on_error`` is called for
    each, from whatever thread noticed the failure.
    """

    max_failed_kept = 10_000

    def __init__(self, on_error: ErrorCallback | None = None) -> None:
        self.on_error = on_error
        self.failed: list[FailedSend] = []
        self.failed_count = 0
        self.sent_count = 0
        self._stats_lock = threading.Lock()

    def _delivered(self) -> None:
        with self._stats_lock:
            self.sent_count += 1

    def _report_failure(self, failure: FailedSend) -> None:
        with self._stats_lock:
            self.failed_count += 1
            if len(self.failed) < self.max_failed_kept:
                self.failed.append(failure)
        log.warning(
            "bus send failed topic=%s partition=%s bytes=%d error=%s",
            failure.topic,
            failure.partition,
            len(failure.value),
            failure.error,
        )
        if self.on_error is not None:
            self.on_error(failure)

    def take_failed(self) -> list[FailedSend]:
        """Hand over (and forget) the failures kept so far, e.g. to spool them."""
        with self._stats_lock:
            out, self.failed = self.failed, []
        return out

    @abstractmethod
    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Queue one message; delivery (or failure) is reported asynchronously."""

    @abstractmethod
    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until queued messages are delivered or failed; False if the deadline passed first."""

    @abstractmethod
    def close(self, timeout_s: float = 10.0) -> None:
        """Flush, then release the connection."""

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Consumer(ABC):
    """A member of a consumer group; offsets move only on :meth:`commit`."""

    @abstractmethod
    def poll(self, timeout_s: float = 1.0, max_records: int = 500) -> list[Message]:
        """Up to ``max_records`` messages from the assigned partitions (may be empty)."""

    @abstractmethod
    def commit(self, messages: Iterable[Message]) -> None:
        """Mark these messages done: the group resumes after the highest offset per partition."""

    @abstractmethod
    def assignment(self) -> set[tuple[str, int]]:
        """The (topic, partition) pairs this member currently owns."""

    @abstractmethod
    def lag(self) -> dict[int, int]:
        """Messages not yet consumed per assigned partition (summed over topics)."""

    def rewind_restarted(self) -> list[tuple[str, int]]:
        """Assigned partitions whose log now ends before this member's position, rewound.

        Their offsets started again (a topic deleted and recreated, a broker that lost its
        data): the member would otherwise wait past the new log's end, or skip its start.
        Each is moved to its log's beginning and returned; the caller treats what comes
        next as new data. The default (a bus whose logs never restart) finds none.
        """
        return []

    @abstractmethod
    def close(self) -> None:
        """Leave the group (uncommitted messages will be delivered again to someone)."""

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Bus(ABC):
    """Factory for producers and consumers plus topic administration."""

    def __init__(self, default_partitions: int = 6) -> None:
        self.default_partitions = default_partitions

    @abstractmethod
    def producer(self, on_error: ErrorCallback | None = None) -> Producer: ...

    @abstractmethod
    def consumer(self, topics: Sequence[str], group_id: str) -> Consumer: ...

    @abstractmethod
    def ensure_topics(self, names: Sequence[str], partitions: int | None = None) -> None:
        """Create missing topics (with ``partitions``, default :attr:`default_partitions`)."""

    def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release what the bus itself holds (producers and consumers close on their own)."""

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def highest_offsets(messages: Iterable[Message]) -> dict[tuple[str, int], int]:
    """The next offset to consume per (topic, partition), i.e. highest offset seen + 1."""
    out: dict[tuple[str, int], int] = {}
    for m in messages:
        key = (m.topic, m.partition)
        if m.offset + 1 > out.get(key, -1):
            out[key] = m.offset + 1
    return out
