"""Scale-out pieces without a broker: repartition keys, global-memory entries and the engine's
hooks, and the detect stage's alignment of the source partitions (issue 19)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from flowwarden.bus import Message
from flowwarden.kube import PodInventory
from flowwarden.pipeline.detection.engine import DetectionEngine
from flowwarden.pipeline.detection.state import SeenEdges
from flowwarden.pipeline.runtime.batches import PendingBatch
from flowwarden.pipeline.runtime.global_memory import decode_entry, encode_entry, merge_earliest
from flowwarden.pipeline.runtime.repartition import (
    MAX_TS_HEADER,
    PEERS_HEADER,
    SOURCE_HEADER,
    key_partitions,
    workload_keys,
)
from flowwarden.pipeline.runtime.stage import SourceAligner
from flowwarden.records import empty_flows
from flowwarden.settings import Settings
from tests.unit.flowkit import T0, flows, pod


def test_workload_keys_group_replicas_and_keep_the_rest_apart() -> None:
    enriched = pd.DataFrame(
        {
            "src_namespace": ["shop", "shop", "shop", ""],
            "src_pod": ["web-1", "web-2", "job-x", ""],
            "src_workload": ["web", "web", "", ""],
            "src_ip": ["10.244.0.1", "10.244.0.2", "10.244.0.3", "198.51.100.4"],
        }
    )
    keys = workload_keys(enriched)
    assert keys.tolist() == ["shop/web", "shop/web", "shop/job-x", "198.51.100.4"]
    parts = key_partitions(keys, 6)
    assert parts[0] == parts[1]  # both replicas to one detect worker
    assert ((parts >= 0) & (parts < 6)).all()
    assert key_partitions(keys, 6).tolist() == parts.tolist()  # stable


def test_global_memory_entries_round_trip_and_the_earliest_wins() -> None:
    key, value = encode_entry(2**63 + 5, T0)
    assert decode_entry(key, value) == (2**63 + 5, T0)
    assert decode_entry(key, b"garbage") is None
    assert decode_entry(None, value) is None
    known = {1: 100.0, 2: 50.0}
    assert merge_earliest(known, {1: 90.0, 2: 60.0, 3: 10.0}) == {1: 90.0, 3: 10.0}
    assert known == {1: 90.0, 2: 50.0, 3: 10.0}


def test_seen_edges_merge_first_adds_unknown_and_keeps_the_earliest() -> None:
    edges = SeenEdges(ttl_s=86400.0, max_edges=100)
    h = np.array([11, 12], dtype="uint64")
    edges.update(h[:1], edges.positions(h[:1]), np.array([100.0]), np.array([200.0]), np.array([5.0]))
    edges.merge_first(h, np.array([50.0, 70.0]))
    assert edges.first_seen(h).tolist() == [50.0, 70.0]
    edges.merge_first(h, np.array([80.0, 90.0]))  # later sightings change nothing
    assert edges.first_seen(h).tolist() == [50.0, 70.0]


def test_engine_shares_only_what_it_saw_first() -> None:
    settings = Settings.model_validate({"pipeline": {"window_s": 10.0, "allowed_lateness_s": 0.0}})
    inventory = PodInventory.from_dict({"items": [pod("a-1", "10.244.9.1")]})
    engine = DetectionEngine(settings, inventory=inventory)
    assert engine.take_global_memory() == {}  # starts the bookkeeping
    engine.process(
        flows([{"ts_start": T0 + 1, "src_ip": "10.244.9.1", "dst_ip": "203.0.113.7", "dst_port": 443}])
    )
    engine.process(empty_flows(), now=T0 + 25)
    shared = engine.take_global_memory()
    assert list(shared.values()) == [T0]
    assert engine.take_global_memory() == {}  # once
    # Another worker saw it earlier: merged, and nothing new to share when it comes again.
    (edge,) = shared
    engine.merge_global_memory({edge: T0 - 600})
    engine.process(
        flows([{"ts_start": T0 + 31, "src_ip": "10.244.9.1", "dst_ip": "203.0.113.7", "dst_port": 443}])
    )
    engine.process(empty_flows(), now=T0 + 55)
    assert engine.take_global_memory() == {}


def _batch(offset: int, source: str, max_ts: float, peers: str) -> PendingBatch:
    m = Message(
        "by-workload",
        0,
        offset,
        None,
        b"",
        0,
        (
            (SOURCE_HEADER, f"{source}/{offset}/0".encode()),
            (MAX_TS_HEADER, repr(max_ts).encode()),
            (PEERS_HEADER, peers.encode()),
        ),
    )
    return PendingBatch(m, None, -math.inf)


def test_the_detect_stage_aligns_the_source_partitions_of_one_partition() -> None:
    aligner = SourceAligner(idle_s=5.0)
    peers = "flows/0,flows/1"
    aligner.add(_batch(0, "flows/0", 20.0, peers), 0.0)
    aligner.add(_batch(1, "flows/0", 25.0, peers), 0.0)
    # flows/1 has not spoken yet, but the sender named it: the batches wait for it.
    assert aligner.threshold(0.1) == -math.inf
    aligner.add(_batch(2, "flows/1", 22.0, peers), 0.1)
    assert aligner.threshold(0.2) == 22.0  # up to flows/1's event time, not flows/0's
    # A quiet source stops holding the others back after idle_s.
    assert aligner.threshold(6.0) == math.inf


def test_pipeline_run_refuses_an_unknown_stage_and_stages_without_kafka(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flowwarden.cli import run

    assert run(["pipeline", "run", "--stage", "both"]) == 2
    assert "--stage must be one of all, enrich, detect" in capsys.readouterr().err
    monkeypatch.setenv("FLOWWARDEN_BUS__KIND", "memory")
    assert run(["pipeline", "run", "--stage", "detect"]) == 2
    assert "needs bus.kind=kafka" in capsys.readouterr().err


def test_the_engine_takes_a_batch_the_enrich_stage_looked_up_as_it_is() -> None:
    """Behind the enrich stage (header ``fw.enriched``) the inventory was asked once already:
    what it found nothing for stays so, instead of being looked up again per detect worker."""
    inventory = PodInventory.from_dict({"items": [pod("a-1", "10.244.9.1")]})
    batch = flows([{"ts_start": T0 + 1, "src_ip": "10.244.9.1", "dst_ip": "203.0.113.7", "dst_port": 443}])
    batch["direction"] = "egress"
    looked_up = DetectionEngine(Settings(), inventory=inventory).process(batch)
    taken = DetectionEngine(Settings(), inventory=inventory).process(batch, enriched=True)
    assert looked_up.enriched["src_pod"].tolist() == ["a-1"]
    assert taken.enriched["src_pod"].tolist() == [""]
    assert taken.enriched["direction"].tolist() == ["egress"]
