"""Offsets that start again are new data (issue 22), with the embedded bus and SQLite.

The pipeline is down while its broker loses every message (or the topic is recreated): when
it comes back, the new topic's offsets start at 0, below what the group committed. Those
batches are not redeliveries: the stage takes them under a new epoch, so neither the replay
guard of its checkpoint nor the store's batch marks mistake them for batches it holds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowwarden.bus import MemoryBus
from flowwarden.pipeline.runtime.metrics import PipelineMetrics
from flowwarden.settings import Settings, load_settings
from flowwarden.store import Store
from tests.unit.test_stage_memory import (
    T0,
    W,
    expected_alert_ids,
    make_flows,
    make_stage,
    publish,
    rollup_total,
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        None,
        pipeline={
            "window_s": W,
            "group_id": "reset-test",
            "checkpoint_interval_s": 0.001,
            "max_clock_skew_s": T0 + 86400 - time.time(),  # flowkit's flows are dated 2027
        },
        store={"url": f"sqlite:///{tmp_path / 'fw.db'}"},
        kafka={"partitions": 4},
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    with Store(settings.store.url) as s:
        yield s


def test_a_broker_that_lost_its_data_while_the_pipeline_was_down(settings: Settings, store: Store) -> None:
    flows = make_flows(minutes=2.0)
    cut = T0 + 60
    before, after = flows[flows["ts_end"] < cut], flows[flows["ts_end"] >= cut]

    first = make_stage(settings, MemoryBus(default_partitions=4), store)
    assert isinstance(first.bus, MemoryBus)
    first.start()
    publish(first.bus, settings, before)
    first.drain(idle_polls=2, max_seconds=30, flush=False)
    first.stop()
    assert first.stats.flows == len(before)

    # A new broker: the same topic, empty, its offsets from 0 again.
    bus = MemoryBus(default_partitions=4)
    sent = publish(bus, settings, after)
    metrics = PipelineMetrics()
    second = make_stage(settings, bus, store, metrics=metrics)
    second.start()
    second.drain(idle_polls=2, max_seconds=30)
    second.stop()

    assert second.stats.flows == len(after) and second.stats.redelivered == 0
    assert rollup_total(store) == (int(flows["bytes_out"].sum()), len(flows))
    assert {a.id for a in store.list_alerts()} == expected_alert_ids(flows)
    resets = metrics.registry.get_sample_value(
        "flowwarden_pipeline_offset_resets_total", {"topic": settings.kafka.topics.flows}
    )
    assert resets == settings.kafka.partitions
    assert sent > 0
