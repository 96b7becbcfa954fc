"""``flowwarden enforce run`` as its own process: an alert on a real Kafka-protocol broker becomes a
rule in the lab's kernel and a decision on the ``decisions`` topic; the process stops on SIGTERM and
the kernel still lifts the block when its TTL ends."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from flowwarden.bus import open_bus
from flowwarden.records import Alert, Decision, Entity
from flowwarden.settings import Settings
from flowwarden.store import Store
from tests.integration.enforce_lab import (
    API_PORT,
    ATTACKER,
    CONTROL,
    TARGET,
    TARGET_PORT,
    EnforceLab,
    enforce_lab,
)
from tests.support.netns import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.netns]
__all__ = ["enforce_lab"]


def test_enforce_run_process_on_kafka(
    enforce_lab: EnforceLab, kafka_settings: Settings, tmp_path: Path
) -> None:
    lab = enforce_lab
    data = kafka_settings.model_dump(mode="json")
    data["store"] = {"url": f"sqlite:///{tmp_path / 'fw.db'}"}
    data.update(lab.settings().model_dump(mode="json", include={"cluster", "control_plane"}))
    data["enforcement"].update(
        mode="enforce",
        backends=["nftables"],
        nft_netns=lab.router.name,
        ttl_s=4,
        metrics_port=0,
        group_id=f"enforcer-{uuid.uuid4().hex[:8]}",
    )
    data.pop("collector")
    settings = Settings.model_validate(data)
    config = tmp_path / "fw.yaml"
    config.write_text(yaml.safe_dump(data))

    bus = open_bus(settings)
    topics = settings.kafka.topics
    bus.ensure_topics([topics.alerts, topics.decisions])
    now = datetime.now(UTC)
    alert = Alert(
        kind="exfiltration",
        detector="volume",
        score=0.99,
        severity="critical",
        entity=Entity(ip=ATTACKER, namespace="shop", pod="web-1"),
        window_start=now - timedelta(seconds=10),
        window_end=now,
        targets=[TARGET],
    )
    producer = bus.producer()
    producer.send(topics.alerts, alert.to_json().encode())
    assert producer.flush(10)
    producer.close()

    log = (tmp_path / "enforcer.log").open("wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("flowwarden")), "enforce", "run", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: not lab.can_connect(TARGET, TARGET_PORT) or proc.poll() is not None,
            timeout=60,
            what="the enforcer to block attacker -> target",
        )
        assert proc.poll() is None, (tmp_path / "enforcer.log").read_text()
        assert lab.can_connect(CONTROL, API_PORT)

        consumer = bus.consumer([topics.decisions], f"reader-{uuid.uuid4().hex[:8]}")
        seen: list[Decision] = []

        def decision_arrived() -> bool:
            seen.extend(Decision.from_json(m.value) for m in consumer.poll(0.5))
            return bool(seen)

        wait_for(decision_arrived, timeout=30, what="the decision on the decisions topic")
        consumer.close()
        assert [(d.alert_id, d.status, d.mode) for d in seen] == [(alert.id, "applied", "enforce")]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        log.close()
    assert code == 0, (tmp_path / "enforcer.log").read_text()
    wait_for(lambda: lab.can_connect(TARGET, TARGET_PORT), timeout=20, what="the kernel to expire the block")
    store = Store(settings.store.url).start()
    try:
        (stored,) = store.list_decisions()
    finally:
        store.stop()
    assert stored.id == seen[0].id and stored.status == "applied"
    bus.close()
