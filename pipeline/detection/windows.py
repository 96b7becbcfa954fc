"""Tumbling windows per source entity, closed by an event-time watermark.

Windows are aligned to multiples of ``window_s`` since the epoch, so two workers (or a
replay) cut the same windows. A flow belongs to the window holding its ``ts_end`` (an
interim record carries the deltas since the previous one, so its end is when its bytes
moved). A window closes when the watermark (the largest ``ts_end`` seen minus the allowed
lateness) passes its end, or when the wall clock does for an idle stream. A flow arriving
for a window that already closed is folded into the oldest open window and counted as
late: it is never dropped.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def window_starts(ts_end: np.ndarray, window_s: float) -> np.ndarray:
    return np.floor(ts_end / window_s) * window_s


class WindowBuffer:
    """Holds the flows of open windows until the watermark closes them."""

    def __init__(self, window_s: float, lateness_s: float) -> None:
        self.window_s = window_s
        self.lateness_s = lateness_s
        self.watermark = -math.inf  # max ts_end seen
        self.closed_until = -math.inf  # every window starting before this has closed
        self.late_flows = 0
        self._parts: list[pd.DataFrame] = []
        self._floor: float | None = None

    def add(self, flows: pd.DataFrame) -> None:
        """Assign each flow its window (column ``window_start``) and keep it until that window closes."""
        if not len(flows):
            return
        ws = window_starts(flows["ts_end"].to_numpy(dtype="float64"), self.window_s)
        if math.isfinite(self.closed_until):
            late = ws < self.closed_until
            n_late = int(late.sum())
            if n_late:
                self.late_flows += n_late
                ws = np.where(late, self.closed_until, ws)
        flows = flows.assign(window_start=ws)
        self._parts.append(flows)
        lo = float(ws.min())
        self._floor = lo if self._floor is None else min(self._floor, lo)
        self.watermark = max(self.watermark, float(flows["ts_end"].max()))

    def open_floor(self) -> float | None:
        """Start of the oldest window still open (None when nothing is buffered)."""
        return self._floor

    def close(self, now: float | None = None, *, everything: bool = False) -> pd.DataFrame:
        """Remove and return the flows of every window that has closed (with ``window_start``)."""
        if not self._parts:
            return pd.DataFrame()
        if everything:
            limit = math.inf
        else:
            clock = self.watermark
            if now is not None:
                clock = max(clock, now)
            # A window [ws, ws+W) closes once clock - lateness >= ws + W.
            limit = math.floor((clock - self.lateness_s) / self.window_s) * self.window_s
            if self._floor is None or self._floor >= limit:
                return pd.DataFrame()
        # Batches arrive roughly in time order: most parts are wholly closed or wholly open
        # and move without a copy; only the parts straddling the limit are split.
        done_parts: list[pd.DataFrame] = []
        rest_parts: list[pd.DataFrame] = []
        for part in self._parts:
            done = part["window_start"].to_numpy() < limit
            if done.all():
                done_parts.append(part)
            elif not done.any():
                rest_parts.append(part)
            else:
                done_parts.append(part[done])
                rest_parts.append(part[~done])
        self._parts = rest_parts
        self._floor = min(float(p["window_start"].min()) for p in rest_parts) if rest_parts else None
        if not done_parts:
            closed = pd.DataFrame()
        else:
            closed = pd.concat(done_parts, ignore_index=True) if len(done_parts) > 1 else done_parts[0]
        if len(closed):
            top = float(closed["window_start"].max()) + self.window_s
            self.closed_until = max(self.closed_until, top if everything else limit)
        elif not everything:
            self.closed_until = max(self.closed_until, limit)
        return closed.reset_index(drop=True)

    def open_parts(self) -> list[pd.DataFrame]:
        """The buffered frames of the open windows, read-only (early firing reads them)."""
        return list(self._parts)

    def take_parts(self) -> list[pd.DataFrame]:
        """Remove and return the buffered frames (to rewrite them), keeping the clocks."""
        parts, self._parts = self._parts, []
        return parts

    def put_parts(self, parts: list[pd.DataFrame]) -> None:
        self._parts = [p for p in parts if len(p)]

    @property
    def buffered(self) -> int:
        return sum(len(p) for p in self._parts)
