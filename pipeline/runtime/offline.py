"""Offline detection: the streaming engine over a whole frame of flows, in time order.

Used by ``flowwarden detect``, ``models evaluate`` and the demo, so the figures measured
offline come from exactly the code that runs live.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from flowwarden.kube import PodInventory
from flowwarden.models.registry import LoadedModel, load_default
from flowwarden.pipeline.detection.engine import DetectionEngine
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
) -> DetectionResult:
    """Every alert the live pipeline would raise on ``flows`` (invalid rows set aside with reasons)."""
    good, bad = split_invalid_flows(conform_flows(flows))
    if len(bad):
        log.warning("invalid flows set aside count=%d first_reason=%s", len(bad), bad["reason"].iloc[0])
    engine = DetectionEngine(settings, inventory=inventory, model=model)
    if state is not None:
        engine.import_state(state, clocks=False)
    good = good.sort_values("ts_end", kind="stable").reset_index(drop=True)
    alerts: dict[str, Alert] = {}
    frames: list[pd.DataFrame] = []
    for start in range(0, max(len(good), 1), CHUNK_FLOWS):
        res = engine.process(good.iloc[start : start + CHUNK_FLOWS])
        _collect(res.alerts, res.windows, alerts, frames, keep_windows)
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
