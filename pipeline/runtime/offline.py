"""Offline detection: the streaming engine over a whole frame of flows, in time order.

Used by ``flowwarden detect``, ``models evaluate`` and the demo, so the figures measured
offline come from exactly the code that runs live.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from flowwarden.kube import PodInventory
from flowwarden.models.registry import LoadedModel, load_default
from flowwarden.pipeline.detection.engine import DetectionEngine
from flowwarden.pipeline.runtime.feeds import RulesSource
from flowwarden.records import Alert, conform_flows, split_invalid_flows
from flowwarden.settings import Settings

log = logging.getLogger(__name__)

CHUNK_FLOWS = 200_000  # feed the engine in slices, as a stream would


@dataclass
class DetectionResult:
    alerts: list[Alert]
    windows: pd.DataFrame
    invalid: pd.DataFrame | None = None
    engine: DetectionEngine | None = None


def _slices(ts_end: np.ndarray, feed_s: float | None) -> list[tuple[int, int]]:
    """Row ranges to feed the engine: ``CHUNK_FLOWS`` at a time, or (``feed_s``) each
    ``feed_s`` seconds of event time, as a collector's batches reach a live pipeline, so that
    early alerts fire when they would live (several times slower: one engine call per slice)."""
    n = len(ts_end)
    if feed_s is None:
        return [(s, min(s + CHUNK_FLOWS, n)) for s in range(0, max(n, 1), CHUNK_FLOWS)]
    if feed_s <= 0:
        raise ValueError("feed_s must be positive")
    tick = np.floor(ts_end / feed_s)
    cuts = np.flatnonzero(tick[1:] != tick[:-1]) + 1
    bounds = [0, *cuts.tolist(), n]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a] or [(0, 0)]


def default_model() -> LoadedModel | None:
    """The model shipped with the package (None if the package ships none)."""
    return load_default()


def detect_flows(
    flows: pd.DataFrame,
    *,
    settings: Settings,
    inventory: PodInventory | None = None,
    model: LoadedModel | None = None,
    state: bytes | None = None,
    keep_windows: bool = True,
    progress: Callable[[int, int], None] | None = None,
    feed_s: float | None = None,
) -> DetectionResult:
    """Every alert the live pipeline would raise on ``flows`` (invalid rows set aside with reasons).

    ``progress(flows done, flows in all)`` after each chunk: the CLI draws it, this does no I/O.
    """
    good, bad = split_invalid_flows(conform_flows(flows))
    if len(bad):
        log.warning("invalid flows set aside count=%d first_reason=%s", len(bad), bad["reason"].iloc[0])
    engine = DetectionEngine(settings, inventory=inventory, model=model)
    if settings.rules.policy_file or settings.rules.feeds:  # declared policy, threat feeds
        source = RulesSource(settings)
        source.start()
        source.stop()
        rules = source.current()
        engine.set_rules(rules.policy, rules.policy_version, rules.feeds, rules.feeds_version)
    if state is not None:
        engine.import_state(state, clocks=False)
    good = good.sort_values("ts_end", kind="stable").reset_index(drop=True)
    alerts: dict[str, Alert] = {}
    frames: list[pd.DataFrame] = []
    for start, end in _slices(good["ts_end"].to_numpy(dtype="float64"), feed_s):
        res = engine.process(good.iloc[start:end])
        _collect(res.alerts, res.windows, alerts, frames, keep_windows)
        if progress is not None:
            progress(end, len(good))
    res = engine.flush()
    _collect(res.alerts, res.windows, alerts, frames, keep_windows)
    windows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    ordered = sorted(alerts.values(), key=lambda a: (a.window_start, a.detector, a.entity.key()))
    return DetectionResult(ordered, windows, bad if len(bad) else None, engine)


def _collect(
    new: list[Alert], windows: pd.DataFrame, alerts: dict[str, Alert], frames: list[pd.DataFrame], keep: bool
) -> None:
    for a in new:
        alerts[a.id] = a  # an update replaces the earlier version of the same alert
    if keep and len(windows):
        frames.append(windows)
