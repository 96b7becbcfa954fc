"""The enrich stage: flows keyed by source in, enriched flows keyed by workload out (issue 19).

Collectors partition ``flows`` by source IP, so a workload's replicas land on different
partitions and, with several detect workers, on different workers: each would hold part of
the workload's baseline and edges. This stage reads ``flows``, enriches each batch with the
pod inventory (:func:`~flowwarden.pipeline.detection.enrich.enrich_flows`) and re-sends its
rows to ``kafka.topics.flows_by_workload``, partitioned by :func:`workload_keys`: every
replica of a workload, and its whole story, reaches one detect worker
(:class:`~flowwarden.pipeline.runtime.stage.PipelineStage` reading that topic).

* One message per (source batch, target partition), not per workload: a collector's batch
  holds hundreds of workloads, and a message per workload would multiply the messages by
  that. The partition is a pure function of the key (CRC-32, like
  :func:`~flowwarden.bus.flow_partitions` for source IPs), so the topic is keyed by
  workload exactly as a per-key message would be. Enriched rows travel in the flow wire
  format: the enrichment columns are flow columns the detect stage keeps as they are.
* Each message says where it came from (header ``fw.source``: topic, partition, offset and
  epoch of the source batch) for tracing and for telling a re-sent batch.
* Batches are released in event time across this worker's partitions
  (:class:`~flowwarden.pipeline.runtime.batches.PartitionAligner`, as the detect stage does),
  so a backlog read one partition at a time does not reach the detect stage out of order.
* Offsets of ``flows`` are committed only once the producer has delivered every message
  made from them (at-least-once; a crash re-sends what was not committed). Garbage and bad
  rows go to ``flows.dlq`` here, as in the one-process path.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from flowwarden.bus import Bus, Consumer, Message, Producer, read_flow_batches, route_dead_letters
from flowwarden.kube import InventorySource, PodInventory
from flowwarden.pipeline.detection.enrich import enrich_flows
from flowwarden.pipeline.runtime.batches import PartitionAligner, PartitionKey, PendingBatch
from flowwarden.pipeline.runtime.loop import SteppedStage, delivered
from flowwarden.pipeline.runtime.metrics import PipelineMetrics
from flowwarden.records import conform_flows
from flowwarden.settings import Settings
from flowwarden.wire import encode_flow_parts

log = logging.getLogger(__name__)

SOURCE_HEADER = "fw.source"  # "topic/partition/offset/epoch" of the source batch
MAX_TS_HEADER = "fw.max_ts"  # the source batch's newest ts_end: its event time, even with no rows here
PEERS_HEADER = "fw.peers"  # the source partitions this enrich worker reads ("topic/p,topic/q")
MIN_TS_HEADER = "fw.min_ts"  # the source batch's oldest ts_end: where the stream's memory starts
# Present when the rows were looked up in a pod inventory: the detect stage takes them as
# they are (absent while this stage has none yet: the detect stage then looks them up itself).
ENRICHED_HEADER = "fw.enriched"


def workload_keys(enriched: pd.DataFrame) -> np.ndarray:
    """The repartition key of each enriched flow: what the detect stage learns by.

    ``namespace/workload`` for a pod of a workload; ``namespace/pod`` for a pod without one
    (its own key); the source address for anything else (an external or unknown source).
    """
    ns = enriched["src_namespace"].astype("str").to_numpy(dtype=object)
    pod = enriched["src_pod"].astype("str").to_numpy(dtype=object)
    wl = enriched["src_workload"].astype("str").to_numpy(dtype=object)
    ip = enriched["src_ip"].astype("str").to_numpy(dtype=object)
    return np.where(wl != "", ns + "/" + wl, np.where(pod != "", ns + "/" + pod, ip))


def key_partitions(keys: np.ndarray, partitions: int) -> np.ndarray:
    """Partition per row: CRC-32 of the key text, stable across processes and runs."""
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    codes, uniques = pd.factorize(keys, use_na_sentinel=False)
    per_unique = np.fromiter(
        (zlib.crc32(str(u).encode()) % partitions for u in uniques), dtype=np.int64, count=len(uniques)
    )
    return per_unique[codes] if len(codes) else np.zeros(0, dtype=np.int64)


@dataclass
class EnrichStats:
    batches: int = 0  # source batches consumed
    flows: int = 0  # valid flows forwarded
    sent: int = 0  # messages produced to the repartition topic
    dlq: int = 0
    commits: int = 0


class EnrichStage(SteppedStage):
    """Consume ``flows``, enrich, produce to the repartition topic keyed by workload, commit.

    Stateless apart from the pod inventory: any number of these run in one consumer group
    (``<pipeline.group_id>-enrich``) and scale with the partitions of ``flows``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        bus: Bus,
        inventory_source: InventorySource | None = None,
        metrics: PipelineMetrics | None = None,
        poll_timeout_s: float = 0.5,
        commit_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.inventory_source = inventory_source
        self.metrics = metrics or PipelineMetrics()
        self.poll_timeout_s = poll_timeout_s
        self.commit_interval_s = commit_interval_s
        self.clock = clock
        self.wall = wall
        topics = settings.kafka.topics
        self.source_topic = topics.flows
        self.target_topic = topics.flows_by_workload
        self.dlq_topic = topics.flows_dlq
        self.partitions = settings.kafka.partitions
        self.group_id = f"{settings.pipeline.group_id}-enrich"
        p = settings.pipeline
        self.max_records = p.max_poll_batches
        self.aligner = PartitionAligner(idle_s=p.align_idle_s, max_flows=p.max_buffered_flows)
        self.stats = EnrichStats()
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self._assigned: set[PartitionKey] = set()
        self._lag: dict[int, int] | None = {}
        self._lag_at = -math.inf
        self._forwarded: list[Message] = []  # sent, not yet committed
        self._next_commit = clock() + commit_interval_s

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.inventory_source is not None:
            self.inventory_source.start()
        self.bus.ensure_topics([self.source_topic, self.target_topic, self.dlq_topic])
        self.producer = self.bus.producer()
        self.consumer = self.bus.consumer([self.source_topic], self.group_id)
        log.info(
            "enrich stage started group=%s from=%s to=%s", self.group_id, self.source_topic, self.target_topic
        )

    def stop(self) -> None:
        """Forward what is held back, commit what was delivered, leave the group."""
        if self.consumer is None:
            return
        try:
            self._forward(self.aligner.release(self.clock(), everything=True))
            self.commit()
        finally:
            self.consumer.close()
            if self.producer is not None:
                self.producer.close()
            if self.inventory_source is not None:
                self.inventory_source.stop()
            self.consumer = None
            log.info(
                "enrich stage stopped batches=%d flows=%d sent=%d dlq=%d",
                self.stats.batches,
                self.stats.flows,
                self.stats.sent,
                self.stats.dlq,
            )

    # ------------------------------------------------------------------ one turn

    def step(self) -> int:
        """One poll, forward what the aligner releases, commit when due; messages polled."""
        assert self.consumer is not None, "start() first"
        messages = self.consumer.poll(timeout_s=self.poll_timeout_s, max_records=self.max_records)
        now = self.clock()
        self._track_assignment(now)
        if messages:
            self._ingest(messages, now)
        if now - self._lag_at >= (0.5 if len(self.aligner) else 5.0):
            self._update_lag(now)
        self._forward(self.aligner.release(now, lagging=self._lagging()))
        self.metrics.buffered_flows.set(self.aligner.buffered_flows)
        if now >= self._next_commit:
            self.commit()
        return len(messages)

    def commit(self) -> None:
        """Commit the source offsets whose messages the producer has delivered."""
        assert self.consumer is not None and self.producer is not None
        self._next_commit = self.clock() + self.commit_interval_s
        if not self._forwarded:
            return
        # A short wait: this loop must poll again within max_poll_interval_ms, and a commit
        # postponed now is made at the next turn (nothing is lost meanwhile, only re-sent on a crash).
        timeout = min(self.settings.pipeline.producer_flush_timeout_s, 2.0)
        if not delivered(self.producer, timeout, self.metrics.commits):
            return
        try:
            self.consumer.commit(self._forwarded)
        except Exception as exc:  # a rebalance: the new owner sends them again
            log.warning("commit failed (will be re-sent): %s", exc)
            self.metrics.commits.labels(status="failed").inc()
            return
        self._forwarded.clear()
        self.stats.commits += 1
        self.metrics.commits.labels(status="ok").inc()

    def _ingest(self, messages: list[Message], now: float) -> None:
        bound = self.wall() + self.settings.pipeline.max_clock_skew_s
        good, dead = read_flow_batches(messages, max_event_ts=bound)
        assert self.producer is not None
        for d in dead:
            route_dead_letters(self.producer, self.dlq_topic, [d])
            count = max(d.rows, 1)
            self.metrics.dlq.labels(cause=d.cause).inc(count)
            self.stats.dlq += count
        decoded = {id(m): flows for m, flows in good}
        self.stats.batches += len(messages)
        self.metrics.batches.inc(len(messages))
        for m in messages:
            flows = decoded.get(id(m))
            valid = flows is not None and len(flows) > 0
            max_ts = float(flows["ts_end"].max()) if valid and flows is not None else -math.inf
            self.aligner.add(PendingBatch(m, flows if valid else None, max_ts), now)

    def _forward(self, released: list[PendingBatch]) -> None:
        """Enrich each released batch and send its rows, split by workload partition."""
        if not released:
            return
        assert self.producer is not None
        inventory = self._inventory()
        # The detect stage aligns what it receives per source partition; it waits for the
        # peers named here from their first batch on, and the sends go in event-time order.
        peers = ",".join(f"{t}/{p}" for t, p in sorted(self._assigned)).encode()
        for b in sorted(released, key=lambda b: b.max_ts_end):
            m = b.message
            self._forwarded.append(m)
            if b.flows is None:
                continue
            # To the flow schema once (enrichment adds categoricals), not once per message.
            enriched = conform_flows(enrich_flows(b.flows, inventory, self.settings))
            parts = key_partitions(workload_keys(enriched), self.partitions)
            headers = (
                (SOURCE_HEADER, f"{m.topic}/{m.partition}/{m.offset}/{b.epoch}".encode()),
                (MAX_TS_HEADER, repr(b.max_ts_end).encode()),
                (MIN_TS_HEADER, repr(float(b.flows["ts_end"].min())).encode()),
                (PEERS_HEADER, peers),
                *(((ENRICHED_HEADER, b"1"),) if inventory is not None else ()),
            )
            # Every target partition hears of every source batch, with no rows if none are its:
            # its detect worker aligns the source partitions in event time (as one process
            # aligns the partitions of flows), and a source partition with nothing for it
            # must not hold the others back.
            # Rows grouped by partition once, then one Arrow conversion sliced per partition
            # (encoding costs mostly per call: a message per partition would triple the hop).
            order = np.argsort(parts, kind="stable")
            bounds = np.searchsorted(parts[order], np.arange(self.partitions + 1)).tolist()
            for p, value in enumerate(encode_flow_parts(enriched.take(order), bounds)):
                self.producer.send(self.target_topic, value, partition=p, headers=headers)
                self.stats.sent += 1
            self.stats.flows += len(enriched)
            self.metrics.flows.inc(len(enriched))
            b.flows = None

    def _inventory(self) -> PodInventory | None:
        return self.inventory_source.current() if self.inventory_source is not None else None

    def _partitions_revoked(self, gone: set[PartitionKey]) -> None:
        self.aligner.forget(gone)
        # What was sent from them but not committed is sent again by the new owner.
        self._forwarded = [m for m in self._forwarded if (m.topic, m.partition) not in gone]

    def _partitions_assigned(self, new: set[PartitionKey], now: float) -> None:
        self.aligner.expect(new, now)

    def _update_lag(self, now: float) -> None:
        self._lag_at = now
        assert self.consumer is not None
        try:
            lag = self.consumer.lag()
        except Exception as exc:
            log.debug("lag unavailable: %s", exc)
            self._lag = None
            return
        self._lag = {int(p): int(n) for p, n in lag.items()}
        self.metrics.record_lag(self.source_topic, self._lag)


def run_enrich(
    settings: Settings,
    *,
    stop_event: threading.Event,
    metrics: PipelineMetrics,
    max_seconds: float | None = None,
) -> EnrichStats:
    """The ``flowwarden pipeline run --stage enrich`` loop (the caller owns signals and /metrics)."""
    from flowwarden.bus import open_bus
    from flowwarden.kube import inventory_source_from_settings

    stage = EnrichStage(
        settings,
        bus=open_bus(settings),
        inventory_source=inventory_source_from_settings(settings),
        metrics=metrics,
    )
    stage.start()
    try:
        stage.run(stop_event, max_seconds=max_seconds)
    finally:
        stage.stop()
    return stage.stats


class UpstreamLag:
    """Whether the enrich stage still has flows to forward: the detect stage's idle clock
    waits for it.

    A detect worker closes its last windows on an idle clock when no data arrives
    (:meth:`PipelineStage._tick`); behind the enrich stage, "no data" may only mean the
    enrich stage is busy (a backlog, a slow node), and closing the windows then would make
    its next batches late. This asks the broker how far the enrich group's committed offsets
    are from the end of ``flows`` (without joining the group), at most every ``every_s``.
    """

    def __init__(self, bus: Bus, settings: Settings, *, every_s: float = 1.0) -> None:
        from flowwarden.bus import KafkaBus

        if not isinstance(bus, KafkaBus):
            raise ValueError("the enrich stage's lag is read from Kafka")
        self.bus = bus
        self.topic = settings.kafka.topics.flows
        self.group_id = f"{settings.pipeline.group_id}-enrich"
        self.every_s = every_s
        self._consumer: Any = None
        self._at = -math.inf
        self._behind = 0

    def behind(self, now: float) -> int:
        """Messages of ``flows`` the enrich group has not committed (0 when unknown)."""
        if now - self._at < self.every_s:
            return self._behind
        self._at = now
        try:
            self._behind = self._measure()
        except Exception as exc:  # advisory: the idle clock goes on as for one process
            log.debug("enrich stage lag unavailable: %s", exc)
            self._behind = 0
        return self._behind

    def _measure(self) -> int:
        from kafka import KafkaConsumer, TopicPartition

        from flowwarden.bus_kafka import client_config

        if self._consumer is None:
            cfg = client_config(self.bus.settings)
            # A group id to read its commits; never subscribes, so never joins the group.
            self._consumer = KafkaConsumer(**cfg, group_id=self.group_id, enable_auto_commit=False)
        parts = self._consumer.partitions_for_topic(self.topic) or set()
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        ends = self._consumer.end_offsets(tps)
        return sum(max(int(ends[tp]) - int(self._consumer.committed(tp) or 0), 0) for tp in tps)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
            self._consumer = None
