"""The cluster-wide memory of detect workers, shared over a keyed topic (issue 19, item 2).

Which external addresses the cluster has talked to, and since when, decides what is "new to
the cluster". With several detect workers each engine sees only its workloads' flows, so
each shares its own first sightings (:meth:`DetectionEngine.take_global_memory`) on the
``kafka.topics.global_memory`` topic and merges everyone's
(:meth:`DetectionEngine.merge_global_memory`).

One message per entry: the key is the edge's 64-bit hash, the value a version byte and the
first-seen time. The topic is created with ``cleanup.policy=compact``, but a reader never
relies on compaction (tansu, the test broker, does not compact, and compaction is never
complete anyway): it replays the whole topic at start and keeps the earliest first-seen per
key, then follows the topic while it runs. A worker writes only entries it learned (new
keys, or an earlier sighting), batched per exchange, so the topic grows with the number of
distinct external addresses, not with traffic.
"""

from __future__ import annotations

import contextlib
import logging
import math
import struct
import time
from typing import Protocol

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from flowwarden.bus_base import Producer
from flowwarden.bus_kafka import KafkaBus, client_config, connect_with_backoff

log = logging.getLogger(__name__)

VALUE_VERSION = 1
_VALUE = struct.Struct(">Bd")  # version, first seen (epoch seconds)
_KEY = struct.Struct(">Q")


class SharesMemory(Protocol):
    """What an engine offers for the cluster-wide memory (the detection engine does)."""

    def take_global_memory(self) -> dict[int, float]: ...

    def merge_global_memory(self, entries: dict[int, float]) -> None: ...


def encode_entry(edge: int, first_seen: float) -> tuple[bytes, bytes]:
    """(key, value) of one entry."""
    return _KEY.pack(edge), _VALUE.pack(VALUE_VERSION, first_seen)


def decode_entry(key: bytes | None, value: bytes | None) -> tuple[int, float] | None:
    """One entry, or None for anything else (a reader skips what it cannot use)."""
    if key is None or value is None or len(key) != _KEY.size or len(value) != _VALUE.size:
        return None
    version, first = _VALUE.unpack(value)
    if version != VALUE_VERSION or not math.isfinite(first):
        return None
    return _KEY.unpack(key)[0], first


def merge_earliest(into: dict[int, float], entries: dict[int, float]) -> dict[int, float]:
    """``into`` updated with ``entries``, the earliest first-seen per key; returns what changed."""
    changed = {}
    for k, v in entries.items():
        old = into.get(k)
        if old is None or v < old:
            into[k] = v
            changed[k] = v
    return changed


class GlobalMemory:
    """Replay, follow and extend the global-memory topic for one engine.

    :meth:`start` creates the topic if needed and reads it to its end (every partition, no
    consumer group: each worker reads all of it); :meth:`exchange` hands the engine what
    arrived since and publishes what the engine learned. The producer is the stage's own
    (its flush before each commit covers these entries too).
    """

    def __init__(self, bus: KafkaBus, topic: str, engine: SharesMemory, *, partitions: int = 1) -> None:
        self.bus = bus
        self.topic = topic
        self.engine = engine
        self.partitions = partitions
        self.known: dict[int, float] = {}
        self.published = 0
        self.received = 0
        self._consumer: KafkaConsumer | None = None

    def start(self, *, timeout_s: float = 60.0) -> int:
        """Create the topic (compacted), replay it in full into the engine; entries read."""
        self._ensure_topic()
        k = self.bus.settings
        cfg = client_config(k)
        cfg.update(enable_auto_commit=False, group_id=None, auto_offset_reset="earliest")
        consumer = connect_with_backoff(
            lambda ms: KafkaConsumer(**cfg, bootstrap_timeout_ms=ms),
            k,
            "global memory",
            policy=self.bus.retry,
        )
        self._consumer = consumer
        deadline = time.monotonic() + timeout_s
        parts = consumer.partitions_for_topic(self.topic)
        while not parts:  # just created: the client's metadata may not list it yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"global memory {self.topic}: no partitions within {timeout_s:.0f}s")
            consumer.topics()  # one metadata request (it waits on the broker)
            parts = consumer.partitions_for_topic(self.topic)
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        entries: dict[int, float] = {}
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"global memory {self.topic}: not replayed within {timeout_s:.0f}s")
            entries.update(self._read(consumer, 0.5, into=entries))
        self.engine.take_global_memory()  # from now on the engine notes what it learns
        self.engine.merge_global_memory(entries)
        merge_earliest(self.known, entries)
        log.info("global memory replayed topic=%s entries=%d", self.topic, len(entries))
        return len(entries)

    def exchange(self, producer: Producer, *, timeout_s: float = 0.0) -> tuple[int, int]:
        """Merge what other workers published since; publish what the engine learned.

        Returns (received, published) counts of this call."""
        assert self._consumer is not None, "start() first"
        remote = self._read(self._consumer, timeout_s, into={})
        fresh = merge_earliest(self.known, remote)
        if fresh:
            self.engine.merge_global_memory(fresh)
        mine = merge_earliest(self.known, self.engine.take_global_memory())
        for edge, first in mine.items():
            key, value = encode_entry(edge, first)
            producer.send(self.topic, value, key=key)
        self.received += len(fresh)
        self.published += len(mine)
        return len(fresh), len(mine)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
            self._consumer = None

    def _read(self, consumer: KafkaConsumer, timeout_s: float, *, into: dict[int, float]) -> dict[int, float]:
        got: dict[int, float] = {}
        batches = consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=10_000)
        for records in batches.values():
            for r in records:
                entry = decode_entry(r.key, r.value)
                if entry is None:
                    continue
                edge, first = entry
                old = got.get(edge, into.get(edge))
                if old is None or first < old:
                    got[edge] = first
        return got

    def _ensure_topic(self) -> None:
        k = self.bus.settings
        admin = connect_with_backoff(
            lambda ms: KafkaAdminClient(**client_config(k), bootstrap_timeout_ms=ms),
            k,
            "admin",
            policy=self.bus.retry,
        )
        try:
            if self.topic in set(admin.list_topics()):
                return
            topic = NewTopic(
                self.topic,
                num_partitions=self.partitions,
                replication_factor=k.replication_factor,
                topic_configs={"cleanup.policy": "compact"},
            )
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker won the race
                admin.create_topics([topic], timeout_ms=k.request_timeout_ms)
            admin.wait_for_topics([self.topic], timeout_ms=int(k.connect_timeout_s * 1000))
            log.info("global memory topic created topic=%s cleanup.policy=compact", self.topic)
        except KafkaError as exc:
            log.error("global memory topic %s not created: %s", self.topic, exc)
            raise
        finally:
            admin.close()
