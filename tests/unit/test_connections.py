"""The beacon memory: newest connections per pair, bounded, deduplicated, exported and restored."""

from __future__ import annotations

import numpy as np
import pandas as pd

from flowwarden.pipeline.detection.connections import ConnectionLog


def conns(pair: int, ts: list[float], *, wld: int | None = None, size: float = 100.0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pair": np.full(len(ts), pair, dtype="uint64"),
            "wld": np.full(len(ts), pair if wld is None else wld, dtype="uint64"),
            "ts": np.asarray(ts, dtype="float64"),
            "bytes": np.full(len(ts), size),
        }
    )


def test_history_is_the_newest_connections_sorted_and_padded() -> None:
    log = ConnectionLog(horizon_s=3600, max_pairs=10, depth=4)
    log.add(conns(1, [30.0, 10.0, 20.0]), now=30.0)
    log.add(conns(1, [40.0, 50.0]), now=50.0)
    ts, size, n = log.history(np.array([1, 99], dtype="uint64"), now=50.0)
    assert n.tolist() == [4, 0]  # depth 4: the oldest (10) was overwritten; pair 99 is unknown
    assert ts[0].tolist() == [20.0, 30.0, 40.0, 50.0]
    assert np.isnan(ts[1]).all()
    assert size[0].tolist() == [100.0] * 4


def test_a_repeated_start_is_one_connection() -> None:
    """Interim records of a long connection repeat its start time, in one batch or the next."""
    log = ConnectionLog(horizon_s=3600, max_pairs=10)
    log.add(conns(1, [10.0, 10.0, 20.0]), now=20.0)
    log.add(conns(1, [20.0, 30.0]), now=30.0)
    _, _, n = log.history(np.array([1], dtype="uint64"), now=30.0)
    assert n.tolist() == [3]


def test_more_new_connections_than_depth_keep_the_newest() -> None:
    log = ConnectionLog(horizon_s=3600, max_pairs=10, depth=3)
    log.add(conns(7, [float(t) for t in range(10)]), now=9.0)
    ts, _, n = log.history(np.array([7], dtype="uint64"), now=9.0)
    assert n.tolist() == [3] and ts[0].tolist() == [7.0, 8.0, 9.0]


def test_horizon_and_size_limits_evict_pairs_and_count_them() -> None:
    log = ConnectionLog(horizon_s=100, max_pairs=2)
    log.add(conns(1, [0.0]), now=0.0)
    log.add(conns(2, [50.0]), now=50.0)
    log.add(conns(3, [150.0]), now=150.0)  # pair 1 is idle past the horizon
    assert log.pairs == 2 and log.evicted == 1
    _, _, n = log.history(np.array([1, 2, 3], dtype="uint64"), now=150.0)
    assert n.tolist() == [0, 1, 1]
    log.add(conns(4, [160.0]), now=160.0)  # three live pairs, room for two: the oldest goes
    assert log.pairs == 2 and log.evicted == 2
    _, _, n = log.history(np.array([2, 3, 4], dtype="uint64"), now=160.0)
    assert n.tolist() == [0, 1, 1]


def test_connections_older_than_the_horizon_are_ignored() -> None:
    log = ConnectionLog(horizon_s=100, max_pairs=10)
    log.add(conns(1, [0.0, 60.0, 120.0]), now=120.0)
    ts, _, n = log.history(np.array([1], dtype="uint64"), now=120.0)
    assert n.tolist() == [2] and ts[0][:2].tolist() == [60.0, 120.0]


def test_peers_count_pairs_sharing_a_workload_destination() -> None:
    log = ConnectionLog(horizon_s=3600, max_pairs=10)
    for pair in (1, 2, 3):
        log.add(conns(pair, [10.0], wld=500), now=10.0)
    log.add(conns(4, [10.0], wld=600), now=10.0)
    assert log.peers(np.array([500, 600, 700], dtype="uint64"), now=10.0).tolist() == [3.0, 1.0, 1.0]


def test_export_and_load_round_trip() -> None:
    log = ConnectionLog(horizon_s=3600, max_pairs=10, depth=4)
    log.add(pd.concat([conns(1, [1.0, 2.0, 3.0], size=10.0), conns(2, [5.0], wld=9, size=7.0)]), now=5.0)
    table = log.export()
    assert list(table.columns) == ["pair", "wld", "ts", "bytes"] and len(table) == 4
    again = ConnectionLog(horizon_s=3600, max_pairs=10, depth=4)
    again.load(table)
    for lg in (log, again):
        ts, size, n = lg.history(np.array([1, 2], dtype="uint64"), now=5.0)
        assert n.tolist() == [3, 1]
        assert ts[0][:3].tolist() == [1.0, 2.0, 3.0] and size[1][0] == 7.0
    assert again.peers(np.array([9], dtype="uint64"), now=5.0).tolist() == [1.0]
    old = table.drop(columns=["wld"])  # an export from before the workload key was kept
    again.load(old)
    assert len(again) == 4
