"""The pipeline's streaming runtime: consume flow batches, run the engine, deliver, commit.

One loop, one thread (notifiers and ``/metrics`` have their own):

1. ``poll`` the ``flows`` topic in a consumer group; decode the poll at once; garbage batches
   and bad rows go to ``flows.dlq`` with their reason and source coordinates (never a stop),
   and so do flows dated more than ``pipeline.max_clock_skew_s`` ahead of the wall clock
   (they would drag the watermark into the future). A partition whose offsets start again
   (topic recreated, broker data lost) is new data under a new epoch, part of every batch id.
2. Hold batches back in a :class:`PartitionAligner` so the partitions this worker owns
   advance together in event time: otherwise a backlog read one partition at a time would
   push the engine's watermark past the others' data, and one worker would cut different
   windows than two. What is released goes through ONE ``engine.process`` call.
3. Deliver that call's alerts to the store (idempotent upsert), the ``alerts`` topic and
   the notifiers; every ``store_flush_s`` (and before each checkpoint) write the per-minute
   rollups of the batches fed since, with their batch marks, in ONE store transaction
   (:class:`StoreSink`): a replayed batch adds no rollups twice.
4. Every ``resolution_poll_s``: apply the verdicts people gave on alerts since
   (``flowwarden alerts resolve``, read from the store by :class:`VerdictFollower`) to the
   engine; which ones its state holds is saved with each checkpoint.
5. At each checkpoint (every ``checkpoint_interval_s`` and at stop): store the engine's
   state, then commit, per partition, up to the last batch whose windows have all closed
   (:class:`CommitTracker`): at-least-once delivery, exactly-once effects (alert ids are
   deterministic, batch marks stop rollups being added twice on replay).

When no data arrives, the engine is driven with ``now`` = an event-time clock (the newest
``ts_end`` fed plus the wall time since), so the last windows close without new data even
when the stream is a replay of old flows.

The checkpoint holds the offsets fed so far and the oldest open window: after a crash, the replayed
batches that the checkpoint already holds give the engine only their rows of windows that
were still open (the others are in the restored baselines already and would count twice).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from prometheus_client import Counter

from flowwarden.alert_formats import AlertExporter
from flowwarden.bus import (
    Bus,
    Consumer,
    DeadLetter,
    Message,
    Producer,
    read_flow_batches,
    route_dead_letters,
)
from flowwarden.kube import InventorySource, PodInventory, inventory_source_from_settings
from flowwarden.pipeline.detection.detectors.flow_rules import rule_tallies
from flowwarden.pipeline.runtime.batches import CommitTracker, PartitionAligner, PartitionKey, PendingBatch
from flowwarden.pipeline.runtime.decode import Rows, engine_input, keep_rows, read_clean_poll, ts_end
from flowwarden.pipeline.runtime.feeds import RulesSnapshot, RulesSource
from flowwarden.pipeline.runtime.loop import SteppedStage, delivered
from flowwarden.pipeline.runtime.metrics import PipelineMetrics
from flowwarden.pipeline.runtime.model_watch import ModelWatcher
from flowwarden.pipeline.runtime.notify import NotifierHub, build_hub
from flowwarden.pipeline.runtime.partition_engines import ClockedEngine, PartitionEngines
from flowwarden.pipeline.runtime.ports import Engine, EngineOutput, PipelineStore
from flowwarden.pipeline.runtime.repartition import (
    ENRICHED_HEADER,
    MAX_TS_HEADER,
    MIN_TS_HEADER,
    PEERS_HEADER,
    SOURCE_HEADER,
    UpstreamLag,
)
from flowwarden.pipeline.runtime.sinks import AlertPublisher, BatchId, StoreSink
from flowwarden.pipeline.runtime.verdicts import VerdictFollower
from flowwarden.records import Alert, empty_flows
from flowwarden.retention import Pruner
from flowwarden.retry import RetryPolicy
from flowwarden.settings import Settings
from flowwarden.store import DuplicateBatch

if TYPE_CHECKING:  # imports kafka-python: only a detect worker of several needs it
    from flowwarden.pipeline.runtime.global_memory import GlobalMemory

log = logging.getLogger(__name__)


@dataclass
class StageOptions:
    """Knobs of the loop itself, made from ``settings.pipeline`` by :meth:`from_settings`.

    The defaults here are the settings' defaults; the fields that are not settings
    (``poll_timeout_s``, ``lag_poll_s``, ``worker_id``, ``state_key``) are how a process or a
    test runs the loop, not something an operator tunes.
    """

    poll_timeout_s: float = 0.5
    max_records: int = 50  # messages per poll: bounds one step (collectors send up to 5,000 flows each)
    idle_tick_s: float = 2.0  # no feed for this long: drive the engine with the event clock
    align_idle_s: float = 2.0
    align_max_flows: int = 2_000_000
    model_poll_s: float = 10.0
    lag_poll_s: float = 5.0  # also refreshed after an empty poll (at most once a second)
    flush_timeout_s: float = 30.0
    store_flush_s: float = 2.0  # rollups and batch marks are written at least this often
    store_flush_rows: int = 500_000  # ... or once this many flows wait for it
    resolution_poll_s: float = 2.0  # how often the store is asked for new verdicts on alerts
    worker_id: str = "0"
    state_key: str = ""  # default: pipeline/<group>/<worker_id>

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> StageOptions:
        """The loop's knobs that are settings (the memory a worker holds), then ``overrides``."""
        p = settings.pipeline
        base: dict[str, Any] = {
            "max_records": p.max_poll_batches,
            "align_max_flows": p.max_buffered_flows,
            "store_flush_rows": p.store_flush_flows,
            "store_flush_s": p.store_flush_s,
            "align_idle_s": p.align_idle_s,
            "idle_tick_s": p.idle_tick_s,
            "model_poll_s": p.model_poll_s,
            "flush_timeout_s": p.producer_flush_timeout_s,
        }
        return cls(**(base | overrides))


class SourceAligner(PartitionAligner):
    """A :class:`PartitionAligner` that, behind the enrich stage, aligns the *source* partitions.

    One partition of the topic keyed by workload interleaves the batches of every partition
    of ``flows`` (header ``fw.source``); each is aligned as a partition of its own, and
    advanced by its source batch's event time (header ``fw.max_ts``, also on batches with no
    rows for this partition), exactly as one process aligns the partitions of ``flows``.
    Without the headers (``flows`` itself) it is the plain aligner.
    """

    def add(self, batch: PendingBatch, mono_now: float) -> None:
        m = batch.message
        key = fed_in_order_key(m)
        if key == batch.key:
            super().add(batch, mono_now)
            return
        max_ts = batch.max_ts_end
        raw = m.header(MAX_TS_HEADER)
        if raw is not None:
            with contextlib.suppress(ValueError):  # not a number: the rows' own event time
                max_ts = max(max_ts, float(raw))
        peers = m.header(PEERS_HEADER)
        for peer in peers.decode(errors="replace").split(",") if peers else ():
            # The sender's other source partitions: wait for them from now on (up to idle_s).
            self._last_seen.setdefault(_aligned_key(m.topic, m.partition, peer.rsplit("/", 1)), mono_now)
        self._pending.setdefault(key, deque()).append(batch)
        self._last_seen[key] = mono_now
        self._frontier[key] = max(self._frontier.get(key, -math.inf), max_ts)
        self.buffered_flows += batch.n_flows

    def expect(self, keys: Iterable[PartitionKey], mono_now: float) -> None:
        # Which source partitions a new partition carries is known once they speak.
        super().expect([k for k in keys if not self._carries_sources(k)], mono_now)

    def forget(self, keys: Iterable[PartitionKey]) -> None:
        gone = set(keys)
        super().forget([k for k in list(self._last_seen) if k in gone or _real_key(k) in gone])

    def _carries_sources(self, key: PartitionKey) -> bool:
        return any(_real_key(k) == key and k != key for k in self._last_seen)


def fed_in_order_key(m: Message) -> PartitionKey:
    """The key under which a partition's batches are released (so fed) in offset order.

    The partition itself; behind the enrich stage, each source partition within it (the
    aligner interleaves those in event time, so the highest offset fed of the partition
    does not mean every lower one was). The checkpoint's replay guard counts per this key.
    """
    source = m.header(SOURCE_HEADER)
    if source is None:
        return (m.topic, m.partition)
    return _aligned_key(m.topic, m.partition, source.decode(errors="replace").rsplit("/", 3)[0:2])


def _aligned_key(topic: str, partition: int, source: list[str]) -> PartitionKey:
    """The aligner's key of a source partition inside ``(topic, partition)``."""
    return (f"{topic}\x00{'/'.join(source)}", partition)


def _real_key(key: PartitionKey) -> PartitionKey:
    return (key[0].split("\x00", 1)[0], key[1])


@dataclass
class StageStats:
    batches: int = 0
    flows: int = 0
    dlq: int = 0
    alerts: int = 0
    replayed: int = 0
    redelivered: int = 0
    resent: int = 0  # batches the enrich stage sent twice (fed once)
    ticks: int = 0  # idle-clock calls that closed windows without data
    commits: int = 0
    alert_ids: set[str] = field(default_factory=set)
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))  # seconds, newest last


class PipelineStage(SteppedStage):
    """Consume ``flows``, detect, deliver, commit (see the module docstring).

    Embedded mode and production are the same class: give it a ``MemoryBus`` and a SQLite
    store, or a ``KafkaBus`` and PostgreSQL. Constructor does no I/O; :meth:`start` /
    :meth:`stop` (or ``with``) own the lifecycle; :meth:`run` loops until ``stop_event``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        bus: Bus,
        store: PipelineStore,
        engine: Engine,
        metrics: PipelineMetrics | None = None,
        notifiers: NotifierHub | None = None,
        model_watcher: ModelWatcher | None = None,
        inventory_source: InventorySource | None = None,
        rules_source: RulesSource | None = None,
        options: StageOptions | None = None,
        topic: str | None = None,
        global_memory: GlobalMemory | None = None,
        upstream: UpstreamLag | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.engine = engine
        # A detect worker's engines, one per assigned partition, each checkpointed under its
        # partition's key (partition_engines.py); None: one engine and one checkpoint per worker.
        self.partitioned = engine if isinstance(engine, PartitionEngines) else None
        self.metrics = metrics or PipelineMetrics()
        self.options = options or StageOptions.from_settings(settings)
        self.notifiers = (
            notifiers
            if notifiers is not None
            else build_hub(
                settings.notifiers, exporter=AlertExporter.from_settings(settings), retry=settings.retry
            )
        )
        self.notifiers.on_result = self._on_notify
        self.model_watcher = model_watcher
        # Pods for enrichment: started and stopped with the stage; its snapshots go to the engine.
        self.inventory_source = inventory_source
        self._inventory: PodInventory | None = None  # the snapshot the engine holds
        # Declared policy and threat feeds (issue 17): the same pattern, for the rule detectors.
        self.rules_source = rules_source
        self._rules: RulesSnapshot | None = None
        self.clock = clock
        self.wall = wall
        topics = settings.kafka.topics
        # ``flows`` (one process does it all), or the enrich stage's topic keyed by workload.
        self.flows_topic = topic or topics.flows
        # The cluster-wide memory shared by detect workers (None: this worker is the only one).
        self.global_memory = global_memory
        # The enrich stage's progress, when it feeds this one: the idle clock waits for it.
        self.upstream = upstream
        # Per (partition, source partition) of a repartition topic: the highest source offset
        # fed (saved with the checkpoint) and taken in, to tell a batch the enrich stage sent
        # again after a restart (see _resent).
        self._sources: dict[tuple[int, str], int] = {}
        self._sources_in: dict[tuple[int, str], int] = {}
        self.alerts_topic = topics.alerts
        self.dlq_topic = topics.flows_dlq
        self.group_id = settings.pipeline.group_id
        self.sink = StoreSink(store, self.group_id)
        # Transactions the database aborted and the sink ran again.
        store.on_retry = lambda cause: self.metrics.store_retries.labels(cause=cause).inc()
        self.state_key = self.options.state_key or f"pipeline/{self.group_id}/{self.options.worker_id}"
        self.aligner = SourceAligner(idle_s=self.options.align_idle_s, max_flows=self.options.align_max_flows)
        self.tracker = CommitTracker()
        self.verdicts = VerdictFollower(self.options.resolution_poll_s)
        self.pruner = Pruner(store, settings.store)  # retention: flowwarden/retention.py
        self.stats = StageStats()
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.publisher: AlertPublisher | None = None
        self._assigned: set[PartitionKey] = set()
        self._fed_max_ts = -math.inf  # newest ts_end given to the engine
        self._fed_offsets: dict[PartitionKey, int] = {}
        self._replay_offsets: dict[PartitionKey, int] = {}  # from the checkpoint: already in the state
        # Per partition: rows of those batches before this window start are in the state too.
        self._replay_floors: dict[PartitionKey, float] = {}
        # Partitioned: which verdicts each partition's restored state holds.
        self._partition_verdicts: dict[int, VerdictFollower] = {}
        # Partitioned: this worker's claim on each partition's state (a fencing token, taken when
        # the partition came), and the partitions another worker has claimed since.
        self._claims: dict[int, int] = {}
        self._fenced: set[int] = set()
        self._clock_max = -math.inf  # newest event time the engine has been told (data or now)
        self._last_feed = 0.0
        self._last_tick_now = -math.inf
        self._engine_totals: dict[tuple[str, ...], float] = {}
        self._lag: dict[int, int] | None = {}  # None: the consumer cannot tell
        self._ingested: dict[PartitionKey, int] = {}  # highest offset taken in, per partition
        # Offsets that start again (a topic deleted and recreated, a broker that lost its data)
        # are new data, not redeliveries: batch ids carry the partition's epoch, which the group
        # bumps (in the store, under epochs_key) each time a partition's offsets go back below
        # what it committed.
        self.epochs_key = f"pipeline/{self.group_id}/epochs"
        self._epochs: dict[PartitionKey, int] = {}
        self._committed: dict[PartitionKey, int] = {}  # next offset committed, as far as we know
        # Broker timestamps of the uncommitted messages at the last checkpoint: what a restart
        # is handed again, byte for byte (another timestamp at one of these offsets: a new log).
        self._pending_ts: dict[PartitionKey, dict[int, int]] = {}
        self._lag_at = -math.inf
        # Fed but not yet stored: per engine call, its batches (id, rows) and enriched flows.
        self._effects: list[tuple[list[tuple[BatchId, int]], pd.DataFrame | None]] = []
        self._effect_rows = 0
        now = clock()
        self._next_store_flush = now + self.options.store_flush_s
        self._next_checkpoint = now + settings.pipeline.checkpoint_interval_s
        self._next_model_poll = now + self.options.model_poll_s
        self._next_lag = now

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Import the checkpoint, join the group, get the producer ready."""
        if self.inventory_source is not None:  # the pods are read or listed before any flow
            self.inventory_source.start()
            self._sync_inventory()
        if self.rules_source is not None:  # a bad policy file stops the start here
            self.rules_source.start()
            self._sync_rules()
        if self.model_watcher is not None:
            model = self.model_watcher.initial()
            if model is not None:
                self.engine.set_model(model)
            self.metrics.set_model(self.model_watcher.version)
        self._epochs = self.sink.load_epochs(self.epochs_key)
        # Partitioned, each partition's state is restored when it is assigned (_partitions_assigned).
        state = self.sink.load_state(self.state_key) if self.partitioned is None else None
        if state:
            self.engine.import_state(state)
            self._restore_replay_guard(self.sink.load_state(self.state_key + "/offsets"), self.verdicts)
            log.info("state restored key=%s bytes=%d", self.state_key, len(state))
        self.bus.ensure_topics([self.flows_topic, self.alerts_topic, self.dlq_topic])
        self.producer = self.bus.producer()
        self.publisher = AlertPublisher.from_settings(self.producer, self.settings)  # alerts.format
        if self.publisher.export_topic:
            self.bus.ensure_topics([self.publisher.export_topic])
        if self.global_memory is not None:  # before any flow: what the cluster already knows
            self.global_memory.start()
        self.consumer = self.bus.consumer([self.flows_topic], self.group_id)
        self.notifiers.start()
        log.info(
            "pipeline started group=%s topic=%s worker=%s",
            self.group_id,
            self.flows_topic,
            self.options.worker_id,
        )

    def stop(self, *, flush: bool = False) -> None:
        """Commit what is accounted for, checkpoint, leave the group.

        ``flush`` closes every open window first (end of a file, the demo): everything
        consumed is then committed. Without it the open windows' batches stay uncommitted
        and are replayed by whoever owns their partitions next, so no window is cut short.
        """
        if self.consumer is None:
            return
        try:
            if flush:
                self._feed(self.aligner.release(self.clock(), everything=True))
                self._deliver(self.engine.flush())
            self._exchange_memory()
            self.checkpoint()
        finally:
            if self.global_memory is not None:
                self.global_memory.close()
            if self.upstream is not None:
                self.upstream.close()
            self.consumer.close()
            if self.producer is not None:
                self.producer.close()
            self.notifiers.close()
            if self.inventory_source is not None:
                self.inventory_source.stop()
            if self.rules_source is not None:
                self.rules_source.stop()
            self.consumer = None
            log.info(
                "pipeline stopped batches=%d flows=%d alerts=%d replayed=%d redelivered=%d ticks=%d "
                "late_flows=%d",
                self.stats.batches,
                self.stats.flows,
                self.stats.alerts,
                self.stats.replayed,
                self.stats.redelivered,
                self.stats.ticks,
                self.engine.stats().late_flows,
            )

    def drain(self, *, idle_polls: int = 3, max_seconds: float = 300.0, flush: bool = True) -> None:
        """Consume until ``idle_polls`` polls in a row bring nothing, then (optionally) flush.

        For the embedded mode and tests: a file's worth of flows in, every alert out.
        """
        deadline = self.clock() + max_seconds
        empty = 0
        while empty < idle_polls and self.clock() < deadline:
            empty = 0 if self.step() else empty + 1
        self._feed(self.aligner.release(self.clock(), everything=True))
        if flush:
            self._deliver(self.engine.flush())
        self.checkpoint()

    # ------------------------------------------------------------------ one turn

    def step(self) -> int:
        """One poll and everything due after it; returns the number of messages polled."""
        assert self.consumer is not None, "start() first"
        messages = self.consumer.poll(
            timeout_s=self.options.poll_timeout_s, max_records=self.options.max_records
        )
        now = self.clock()
        self._track_assignment(now)
        if messages:
            self._ingest(messages, now)
        # Fresh lag matters when holding batches back (is a quiet partition done or just slow?)
        # and before the idle clock runs; otherwise the metric's period is enough.
        stale = now - self._lag_at
        if now >= self._next_lag or stale >= (
            0.5 if len(self.aligner) else 1.0 if not messages else math.inf
        ):
            self._update_lag()
        released = self.aligner.release(now, lagging=self._lagging())
        if released:
            self._feed(released)
        elif (
            not messages
            and not len(self.aligner)
            and not self._lagging()
            and now - self._last_feed >= self.options.idle_tick_s
            and not (self.upstream is not None and self.upstream.behind(now))
        ):
            self._tick(now)
        self.metrics.buffered_flows.set(self.aligner.buffered_flows)
        self._exchange_memory()
        if now >= self._next_checkpoint:
            self.checkpoint()
        if now >= self._next_model_poll:
            self._poll_model()
        if self.verdicts.due(now):
            self._poll_verdicts(now)
        self.pruner.maybe_prune(now)
        return len(messages)

    def _partitions_revoked(self, gone: set[PartitionKey]) -> None:
        # Their uncommitted batches will come again at their new owner.
        self.aligner.forget(gone)
        self.tracker.forget(gone)
        for key in gone if self.partitioned is not None else ():
            self._release_partition(key)

    def _partitions_assigned(self, new: set[PartitionKey], now: float) -> None:
        self.aligner.expect(new, now)
        self._epochs |= self.sink.load_epochs(self.epochs_key)  # another member may have bumped one
        for key in sorted(new) if self.partitioned is not None else ():
            self._restore_partition(key)

    def _ingest(self, messages: list[Message], now: float) -> None:
        """Decode one poll; route what is bad to the DLQ; queue the rest for alignment.

        The whole poll is decoded and its rows checked in one go (:meth:`_decode`): row checks
        cost about the same for 500 rows as for 50,000, so one call per poll rather than per
        message. A clean poll's batches stay Arrow tables until :meth:`_feed_engine`.
        """
        fresh: list[Message] = []
        resent: set[int] = set()
        for m in messages:
            key = (m.topic, m.partition)
            if m.offset < self._committed.get(key, -1) or self._another_message(m):
                # Below what the group committed (the consumer never goes back there by itself),
                # or not the message we had at that offset: the partition's log started again.
                self._new_epoch(key, m.offset)
            if m.offset <= self._ingested.get(key, -1):
                # Delivered again after a rebalance gave us back a partition we kept reading:
                # the engine has this batch already.
                self.stats.redelivered += 1
                continue
            self._ingested[key] = m.offset
            if self._resent(m):
                resent.add(id(m))
            fresh.append(m)
        if not fresh:
            return
        self.stats.batches += len(fresh)
        self.metrics.batches.inc(len(fresh))
        # Event time is bounded by the wall clock: a node whose clock runs ahead must not
        # drag the watermark (and every window after it) into the future.
        bound = self.wall() + self.settings.pipeline.max_clock_skew_s
        decoded = self._decode(fresh, bound)
        window_s = self.settings.pipeline.window_s
        for m in fresh:
            flows = None if id(m) in resent else decoded.get(id(m))
            in_order = fed_in_order_key(m)
            guard = self._replay_offsets.get(in_order)
            if flows is not None and guard is not None and m.offset <= guard and len(flows):
                # Already in the restored state, except its rows of windows that were open.
                starts = np.floor(ts_end(flows) / window_s)
                flows = keep_rows(flows, starts * window_s >= self._replay_floors.get(in_order, math.inf))
            max_ts = float(ts_end(flows).max()) if flows is not None and len(flows) else -math.inf
            batch = PendingBatch(
                m,
                flows if flows is not None and len(flows) else None,
                max_ts,
                epoch=self._epochs.get((m.topic, m.partition), 0),
            )
            self.tracker.add(batch)
            self.aligner.add(batch, now)

    def _decode(self, messages: list[Message], bound: float) -> dict[int, Rows]:
        """Each readable message's valid rows, by ``id``; dead letters sent, in poll order.

        A clean poll (the usual case) stays Arrow until the engine takes it
        (:mod:`~flowwarden.pipeline.runtime.decode`); any other goes the general way.
        """
        clean = read_clean_poll(messages, max_event_ts=bound)
        if clean is not None:
            return {id(m): t for m, t in zip(messages, clean, strict=True)}
        good, dead = read_flow_batches(messages, max_event_ts=bound)
        # Dead letters in the order of their messages, as the poll delivered them.
        order = {(m.topic, m.partition, m.offset): i for i, m in enumerate(messages)}
        dead.sort(key=lambda d: order.get((d.source_topic, d.source_partition, d.source_offset), -1))
        for d in dead:
            self._dead_letter(d)
        return {id(m): flows for m, flows in good}

    def _resent(self, m: Message) -> bool:
        """A batch of the enrich stage that it sent before (it restarted before its commit).

        Its header names the source batch; per source partition, the enrich stage sends in
        offset order, so one at or below the highest already fed here is a copy. Messages the
        replay guard covers are the restored state's own, never copies."""
        source = _source_of(m)
        if source is None or m.offset <= self._replay_offsets.get(fed_in_order_key(m), -1):
            return False
        where, at = source
        if at <= self._sources_in.get(where, self._sources.get(where, -1)):
            self.stats.resent += 1
            return True
        self._sources_in[where] = at
        return False

    def _another_message(self, m: Message) -> bool:
        """True when we held another message at ``m``'s offset (known by its broker timestamp)."""
        key = (m.topic, m.partition)
        ts = self._pending_ts.get(key, {}).get(m.offset)
        if ts is None and m.offset <= self._ingested.get(key, -1):
            ts = self.tracker.timestamp_at(key, m.offset)
        return ts is not None and ts != m.timestamp_ms

    def _new_epoch(self, key: PartitionKey, offset: int) -> None:
        """The partition's offsets started again: what comes now is new data, under a new epoch."""
        old = self._epochs.get(key, 0)
        epoch = self.sink.bump_epoch(self.epochs_key, key, old)
        self._epochs[key] = epoch
        committed = self._committed.get(key, -1)
        # What we knew of the old offsets means nothing for the new ones. Batches of the old
        # epoch still held back are fed as usual but never committed (their offsets are gone).
        self._forget_offsets(key)
        self.tracker.forget([key])
        self.metrics.offset_resets.labels(topic=key[0]).inc()
        log.error(
            "partition offsets started again (topic recreated or broker data lost): taking it as "
            "new data topic=%s partition=%d offset=%d committed=%d epoch=%d->%d",
            key[0],
            key[1],
            offset,
            committed,
            old,
            epoch,
        )

    def _dead_letter(self, letter: DeadLetter) -> None:
        """To ``flows.dlq`` with its reason and source coordinates (topic, partition, offset, rows)."""
        assert self.producer is not None
        route_dead_letters(self.producer, self.dlq_topic, [letter])
        count = max(letter.rows, 1)  # an unreadable message counts once
        self.metrics.dlq.labels(cause=letter.cause).inc(count)
        self.stats.dlq += count
        log.warning(
            "dead letter cause=%s records=%d topic=%s partition=%d offset=%d reason=%s",
            letter.cause,
            count,
            letter.source_topic,
            letter.source_partition,
            letter.source_offset,
            letter.reason,
        )

    def _feed(self, released: list[PendingBatch]) -> None:
        """One engine call over the released batches (partitioned: one per partition, then
        every engine to the newest watermark among them); alerts out now, rollups and marks soon."""
        if not released:
            return
        self._sync_inventory()
        self._sync_rules()
        if self.partitioned is None:
            self._feed_engine(self.engine, released)
        else:
            groups: dict[int, list[PendingBatch]] = {}
            for b in released:
                groups.setdefault(b.message.partition, []).append(b)
            for p, batches in groups.items():
                if p in self.partitioned:
                    engine = self.partitioned.engine(p)
                    # Every partition hears of every source batch: the stream's memory starts
                    # at its oldest flow, on every worker alike (not at this partition's first).
                    engine.note_stream_start(min(map(_min_ts_of, batches)))
                    self._feed_engine(engine, batches)
                    continue
                # Polled before its partition moved away: neither fed nor committed here.
                log.warning("batches of a partition no longer assigned left to its owner partition=%d", p)
                self.tracker.forget([batches[0].key])
                released = [b for b in released if b.message.partition != p]
            # One clock: a quiet partition's windows close as one engine's would.
            self._deliver(self.partitioned.advance())
        self._last_feed = self.clock()
        bound = self._window_start(self._clock_max)
        for b in released:
            if b.epoch == self._epochs.get(b.key, 0):  # the replay guard knows the current offsets only
                in_order = fed_in_order_key(b.message)
                self._fed_offsets[in_order] = max(self._fed_offsets.get(in_order, -1), b.message.offset)
            source = _source_of(b.message)
            if source is not None:  # what the checkpoint says was fed from each source partition
                where, at = source
                self._sources[where] = max(at, self._sources.get(where, -1))
            b.fed = True
            b.bound = bound
            b.flows = None  # the engine has them now; keep only the bookkeeping
        if self._effect_rows >= self.options.store_flush_rows or self.clock() >= self._next_store_flush:
            self.flush_effects()

    def _feed_engine(self, engine: Engine, batches: list[PendingBatch]) -> None:
        """One engine call over ``batches``: alerts delivered, rollups and marks queued."""
        frames = [b.flows for b in batches if b.flows is not None]
        if not frames:
            self._effects.append(([(b.id, 0) for b in batches], None))
            self._deliver(None)
            return
        flows = engine_input(frames)
        sizes = [(b.id, b.n_flows) for b in batches]
        # The engine's input is a copy: let the batches' own rows go before the engine runs
        # (the engine's call is the worker's peak; its input need not be held twice meanwhile).
        del frames
        for b in batches:
            b.flows = None
        result = engine.process(flows, enriched=all(map(_enriched_upstream, batches)))
        self._fed_max_ts = max(self._fed_max_ts, float(flows["ts_end"].max()))
        self._clock_max = max(self._clock_max, self._fed_max_ts)
        self.metrics.flows.inc(len(flows))
        self.stats.flows += len(flows)
        if len(result.enriched) != len(flows):
            log.error(
                "engine returned %d enriched rows for %d flows: rollups of this call skipped",
                len(result.enriched),
                len(flows),
            )
            self._effects.append(([(b.id, 0) for b in batches], None))
        else:
            self._effects.append((sizes, result.enriched))
            self._effect_rows += len(flows)
        self._deliver(result)

    def flush_effects(self) -> None:
        """Write the rollups and marks of the batches fed so far, in one transaction.

        Batches another member stored meanwhile (a replay after a crash or a rebalance) are
        recognised by their marks: they add no rollups. Held in memory between flushes (at
        most ``store_flush_s`` or ``store_flush_rows``); a crash before a flush loses nothing
        but work, since those batches are neither marked nor committed and come again.
        """
        self._next_store_flush = self.clock() + self.options.store_flush_s
        if not self._effects:
            return
        ids = [bid for part, _ in self._effects for bid, _ in part]
        for attempt in range(2):
            seen = self.sink.seen(ids)
            rows = []
            for part, enriched in self._effects:
                if enriched is None:
                    continue
                if not seen.intersection(bid for bid, _ in part):
                    rows.append(enriched)
                    continue
                owner_seen = np.repeat(np.array([bid in seen for bid, _ in part]), [n for _, n in part])
                rows.append(enriched[~owner_seen])
            frame = pd.concat(rows, ignore_index=True) if len(rows) > 1 else (rows[0] if rows else None)
            try:
                self.sink.write([], frame, [bid for bid in ids if bid not in seen])
            except DuplicateBatch:
                if attempt:
                    raise
                log.warning("batches stored meanwhile by another member: asking again")
                continue
            break
        if seen:
            self.stats.replayed += len(seen)
            self.metrics.replayed_batches.inc(len(seen))
        self._effects.clear()
        self._effect_rows = 0

    def _deliver(self, result: EngineOutput | None) -> None:
        """An engine call's alerts: to the store (idempotent upsert), the topic, the notifiers."""
        alerts = list(result.alerts) if result is not None else []
        assert self.publisher is not None
        if alerts:
            self.sink.write(alerts, None, [])
            self.publisher.publish(alerts)
            wall = self.wall()
            newest_flow = self._fed_max_ts
            for a in alerts:
                self.metrics.alerts.labels(kind=a.kind, detector=a.detector).inc()
                end = a.last_seen or a.window_end
                latency = max(0.0, wall - min(end.timestamp(), newest_flow))
                self.metrics.latency.observe(latency)
                self.stats.latencies.append(latency)
                self.stats.alert_ids.add(a.id)
            self.stats.alerts += len(alerts)
            self.notifiers.submit(alerts)
        self._engine_gauges()

    def _engine_gauges(self) -> None:
        counted = self.engine.stats()
        self.metrics.state_entities.set(float(counted.state_entities))
        for kind, n in counted.evicted.items():  # the engine keeps a running total: count its growth
            self._count_growth(self.metrics.evicted.labels(kind=kind), ("evicted", kind), n)
        # Counters the engine keeps as totals: export their growth.
        self._count_growth(self.metrics.windows_scored, ("windows",), counted.windows_scored)
        for reason, n in counted.suppressed.items():
            self._count_growth(self.metrics.suppressed.labels(reason=reason), ("suppressed", reason), n)
        self._count_growth(self.metrics.late_flows, ("late",), counted.late_flows)
        self._count_growth(self.metrics.early_alerts, ("early",), counted.early_alerts)
        if self.rules_source is not None:  # feeds' health, feed hits, policy violations
            en = self.settings.enforcement
            self.metrics.record_rules(
                self.rules_source.feed_stats(),
                self.partitioned.rule_tallies()
                if self.partitioned is not None
                else rule_tallies(getattr(self.engine, "detectors", [])),
                en.mode_by_detector.get("threat_feed", en.mode),
            )
        if self.inventory_source is not None:  # lists, watch events, rebuilds of the pod inventory
            for what, total in self.inventory_source.stats.counts().items():
                counter = self.metrics.inventory_watch.labels(what=what)
                self._count_growth(counter, ("inventory", what), total)

    def _sync_inventory(self) -> None:
        """Hand the engine the source's newest pod snapshot when it is a new one (the engine does no I/O)."""
        if self.inventory_source is None:
            return
        inventory = self.inventory_source.current()
        if inventory is not self._inventory:
            self._inventory = inventory
            self.engine.set_inventory(inventory)

    def _sync_rules(self) -> None:
        """Hand the rule detectors the newest policy and feeds snapshot (they do no I/O)."""
        if self.rules_source is None:
            return
        snapshot = self.rules_source.current()
        if snapshot is not self._rules:
            self._rules = snapshot
            self.engine.set_rules(
                snapshot.policy, snapshot.policy_version, snapshot.feeds, snapshot.feeds_version
            )

    def _count_growth(self, counter: Counter, key: tuple[str, ...], total: float) -> None:
        seen = self._engine_totals.get(key, 0.0)
        if total > seen:
            counter.inc(total - seen)
        self._engine_totals[key] = float(total)

    def _tick(self, now: float) -> None:
        """Idle stream: advance the engine's clock so its last windows close."""
        if not math.isfinite(self._fed_max_ts):
            return
        event_now = self._fed_max_ts + (now - self._last_feed)
        if event_now <= self._last_tick_now:
            return
        self._last_tick_now = event_now
        self._clock_max = max(self._clock_max, event_now)
        floor = self.engine.open_window_floor()
        result = self.engine.process(empty_flows(), now=event_now)
        if self.engine.open_window_floor() != floor:
            self.stats.ticks += 1
            log.info("idle clock closed windows event_now=%.1f floor=%s", event_now, floor)
        self._deliver(result)

    def _window_start(self, ts: float) -> float:
        if not math.isfinite(ts):
            return -math.inf
        w = self.settings.pipeline.window_s
        return math.floor(ts / w) * w

    def checkpoint(self) -> None:
        """Save the engine's state, then commit what that state accounts for.

        Offsets move only here, right after the state that holds their batches' effects is
        stored: a restart never resumes past what the restored state knows (no gap in the
        baselines or the open alerts), and what it replays is trimmed by the replay guard.
        A batch is committed once it was fed and every window it touched has closed, and
        only once the producer has delivered every alert and dead letter so far.
        """
        assert self.consumer is not None and self.producer is not None
        self._next_checkpoint = self.clock() + self.settings.pipeline.checkpoint_interval_s
        self.flush_effects()  # the marks of everything fed, before the state that holds it
        floor = self.engine.open_window_floor()
        ready = self.tracker.ready(floor)
        # Alerts (or dead letters) that did not reach the bus are sent again; checkpoint and
        # commit wait for a later turn.
        if not delivered(self.producer, self.options.flush_timeout_s, self.metrics.commits):
            return
        try:
            if self.partitioned is None:
                guard = self._guard(lambda _key: True, floor, self.verdicts)
                self.sink.save_state(self.state_key, self.engine.export_state(), guard)
            for p, engine in self.partitioned or ():
                if p not in self._fenced:
                    self._save_partition(p, engine)
        except Exception as exc:  # the next checkpoint will try again; nothing is committed
            log.error("checkpoint failed key=%s error=%s", self.state_key, exc)
            self.metrics.checkpoints.labels(status="failed").inc()
            return
        self.metrics.checkpoints.labels(status="ok").inc()
        ready = [b for b in ready if not self._is_fenced(b.key)]
        if not ready:
            return
        try:
            self.consumer.commit([b.message for b in ready])
        except Exception as exc:  # a rebalance: the messages will be delivered again
            log.warning("commit failed (will be replayed): %s", exc)
            self.metrics.commits.labels(status="failed").inc()
            return
        self.tracker.drop_through(ready)
        for b in ready:
            self._committed[b.key] = max(self._committed.get(b.key, -1), b.message.offset + 1)
        self.stats.commits += 1
        self.metrics.commits.labels(status="ok").inc()

    def _save_partition(self, p: int, engine: ClockedEngine) -> None:
        """One partition's state under the partition's key (it moves with the partition), unless
        another worker has claimed the partition since this one restored it."""
        own = self._guard(self._of_partition(p), engine.open_window_floor(), self._partition_verdicts[p])
        if self.sink.save_state(
            self._partition_state_key(p), engine.export_state(), own, claim=self._claims.get(p)
        ):
            return
        # The group gave the partition to another worker while this one stalled (past the
        # session timeout): that worker restored the state and owns it. Writing this older
        # state over it, or committing offsets, would undo its work; the next poll revokes it.
        self._fenced.add(p)
        self.metrics.checkpoints.labels(status="fenced").inc()
        log.warning("partition state claimed by another worker, not saved partition=%d", p)

    def _is_fenced(self, key: PartitionKey) -> bool:
        return self.partitioned is not None and _real_key(key)[1] in self._fenced

    def _guard(
        self, mine: Callable[[PartitionKey], bool], floor: float | None, verdicts: VerdictFollower
    ) -> bytes:
        """The checkpoint's bookkeeping beside an engine state, for the partitions ``mine`` keeps."""
        pending = [list(x) for x in self.tracker.pending_timestamps() if mine((x[0], x[1]))]
        guard = {
            "fed": [[t, p, o] for (t, p), o in sorted(self._fed_offsets.items()) if mine((t, p))],
            "open_floor": floor,
            "committed": [[t, p, o] for (t, p), o in sorted(self._committed.items()) if mine((t, p))],
            "epochs": [[t, p, e] for (t, p), e in sorted(self._epochs.items()) if mine((t, p))],
            "pending": pending,
            "resolutions": verdicts.export(),
            "sources": [
                [p, w, o] for (p, w), o in sorted(self._sources.items()) if mine((self.flows_topic, p))
            ],
        }
        return json.dumps(guard).encode()

    def _restore_replay_guard(self, raw: bytes | None, verdicts: VerdictFollower) -> None:
        """What a checkpoint's engine state already holds: offsets fed, the open windows' floor,
        what was committed and pending, the verdicts applied; for the partitions it names."""
        if not raw:
            return
        try:
            guard = json.loads(raw)
            fed = {(str(t), int(p)): int(o) for t, p, o in guard["fed"]}
            self._replay_offsets.update(fed)
            floor = guard.get("open_floor")
            for key in fed:
                self._replay_floors[key] = math.inf if floor is None else float(floor)
            committed = {(str(t), int(p)): int(o) for t, p, o in guard.get("committed", [])}
            self._committed.update(committed)
            # Offsets of an epoch the group has left since mean nothing now.
            then = {(str(t), int(p)): int(e) for t, p, e in guard.get("epochs", [])}
            pending: dict[PartitionKey, dict[int, int]] = {}
            for t, p, o, ts in guard.get("pending", []):
                pending.setdefault((str(t), int(p)), {})[int(o)] = int(ts)
            self._pending_ts.update(pending)
            verdicts.restore(guard.get("resolutions"))
            self._sources.update({(int(p), str(w)): int(o) for p, w, o in guard.get("sources", [])})
            known = {*fed, *committed, *pending}
            for key in [k for k in known if then.get(_real_key(k), 0) != self._epochs.get(_real_key(k), 0)]:
                self._replay_offsets.pop(key, None)
                self._replay_floors.pop(key, None)
                self._committed.pop(key, None)
                self._pending_ts.pop(key, None)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("checkpoint offsets unreadable, replay may count twice: %s", exc)

    def _of_partition(self, partition: int) -> Callable[[PartitionKey], bool]:
        return lambda key: _real_key(key) == (self.flows_topic, partition)

    def _partition_state_key(self, partition: int) -> str:
        """Where a partition's engine state lives: the group's and the partition's, no worker's."""
        return f"pipeline/{self.group_id}/partitions/{self.flows_topic}/{partition}"

    def _restore_partition(self, key: PartitionKey) -> None:
        """A newly assigned partition: its engine, from its last checkpoint by whichever worker."""
        assert self.partitioned is not None
        _, p = key
        skey = self._partition_state_key(p)
        # Claim first, then read: a save by the previous owner either landed before the claim
        # (and is read here) or is refused (sinks.save_state).
        self._claims[p] = self.sink.claim_state(skey)
        self._fenced.discard(p)
        state = self.sink.load_state(skey)
        verdicts = VerdictFollower(self.options.resolution_poll_s)
        self._sync_inventory()
        self._sync_rules()
        self.partitioned.assign(p, state)
        self._partition_verdicts[p] = verdicts
        if state:
            self._restore_replay_guard(self.sink.load_state(skey + "/offsets"), verdicts)
            self.metrics.partition_restores.labels(state="restored").inc()
            log.info("partition state restored partition=%d key=%s bytes=%d", p, skey, len(state))
        else:
            self.metrics.partition_restores.labels(state="cold").inc()
            log.info("partition starts cold (no state yet) partition=%d key=%s", p, skey)

    def _forget_offsets(self, key: PartitionKey) -> None:
        """Drop what this worker knows of a partition's offsets (per source partition too)."""
        for known in (
            self._ingested,
            self._fed_offsets,
            self._replay_offsets,
            self._replay_floors,
            self._committed,
            self._pending_ts,
        ):
            for k in [k for k in known if _real_key(k) == key]:
                known.pop(k, None)

    def _release_partition(self, key: PartitionKey) -> None:
        """A partition that moved away: its engine and bookkeeping go (its owner restores them)."""
        assert self.partitioned is not None
        self.partitioned.revoke(key[1])
        self._partition_verdicts.pop(key[1], None)
        self._claims.pop(key[1], None)
        self._fenced.discard(key[1])
        self._forget_offsets(key)
        for where in [w for w in (*self._sources, *self._sources_in) if w[0] == key[1]]:
            self._sources.pop(where, None)
            self._sources_in.pop(where, None)

    def _poll_verdicts(self, now: float) -> None:
        """Hand the engine the verdicts on alerts recorded since the last look (idempotent)."""
        try:
            if self.partitioned is None:
                self.verdicts.poll(self.sink.store, self.engine, now, on_applied=self._on_verdict)
                return
            # Each partition's engine takes the verdicts its own restored state lacks.
            items = self.verdicts.read(self.sink.store, now)
            counted: set[str] = set()

            def once(alert: Alert, verdict: str) -> None:
                if alert.id not in counted:
                    counted.add(alert.id)
                    self._on_verdict(alert, verdict)

            for p, engine in self.partitioned:
                self._partition_verdicts[p].apply(items, self.sink.store, engine, on_applied=once)
        except Exception as exc:  # the store is down: the next poll tries again
            log.warning("alert verdicts not read: %s", exc)

    def _on_verdict(self, alert: Alert, verdict: str) -> None:
        self.metrics.resolutions.labels(verdict=verdict).inc()

    def _poll_model(self) -> None:
        self._next_model_poll = self.clock() + self.options.model_poll_s
        if self.model_watcher is None:
            return
        changed, model = self.model_watcher.changed()
        if changed:
            self.engine.set_model(model)
            self.metrics.set_model(self.model_watcher.version)

    def _update_lag(self) -> None:
        """Refresh the lag per partition: for the metric, the aligner and the idle clock."""
        self._lag_at = self.clock()
        self._next_lag = self._lag_at + self.options.lag_poll_s
        assert self.consumer is not None
        try:
            lag = self.consumer.lag()
        except Exception as exc:  # unknown lag: the idle rules apply alone
            log.debug("lag unavailable: %s", exc)
            self._lag = None
            return
        self._lag = {int(p): int(n) for p, n in lag.items()}
        try:
            # A log that now ends before our position started again: the consumer rewinds it
            # (or it would wait for, then skip, the new log's first offsets).
            restarted = self.consumer.rewind_restarted()
        except Exception as exc:  # advisory like the lag: the offsets check in _ingest still applies
            log.debug("restart check unavailable: %s", exc)
            restarted = []
        for t, p in restarted:
            self._new_epoch((t, p), -1)
        self.metrics.record_lag(self.flows_topic, self._lag)

    def _exchange_memory(self) -> None:
        """Share the engine's new cluster-wide first sightings; take the other workers'."""
        if self.global_memory is None or self.producer is None:
            return
        try:
            self.global_memory.exchange(self.producer)
        except Exception as exc:  # the broker is away: the next turn tries again
            log.warning("global memory not exchanged: %s", exc)

    def _on_notify(self, notifier: str, status: str) -> None:
        self.metrics.notifications.labels(notifier=notifier, status=status).inc()


def _min_ts_of(b: PendingBatch) -> float:
    """The oldest flow of the source batch behind ``b`` (header ``fw.min_ts``; else its rows')."""
    raw = b.message.header(MIN_TS_HEADER)
    if raw is not None:
        with contextlib.suppress(ValueError):
            return float(raw)
    return float(ts_end(b.flows).min()) if b.flows is not None and len(b.flows) else math.inf


def _enriched_upstream(b: PendingBatch) -> bool:
    """True when the enrich stage looked ``b``'s rows up in a pod inventory (header ``fw.enriched``)."""
    return b.message.header(ENRICHED_HEADER) is not None


def _source_of(m: Message) -> tuple[tuple[int, str], int] | None:
    """((partition, source partition), source offset) of an enrich stage's batch; else None."""
    raw = m.header(SOURCE_HEADER)
    if raw is None:
        return None
    try:
        topic, partition, offset, epoch = raw.decode().rsplit("/", 3)
        return (m.partition, f"{topic}/{int(partition)}/{int(epoch)}"), int(offset)
    except ValueError:  # not ours: a batch like any other
        return None


def build_stage(
    settings: Settings,
    *,
    bus: Bus | None = None,
    store: PipelineStore | None = None,
    options: StageOptions | None = None,
    metrics: PipelineMetrics | None = None,
    stage: str = "all",
) -> PipelineStage:
    """Wire a stage from the settings: the bus, the store, the inventory, the engine, the model.

    ``stage`` ``all``: one process consumes ``flows`` and does everything (the default, the
    embedded mode). ``detect``: consume the enrich stage's topic keyed by workload
    (:mod:`~flowwarden.pipeline.runtime.repartition`) and share the cluster-wide memory with
    the other detect workers (:mod:`~flowwarden.pipeline.runtime.global_memory`). The store
    is created but not started (the caller owns its lifecycle, as with the bus).
    """
    from flowwarden.bus import open_bus
    from flowwarden.pipeline.detection.engine import DetectionEngine
    from flowwarden.store import Store

    # The file (reloaded when it changes), a watch on the Kubernetes API, or none: the stage
    # starts it, hands its snapshots to the engine, and stops it.
    engine: Engine = DetectionEngine(settings)
    bus = bus if bus is not None else open_bus(settings)
    topic = None
    memory = None
    upstream = None
    if stage == "detect":
        from flowwarden.bus import KafkaBus
        from flowwarden.pipeline.runtime.global_memory import GlobalMemory

        if not isinstance(bus, KafkaBus):
            raise ValueError("--stage detect needs bus.kind=kafka (stages meet on Kafka topics)")
        topic = settings.kafka.topics.flows_by_workload
        # One engine per assigned partition, its state moving with it (partition_engines.py).
        engines = PartitionEngines(lambda: DetectionEngine(settings))
        engine = engines
        memory = GlobalMemory(bus, settings.kafka.topics.global_memory, engines)
        upstream = UpstreamLag(bus, settings)
    elif stage != "all":
        raise ValueError(f"no pipeline stage {stage!r} here (all, detect; enrich runs run_enrich)")
    return PipelineStage(
        settings,
        bus=bus,
        store=store if store is not None else Store(settings.store.url),
        engine=engine,
        metrics=metrics,
        model_watcher=ModelWatcher(settings.pipeline.model_dir),
        inventory_source=inventory_source_from_settings(settings),
        rules_source=RulesSource(settings) if settings.rules.policy_file or settings.rules.feeds else None,
        options=options,
        topic=topic,
        global_memory=memory,
        upstream=upstream,
    )


def run_pipeline(
    settings: Settings,
    *,
    stop_event: threading.Event | None = None,
    options: StageOptions | None = None,
    metrics_port: int | None = None,
    max_seconds: float | None = None,
    flush_on_stop: bool = False,
    stage: str = "all",
) -> StageStats:
    """The ``flowwarden pipeline run`` process: store, metrics, stage, signals, loop, clean stop.

    SIGTERM / SIGINT end the loop; :meth:`PipelineStage.stop` then commits what is accounted
    for and checkpoints. ``metrics_port`` 0 serves no ``/metrics`` (default: the setting).
    ``stage``: ``all`` (one process), ``enrich`` or ``detect`` (docs/scale-out.md); the
    enrich stage needs no store and reports its counts as batches, flows and dead letters.
    """
    import signal

    from flowwarden.store import Store

    stop = stop_event or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda _s, _f: stop.set())
    if settings.bus.kind == "memory":
        log.warning(
            "bus.kind is memory: this process sees only flows published inside it "
            "(the embedded mode is `flowwarden demo`; a deployment sets bus.kind=kafka)"
        )
    metrics = PipelineMetrics()
    port = settings.pipeline.metrics_port if metrics_port is None else metrics_port
    if stage == "enrich":
        from flowwarden.pipeline.runtime.repartition import run_enrich

        try:
            if port:
                metrics.serve(port)
            counted = run_enrich(settings, stop_event=stop, metrics=metrics, max_seconds=max_seconds)
        finally:
            metrics.close()
        return StageStats(batches=counted.batches, flows=counted.flows, dlq=counted.dlq)
    store = Store(
        settings.store.url,
        retry_deadline_s=settings.store.retry_deadline_s,
        retry=RetryPolicy.from_settings(settings.retry, "store"),
    ).start()
    try:
        if port:
            metrics.serve(port)
        worker = build_stage(settings, store=store, metrics=metrics, options=options, stage=stage)
        worker.start()
        try:
            worker.run(stop, max_seconds=max_seconds)
        finally:
            worker.stop(flush=flush_on_stop)
        return worker.stats
    finally:
        metrics.close()
        store.stop()
