"""Feed and policy metrics, read from the stage's real /metrics endpoint."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

from flowwarden.bus import MemoryBus, publish_flows
from flowwarden.kube import PodInventory
from flowwarden.pipeline.detection.engine import DetectionEngine
from flowwarden.pipeline.runtime.feeds import RulesSource
from flowwarden.pipeline.runtime.metrics import PipelineMetrics
from flowwarden.pipeline.runtime.notify import NotifierHub
from flowwarden.pipeline.runtime.stage import PipelineStage, StageOptions
from flowwarden.settings import Settings
from flowwarden.store import Store
from tests.unit.flowkit import flows, pod

API, DB = "10.244.1.10", "10.244.2.20"
T0 = 1_700_000_000.0


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_feed_health_hits_and_violations_are_served(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "namespaces:\n  shop:\n    egress:\n      - to: {namespaces: [db]}\n        ports: [5432/tcp]\n"
    )
    feed = tmp_path / "c2.txt"
    feed.write_text("# c2\n192.0.2.66\n198.51.100.0/24\n")
    settings = Settings(
        store={"url": f"sqlite:///{tmp_path / 'fw.db'}"},
        enforcement={"mode_by_detector": {"threat_feed": "enforce"}},
        rules={
            "policy_file": str(policy),
            "feeds": [
                {"name": "c2", "url": str(feed)},
                {"name": "gone", "url": f"http://127.0.0.1:{closed_port()}/list.txt"},
            ],
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
    metrics = PipelineMetrics()
    port = metrics.serve(0, addr="127.0.0.1")
    stage = PipelineStage(
        settings,
        bus=(bus := MemoryBus(default_partitions=1)),
        store=store,
        engine=DetectionEngine(settings, inventory=inventory),
        notifiers=NotifierHub([]),
        rules_source=RulesSource(settings),
        metrics=metrics,
        options=StageOptions(poll_timeout_s=0.0),
    )
    try:
        stage.start()
        batch = flows(
            [
                {"ts_start": T0 + 1, "src_ip": API, "dst_ip": DB, "dst_port": 5432},  # allowed
                {"ts_start": T0 + 2, "src_ip": API, "dst_ip": "192.0.2.66", "dst_port": 443},
                {"ts_start": T0 + 3, "src_ip": API, "dst_ip": "192.0.2.66", "dst_port": 443},
                {"ts_start": T0 + 4, "src_ip": API, "dst_ip": DB, "dst_port": 22},  # port not allowed
            ]
        )
        producer = bus.producer()
        publish_flows(producer, settings.kafka.topics.flows, batch, 1)
        producer.flush()
        stage.drain(idle_polls=2, max_seconds=60)
        stage.stop()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        metrics.close()
        store.stop()
    lines = {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln[:1] != "#"}
    assert lines['flowwarden_feed_entries{feed="c2"}'] == 2.0
    assert lines['flowwarden_feed_entries{feed="gone"}'] == 0.0
    assert lines['flowwarden_feed_last_success_timestamp_seconds{feed="c2"}'] > T0
    assert 'flowwarden_feed_last_success_timestamp_seconds{feed="gone"}' not in lines
    assert lines['flowwarden_feed_refresh_failures_total{feed="gone"}'] >= 1.0
    assert lines['flowwarden_feed_refresh_failures_total{feed="c2"}'] == 0.0
    assert lines['flowwarden_feed_hits_total{feed="c2",mode="enforce"}'] == 2.0
    assert lines['flowwarden_policy_violations_total{kind="egress"}'] == 3.0
