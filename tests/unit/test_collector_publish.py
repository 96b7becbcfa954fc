"""Publishing in memory: batching, partitioning by source, and the on-disk spool's order."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from flowwarden.bus import MemoryBus
from flowwarden.collectors.metrics import CollectorMetrics
from flowwarden.collectors.publish import Publisher
from flowwarden.collectors.spool import Spool
from flowwarden.records import conform_flows
from flowwarden.wire import decode_flows
from tests.support.netns import wait_for


def _records(src: list[str], start: float) -> pd.DataFrame:
    n = len(src)
    return conform_flows(
        {
            "ts_start": [start + i for i in range(n)], "ts_end": [start + i for i in range(n)],
            "src_ip": src, "dst_ip": ["10.96.0.1"] * n, "proto": [6] * n, "bytes_out": [1] * n,
            "pkts_out": [1] * n, "state": ["closed"] * n,
        }
    ).assign(uid=range(n))  # fmt: skip


def test_batches_reach_the_topic_with_each_source_in_one_partition(tmp_path: Path) -> None:
    bus = MemoryBus(default_partitions=3)
    pub = Publisher(
        bus_factory=lambda: bus, topic="flows", partitions=3, spool=Spool(tmp_path, 1 << 20),
        metrics=CollectorMetrics("n"), batch_max_flows=4, batch_interval_s=60,
    )  # fmt: skip
    pub.start()
    try:
        pub.put(_records(["10.0.0.1", "10.0.0.2"], 0))
        pub.put(_records(["10.0.0.1", "10.0.0.3", "10.0.0.2"], 10))  # 5 rows >= 4: sent without waiting 60 s
        wait_for(lambda: pub.published_flows == 5, timeout=10, what="one batch published")
    finally:
        pub.stop()
    consumer = bus.consumer(["flows"], "t")
    msgs = consumer.poll(timeout_s=1.0, max_records=100)
    parts: dict[str, set[int]] = {}
    for m in msgs:
        df = decode_flows(m.value)
        for ip in df["src_ip"]:
            parts.setdefault(ip, set()).add(m.partition)
    assert sorted(parts) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert all(len(p) == 1 for p in parts.values())
    assert sum(len(decode_flows(m.value)) for m in msgs) == 5


def test_spool_keeps_order_across_restarts_and_refuses_beyond_its_bound(tmp_path: Path) -> None:
    s = Spool(tmp_path, max_bytes=200)
    s.open()
    assert s.append("flows", b"a" * 40, None, 0, rows=1)
    assert s.append("flows", b"b" * 40, b"key", None, rows=2)
    again = Spool(tmp_path, max_bytes=200)
    again.open()  # a restarted collector finds both, oldest first
    got = again.peek(10)
    assert [(m.value[:1], m.key, m.partition, m.rows) for m in got] == [
        (b"a", None, 0, 1),
        (b"b", b"key", None, 2),
    ]
    assert again.append("flows", b"c" * 40, None, 1, rows=1)
    assert not again.append("flows", b"d" * 100, None, 1, rows=1), "beyond max_bytes"
    again.remove([got[0].seq])
    assert [m.value[:1] for m in again.peek(10)] == [b"b", b"c"]
    assert again.bytes == sum(p.stat().st_size for p in tmp_path.glob("*.msg"))
