"""What a repartition hop costs on the test broker (tansu), and what the broker supports.

Decides issue #19's design (see docs/scale-out.md): the figures for a keyed hop over
kafka-python, whether a ``cleanup.policy=compact`` topic is compacted, whether
transactions commit, how long a consumer-group join takes, and whether Quix Streams
(if installed in the venv; it is not a project dependency) can build a ``group_by``
repartition topic against tansu.

    .venv/bin/python benchmarks/bench_repartition.py            # ~1 minute
    .venv/bin/python benchmarks/bench_repartition.py --messages 50000
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.admin import KafkaAdminClient, NewTopic  # noqa: E402

PARTITIONS = 4
WORKLOADS = 97
PAYLOAD = b"x" * 200


def _drain(consumer: KafkaConsumer, want: int, timeout: float) -> list[tuple[bytes, bytes]]:
    """Poll until ``want`` records arrived or ``timeout`` seconds passed."""
    got: list[tuple[bytes, bytes]] = []
    end = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < end:
        for records in consumer.poll(500).values():
            got += [(r.key, r.value) for r in records]
    return got


def repartition_hop(bootstrap: str, messages: int) -> None:
    """Keyed produce to a partitioned topic, then read it back by assignment (no group)."""
    topic = f"rp-{uuid.uuid4().hex[:8]}"
    KafkaAdminClient(bootstrap_servers=bootstrap).create_topics([NewTopic(topic, PARTITIONS, 1)])
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    t0 = time.monotonic()
    for i in range(messages):
        producer.send(topic, key=f"workload-{i % WORKLOADS}".encode(), value=PAYLOAD)
    producer.flush()
    t1 = time.monotonic()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    got = _drain(consumer, messages, 60)
    t2 = time.monotonic()
    print(f"keyed produce     {messages / (t1 - t0):>10,.0f} msg/s ({messages} x {len(PAYLOAD)} B)")
    print(f"assigned consume  {len(got) / (t2 - t1):>10,.0f} msg/s ({len(got)} read)")
    print(f"hop end to end    {len(got) / (t2 - t0):>10,.0f} msg/s")
    joined = time.monotonic()
    group = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"g-{uuid.uuid4().hex[:6]}")
    first = _drain(group, 1, 60)
    print(f"group join+first  {time.monotonic() - joined:>10.1f} s (one member; {len(first)} record)")


def compaction(bootstrap: str) -> None:
    """Two values for one key on a compacted topic; what does a reader from the start see?"""
    topic = f"cl-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"cleanup.policy": "compact"})])
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    producer.send(topic, key=b"k", value=b"v1")
    producer.send(topic, key=b"k", value=b"v2")
    producer.flush()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    part = TopicPartition(topic, 0)
    consumer.assign([part])
    consumer.seek_to_beginning(part)
    got = _drain(consumer, 2, 10)
    print(f"compact topic read from start: {got} (compacted would be one record)")


def transactions(bootstrap: str) -> None:
    topic = f"tx-{uuid.uuid4().hex[:8]}"
    try:
        producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=topic)
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(topic, key=b"a", value=b"b")
        producer.commit_transaction()
        print("transactions: init/begin/commit ok")
    except Exception as exc:  # report whatever the broker answers
        print(f"transactions: {type(exc).__name__}: {exc}")


def quix(bootstrap: str) -> None:
    """Quix Streams against tansu: can it derive a repartition topic for ``group_by``?"""
    try:
        from quixstreams import Application  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        print("quixstreams: not installed (pip install quixstreams into the venv to probe it)")
        return
    app = Application(
        broker_address=bootstrap,
        consumer_group=f"q-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        state_dir=f"/tmp/bench-repartition-{uuid.uuid4().hex[:6]}",
    )
    source = app.topic(f"flows-{uuid.uuid4().hex[:6]}", value_deserializer="json")
    try:
        app.dataframe(source).group_by(lambda value: value["workload"], name="workload")
        print("quixstreams group_by: repartition topic created")
    except Exception as exc:
        print(f"quixstreams group_by: {type(exc).__name__}: {exc}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    from tests.support.broker import TansuBroker

    with TansuBroker() as broker:
        repartition_hop(broker.bootstrap, args.messages)
        compaction(broker.bootstrap)
        transactions(broker.bootstrap)
        quix(broker.bootstrap)


if __name__ == "__main__":
    main()
