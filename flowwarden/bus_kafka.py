"""The Kafka bus: kafka-python behind the :mod:`flowwarden.bus` interface.

* Producers batch (``linger_ms``, ``batch_size``) and retry inside kafka-python until
  ``delivery_timeout_ms``; whatever still fails is reported through
  :attr:`Producer.failed` / ``on_error``, never dropped silently.
* Consumers join a group with manual commits only: offsets move when the caller says a
  batch is done (:meth:`Consumer.commit`).
* Connecting retries with the one retry policy (:mod:`flowwarden.retry`), bounded by
  ``kafka.connect_timeout_s``,
  then raises :class:`~flowwarden.errors.ServiceUnavailable` naming the bootstrap servers.
* kafka-python checksums every record batch (CRC-32C); without the optional ``crc32c`` C
  package it does so in pure Python, several times slower: :func:`crc32c_accelerated`
  tells which, and the bus logs a warning when it is missing.

Constructors do no I/O: :class:`KafkaBus` connects when asked for a client.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

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
from flowwarden.errors import ServiceUnavailable
from flowwarden.retry import RetryPolicy, attempts_of
from flowwarden.settings import KafkaSettings

log = logging.getLogger("flowwarden.bus")

T = TypeVar("T")

MAX_TRY_S = 5.0  # the longest one connection try waits for the broker


def crc32c_accelerated() -> bool:
    """True when kafka-python computes record checksums with the ``crc32c`` C package."""
    from kafka.record import util

    return getattr(util, "crc32c_c", None) is not None and util._crc32c is util.crc32c_c


def client_config(k: KafkaSettings) -> dict[str, Any]:
    """Connection options every client shares, SASL/TLS included."""
    cfg: dict[str, Any] = {
        "bootstrap_servers": list(k.bootstrap_servers),
        "client_id": k.client_id,
        "security_protocol": k.security_protocol,
        "request_timeout_ms": k.request_timeout_ms,
    }
    if k.sasl_mechanism:
        cfg["sasl_mechanism"] = k.sasl_mechanism
        cfg["sasl_plain_username"] = k.sasl_username
        cfg["sasl_plain_password"] = k.sasl_password.get_secret_value() if k.sasl_password else None
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(k, name)
        if value is not None:
            cfg[name] = str(value)
    return cfg


def connect_with_backoff(
    make: Callable[[int], T], k: KafkaSettings, what: str, *, policy: RetryPolicy | None = None
) -> T:
    """Call ``make(bootstrap_timeout_ms)`` until it connects, within ``kafka.connect_timeout_s``.

    The one retry policy (:mod:`flowwarden.retry`, target ``kafka``) spaces the tries; each
    try waits longer for the broker (1 s, 2 s, 4 s ... at most 5 s). Raises
    :class:`ServiceUnavailable` naming the servers, the attempts and the last error.
    """
    servers = ",".join(k.bootstrap_servers)
    policy = (policy or RetryPolicy(target="kafka")).with_limits(deadline_s=k.connect_timeout_s)
    started = time.monotonic()
    attempts = 0
    try:
        for attempts, attempt in attempts_of(policy.retrying((KafkaError, OSError))):
            with attempt:
                remaining = k.connect_timeout_s - (time.monotonic() - started)
                try_s = max(0.5, min(remaining, float(2 ** (attempts - 1)), MAX_TRY_S))
                return make(int(try_s * 1000))
    except (KafkaError, OSError) as last:
        elapsed = time.monotonic() - started
        raise ServiceUnavailable(
            f"kafka broker not reachable at {servers} ({what}): gave up after {attempts} attempts "
            f"over {elapsed:.1f}s: {type(last).__name__}: {last}"
        ) from last
    raise AssertionError("unreachable: tenacity either returns or raises")


class KafkaBus(Bus):
    """Producers, consumers and topic administration on a Kafka cluster."""

    def __init__(self, settings: KafkaSettings, retry: RetryPolicy | None = None) -> None:
        super().__init__(settings.partitions)
        self.settings = settings
        # open_bus passes RetryPolicy.from_settings(settings.retry, "kafka").
        self.retry = retry or RetryPolicy(target="kafka")
        if not crc32c_accelerated():
            log.warning("crc32c C package missing: kafka-python checksums in pure Python (slow)")

    def producer(self, on_error: ErrorCallback | None = None) -> KafkaBusProducer:
        return KafkaBusProducer(self.settings, on_error, self.retry)

    def consumer(self, topics: Sequence[str], group_id: str) -> KafkaBusConsumer:
        if not topics:
            raise ValueError("a consumer needs at least one topic")
        if not group_id:
            raise ValueError("a consumer needs a group_id")
        return KafkaBusConsumer(self.settings, tuple(topics), group_id, self.retry)

    def ensure_topics(self, names: Sequence[str], partitions: int | None = None) -> None:
        k = self.settings
        n = partitions or self.default_partitions
        admin = connect_with_backoff(
            lambda ms: KafkaAdminClient(**client_config(k), bootstrap_timeout_ms=ms),
            k,
            "admin",
            policy=self.retry,
        )
        try:
            existing = set(admin.list_topics())
            missing = [t for t in dict.fromkeys(names) if t not in existing]
            self._warn_if_fewer_partitions(admin, [t for t in names if t in existing], n)
            if missing:
                spec = {t: {"num_partitions": n, "replication_factor": k.replication_factor} for t in missing}
                with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race
                    admin.create_topics(spec, timeout_ms=k.request_timeout_ms)
                admin.wait_for_topics(missing, timeout_ms=int(k.connect_timeout_s * 1000))
                log.info("kafka topics created topics=%s partitions=%d", ",".join(missing), n)
        except KafkaError as exc:
            servers = ",".join(k.bootstrap_servers)
            raise ServiceUnavailable(
                f"kafka at {servers}: cannot create topics {list(names)}: {exc}"
            ) from exc
        finally:
            admin.close()

    @staticmethod
    def _warn_if_fewer_partitions(admin: KafkaAdminClient, topics: list[str], wanted: int) -> None:
        """An existing topic is left alone, but a producer that spreads over ``wanted``
        partitions would fail on the missing ones: say so at start, not per message."""
        if not topics:
            return
        for t in admin.describe_topics(topics):
            have = len(t.get("partitions", []))
            if t.get("error_code", 0) == 0 and have < wanted:
                log.warning(
                    "kafka topic has fewer partitions than configured topic=%s partitions=%d configured=%d",
                    t.get("name"),
                    have,
                    wanted,
                )

    def partitions(self, topic: str) -> int:
        """How many partitions ``topic`` has (0 when it does not exist)."""
        k = self.settings
        admin = connect_with_backoff(
            lambda ms: KafkaAdminClient(**client_config(k), bootstrap_timeout_ms=ms),
            k,
            "admin",
            policy=self.retry,
        )
        try:
            desc = admin.describe_topics([topic])
        finally:
            admin.close()
        for t in desc:
            if t.get("name") == topic and t.get("error_code", 0) == 0:
                return len(t.get("partitions", []))
        return 0


class KafkaBusProducer(Producer):
    """kafka-python's batching producer; outcomes counted via its futures."""

    def __init__(
        self, k: KafkaSettings, on_error: ErrorCallback | None, retry: RetryPolicy | None = None
    ) -> None:
        super().__init__(on_error)
        cfg = client_config(k)
        acks: int | str = "all" if k.acks == "all" else int(k.acks)
        cfg.update(
            linger_ms=k.linger_ms,
            batch_size=k.batch_size,
            max_request_size=k.max_request_size,
            acks=acks,
            enable_idempotence=k.idempotence and acks == "all",
            max_in_flight_requests_per_connection=k.max_in_flight,
            # Topics are made on purpose by ensure_topics (with their partitions), never by a typo.
            allow_auto_create_topics=False,
            compression_type=None if k.compression_type == "none" else k.compression_type,
            delivery_timeout_ms=max(k.delivery_timeout_ms, k.linger_ms + k.request_timeout_ms),
            # send() never blocks longer than one request timeout (buffer full, no metadata).
            max_block_ms=k.request_timeout_ms,
        )
        self._producer = connect_with_backoff(
            lambda ms: KafkaProducer(**cfg, bootstrap_timeout_ms=ms), k, "producer", policy=retry
        )

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        hdrs = tuple(headers)
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"value must be bytes, not {type(value).__name__}")

        def failed(exc: BaseException) -> None:
            error = f"{type(exc).__name__}: {exc}"
            self._report_failure(FailedSend(topic, bytes(value), key, partition, hdrs, error))

        try:
            future = self._producer.send(
                topic, value=value, key=key, partition=partition, headers=list(hdrs) or None
            )
        except KafkaError as exc:  # no metadata in time, buffer full, message too large
            failed(exc)
            return
        future.add_callback(lambda _meta: self._delivered())
        future.add_errback(failed)

    def flush(self, timeout_s: float = 30.0) -> bool:
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            log.warning("kafka flush incomplete timeout_s=%.1f error=%s", timeout_s, exc)
            return False
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush, then close; messages still undelivered at the deadline fail (and are reported)."""
        if not self.flush(timeout_s):
            # kafka-python's close() raises from its own flush before it force-closes, so
            # force-close its sender first: the aborted batches fail through their futures,
            # which reports each message on ``failed``.
            sender = getattr(self._producer, "_sender", None)
            if sender is not None:
                sender.force_close()
                sender.join(timeout_s)
        try:
            self._producer.close(timeout=timeout_s)
        except KafkaError as exc:
            log.warning("kafka producer closed with undelivered messages error=%s", exc)


class KafkaBusConsumer(Consumer):
    """A group member with manual commits (``enable_auto_commit=False``)."""

    def __init__(
        self, k: KafkaSettings, topics: tuple[str, ...], group_id: str, retry: RetryPolicy | None = None
    ) -> None:
        cfg = client_config(k)
        cfg.update(
            group_id=group_id,
            allow_auto_create_topics=False,
            enable_auto_commit=False,
            auto_offset_reset=k.auto_offset_reset,
            session_timeout_ms=k.session_timeout_ms,
            heartbeat_interval_ms=k.heartbeat_interval_ms,
            max_poll_interval_ms=k.max_poll_interval_ms,
            fetch_max_bytes=k.fetch_max_bytes,
            fetch_max_wait_ms=k.fetch_max_wait_ms,
            # A whole flow batch must fit in one fetch.
            max_partition_fetch_bytes=max(k.max_request_size, 1_048_576),
        )
        self.topics = topics
        self.group_id = group_id
        self.auto_offset_reset = k.auto_offset_reset
        self._consumer = connect_with_backoff(
            lambda ms: KafkaConsumer(*topics, **cfg, bootstrap_timeout_ms=ms),
            k,
            f"consumer group {group_id}",
            policy=retry,
        )

    def poll(self, timeout_s: float = 1.0, max_records: int = 500) -> list[Message]:
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out: list[Message] = []
        for records in batches.values():
            for r in records:
                out.append(
                    Message(
                        topic=r.topic,
                        partition=r.partition,
                        offset=r.offset,
                        key=r.key,
                        value=r.value if r.value is not None else b"",
                        timestamp_ms=int(r.timestamp),
                        headers=tuple(
                            (h[0], bytes(h[1]) if h[1] is not None else b"") for h in r.headers or ()
                        ),
                    )
                )
        return out

    def commit(self, messages: Iterable[Message]) -> None:
        offsets = {
            TopicPartition(t, p): OffsetAndMetadata(off, "", -1)
            for (t, p), off in highest_offsets(messages).items()
        }
        if not offsets:
            return
        try:
            self._consumer.commit(offsets)
        except CommitFailedError as exc:
            raise CommitFailed(f"group {self.group_id} rebalanced before the commit: {exc}") from exc
        except KafkaError as exc:
            raise CommitFailed(f"group {self.group_id}: commit failed: {type(exc).__name__}: {exc}") from exc

    def assignment(self) -> set[tuple[str, int]]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def lag(self) -> dict[int, int]:
        parts = list(self._consumer.assignment())
        if not parts:
            return {}
        ends = self._consumer.end_offsets(parts)
        out: dict[int, int] = {}
        for tp in parts:
            pos = self._consumer.position(tp)
            out[tp.partition] = out.get(tp.partition, 0) + max(int(ends.get(tp, pos)) - int(pos), 0)
        return out

    def rewind_restarted(self) -> list[tuple[str, int]]:
        """As :meth:`Consumer.rewind_restarted`; "the beginning" follows ``kafka.auto_offset_reset``
        (what Kafka itself does with an offset out of range): earliest, or latest."""
        parts = list(self._consumer.assignment())
        if not parts:
            return []
        ends = self._consumer.end_offsets(parts)
        out = []
        for tp in parts:
            end = ends.get(tp)
            pos = self._consumer.position(tp)
            if end is not None and pos is not None and int(pos) > int(end):
                log.error(
                    "kafka partition log ends before our position: its offsets started again, "
                    "reading it from the %s topic=%s partition=%d position=%d end=%d",
                    self.auto_offset_reset,
                    tp.topic,
                    tp.partition,
                    pos,
                    end,
                )
                if self.auto_offset_reset == "latest":
                    self._consumer.seek_to_end(tp)
                else:
                    self._consumer.seek_to_beginning(tp)
                out.append((tp.topic, tp.partition))
        return out

    def close(self) -> None:
        self._consumer.close(autocommit=False)
