"""The pipeline survives what a real bus delivers (issue 22), on the real broker and PostgreSQL.

Each case runs the real engine over the same simulated traffic as an undisturbed run and must
raise exactly that run's alerts: a poison message between valid batches, three flows dated
2096 inside a valid batch, a topic deleted and recreated mid-run (offsets start again), and
PostgreSQL made unreachable for a moment (through a loopback proxy the test owns).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa
from kafka import KafkaAdminClient

from flowwarden import simulator
from flowwarden.bus import DeadLetter, KafkaBus, Message, dead_letter_of
from flowwarden.bus_kafka import client_config
from flowwarden.kube import PodInventory
from flowwarden.pipeline.detection.engine import DetectionEngine
from flowwarden.pipeline.runtime.metrics import PipelineMetrics
from flowwarden.pipeline.runtime.notify import NotifierHub
from flowwarden.pipeline.runtime.stage import PipelineStage, StageOptions
from flowwarden.settings import Settings
from flowwarden.store import Store
from flowwarden.wire import MAGIC, WIRE_VERSION
from tests.integration.test_pipeline_kafka import (
    chunks,
    publish,
    rollup_sums,
    store_batches,
    with_changes,
)
from tests.support.broker import TansuBroker, kafka_settings_for, unique_group
from tests.support.netns import wait_for
from tests.support.postgres import PG_HOST, PG_PORT
from tests.support.stage_thread import StageThread
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

FAR_FUTURE = 3_976_000_000.0  # in 2096


@pytest.fixture(scope="module")
def sim() -> Any:
    """The traffic of test_pipeline_kafka (every attack), with its workloads' benign history."""
    return simulator.simulate(minutes=4, pods=30, seed=23, attacks="all")


@pytest.fixture(scope="module")
def warm_state() -> bytes:
    history = simulator.simulate(
        minutes=10, pods=30, seed=1023, benign_only=True, start=datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
    )
    engine = DetectionEngine(Settings(), inventory=PodInventory.from_dict(history.inventory))
    engine.process(history.flows)
    engine.flush()
    state: bytes = engine.export_state()
    return state


class Run(StageThread):
    """One pipeline stage (real engine, warm state) looping in a thread until told to finish.

    The idle clock is off: windows close with the flows, and the last ones at :meth:`finish`
    (a flush), so a pause in the traffic (a topic being recreated, a store outage) changes
    nothing in event time and every run cuts the same windows.
    """

    def __init__(self, settings: Settings, store: Store, sim: Any, warm: bytes) -> None:
        engine = DetectionEngine(settings, inventory=PodInventory.from_dict(sim.inventory))
        engine.import_state(warm, clocks=False)
        self.metrics = PipelineMetrics()
        self.stage = PipelineStage(
            settings,
            bus=KafkaBus(settings.kafka),
            store=store,
            engine=engine,
            metrics=self.metrics,
            notifiers=NotifierHub([]),
            options=StageOptions(poll_timeout_s=0.2, idle_tick_s=3600.0, align_idle_s=3.0, worker_id="r"),
        )
        super().__init__(self.stage, "resilience-run", max_seconds=300)

    def start(self) -> Self:
        self.stage.start()
        return super().start()

    def consumed(self, flows: int) -> bool:
        return self.running() and self.stage.stats.flows >= flows and not len(self.stage.aligner)

    def finish(self) -> None:
        self.halt()
        self.stage.stop(flush=True)

    def __enter__(self) -> Run:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        """A clean exit stops the stage with a flush and checks it ended well; a failure only stops it."""
        if exc_type is None:
            self.finish()
        else:
            self.abandon()

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def settings_for(broker: TansuBroker, db: str, prefix: str) -> Settings:
    s = kafka_settings_for(broker.bootstrap)
    return with_changes(
        s,
        pipeline={"group_id": unique_group(prefix), "checkpoint_interval_s": 1.0},
        store={"url": db},
    )


def run_to_end(settings: Settings, store: Store, sim: Any, warm: bytes, parts: list[pd.DataFrame]) -> Run:
    with Run(settings, store, sim, warm) as run:
        publish(settings, parts)
        wait_for(lambda: run.consumed(len(sim.flows)), timeout=180, what="every flow consumed")
    return run


@pytest.fixture(scope="module")
def reference(
    kafka_broker: TansuBroker, sim: Any, warm_state: bytes, tmp_path_factory: pytest.TempPathFactory
) -> tuple[set[str], int]:
    """The undisturbed run: its alert ids and how many flows it found late."""
    db = tmp_path_factory.mktemp("reference") / "fw.db"
    settings = settings_for(kafka_broker, f"sqlite:///{db}", "reference")
    with Store(settings.store.url) as store:
        run = run_to_end(settings, store, sim, warm_state, chunks(sim.flows))
        ids = {a.id for a in store.list_alerts()}
    assert len(ids) >= 5
    return ids, run.stage.engine.stats().late_flows


def read_topic(settings: Settings, topic: str, at_least: int) -> list[Message]:
    consumer = KafkaBus(settings.kafka).consumer([topic], unique_group("reader"))
    out: list[Message] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(out) < at_least:
            out += consumer.poll(timeout_s=0.5, max_records=5000)
    finally:
        consumer.close()
    assert len(out) >= at_least, f"{topic}: {len(out)} messages, expected {at_least}"
    return out


def dead_letters(settings: Settings, at_least: int) -> list[DeadLetter]:
    return [dead_letter_of(m) for m in read_topic(settings, settings.kafka.topics.flows_dlq, at_least)]


# --------------------------------------------------------------------------- poison


def test_a_poison_message_between_valid_batches_is_dead_lettered_and_the_rest_processed(
    kafka_broker: TansuBroker, tmp_path: Path, sim: Any, warm_state: bytes, reference: tuple[set[str], int]
) -> None:
    """The issue's poison (an Arrow batch with a duplicate column) used to crash-loop the pipeline."""
    settings = settings_for(kafka_broker, f"sqlite:///{tmp_path / 'fw.db'}", "poison")
    parts = chunks(sim.flows)
    half = len(parts) // 2
    table = pa.Table.from_pandas(parts[half].head(5), preserve_index=False)
    sink = pa.BufferOutputStream()
    table = table.append_column("src_ip", table.column("src_ip"))
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    poison = MAGIC + bytes([WIRE_VERSION]) + sink.getvalue().to_pybytes()
    garbage = MAGIC + bytes([WIRE_VERSION]) + b"\xff\xff\xff\xff" + b"\x00" * 40

    with Store(settings.store.url) as store:
        with Run(settings, store, sim, warm_state) as run:
            sent = publish(settings, parts[:half])
            producer = KafkaBus(settings.kafka).producer()
            producer.send(settings.kafka.topics.flows, poison, partition=0)
            producer.send(settings.kafka.topics.flows, garbage, partition=1)
            assert producer.flush(30) and producer.failed_count == 0
            producer.close()
            sent += 2 + publish(settings, parts[half:])
            wait_for(lambda: run.consumed(len(sim.flows)), timeout=180, what="every valid flow consumed")
        assert {a.id for a in store.list_alerts()} == reference[0]
        # Every batch was taken in and accounted for, the two bad ones included.
        assert run.stage.stats.batches == sent

    where = {
        m.value: (m.partition, m.offset)
        for m in read_topic(settings, settings.kafka.topics.flows, sent)
        if m.value in (poison, garbage)
    }
    letters = {d.payload: d for d in dead_letters(settings, 2)}
    assert set(letters) == {poison, garbage}
    p = letters[poison]
    assert (p.source_topic, p.source_partition, p.source_offset) == (
        settings.kafka.topics.flows,
        *where[poison],
    )
    assert p.rows == 5 and p.field == "batch" and "'src_ip' appears 2 times" in p.reason
    g = letters[garbage]
    assert (g.source_partition, g.source_offset, g.rows) == (*where[garbage], -1)
    assert "corrupt Arrow stream" in g.reason
    assert run.metric("flowwarden_pipeline_dlq_total", cause="batch") == 5 + 1  # rows, or 1 when unknown


# --------------------------------------------------------------------------- flows from the future


def test_flows_from_the_future_are_dead_lettered_and_never_move_the_watermark(
    kafka_broker: TansuBroker, tmp_path: Path, sim: Any, warm_state: bytes, reference: tuple[set[str], int]
) -> None:
    settings = settings_for(kafka_broker, f"sqlite:///{tmp_path / 'fw.db'}", "future")
    parts = chunks(sim.flows)
    i = len(parts) // 3
    future = parts[i].head(3).copy()
    future["ts_start"] = FAR_FUTURE
    future["ts_end"] = FAR_FUTURE + 1.0
    parts[i] = pd.concat([parts[i], future], ignore_index=True)

    before = sum(len(p) for p in parts[: i + 1]) - len(future)

    with Store(settings.store.url) as store:
        with Run(settings, store, sim, warm_state) as run:
            # The batch with the 2096 flows is in the engine before the rest arrives: had it
            # moved the watermark, the rest would be late.
            publish(settings, parts[: i + 1])
            wait_for(lambda: run.consumed(before), timeout=180, what="the flows up to the 2096 batch")
            publish(settings, parts[i + 1 :])
            wait_for(lambda: run.consumed(len(sim.flows)), timeout=180, what="every flow consumed")
        assert {a.id for a in store.list_alerts()} == reference[0]
        # Nothing dropped as late after them: as many late flows as the undisturbed run.
        assert run.stage.engine.stats().late_flows == reference[1]
        assert run.stage.stats.flows == len(sim.flows)
        # The checkpoint holds a watermark of the real traffic, not 2096.
        restored = DetectionEngine(settings)
        state = store.get_state(run.stage.state_key)
        assert state is not None
        restored.import_state(state)
        assert restored.buffer.watermark <= float(sim.flows["ts_end"].max())

    letters = dead_letters(settings, 1)
    assert sum(d.rows for d in letters) == 3
    assert {d.cause for d in letters} == {"future"} and all(d.field == "ts_end" for d in letters)
    assert all(d.source_partition >= 0 and d.source_offset >= 0 for d in letters)
    assert run.metric("flowwarden_pipeline_dlq_total", cause="future") == 3


# --------------------------------------------------------------------------- offsets that restart


def test_a_topic_recreated_mid_run_is_new_data_not_a_redelivery(
    kafka_broker: TansuBroker,
    fresh_pg_url: str,
    sim: Any,
    warm_state: bytes,
    reference: tuple[set[str], int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The topic is deleted and recreated between the two halves: its offsets start again at 0."""
    settings = settings_for(kafka_broker, fresh_pg_url, "reset")
    topics = settings.kafka.topics
    parts = chunks(sim.flows)
    half = len(parts) // 2
    first = sum(len(p) for p in parts[:half])
    caplog.set_level(logging.ERROR, logger="flowwarden")

    with Store(settings.store.url) as store:
        with Run(settings, store, sim, warm_state) as run:
            sent = publish(settings, parts[:half])
            wait_for(lambda: run.consumed(first), timeout=180, what="the first half consumed")
            admin = KafkaAdminClient(**client_config(settings.kafka))
            try:
                admin.delete_topics([topics.flows])
            finally:
                admin.close()
            KafkaBus(settings.kafka).ensure_topics([topics.flows])
            wait_for(
                lambda: (
                    run.metric("flowwarden_pipeline_offset_resets_total", topic=topics.flows)
                    == settings.kafka.partitions
                ),
                timeout=60,
                what="the stage to see every partition's offsets start again",
            )
            sent += publish(settings, parts[half:])
            wait_for(lambda: run.consumed(len(sim.flows)), timeout=180, what="every flow consumed")
        assert {a.id for a in store.list_alerts()} == reference[0]
        assert run.stage.stats.flows == len(sim.flows) and run.stage.stats.redelivered == 0
        # Every batch of both epochs is marked once, and its rollups are in the store once.
        assert store_batches(store, settings) == sent
        assert rollup_sums(store) == (
            int(sim.flows["bytes_out"].sum()),
            int(sim.flows["pkts_out"].sum() + sim.flows["pkts_in"].sum()),
        )
    assert "partition offsets started again" in caplog.text


# --------------------------------------------------------------------------- a store that blinks


@pytest.fixture
def pg_proxy(fresh_pg_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """The test's database behind a loopback proxy of its own: its outage is the test's alone."""
    proxy = TcpProxy((PG_HOST, PG_PORT)).start()
    url = fresh_pg_url.replace(f"{PG_HOST}:{PG_PORT}", f"127.0.0.1:{proxy.port}")
    assert url != fresh_pg_url
    try:
        yield proxy, url
    finally:
        proxy.stop()


@pytest.mark.parametrize("rebalance", [False, True], ids=["blink", "stall-past-max-poll-interval"])
def test_the_stage_rides_out_a_database_outage(
    kafka_broker: TansuBroker,
    pg_proxy: tuple[TcpProxy, str],
    sim: Any,
    warm_state: bytes,
    reference: tuple[set[str], int],
    caplog: pytest.LogCaptureFixture,
    rebalance: bool,
) -> None:
    """PostgreSQL unreachable for a moment: the stage retries, then carries on.

    With ``rebalance`` the outage lasts past the consumer's ``max_poll_interval_ms``: the
    group takes the partitions away while the stage waits on the store, and gives them back
    (an in-process rebalance under a stalled store); the alerts must not change either.
    """
    proxy, url = pg_proxy
    settings = settings_for(kafka_broker, url, "blink")
    parts = chunks(sim.flows)
    third = len(parts) // 3
    caplog.set_level(logging.INFO)
    with Store(url, retry_deadline_s=settings.store.retry_deadline_s) as store:
        with Run(settings, store, sim, warm_state) as run:
            publish(settings, parts[:third])
            wait_for(lambda: store_batches(store, settings) > 0, timeout=120, what="some batches stored")
            proxy.stop()  # refused from now on; the open connections are cut
            publish(settings, parts[third : 2 * third])
            wait_for(
                lambda: run.metric("flowwarden_pipeline_store_retries_total", cause="connection") >= 2,
                timeout=60,
                what="the stage to retry the store",
            )
            if rebalance:  # kafka-python's heartbeat thread gives the partitions up
                wait_for(
                    lambda: "poll timeout has expired" in caplog.text,
                    timeout=60,
                    what="the consumer to leave the group",
                )
            proxy.start()  # the same port again
            publish(settings, parts[2 * third :])
            wait_for(lambda: run.consumed(len(sim.flows)), timeout=180, what="every flow consumed")
        assert {a.id for a in store.list_alerts()} == reference[0]
        assert rollup_sums(store) == (
            int(sim.flows["bytes_out"].sum()),
            int(sim.flows["pkts_out"].sum() + sim.flows["pkts_in"].sum()),
        )
    if rebalance:
        assert "partitions revoked" in caplog.text


def test_a_refused_connection_is_retried_until_the_deadline(pg_proxy: tuple[TcpProxy, str]) -> None:
    """The store's own retry loop: refused, retried with back-off, through once the server is back."""
    proxy, url = pg_proxy
    causes: list[str] = []

    def on_retry(cause: str) -> None:
        causes.append(cause)
        if len(causes) == 3:
            proxy.start()  # back on the third retry

    with Store(url, on_retry=on_retry, retry_deadline_s=30.0) as store:
        proxy.stop()
        assert store.in_transaction(lambda conn: conn.exec_driver_sql("SELECT 1").scalar_one()) == 1
        assert causes == ["connection"] * 3
        proxy.stop()
        started = time.monotonic()
        with pytest.raises(sa.exc.OperationalError):
            store.in_transaction(lambda conn: conn.exec_driver_sql("SELECT 1").scalar_one(), deadline_s=1.0)
        assert 1.0 <= time.monotonic() - started < 10.0
        assert len(causes) > 3


def test_the_epoch_migration_on_postgresql(fresh_pg_url: str) -> None:
    from flowwarden.migrations import MIGRATIONS

    with Store(fresh_pg_url, migrations=MIGRATIONS[:1]) as old, old.transaction() as conn:
        conn.exec_driver_sql("DROP TABLE consumed_batches")
        conn.exec_driver_sql(
            "CREATE TABLE consumed_batches (group_id VARCHAR(255) NOT NULL, topic VARCHAR(255) NOT NULL, "
            '"partition" INTEGER NOT NULL, "offset" BIGINT NOT NULL, marked_at TIMESTAMP WITH TIME ZONE '
            'NOT NULL, CONSTRAINT pk_consumed_batches PRIMARY KEY (group_id, topic, "partition", "offset"))'
        )
        conn.exec_driver_sql("INSERT INTO consumed_batches VALUES ('g', 'flows', 1, 42, now())")
    with Store(fresh_pg_url) as store:
        assert store.schema_version() == MIGRATIONS[-1].version
        assert store.seen_batches("g", [("flows", 1, 42)]) == {("flows", 1, 42)}
        store.mark_batches("g", [("flows", 1, 42)], epoch=1)
        assert store.seen_batches("g", [("flows", 1, 42)], epoch=1) == {("flows", 1, 42)}
