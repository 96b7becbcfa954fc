"""Issue 16, the live enforcer on a real Kafka-protocol broker (tansu): malformed alerts go to the
``alerts.dlq`` topic with their reason and the enforcer goes on; a 100,000-target sweep becomes a
quarantine waiting for approval without holding up the ordinary alerts behind it.

The alerts are the project's own detection on simulator traffic plus mutated copies
(:mod:`tests.unit.enforce_audit_support`); the enforcer runs in dry-run (no kernel needed).
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

from flowwarden.bus import DeadLetter, dead_letter_of, open_bus
from flowwarden.enforcement.enforcer import Enforcer
from flowwarden.records import Alert
from flowwarden.settings import Settings
from flowwarden.store import Store
from tests.support.netns import wait_for
from tests.unit.enforce_audit_support import bad_lines, copy, lab

pytestmark = [pytest.mark.integration]


def test_bad_alerts_go_to_the_dead_letter_topic_and_a_sweep_stalls_nothing(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    sim = lab()
    data = kafka_settings.model_dump(mode="json")
    data.pop("collector")
    data["store"] = {"url": f"sqlite:///{tmp_path / 'fw.db'}"}
    data["cluster"] = sim.settings.cluster.model_dump(mode="json")
    data["control_plane"] = sim.settings.control_plane.model_dump(mode="json")
    data["enforcement"].update(
        mode="dry_run",
        act_on_learning=True,  # the simulator's short run is all learning; this test is about the sweep
        max_active_blocks=10_000,
        max_new_blocks_per_minute=10_000,
        metrics_port=0,
        gitops_dir=str(tmp_path / "gitops"),
        group_id=f"enforcer-{uuid.uuid4().hex[:8]}",
    )
    settings = Settings.model_validate(data)
    topics = settings.kafka.topics
    bus = open_bus(settings)
    bus.ensure_topics([topics.alerts, topics.decisions, topics.alerts_dlq])
    store = Store(settings.store.url).start()
    enforcer = Enforcer(settings, store=store, bus=bus, inventory=sim.inventory)
    enforcer.start()
    stop = threading.Event()
    worker = threading.Thread(target=enforcer.run, args=(stop, 0.1), daemon=True)
    worker.start()
    try:
        base = next(a for a in sim.alerts if a.targets)
        sweep = copy(
            base,
            500,
            targets=[f"10.{100 + i // 60000}.{(i // 250) % 240}.{i % 250 + 1}" for i in range(100_000)],
        )
        ordinary: list[Alert] = [copy(a, 600 + i) for i, a in enumerate(sim.alerts)]
        bad = bad_lines(base)
        producer = bus.producer()
        producer.send(topics.alerts, sweep.to_json().encode())
        for line in bad:
            producer.send(topics.alerts, line.encode())
        for a in ordinary:
            producer.send(topics.alerts, a.to_json().encode())
        assert producer.flush(30)
        producer.close()
        sent = time.monotonic()

        wanted = {a.id for a in ordinary} | {sweep.id}

        def all_decided() -> bool:
            got = {d.alert_id for d in store.list_decisions()}
            return wanted <= got | _ineligible(ordinary, settings)

        wait_for(all_decided, timeout=60, what="a decision on the sweep and on every ordinary alert")
        took = time.monotonic() - sent
        print(f"sweep + {len(ordinary)} alerts + {len(bad)} bad messages handled in {took:.2f}s")
        (wide,) = [d for d in store.list_decisions() if d.alert_id == sweep.id]
        assert (wide.action, wide.mode, wide.status) == ("quarantine", "approval", "pending")

        reader = bus.consumer([topics.alerts_dlq], f"dlq-reader-{uuid.uuid4().hex[:8]}")
        letters: list[DeadLetter] = []

        def dead_letters_arrived() -> bool:
            letters.extend(dead_letter_of(m) for m in reader.poll(0.5))
            return len(letters) >= len(bad)

        wait_for(dead_letters_arrived, timeout=30, what="every bad alert on the dead-letter topic")
        reader.close()
        assert sorted(x.payload.decode() for x in letters) == sorted(bad)
        assert all(x.reason and x.source_topic == topics.alerts for x in letters)
        assert worker.is_alive(), "the enforcer went on after the bad messages"
        assert enforcer.metrics.dead_letters.labels("score")._value.get() >= 1
    finally:
        stop.set()
        worker.join(30)
        enforcer.stop()
        store.stop()
        bus.close()


def _ineligible(alerts: list[Alert], settings: Settings) -> set[str]:
    from flowwarden.enforcement.policy import ineligible_reason

    return {a.id for a in alerts if ineligible_reason(a, settings.enforcement)}
