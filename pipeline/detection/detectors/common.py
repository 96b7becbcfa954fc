"""Helpers the detectors share: detail columns and the cluster DNS guard."""

from __future__ import annotations

import numpy as np

from flowwarden.pipeline.detection.detectors.base import Context


def column(ctx: Context, name: str, default: float = 0.0) -> np.ndarray:
    """A detail column of the windows (``default`` when the caller built a context without it).

    Detail columns (:data:`~pipeline.detection.features.DETAIL_COLUMNS`) are what rule
    detectors read beyond the window record; a context built from stored windows lacks them.
    """
    w = ctx.windows
    if name in w.columns:
        return w[name].to_numpy(dtype="float64")
    return np.full(len(w), default)


def not_resolver(ctx: Context) -> np.ndarray:
    """False for the cluster DNS: its upstream traffic is its clients' queries, never its own
    exfiltration (blocking it would cut the cluster's DNS); the querying pod is the entity."""
    return column(ctx, "is_resolver") == 0
