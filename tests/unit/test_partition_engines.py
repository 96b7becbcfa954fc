"""One engine per assigned partition (pipeline/runtime/partition_engines.py, issue 19 item 3)."""

from __future__ import annotations

import numpy as np
import pytest

from flowwarden.kube import PodInventory
from flowwarden.pipeline.detection.engine import DetectionEngine
from flowwarden.pipeline.runtime.partition_engines import PartitionEngines
from flowwarden.records import empty_flows
from flowwarden.settings import Settings
from tests.unit.flowkit import T0, flows, pod

SETTINGS = Settings.model_validate({"pipeline": {"window_s": 10.0, "allowed_lateness_s": 0.0}})
INVENTORY = PodInventory.from_dict(
    {
        "items": [
            pod("a-1", "10.244.1.1", owner=("ReplicaSet", "alpha-1")),
            pod("b-1", "10.244.1.2", owner=("ReplicaSet", "beta-1")),
        ]
    }
)


def engines() -> PartitionEngines:
    return PartitionEngines(lambda: DetectionEngine(SETTINGS))


def call(src: str, at: float, dst: str = "10.244.1.9") -> dict[str, object]:
    return {"ts_start": at, "src_ip": src, "dst_ip": dst}


def test_a_quiet_partition_closes_its_windows_by_the_busiest_one_s_clock() -> None:
    """One engine over both partitions would close A's window once B's flows pass it; so do they."""
    e = engines()
    e.set_inventory(INVENTORY)
    e.assign(0)
    e.assign(1)
    e.process_partition(0, flows([call("10.244.1.1", T0 + 1)]))
    e.process_partition(1, flows([call("10.244.1.2", T0 + 25)]))
    assert e.engine(0).open_window_floor() == T0  # A alone would wait for its own next flow
    out = e.advance()
    assert e.engine(0).open_window_floor() is None
    assert set(out.windows["window_start"]) == {T0}
    assert len(out.windows) == 1  # A's window; B's is still open
    assert e.engine(1).open_window_floor() == T0 + 20


def test_a_new_partition_gets_what_the_runtime_handed_over_and_its_own_state() -> None:
    e = engines()
    e.set_inventory(INVENTORY)
    first = e.assign(0)
    first.process(flows([call("10.244.1.1", T0 + 1)]))
    first.process(empty_flows(), now=T0 + 30)
    saved = first.export_state()
    e.revoke(0)
    assert 0 not in e and len(e) == 0
    moved = e.assign(0, saved)  # its new owner, from the checkpoint
    assert moved is not first
    assert isinstance(moved, DetectionEngine) and moved.inventory is INVENTORY
    assert moved.stats().state_entities == first.stats().state_entities == 1
    cold = e.assign(1)
    assert cold.stats().state_entities == 0


def test_counters_keep_growing_when_a_partition_moves_away() -> None:
    """The runtime exports the totals' growth: a revoked engine's counts must not vanish."""
    e = engines()
    e.set_inventory(INVENTORY)
    e.assign(0)
    e.assign(1)
    e.process_partition(0, flows([call("10.244.1.1", T0 + 1), call("10.244.1.1", T0 + 2)]))
    e.process_partition(1, flows([call("10.244.1.2", T0 + 3)]))
    before = e.stats()
    assert before.flows_in == 3 and before.state_entities == 0
    e.revoke(0)
    after = e.stats()
    assert after.flows_in == 3


def test_the_cluster_wide_memory_reaches_engines_assigned_later() -> None:
    e = engines()
    e.set_inventory(INVENTORY)
    assert e.take_global_memory() == {}  # sharing starts
    e.merge_global_memory({123: T0 - 3600})
    late = e.assign(2)
    assert isinstance(late, DetectionEngine)
    assert late.edges.first_seen(np.array([123], dtype="uint64"))[0] == T0 - 3600


def test_rows_without_a_partition_are_refused() -> None:
    e = engines()
    e.assign(0)
    with pytest.raises(ValueError, match="process_partition"):
        e.process(flows([call("10.244.1.1", T0 + 1)]))
    with pytest.raises(TypeError, match="per partition"):
        e.export_state()


def test_memory_starts_with_the_stream_not_with_the_partition_s_first_flow() -> None:
    """A partition whose workloads speak late still learns from the stream's start: one engine
    given every flow would have (so "learning" ends at the same time on every worker)."""
    alone = DetectionEngine(SETTINGS, inventory=INVENTORY)
    alone.process(flows([call("10.244.1.1", T0 + 1), call("10.244.1.2", T0 + 301)]))
    e = engines()
    e.set_inventory(INVENTORY)
    late = e.assign(1)
    late.note_stream_start(T0 + 1.1)  # the enrich stage's fw.min_ts of the first source batch
    e.process_partition(1, flows([call("10.244.1.2", T0 + 301)]))
    assert isinstance(late, DetectionEngine)
    assert late.first_ws == alone.first_ws == T0
    cold = DetectionEngine(SETTINGS, inventory=INVENTORY)
    cold.process(flows([call("10.244.1.2", T0 + 301)]))
    assert cold.first_ws == T0 + 300  # without it: the partition's own first window


def test_a_restored_partition_replays_by_its_own_clock_until_it_catches_up() -> None:
    """A partition moved here after a rebalance replays from its committed offset; the clock
    of a partition already ahead must not close its windows under it (its rows would be late)."""
    e = engines()
    e.set_inventory(INVENTORY)
    first = DetectionEngine(SETTINGS, inventory=INVENTORY)
    first.process(flows([call("10.244.1.2", T0 + 1)]))
    saved = first.export_state()  # its owner's checkpoint, at T0 + 1
    e.assign(0)
    e.process_partition(0, flows([call("10.244.1.1", T0 + 95)]))  # this worker is ahead
    e.assign(1, saved)
    e.process_partition(1, flows([call("10.244.1.2", T0 + 12)]))  # the replay, behind
    e.advance()
    assert e.engine(1).late_flows == 0  # type: ignore[attr-defined]
    assert e.engine(1).open_window_floor() == T0 + 10  # its own clock closed only what it passed
    e.process_partition(1, flows([call("10.244.1.2", T0 + 99)]))  # caught up: one clock again
    e.process_partition(0, flows([call("10.244.1.1", T0 + 140)]))
    e.advance()
    assert e.engine(1).open_window_floor() is None
