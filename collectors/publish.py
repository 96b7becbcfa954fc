"""Publishing flow batches to the ``flows`` topic: batching, a bounded queue, the spool.

The metering thread hands records to :meth:`Publisher.put` (never blocks: a full queue
drops the records and counts them). The publisher thread gathers them into a batch until
``batch_max_flows`` rows or ``batch_interval_ms`` have passed, then sends it with
:func:`flowwarden.bus.publish_flows` (one compressed message per partition, every flow of
one source IP in one partition) and waits for delivery.

When the bus cannot deliver (or cannot be reached at all), messages go to the on-disk
:class:`~collectors.spool.Spool`; while the spool holds anything, new batches are spooled
behind it so order is kept, and every ``retry_s`` the spool is replayed oldest first,
one small group at a time, each group removed only once delivered (at least once: a group
that half-fails may be delivered twice). A full spool drops the newest message, counted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

import pandas as pd

from flowwarden.bus_base import Bus, FailedSend, Producer
from flowwarden.collectors.metrics import CollectorMetrics
from flowwarden.collectors.spool import Spool
from flowwarden.errors import FlowwardenError, RecordError
from flowwarden.records import FLOW_COLUMNS
from flowwarden.wire import decode_flows

log = logging.getLogger("flowwarden.collector.publish")

REPLAY_GROUP = 8


class SpoolingProducer(Producer):
    """A producer whose "sends" append to the spool (so ``publish_flows`` partitions for it)."""

    def __init__(self, spool: Spool, on_full: Callable[[bytes], None]) -> None:
        super().__init__()
        self.spool = spool
        self.on_full = on_full
        self.rows = 0

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        if not self.spool.append(topic, value, key, partition, rows=-1):
            self.on_full(value)

    def flush(self, timeout_s: float = 30.0) -> bool:
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        return None


def rows_of(value: bytes) -> int:
    """Flow rows in one message (decoded only on the rare path where a loss is counted)."""
    try:
        return len(decode_flows(value))
    except RecordError:
        return 0


class Publisher:
    """The publisher thread; see the module docstring."""

    def __init__(
        self,
        *,
        bus_factory: Callable[[], Bus],
        topic: str,
        partitions: int,
        spool: Spool,
        metrics: CollectorMetrics,
        batch_max_flows: int = 5000,
        batch_interval_s: float = 1.0,
        queue_max_batches: int = 256,
        flush_timeout_s: float = 10.0,
        retry_s: float = 2.0,
    ) -> None:
        self.bus_factory = bus_factory
        self.topic = topic
        self.partitions = partitions
        self.spool = spool
        self.metrics = metrics
        self.batch_max_flows = batch_max_flows
        self.batch_interval_s = batch_interval_s
        self.flush_timeout_s = flush_timeout_s
        self.retry_s = retry_s
        self._queue: queue.Queue[pd.DataFrame] = queue.Queue(maxsize=queue_max_batches)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bus: Bus | None = None
        self._producer: Producer | None = None
        self._replaying = False
        self._replay_failed = False
        self._next_retry = 0.0
        self._spooler = SpoolingProducer(spool, self._spool_full)
        self.published_flows = 0
        self.published_messages = 0
        self.replayed_messages = 0
        self.spooled_messages = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.spool.open()
        self.metrics.spool_bytes.labels(node=self.metrics.node).set(self.spool.bytes)
        self._thread = threading.Thread(target=self._run, name="collector-publish", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Publish (or spool) everything queued, then close the producer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._producer is not None:
            self._producer.close(min(timeout_s, 10.0))
        if self._bus is not None:
            self._bus.close()

    def put(self, records: pd.DataFrame) -> bool:
        """Queue records for publishing; False (dropped and counted) when the queue is full."""
        if len(records) == 0:
            return True
        try:
            self._queue.put_nowait(records)
        except queue.Full:
            self.metrics.drop("queue_full", len(records))
            log.warning("publish queue full, flows dropped count=%d", len(records))
            return False
        return True

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    # ------------------------------------------------------------------ thread

    def _run(self) -> None:
        pending: list[pd.DataFrame] = []
        rows = 0
        first = 0.0
        while True:
            stopping = self._stop.is_set()
            try:
                part = self._queue.get(timeout=0.05)
                if not pending:
                    first = time.monotonic()
                pending.append(part)
                rows += len(part)
            except queue.Empty:
                if stopping:
                    break
            due = pending and (
                rows >= self.batch_max_flows or time.monotonic() - first >= self.batch_interval_s
            )
            if due or (stopping and pending and self._queue.empty()):
                self._dispatch(pd.concat(pending, ignore_index=True))
                pending, rows = [], 0
            if len(self.spool) and time.monotonic() >= self._next_retry:
                self._replay(deadline=time.monotonic() + (self.flush_timeout_s if not stopping else 5.0))
        if pending:
            self._dispatch(pd.concat(pending, ignore_index=True))
        if len(self.spool):
            self._replay(deadline=time.monotonic() + 5.0)

    def _ensure_producer(self) -> Producer | None:
        if self._producer is not None:
            return self._producer
        try:
            self._bus = self._bus or self.bus_factory()
            self._bus.ensure_topics([self.topic], self.partitions)
            self._producer = self._bus.producer(on_error=self._on_error)
        except FlowwardenError as exc:
            log.warning("bus unreachable, spooling error=%s", exc)
            self._next_retry = time.monotonic() + self.retry_s
            return None
        return self._producer

    def _on_error(self, failure: FailedSend) -> None:
        self.metrics.publish_errors.labels(node=self.metrics.node).inc()
        if self._replaying:
            self._replay_failed = True  # the spooled copy stays where it is
            return
        self._spool_message(failure.topic, failure.value, failure.key, failure.partition)

    def _spool_message(self, topic: str, value: bytes, key: bytes | None, partition: int | None) -> None:
        if self.spool.append(topic, value, key, partition, rows=-1):
            self.spooled_messages += 1
        else:
            self._spool_full(value)
        self.metrics.spool_bytes.labels(node=self.metrics.node).set(self.spool.bytes)

    def _spool_full(self, value: bytes) -> None:
        n = rows_of(value)
        self.metrics.drop("spool_full", n)
        log.error("spool full, flows dropped count=%d spool_bytes=%d", n, self.spool.bytes)

    def _dispatch(self, df: pd.DataFrame) -> None:
        from flowwarden.bus import publish_flows

        df = df[list(FLOW_COLUMNS)]
        producer = None if len(self.spool) else self._ensure_producer()
        if producer is None:  # keep order: behind what is already spooled
            before = len(self.spool)
            publish_flows(self._spooler, self.topic, df, self.partitions)
            self.spooled_messages += len(self.spool) - before
            self.metrics.spool_bytes.labels(node=self.metrics.node).set(self.spool.bytes)
            return
        failed_before = producer.failed_count
        sent = publish_flows(producer, self.topic, df, self.partitions)
        ok = producer.flush(self.flush_timeout_s)
        if ok and producer.failed_count == failed_before:
            self.published_flows += len(df)
            self.published_messages += sent
            producer.take_failed()
            return
        self._bus_down(producer, replaying=False)

    def _bus_down(self, producer: Producer, *, replaying: bool) -> None:
        """Give up on this producer: what it still holds fails now and (unless replaying) is spooled.

        Closing it fails the in-flight messages in order, before any newer batch is
        spooled behind them, so the spool keeps the original order.
        """
        self._replaying = replaying
        try:
            producer.close(1.0)
        except Exception as exc:
            log.warning("closing the producer failed error=%s", exc)
        finally:
            self._replaying = False
        producer.take_failed()
        self._producer = None
        self._next_retry = time.monotonic() + self.retry_s
        log.warning("bus not delivering, spooling spooled=%d", len(self.spool))

    def _replay(self, deadline: float) -> None:
        producer = self._ensure_producer()
        if producer is None:
            return
        while len(self.spool) and time.monotonic() < deadline:
            group = self.spool.peek(REPLAY_GROUP)
            if not group:
                break
            self._replaying, self._replay_failed = True, False
            try:
                for m in group:
                    producer.send(m.topic, m.value, key=m.key, partition=m.partition)
                ok = producer.flush(self.flush_timeout_s)
            finally:
                self._replaying = False
            producer.take_failed()
            if not ok or self._replay_failed:
                self._bus_down(producer, replaying=True)
                return
            self.spool.remove([m.seq for m in group])
            self.replayed_messages += len(group)
            self.published_messages += len(group)
            self.metrics.spool_bytes.labels(node=self.metrics.node).set(self.spool.bytes)
        if not len(self.spool):
            log.info("spool replayed messages=%d", self.replayed_messages)
