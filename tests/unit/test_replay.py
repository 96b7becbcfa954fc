"""Replay puts every flow on the topic once, in order, shifted to "now" when paced."""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd
import pytest

from flowwarden.bus import MemoryBus, read_flow_batches
from flowwarden.errors import ConfigError
from flowwarden.simulator import simulate
from flowwarden.simulator.replay import load_flows, replay, shift_to


@pytest.fixture(scope="module")
def flows() -> pd.DataFrame:
    return simulate(minutes=2, pods=30, seed=3, attacks="none").flows


def _consume(bus: MemoryBus, topic: str) -> pd.DataFrame:
    consumer = bus.consumer([topic], "test")
    frames: list[pd.DataFrame] = []
    for _ in range(1000):
        messages = consumer.poll(timeout_s=0.0, max_records=1000)
        if not messages:
            break
        good, dead = read_flow_batches(messages)
        assert not dead
        frames.extend(df for _m, df in good)
    return pd.concat(frames, ignore_index=True)


def test_replay_as_fast_as_possible_sends_every_flow_unchanged(flows: pd.DataFrame) -> None:
    bus = MemoryBus(default_partitions=3)
    bus.ensure_topics(["flows"])
    stats = replay(flows, bus.producer(), topic="flows", partitions=3, speed=0.0)
    assert stats.flows == len(flows)
    got = (
        _consume(bus, "flows").sort_values(["ts_end", "src_ip", "src_port", "dst_ip"]).reset_index(drop=True)
    )
    want = flows.sort_values(["ts_end", "src_ip", "src_port", "dst_ip"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want)


def test_paced_replay_shifts_the_traffic_to_start_now(flows: pd.DataFrame) -> None:
    bus = MemoryBus(default_partitions=1)
    bus.ensure_topics(["flows"])
    now = [1_900_000_000.0]

    def clock() -> float:
        return now[0]

    class FastStop(threading.Event):
        """Advance the fake clock instead of waiting for it."""

        def wait(self, timeout: float | None = None) -> bool:
            now[0] += timeout or 0.0
            return False

    stats = replay(
        flows.head(500), bus.producer(), topic="flows", partitions=1, speed=10.0, stop=FastStop(), clock=clock
    )
    got = _consume(bus, "flows")
    assert stats.flows == 500 == len(got)
    assert got["ts_end"].min() == pytest.approx(1_900_000_000.0)
    span = float(flows.head(500)["ts_end"].max() - flows.head(500)["ts_end"].min())
    assert stats.seconds == pytest.approx(span / 10.0, abs=0.2)


def test_shift_keeps_durations(flows: pd.DataFrame) -> None:
    moved = shift_to(flows, 0.0)
    assert (moved["ts_end"] - moved["ts_start"]).equals(flows["ts_end"] - flows["ts_start"])


def test_a_missing_or_bad_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a file"):
        load_flows(tmp_path / "nope.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(ConfigError, match="not a readable Parquet file"):
        load_flows(bad)
