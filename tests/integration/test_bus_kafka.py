"""The Kafka bus against a real Kafka-protocol broker (tansu, started by the session).

Each test has its own topics and group ids: this broker rebalances slowly when members
leave a group, and keeps its data in memory.
"""

from __future__ import annotations

import logging
import threading
import time

import pandas as pd
import pyarrow as pa
import pytest

from flowwarden.bus import (
    FailedSend,
    KafkaBus,
    Message,
    dead_letter_of,
    open_bus,
    publish_flows,
    read_flow_batches,
    route_dead_letters,
)
from flowwarden.bus_kafka import client_config, crc32c_accelerated
from flowwarden.errors import ServiceUnavailable
from flowwarden.records import conform_flows
from flowwarden.settings import Settings
from flowwarden.wire import ARROW_SCHEMA, MAGIC, WIRE_VERSION, encode_flows
from tests.support.broker import TansuBroker, TansuProxy, free_port, kafka_settings_for, unique_group
from tests.support.netns import wait_for

pytestmark = pytest.mark.integration


def flows(n: int, offset: int = 0) -> pd.DataFrame:
    return conform_flows(
        {
            "ts_start": [1_700_000_000.0 + offset + i for i in range(n)],
            "ts_end": [1_700_000_002.0 + offset + i for i in range(n)],
            "src_ip": [f"10.244.{i % 3}.{i % 200}" if i % 2 else f"fd00::{i:x}" for i in range(n)],
            "dst_ip": ["10.96.0.1"] * n,
            "dst_port": [443] * n,
            "proto": [6] * n,
            "bytes_out": [1000 + i for i in range(n)],
            "pkts_out": [3] * n,
        }
    )


def collect(consumers, want: int, timeout: float, what: str) -> list[Message]:
    """Poll every consumer until ``want`` messages arrived; fail naming ``what`` and what came."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        for c in consumers:
            got.extend(c.poll(timeout_s=0.2))
    assert len(got) >= want, (
        f"timed out after {timeout:.0f}s waiting for {what}: got {len(got)} of {want}: "
        f"{sorted(m.value[:12] for m in got)[:30]}"
    )
    return got


def with_kafka(settings: Settings, **changes: object) -> Settings:
    return settings.model_copy(update={"kafka": settings.kafka.model_copy(update=changes)})


def test_crc32c_c_package_is_what_kafka_python_uses():
    assert crc32c_accelerated(), "kafka-python falls back to pure-Python CRC-32C (pip install crc32c)"


def test_sasl_and_tls_settings_reach_the_kafka_client():
    k = Settings.model_validate(
        {
            "kafka": {
                "bootstrap_servers": ["kafka-0:9093"],
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_username": "flowwarden",
                "sasl_password": "s3cret",
                "ssl_cafile": "/etc/kafka/ca.pem",
                "request_timeout_ms": 7000,
            }
        }
    ).kafka
    cfg = client_config(k)
    assert cfg["security_protocol"] == "SASL_SSL"
    assert cfg["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (cfg["sasl_plain_username"], cfg["sasl_plain_password"]) == ("flowwarden", "s3cret")
    assert cfg["ssl_cafile"] == "/etc/kafka/ca.pem" and "ssl_certfile" not in cfg
    assert cfg["bootstrap_servers"] == ["kafka-0:9093"] and cfg["request_timeout_ms"] == 7000
    plain = client_config(Settings().kafka)
    assert plain["security_protocol"] == "PLAINTEXT" and "sasl_mechanism" not in plain


def test_open_bus_gives_kafka_and_creates_partitioned_topics(
    kafka_settings: Settings, caplog: pytest.LogCaptureFixture
):
    bus = open_bus(kafka_settings)
    assert isinstance(bus, KafkaBus)
    topics = kafka_settings.kafka.topics
    bus.ensure_topics([topics.flows, topics.flows_dlq])
    bus.ensure_topics([topics.flows])  # idempotent
    with caplog.at_level(logging.WARNING, logger="flowwarden.bus"):
        bus.ensure_topics([topics.flows], partitions=5)
    assert "fewer partitions than configured" in caplog.text, "a mismatch is said at start"
    assert bus.partitions(topics.flows) == kafka_settings.kafka.partitions == 3
    assert bus.partitions("no-such-topic-" + unique_group()) == 0


class Poller(threading.Thread):
    """Polls one consumer in its own thread, as a real group member does (joins need it)."""

    def __init__(self, consumer) -> None:
        super().__init__(daemon=True)
        self.consumer = consumer
        self.messages: list[Message] = []
        self.assigned: set[tuple[str, int]] = set()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.messages.extend(self.consumer.poll(timeout_s=0.2))
            self.assigned = self.consumer.assignment()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)
        assert not self.is_alive(), "poller thread did not stop"


def test_two_consumers_in_one_group_split_the_partitions(kafka_settings: Settings):
    bus = open_bus(kafka_settings)
    topic = kafka_settings.kafka.topics.flows
    bus.ensure_topics([topic])
    group = unique_group()
    a, b = Poller(bus.consumer([topic], group)), Poller(bus.consumer([topic], group))
    a.start()
    b.start()
    producer = bus.producer()
    try:

        def split() -> bool:
            pa_, pb = a.assigned, b.assigned
            return bool(pa_) and bool(pb) and pa_.isdisjoint(pb) and len(pa_ | pb) == 3

        wait_for(split, timeout=40, what="both group members to own disjoint partitions")
        for i in range(30):
            producer.send(topic, str(i).encode(), partition=i % 3)
        assert producer.flush(10) and producer.sent_count == 30 and producer.failed_count == 0
        wait_for(
            lambda: len(a.messages) + len(b.messages) >= 30,
            timeout=30,
            what="30 messages across both members",
        )
        values = sorted(int(m.value) for m in a.messages + b.messages)
        assert values == list(range(30)), "every message exactly once across the group"
        assert a.messages and b.messages, "both members did work"
        assert {m.partition for m in a.messages}.isdisjoint(m.partition for m in b.messages)
    finally:
        producer.close()
        for p in (a, b):
            p.stop()
            p.consumer.close()


def test_commit_then_restart_resumes_without_loss_or_duplicate(kafka_settings: Settings):
    bus = open_bus(kafka_settings)
    topic = kafka_settings.kafka.topics.flows
    bus.ensure_topics([topic])
    producer = bus.producer()
    for i in range(30):
        producer.send(topic, str(i).encode(), partition=i % 3)
    assert producer.flush(10)
    group = unique_group()
    first = bus.consumer([topic], group)
    got = collect([first], 30, 30, "the first member to read all 30 messages")
    done = [m for m in got if m.offset < 4]  # the caller finished 4 per partition
    first.commit(done)
    first.close()

    second = bus.consumer([topic], group)
    try:
        rest = collect([second], 30 - len(done), 30, "the restarted member to resume")
        extra = second.poll(timeout_s=1.0)
        assert extra == [], "nothing beyond the uncommitted messages"
        assert sorted(int(m.value) for m in rest) == sorted(int(m.value) for m in got if m.offset >= 4)
        assert {int(m.value) for m in rest}.isdisjoint(int(m.value) for m in done)
        second.commit(rest)
        assert second.lag() == {0: 0, 1: 0, 2: 0}
    finally:
        second.close()
        producer.close()


def test_broker_not_up_fails_clearly_after_backoff(caplog: pytest.LogCaptureFixture):
    port = free_port()  # nothing listens here
    settings = with_kafka(kafka_settings_for(f"127.0.0.1:{port}"), connect_timeout_s=4.0)
    settings.retry.jitter = False  # waits exactly as the policy's shape says
    bus = open_bus(settings)
    started = time.monotonic()
    with (
        caplog.at_level(logging.WARNING, logger="flowwarden.retry"),
        pytest.raises(ServiceUnavailable) as err,
    ):
        bus.producer()
    elapsed = time.monotonic() - started
    message = str(err.value)
    assert f"127.0.0.1:{port}" in message and "gave up after" in message
    # The one retry policy logs each retry (target, attempt, the wait before the next try).
    retries = [r for r in caplog.records if r.getMessage().startswith("retrying target=kafka ")]
    assert len(retries) >= 2, "it retried before giving up"
    waits = [float(r.args[2]) for r in retries]  # type: ignore[index, arg-type]
    # It starts at retry.initial_s and doubles; the last wait is cut to end at the deadline
    # (each try also waits for its own bootstrap, so 4 s hold two or three retries).
    assert waits[0] == 0.5 and all(w <= 0.5 * 2**i for i, w in enumerate(waits)), waits
    assert 3.5 <= elapsed < 15, "bounded by kafka.connect_timeout_s"
    quick = open_bus(with_kafka(settings, connect_timeout_s=1.0))
    with pytest.raises(ServiceUnavailable, match=rf"127\.0\.0\.1:{port} \(consumer group"):
        quick.consumer(["t"], unique_group())


def test_broker_stopped_and_started_mid_stream(proxied_broker: tuple[TansuBroker, TansuProxy]):
    """The producer buffers through an outage; what it cannot deliver in time is reported.

    The test broker keeps its data in memory: the messages it held before the stop (and its
    topics) are gone with it, so the test re-creates the topic and only counts what was
    produced during and after the outage. Clients reach the broker through a proxy that
    comes back after the topic exists (see ``TansuProxy``).
    """
    broker, proxy = proxied_broker
    direct = kafka_settings_for(broker.bootstrap)
    via_proxy = with_kafka(
        direct, bootstrap_servers=[proxy.bootstrap], request_timeout_ms=2000, delivery_timeout_ms=4000
    )
    topic = direct.kafka.topics.flows
    open_bus(direct).ensure_topics([topic])
    failures: list[FailedSend] = []
    producer = open_bus(via_proxy).producer(on_error=failures.append)
    for i in range(10):
        producer.send(topic, f"before-{i}".encode(), partition=i % 3)
    assert producer.flush(10) and producer.sent_count == 10

    # Outage 1, shorter than the delivery timeout: the producer holds the messages.
    proxy.stop()
    broker.stop()  # the 10 "before" messages and the topic are lost with the broker's memory
    for i in range(10):
        producer.send(topic, f"during-{i}".encode(), partition=i % 3)
    assert producer.flush(0.5) is False, "the messages wait in the producer's buffer"
    broker.start()
    open_bus(direct).ensure_topics([topic])
    proxy.start()
    for i in range(10):
        producer.send(topic, f"after-{i}".encode(), partition=i % 3)
    assert producer.flush(20), "the buffered and the new messages are delivered"
    assert producer.failed_count == 0 and producer.sent_count == 30

    consumer = open_bus(direct).consumer([topic], unique_group())
    try:
        got = collect([consumer], 20, 30, "the during and after messages")
        assert consumer.poll(timeout_s=0.5) == []
        values = sorted(m.value.decode() for m in got)
        assert values == sorted([f"during-{i}" for i in range(10)] + [f"after-{i}" for i in range(10)])
    finally:
        consumer.close()

    # Outage 2, longer than the delivery timeout: every message is reported, none silent.
    proxy.stop()
    for i in range(5):
        producer.send(topic, f"lost-{i}".encode(), partition=i % 3)
    wait_for(
        lambda: producer.failed_count >= 5, timeout=20, what="the 5 undeliverable messages to be reported"
    )
    assert sorted(f.value.decode() for f in producer.failed) == [f"lost-{i}" for i in range(5)]
    assert all(f.topic == topic and f.error for f in producer.failed)
    assert [f.value for f in failures] == [f.value for f in producer.failed]
    producer.close(timeout_s=1)


def _arrow_message(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return MAGIC + bytes([WIRE_VERSION]) + sink.getvalue().to_pybytes()


def test_malformed_batches_go_to_the_dlq_with_the_field_named(kafka_settings: Settings):
    bus = open_bus(kafka_settings)
    topics = kafka_settings.kafka.topics
    bus.ensure_topics([topics.flows, topics.flows_dlq])
    producer = bus.producer()
    good = flows(40)
    publish_flows(producer, topics.flows, good, partitions=3)
    table = pa.Table.from_pandas(good, schema=ARROW_SCHEMA, preserve_index=False)
    wrong_dtype = table.set_column(
        table.schema.get_field_index("bytes_out"), "bytes_out", pa.array([str(v) for v in good["bytes_out"]])
    )
    missing = table.drop_columns(["dst_port"])
    negative, bad_ip = good.head(3).copy(), good.head(2).copy()
    negative["bytes_in"] = -1
    bad_ip["dst_ip"] = "not-an-ip"
    for payload in (
        _arrow_message(wrong_dtype),
        _arrow_message(missing),
        b"\x89PNG garbage",
        encode_flows(negative),
        encode_flows(bad_ip),
    ):
        producer.send(topics.flows, payload, partition=0)
    assert producer.flush(10) and producer.failed_count == 0

    consumer = bus.consumer([topics.flows], unique_group())
    dlq_reader = None
    try:
        messages = collect([consumer], 3 + 5, 30, "the good and malformed flow batches")
        batches, dead = read_flow_batches(messages)
        assert sum(len(df) for _, df in batches) == 40
        assert route_dead_letters(producer, topics.flows_dlq, dead) == 5
        assert producer.flush(10) and producer.failed_count == 0
        consumer.commit(messages)
        dlq_reader = bus.consumer([topics.flows_dlq], unique_group())
        letters = [dead_letter_of(m) for m in collect([dlq_reader], 5, 30, "5 dead letters")]
    finally:
        consumer.close()
        if dlq_reader is not None:
            dlq_reader.close()
    fields = sorted(d.field for d in letters)
    assert fields == ["batch", "bytes_in", "bytes_out", "dst_ip", "dst_port"]
    by_field = {d.field: d for d in letters}
    assert "expected int64" in by_field["bytes_out"].reason
    assert "missing" in by_field["dst_port"].reason
    assert by_field["batch"].payload == b"\x89PNG garbage"
    assert by_field["bytes_in"].rows == 3 and by_field["dst_ip"].rows == 2
    assert all(d.source_topic == topics.flows and d.source_offset >= 0 for d in letters)
