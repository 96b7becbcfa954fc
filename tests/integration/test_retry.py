"""The one retry policy against real services: a Kafka-protocol broker and PostgreSQL that go away.

Each outage is the test's own (a private broker; the database behind a loopback proxy), and
the service comes back from the policy's own retry hook, never after a sleep: the call must
ride it out, and ``flowwarden_retries_total{target}`` must count what was retried.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from flowwarden.bus import open_bus
from flowwarden.errors import ServiceUnavailable
from flowwarden.retry import RETRIES, RetryPolicy
from flowwarden.store import Store
from tests.support.broker import TansuBroker, kafka_settings_for
from tests.support.postgres import PG_HOST, PG_PORT
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_proxy(fresh_pg_url: str) -> Iterator[tuple[TcpProxy, str]]:
    proxy = TcpProxy((PG_HOST, PG_PORT)).start()
    url = fresh_pg_url.replace(f"{PG_HOST}:{PG_PORT}", f"127.0.0.1:{proxy.port}")
    try:
        yield proxy, url
    finally:
        proxy.stop()


def test_kafka_connect_rides_out_a_broker_that_is_down_then_gives_up_clearly(
    private_broker: TansuBroker,
) -> None:
    settings = kafka_settings_for(private_broker.bootstrap)
    settings = settings.model_copy(
        update={
            "retry": settings.retry.model_copy(update={"initial_s": 0.1, "max_s": 0.5}),
            "kafka": settings.kafka.model_copy(update={"connect_timeout_s": 30.0}),
        }
    )
    private_broker.stop()
    before = RETRIES.value("kafka")
    back = threading.Event()

    def bring_back_on_first_retry() -> None:
        # The broker returns once the policy has counted a retry: no sleep, no guess.
        while RETRIES.value("kafka") == before:
            if back.wait(0.02):
                return
        private_broker.start()

    helper = threading.Thread(target=bring_back_on_first_retry, daemon=True)
    helper.start()
    bus = open_bus(settings)
    try:
        bus.ensure_topics([settings.kafka.topics.flows])  # connects through the retries
    finally:
        back.set()
        helper.join(timeout=30)
    assert RETRIES.value("kafka") > before
    producer = bus.producer()
    producer.send(settings.kafka.topics.flows, b"x")
    producer.close()
    assert producer.failed_count == 0

    private_broker.stop()
    short = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"connect_timeout_s": 1.5})}
    )
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match=f"kafka broker not reachable at {private_broker.bootstrap}"):
        open_bus(short).ensure_topics([settings.kafka.topics.flows])
    assert 1.5 <= time.monotonic() - started < 15


def test_the_store_retries_a_refused_connection_through_the_policy(pg_proxy: tuple[TcpProxy, str]) -> None:
    proxy, url = pg_proxy
    causes: list[str] = []

    def on_retry(cause: str) -> None:
        causes.append(cause)
        if len(causes) == 2:
            proxy.start()  # back on the second retry

    policy = RetryPolicy(target="store", initial_s=0.05, max_s=0.2)
    before = RETRIES.value("store")
    with Store(url, on_retry=on_retry, retry_deadline_s=30.0, retry=policy) as store:
        proxy.stop()
        assert store.in_transaction(lambda conn: conn.exec_driver_sql("SELECT 1").scalar_one()) == 1
        assert causes == ["connection", "connection"]
        assert RETRIES.value("store") == before + 2
        proxy.stop()
        with pytest.raises(sa.exc.OperationalError):
            store.in_transaction(lambda conn: conn.exec_driver_sql("SELECT 1").scalar_one(), attempts=3)
        assert RETRIES.value("store") == before + 4  # three tries: two retries
