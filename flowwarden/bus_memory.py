"""The in-memory bus of the embedded mode: Kafka's semantics inside one process.

Topics have partitions, a group's members split the partitions of the topics they
subscribe to (range assignment, rebalanced when a member joins or leaves), committed
offsets survive a member's restart, and uncommitted messages are delivered again to
whoever owns the partition next. Everything is guarded by one lock, so producers and
consumers may live in different threads. Messages live as long as the bus object does:
stages of one process must share the one bus that :func:`~flowwarden.bus.open_bus` made.
"""

from __future__ import annotations

import itertools
import threading
import time
import zlib
from collections.abc import Iterable, Sequence

from flowwarden.bus_base import (
    Bus,
    CommitFailed,
    Consumer,
    ErrorCallback,
    FailedSend,
    Message,
    Producer,
    highest_offsets,
)


class _Log:
    """One partition: the messages from offset ``base`` on (older ones were trimmed)."""

    __slots__ = ("base", "items")

    def __init__(self) -> None:
        self.base = 0
        self.items: list[Message] = []

    @property
    def end(self) -> int:
        return self.base + len(self.items)

    def read(self, start: int, n: int) -> list[Message]:
        i = max(start, self.base) - self.base
        return self.items[i : i + n]

    def trim(self, upto: int) -> None:
        if upto > self.base:
            del self.items[: upto - self.base]
            self.base = upto


class _Group:
    def __init__(self) -> None:
        self.members: list[MemoryConsumer] = []
        self.committed: dict[tuple[str, int], int] = {}
        self.generation = 0


class MemoryBus(Bus):
    """Topics, partitions and consumer groups held in this process.

    Memory stays bounded: a partition keeps at most ``retention_messages`` messages, and
    messages every group has committed are dropped (Kafka's retention, sized for one
    process). A consumer whose position was trimmed away resumes at the oldest kept one.
    """

    def __init__(self, default_partitions: int = 6, *, retention_messages: int = 10_000) -> None:
        super().__init__(default_partitions)
        if retention_messages < 1:
            raise ValueError("retention_messages must be >= 1")
        self.retention_messages = retention_messages
        self._lock = threading.RLock()
        self._data = threading.Condition(self._lock)
        self._topics: dict[str, list[_Log]] = {}
        self._groups: dict[str, _Group] = {}
        self._round_robin = itertools.count()

    # ----------------------------------------------------------------- admin

    def ensure_topics(self, names: Sequence[str], partitions: int | None = None) -> None:
        n = partitions or self.default_partitions
        if n < 1:
            raise ValueError("partitions must be >= 1")
        with self._lock:
            for name in names:
                if name not in self._topics:
                    self._topics[name] = [_Log() for _ in range(n)]
            for group in self._groups.values():
                self._rebalance(group)

    def partitions(self, topic: str) -> int:
        with self._lock:
            return len(self._topics.get(topic, ()))

    def end_offsets(self, topic: str) -> list[int]:
        with self._lock:
            return [p.end for p in self._topics.get(topic, ())]

    def committed(self, group_id: str) -> dict[tuple[str, int], int]:
        with self._lock:
            group = self._groups.get(group_id)
            return dict(group.committed) if group else {}

    # ----------------------------------------------------------------- clients

    def producer(self, on_error: ErrorCallback | None = None) -> MemoryProducer:
        return MemoryProducer(self, on_error)

    def consumer(self, topics: Sequence[str], group_id: str) -> MemoryConsumer:
        if not topics:
            raise ValueError("a consumer needs at least one topic")
        if not group_id:
            raise ValueError("a consumer needs a group_id")
        return MemoryConsumer(self, tuple(topics), group_id)

    # ----------------------------------------------------------------- internals

    def _append(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        partition: int | None,
        headers: tuple[tuple[str, bytes], ...],
    ) -> None:
        with self._lock:
            if topic not in self._topics:
                self.ensure_topics([topic])  # Kafka's auto-creation, with the default partitions
            parts = self._topics[topic]
            if partition is None:
                # Kafka's rule: a key picks its partition by hash; no key spreads round-robin.
                partition = (zlib.crc32(key) if key is not None else next(self._round_robin)) % len(parts)
            if not 0 <= partition < len(parts):
                raise ValueError(
                    f"partition {partition} does not exist in topic {topic!r} ({len(parts)} partitions)"
                )
            log = parts[partition]
            log.items.append(
                Message(
                    topic=topic,
                    partition=partition,
                    offset=log.end,
                    key=key,
                    value=value,
                    timestamp_ms=int(time.time() * 1000),
                    headers=headers,
                )
            )
            if len(log.items) > self.retention_messages:
                log.trim(log.end - self.retention_messages)
            self._data.notify_all()

    def _trim_committed(self, tp: tuple[str, int]) -> None:
        """Drop what every group that reads this partition has committed."""
        groups = [
            g for g in self._groups.values() if tp in g.committed or any(tp[0] in m.topics for m in g.members)
        ]
        if groups:
            self._topics[tp[0]][tp[1]].trim(min(g.committed.get(tp, 0) for g in groups))

    def _join(self, member: MemoryConsumer) -> None:
        with self._lock:
            for t in member.topics:
                if t not in self._topics:
                    self.ensure_topics([t])
            group = self._groups.setdefault(member.group_id, _Group())
            group.members.append(member)
            self._rebalance(group)

    def _leave(self, member: MemoryConsumer) -> None:
        with self._lock:
            group = self._groups.get(member.group_id)
            if group and member in group.members:
                group.members.remove(member)
                self._rebalance(group)

    def _rebalance(self, group: _Group) -> None:
        """Range assignment per topic, members in join order.

        A partition a member keeps keeps its position; a partition that moves starts at the
        group's committed offset (so uncommitted messages are delivered again: at-least-once).
        """
        group.generation += 1
        previous = {m: m._assigned for m in group.members}
        for m in group.members:
            m._assigned = {}
        topics = sorted({t for m in group.members for t in m.topics})
        for topic in topics:
            members = [m for m in group.members if topic in m.topics]
            n = len(self._topics.get(topic, ()))
            for p in range(n):
                owner = members[p * len(members) // n]
                tp = (topic, p)
                owner._assigned[tp] = previous[owner].get(tp, group.committed.get(tp, 0))
        for m in group.members:
            m._generation = group.generation
        self._data.notify_all()


class MemoryProducer(Producer):
    """Delivers synchronously into the bus; only a bad partition can fail."""

    def __init__(self, bus: MemoryBus, on_error: ErrorCallback | None) -> None:
        super().__init__(on_error)
        self._bus = bus
        self._closed = False

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        if self._closed:
            raise RuntimeError("send on a closed producer")
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"value must be bytes, not {type(value).__name__}")
        try:
            self._bus._append(topic, bytes(value), key, partition, tuple(headers))
        except ValueError as exc:
            self._report_failure(FailedSend(topic, bytes(value), key, partition, tuple(headers), str(exc)))
        else:
            self._delivered()

    def flush(self, timeout_s: float = 30.0) -> bool:
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        self._closed = True


class MemoryConsumer(Consumer):
    """One group member; joins on construction, leaves on :meth:`close`."""

    def __init__(self, bus: MemoryBus, topics: tuple[str, ...], group_id: str) -> None:
        self._bus = bus
        self.topics = topics
        self.group_id = group_id
        self._assigned: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset
        self._generation = 0
        self._closed = False
        bus._join(self)

    def poll(self, timeout_s: float = 1.0, max_records: int = 500) -> list[Message]:
        if self._closed:
            raise RuntimeError("poll on a closed consumer")
        deadline = time.monotonic() + max(timeout_s, 0.0)
        with self._bus._lock:
            while True:
                out = self._take(max_records)
                remaining = deadline - time.monotonic()
                if out or remaining <= 0:
                    return out
                self._bus._data.wait(remaining)

    def _take(self, max_records: int) -> list[Message]:
        out: list[Message] = []
        for tp in sorted(self._assigned):
            if len(out) >= max_records:
                break
            log = self._bus._topics[tp[0]][tp[1]]
            start = max(self._assigned[tp], log.base)
            chunk = log.read(start, max_records - len(out))
            out.extend(chunk)
            self._assigned[tp] = start + len(chunk)
        return out

    def commit(self, messages: Iterable[Message]) -> None:
        offsets = highest_offsets(messages)
        with self._bus._lock:
            group = self._bus._groups[self.group_id]
            lost = [tp for tp in offsets if tp not in self._assigned]
            if lost:
                raise CommitFailed(f"partitions {sorted(lost)} are no longer assigned to this member")
            for tp, off in offsets.items():
                if off > group.committed.get(tp, 0):
                    group.committed[tp] = off
                    self._bus._trim_committed(tp)

    def assignment(self) -> set[tuple[str, int]]:
        with self._bus._lock:
            return set(self._assigned)

    def lag(self) -> dict[int, int]:
        out: dict[int, int] = {}
        with self._bus._lock:
            for (topic, p), pos in self._assigned.items():
                log = self._bus._topics[topic][p]
                out[p] = out.get(p, 0) + log.end - max(pos, log.base)
        return out

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._bus._leave(self)
