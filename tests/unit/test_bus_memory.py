"""The in-memory bus keeps Kafka's semantics: partitions, groups, commits, dead letters."""

from __future__ import annotations

import threading

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowwarden.bus import (
    DLQ_REASON,
    DLQ_SOURCE_OFFSET,
    DLQ_SOURCE_TOPIC,
    CommitFailed,
    FailedSend,
    MemoryBus,
    dead_letter_of,
    flow_partitions,
    open_bus,
    publish_flows,
    read_flow_batches,
    route_dead_letters,
    send_dlq,
)
from flowwarden.records import conform_flows
from flowwarden.settings import Settings
from flowwarden.wire import decode_flows, encode_flows


def flows(n: int, *, src_prefix: str = "10.244.1.") -> pd.DataFrame:
    return conform_flows(
        {
            "ts_start": [1_700_000_000.0 + i for i in range(n)],
            "ts_end": [1_700_000_001.0 + i for i in range(n)],
            "src_ip": [f"{src_prefix}{i % 50}" for i in range(n)],
            "dst_ip": ["10.96.0.10"] * n,
            "dst_port": [53] * n,
            "proto": [17] * n,
            "bytes_out": [100 + i for i in range(n)],
            "pkts_out": [1] * n,
        }
    )


def drain(consumer, want: int, rounds: int = 20) -> list:
    got: list = []
    for _ in range(rounds):
        got += consumer.poll(timeout_s=0.05)
        if len(got) >= want:
            break
    return got


def test_open_bus_defaults_to_memory_with_configured_partitions():
    bus = open_bus(Settings(kafka={"partitions": 4}))
    assert isinstance(bus, MemoryBus)
    bus.ensure_topics(["flows"])
    assert bus.partitions("flows") == 4


def test_keyed_messages_keep_their_partition_and_order():
    bus = MemoryBus(default_partitions=3)
    bus.ensure_topics(["t"])
    p = bus.producer()
    for i in range(30):
        p.send("t", f"{i}".encode(), key=b"same-source")
    c = bus.consumer(["t"], "g")
    got = drain(c, 30)
    assert len({m.partition for m in got}) == 1
    assert [int(m.value) for m in got] == list(range(30))
    assert [m.offset for m in got] == list(range(30))
    assert p.sent_count == 30 and p.failed_count == 0


def test_two_consumers_in_a_group_split_partitions_and_commit_resumes():
    bus = MemoryBus(default_partitions=4)
    bus.ensure_topics(["t"])
    p = bus.producer()
    for i in range(40):
        p.send("t", f"{i}".encode(), partition=i % 4)
    a = bus.consumer(["t"], "g")
    b = bus.consumer(["t"], "g")
    assert a.assignment().isdisjoint(b.assignment())
    assert a.assignment() | b.assignment() == {("t", i) for i in range(4)}
    got_a, got_b = drain(a, 20), drain(b, 20)
    assert len(got_a) == 20 and len(got_b) == 20
    assert sorted(int(m.value) for m in got_a + got_b) == list(range(40))
    a.commit(got_a)
    b.commit(got_b[:10])  # b finished only half of its messages
    b.close()
    a.close()
    # a new member resumes after the commits: the 10 uncommitted come again, nothing else
    c = bus.consumer(["t"], "g")
    again = drain(c, 10)
    assert sorted(int(m.value) for m in again) == sorted(int(m.value) for m in got_b[10:])
    assert c.lag() == {0: 0, 1: 0, 2: 0, 3: 0}


def test_commit_for_a_partition_moved_away_fails_clearly():
    bus = MemoryBus(default_partitions=2)
    bus.ensure_topics(["t"])
    bus.producer().send("t", b"x", partition=1)
    a = bus.consumer(["t"], "g")
    got = drain(a, 1)
    bus.consumer(["t"], "g")  # partition 1 moves to the newcomer
    with pytest.raises(CommitFailed, match="no longer assigned"):
        a.commit(got)


def test_groups_are_independent_and_lag_counts_unread():
    bus = MemoryBus(default_partitions=2)
    bus.ensure_topics(["t"])
    p = bus.producer()
    for i in range(6):
        p.send("t", b"m", partition=i % 2)
    one = bus.consumer(["t"], "one")
    two = bus.consumer(["t"], "two")
    assert one.lag() == {0: 3, 1: 3}
    assert len(drain(one, 6)) == 6
    assert one.lag() == {0: 0, 1: 0}
    assert two.lag() == {0: 3, 1: 3}


def test_bad_partition_is_reported_not_silent():
    bus = MemoryBus(default_partitions=2)
    bus.ensure_topics(["t"])
    seen: list[FailedSend] = []
    p = bus.producer(on_error=seen.append)
    p.send("t", b"x", partition=7)
    assert p.failed_count == 1 and len(seen) == 1
    assert "partition 7 does not exist" in p.failed[0].error
    assert p.take_failed() == seen and p.failed == []


def test_poll_wakes_up_when_another_thread_produces():
    bus = MemoryBus(default_partitions=1)
    bus.ensure_topics(["t"])
    c = bus.consumer(["t"], "g")
    t = threading.Thread(target=lambda: bus.producer().send("t", b"late"))
    t.start()
    got = c.poll(timeout_s=5.0)
    t.join(timeout=5)
    assert [m.value for m in got] == [b"late"]


def test_publish_flows_keeps_each_source_in_one_partition():
    bus = MemoryBus(default_partitions=4)
    bus.ensure_topics(["flows"])
    df = flows(400)
    sent = publish_flows(bus.producer(), "flows", df, partitions=4, max_rows=60)
    c = bus.consumer(["flows"], "g")
    got = drain(c, sent)
    assert len(got) == sent
    good, dead = read_flow_batches(got)
    assert dead == []
    parts_of_source: dict[str, set[int]] = {}
    for m, batch in good:
        assert len(batch) <= 60
        for ip in batch["src_ip"]:
            parts_of_source.setdefault(ip, set()).add(m.partition)
    assert all(len(p) == 1 for p in parts_of_source.values())
    total = pd.concat([b for _, b in good]).sort_values("ts_start").reset_index(drop=True)
    pd.testing.assert_frame_equal(total, df)


def test_flow_partitions_are_stable_and_spread():
    ips = pd.Series([f"10.0.{i // 256}.{i % 256}" for i in range(2000)], dtype="str")
    parts = flow_partitions(ips, 6)
    assert (parts == flow_partitions(ips, 6)).all()
    counts = pd.Series(parts).value_counts()
    assert len(counts) == 6 and counts.min() > 200


def test_garbage_and_bad_rows_go_to_the_dlq_with_their_reason():
    bus = MemoryBus(default_partitions=1)
    bus.ensure_topics(["flows", "flows.dlq"])
    p = bus.producer()
    good_df = flows(5)
    bad_df = flows(4)
    bad_df.loc[0, "bytes_out"] = -5
    bad_df.loc[1, "src_ip"] = "10.0.0.999"
    p.send("flows", encode_flows(good_df))
    p.send("flows", b"\x00garbage")
    p.send("flows", encode_flows(bad_df))
    got = drain(bus.consumer(["flows"], "g"), 3)
    good, dead = read_flow_batches(got)
    assert [len(b) for _, b in good] == [5, 2]
    reasons = sorted(d.reason for d in dead)
    assert reasons == [
        "batch: not a flowwarden flow batch (bad magic)",
        "bytes_out: negative",
        "src_ip: not an IP address",
    ]
    assert route_dead_letters(p, "flows.dlq", dead) == 3
    letters = [dead_letter_of(m) for m in drain(bus.consumer(["flows.dlq"], "dlq-reader"), 3)]
    by_field = {d.field: d for d in letters}
    assert by_field["batch"].payload == b"\x00garbage"  # the original bytes, untouched
    assert by_field["batch"].source_offset == 1 and by_field["batch"].source_topic == "flows"
    assert decode_flows(by_field["bytes_out"].payload)["bytes_out"].tolist() == [-5]
    assert by_field["src_ip"].rows == 1


def test_send_dlq_puts_reason_and_origin_in_headers():
    bus = MemoryBus(default_partitions=1)
    p = bus.producer()
    send_dlq(p, "flows.dlq", b"raw", "dst_ip: not an IP address", "collector:node-1", source_offset=-1)
    (m,) = drain(bus.consumer(["flows.dlq"], "g"), 1)
    assert m.value == b"raw"
    assert m.header(DLQ_REASON) == b"dst_ip: not an IP address"
    assert m.header(DLQ_SOURCE_TOPIC) == b"collector:node-1"
    assert m.header(DLQ_SOURCE_OFFSET) == b"-1"
    assert dead_letter_of(m).field == "dst_ip"


def test_closed_clients_refuse_work():
    bus = MemoryBus()
    p = bus.producer()
    p.close()
    with pytest.raises(RuntimeError):
        p.send("t", b"x")
    c = bus.consumer(["t"], "g")
    c.close()
    with pytest.raises(RuntimeError):
        c.poll(0)
    with pytest.raises(TypeError):
        bus.producer().send("t", "not bytes")  # type: ignore[arg-type]


def test_bad_rows_are_traced_to_their_own_message():
    bus = MemoryBus(default_partitions=1)
    p = bus.producer()
    batches = [flows(10, src_prefix=f"10.244.{k}.") for k in range(5)]
    batches[1].loc[3, "pkts_out"] = -1
    batches[3].loc[[0, 9], "src_ip"] = "nope"
    for b in batches:
        p.send("flows", encode_flows(b))
    got = drain(bus.consumer(["flows"], "g"), 5)
    good, dead = read_flow_batches(got)
    assert [len(df) for _, df in good] == [10, 9, 10, 8, 10]
    assert [m.offset for m, _ in good] == [0, 1, 2, 3, 4]
    for (_, df), b in zip(good, batches, strict=True):
        assert set(df["src_ip"]) <= set(b["src_ip"]), "rows stay with their own message"
        assert df.index.tolist() == list(range(len(df)))
    assert [(d.source_offset, d.field, d.rows) for d in dead] == [(1, "pkts_out", 1), (3, "src_ip", 2)]


def test_memory_stays_bounded_and_offsets_stay_absolute():
    bus = MemoryBus(default_partitions=1, retention_messages=5)
    p = bus.producer()
    for i in range(12):
        p.send("t", str(i).encode())
    assert bus.end_offsets("t") == [12]
    late = bus.consumer(["t"], "late")
    got = drain(late, 5)
    assert [m.offset for m in got] == [7, 8, 9, 10, 11], "the oldest kept message comes first"
    assert [int(m.value) for m in got] == [7, 8, 9, 10, 11]


def test_committed_messages_are_dropped_once_every_group_has_them():
    bus = MemoryBus(default_partitions=1)
    p = bus.producer()
    for i in range(10):
        p.send("t", str(i).encode())
    fast, slow = bus.consumer(["t"], "fast"), bus.consumer(["t"], "slow")
    fast.commit(drain(fast, 10))
    assert len(bus._topics["t"][0].items) == 10, "slow has not committed: nothing dropped"
    got = drain(slow, 10)
    slow.commit(got[:6])
    assert bus._topics["t"][0].base == 6 and len(bus._topics["t"][0].items) == 4
    slow.close()
    again = bus.consumer(["t"], "slow")
    assert [int(m.value) for m in drain(again, 4)] == [6, 7, 8, 9]
    assert again.lag() == {0: 0}


op = st.sampled_from(["produce", "produce", "join", "leave", "poll", "poll", "poll", "commit", "commit"])
ops = st.lists(st.tuples(op, st.integers(1, 6)), min_size=5, max_size=50).map(
    lambda rest: [("produce", 5), ("join", 1), *rest]  # start with work and a member
)


@settings(max_examples=100, deadline=None)
@given(ops)
def test_property_group_semantics_hold_under_any_interleaving(script: list[tuple[str, int]]):
    """Whatever members join, leave, poll and commit: nothing is lost, and a fresh member
    reads exactly what the group has not committed, each message once."""
    bus = MemoryBus(default_partitions=3)
    bus.ensure_topics(["t"])
    producer = bus.producer()
    produced: list[bytes] = []
    members: list = []
    inflight: dict[int, list] = {}
    delivered: set[tuple[int, int]] = set()
    for op, arg in script:
        if op == "produce":
            for _ in range(arg):
                value = str(len(produced)).encode()
                producer.send("t", value, key=value)
                produced.append(value)
        elif op == "join" and len(members) < 3:
            members.append(bus.consumer(["t"], "g"))
        elif members and op in ("leave", "poll", "commit"):
            i = arg % len(members)
            c = members[i]
            if op == "leave":
                c.close()
                members.pop(i)
                inflight.pop(id(c), None)  # its uncommitted work is abandoned: redelivered later
            elif op == "poll":
                got = c.poll(timeout_s=0, max_records=4)
                assert all((m.topic, m.partition) in c.assignment() for m in got)
                delivered.update((m.partition, m.offset) for m in got)
                inflight.setdefault(id(c), []).extend(got)
            else:
                mine = [m for m in inflight.pop(id(c), []) if (m.topic, m.partition) in c.assignment()]
                c.commit(mine)
    committed = bus.committed("g")
    for c in members:
        c.close()
    fresh = bus.consumer(["t"], "g")
    uncommitted = sum(end - committed.get(("t", p), 0) for p, end in enumerate(bus.end_offsets("t")))
    rest = drain(fresh, uncommitted, rounds=3) if uncommitted > 0 else fresh.poll(timeout_s=0)
    keys = [(m.partition, m.offset) for m in rest]
    assert len(keys) == len(set(keys)), "each message once"
    for p, end in enumerate(bus.end_offsets("t")):
        start = committed.get(("t", p), 0)
        assert sorted(o for q, o in keys if q == p) == list(range(start, end)), "exactly the uncommitted"
        assert all((p, o) in delivered for o in range(start)), "only delivered messages were committed"
    assert sum(bus.end_offsets("t")) == len(produced), "nothing lost"
