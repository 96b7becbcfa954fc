"""The streaming stage hands the policy and the feeds to the real engine and observes every batch."""

from __future__ import annotations

from pathlib import Path

from flowwarden.bus import MemoryBus, publish_flows
from flowwarden.kube import PodInventory
from flowwarden.pipeline.detection.engine import DetectionEngine
from flowwarden.pipeline.runtime.feeds import RulesSource
from flowwarden.pipeline.runtime.notify import NotifierHub
from flowwarden.pipeline.runtime.stage import PipelineStage, StageOptions
from flowwarden.settings import Settings
from flowwarden.store import Store
from tests.unit.flowkit import flows, pod

API, DB = "10.244.1.10", "10.244.2.20"
T0 = 1_700_000_000.0  # in the past: the stage sends flows from the future to the dead-letter topic


def test_stage_raises_policy_and_feed_alerts_from_its_rules_source(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "namespaces:\n  shop:\n    egress:\n      - to: {namespaces: [db]}\n        ports: [5432/tcp]\n"
    )
    feed = tmp_path / "c2.txt"
    feed.write_text("# c2\n192.0.2.66\n")
    settings = Settings(
        store={"url": f"sqlite:///{tmp_path / 'fw.db'}"},
        rules={
            "policy_file": str(policy),
            "feeds": [{"name": "c2", "url": str(feed)}],
            "feed_cache_dir": str(tmp_path / "c"),
        },
    )
    inventory = PodInventory.from_dict(
        {
            "items": [
                pod("api-1", API, ns="shop", owner=("ReplicaSet", "api-7c9d")),
                pod("pg-0", DB, ns="db", owner=("StatefulSet", "pg")),
            ]
        }
    )
    store = Store(settings.store.url).start()
    bus = MemoryBus(default_partitions=1)
    source = RulesSource(settings)
    stage = PipelineStage(
        settings,
        bus=bus,
        store=store,
        engine=DetectionEngine(settings, inventory=inventory),
        notifiers=NotifierHub([]),
        rules_source=source,
        options=StageOptions(poll_timeout_s=0.0),
    )
    try:
        stage.start()
        batch = flows(
            [
                {"ts_start": T0 + 1, "src_ip": API, "dst_ip": DB, "dst_port": 5432},  # allowed
                {
                    "ts_start": T0 + 2,
                    "src_ip": API,
                    "dst_ip": "192.0.2.66",
                    "dst_port": 443,
                },  # feed and policy
            ]
        )
        producer = bus.producer()
        publish_flows(producer, settings.kafka.topics.flows, batch, 1)
        producer.flush()
        stage.drain(idle_polls=2, max_seconds=60)
    finally:
        stage.stop()
        store.stop()
    store = Store(settings.store.url).start()
    try:
        alerts = {a.detector: a for a in store.list_alerts()}
    finally:
        store.stop()
    assert set(alerts) == {"policy_violation", "threat_feed"}
    assert alerts["threat_feed"].evidence["hits"][0]["feed"] == "c2"
    assert alerts["policy_violation"].targets == ["192.0.2.66"]
    assert alerts["policy_violation"].evidence["policy_version"] == source.current().policy_version != ""
