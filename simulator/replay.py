"""Replay recorded flows onto the ``flows`` topic as if they were happening now.

The docker-compose stack uses it to feed simulated traffic into Kafka so that a fresh
``docker compose up`` shows live data and alerts within a minute. Timestamps are shifted so
the first flow ends "now"; batches are published the way a collector publishes them (one
message per partition, keyed by source), paced by the traffic's own clock times ``speed``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from flowwarden.bus import publish_flows
from flowwarden.bus_base import Producer
from flowwarden.errors import ConfigError
from flowwarden.records import conform_flows

log = logging.getLogger(__name__)


@dataclass
class ReplayStats:
    flows: int = 0
    messages: int = 0
    seconds: float = 0.0


def load_flows(path: Path) -> pd.DataFrame:
    """A Parquet file of flows, conformed to the schema and ordered by ``ts_end``."""
    if not path.is_file():
        raise ConfigError(f"replay: {path} is not a file")
    try:
        flows = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"replay: {path} is not a readable Parquet file: {exc}") from exc
    return conform_flows(flows).sort_values("ts_end", kind="stable").reset_index(drop=True)


def shift_to(flows: pd.DataFrame, first_end: float) -> pd.DataFrame:
    """The same flows with timestamps moved so that the earliest ``ts_end`` is ``first_end``."""
    if not len(flows):
        return flows
    delta = first_end - float(flows["ts_end"].min())
    return flows.assign(ts_start=flows["ts_start"] + delta, ts_end=flows["ts_end"] + delta)


def replay(
    flows: pd.DataFrame,
    producer: Producer,
    *,
    topic: str,
    partitions: int,
    speed: float = 1.0,
    batch_s: float = 1.0,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.time,
    on_batch: Callable[[ReplayStats], None] | None = None,
) -> ReplayStats:
    """Publish ``flows`` in ``batch_s`` slices of traffic time; ``speed`` 0 means as fast as possible.

    With ``speed`` > 0 the flows are first shifted to start now, and each slice is sent once the
    wall clock reaches its end (divided by ``speed``), as a live collector would send it.
    """
    stats = ReplayStats()
    if not len(flows):
        return stats
    stop = stop or threading.Event()
    wall0 = clock()
    if speed > 0:
        flows = shift_to(flows, wall0)
    t0 = float(flows["ts_end"].iloc[0])
    ts = flows["ts_end"].to_numpy()
    n_slices = int((float(ts[-1]) - t0) // batch_s) + 1
    edges = flows["ts_end"].searchsorted([t0 + k * batch_s for k in range(n_slices + 1)], side="left")
    for k in range(n_slices):
        a, b = int(edges[k]), int(edges[k + 1]) if k + 1 < len(edges) else len(flows)
        if k == n_slices - 1:
            b = len(flows)
        if speed > 0:
            due = wall0 + (k + 1) * batch_s / speed
            if stop.wait(max(0.0, due - clock())):
                break
        elif stop.is_set():
            break
        if b > a:
            stats.messages += publish_flows(producer, topic, flows.iloc[a:b], partitions)
            stats.flows += b - a
        if on_batch is not None:
            on_batch(stats)
    producer.flush(30.0)
    stats.seconds = clock() - wall0
    return stats
