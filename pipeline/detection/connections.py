"""Recent connections per (entity, external destination, port): the beacon score's memory.

A ring of the newest ``depth`` connection starts and sizes per pair, in numpy arrays. The
beacon score re-reads a pair's history every window the pair is active, so the history
must be cheap to read and bounded per pair: with a flat table of every connection of the
last hour, a pair active every window cost a sort of its whole hour each window (quadratic
in the horizon). ``depth`` connections are plenty for robust quartiles of the intervals;
the score's persistence term saturates at ``2 * min_conns`` (12 by default).

Connections older than ``horizon_s`` are ignored and pairs idle that long are dropped;
at most ``max_pairs`` pairs are kept (the least recently active go first). Evictions are
counted. Export is a long table ``pair, wld, ts, bytes`` (the engine's state format).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

COLUMNS = ("pair", "wld", "ts", "bytes")


class ConnectionLog:
    """The newest ``depth`` connections of each pair (see the module docstring)."""

    def __init__(self, *, horizon_s: float, max_pairs: int, depth: int = 48) -> None:
        self.horizon_s = horizon_s
        self.max_pairs = max_pairs
        self.depth = depth
        self.evicted = 0  # pairs dropped (idle past the horizon, or over ``max_pairs``)
        self._reset()

    def _reset(self) -> None:
        depth = self.depth
        self._slot: dict[int, int] = {}
        self._pair = np.zeros(0, dtype="uint64")
        self._wld = np.zeros(0, dtype="uint64")  # the pair's workload-destination key
        self._last = np.zeros(0)  # newest connection start
        self._head = np.zeros(0, dtype="int64")  # connections written (next ring position)
        self._ts = np.zeros((0, depth))
        self._bytes = np.zeros((0, depth), dtype="float32")
        self._n = 0

    def __len__(self) -> int:
        """Connections held."""
        return int(np.minimum(self._head[: self._n], self.depth).sum())

    @property
    def pairs(self) -> int:
        return self._n

    # ------------------------------------------------------------------ writing
    def add(self, conns: pd.DataFrame, now: float) -> None:
        """Record connections (columns ``pair, wld, ts, bytes``); a repeated (pair, ts) counts once."""
        if len(conns):
            c = conns.sort_values(["pair", "ts"], kind="stable")
            pair = c["pair"].to_numpy(dtype="uint64")
            ts = c["ts"].to_numpy(dtype="float64")
            slot = self._slots(pair, c["wld"].to_numpy(dtype="uint64"))
            # An interim record of a long connection repeats its start: not a new connection.
            # Only a start no later than the pair's newest can be one the ring holds already.
            fresh = np.ones(len(pair), dtype=bool)
            maybe = np.flatnonzero(ts <= self._last[slot])
            if len(maybe):
                fresh[maybe] = ~(self._ts[slot[maybe]] == ts[maybe, None]).any(axis=1)
            dup = np.zeros(len(pair), dtype=bool)
            dup[1:] = (pair[1:] == pair[:-1]) & (ts[1:] == ts[:-1])
            keep = fresh & ~dup
            self._write(slot[keep], ts[keep], c["bytes"].to_numpy(dtype="float64")[keep])
        self._expire(now)

    def _slots(self, pair: np.ndarray, wld: np.ndarray) -> np.ndarray:
        """The slot of each row's pair (``pair`` sorted), creating slots for new pairs."""
        step = np.ones(len(pair), dtype=bool)
        step[1:] = pair[1:] != pair[:-1]
        uniq = pair[step]
        group = np.cumsum(step) - 1
        get = self._slot.get
        slot = np.fromiter((get(p, -1) for p in uniq.tolist()), dtype="int64", count=len(uniq))
        new = slot < 0
        if new.any():
            start = self._n
            count = int(new.sum())
            self._grow(start + count)
            ids = np.arange(start, start + count)
            self._pair[ids] = uniq[new]
            self._wld[ids] = wld[step][new]
            self._last[ids] = -np.inf
            self._head[ids] = 0
            self._ts[ids] = np.nan
            self._bytes[ids] = 0.0
            self._slot.update(zip(uniq[new].tolist(), ids.tolist(), strict=True))
            self._n = start + count
            slot[new] = ids
        return slot[group]

    def _grow(self, size: int) -> None:
        cap = len(self._pair)
        if size <= cap:
            return
        cap = max(size, 2 * cap, 1024)

        def grown(a: np.ndarray) -> np.ndarray:
            out = np.zeros((cap, *a.shape[1:]), dtype=a.dtype)
            out[: len(a)] = a
            return out

        self._pair, self._wld, self._last, self._head = (
            grown(a) for a in (self._pair, self._wld, self._last, self._head)
        )
        self._ts, self._bytes = grown(self._ts), grown(self._bytes)

    def _write(self, slot: np.ndarray, ts: np.ndarray, size: np.ndarray) -> None:
        """Append in ring order (``slot`` grouped and each group in time order)."""
        if not len(slot):
            return
        step = np.ones(len(slot), dtype=bool)
        step[1:] = slot[1:] != slot[:-1]
        group_start = np.flatnonzero(step)
        rank = np.arange(len(slot)) - np.repeat(group_start, np.diff(np.append(group_start, len(slot))))
        count = np.bincount(slot, minlength=self._n)
        # More than ``depth`` new connections of one pair: only the newest ``depth`` survive.
        newest = rank >= count[slot] - self.depth
        s, r = slot[newest], rank[newest]
        pos = (self._head[s] + r) % self.depth
        self._ts[s, pos] = ts[newest]
        self._bytes[s, pos] = size[newest]
        self._head[: self._n] += count
        np.maximum.at(self._last, slot, ts)

    def _expire(self, now: float) -> None:
        n = self._n
        if not n:
            return
        live = self._last[:n] >= now - self.horizon_s
        if live.sum() > self.max_pairs:
            order = np.argsort(-np.where(live, self._last[:n], -np.inf), kind="stable")
            live = np.zeros(n, dtype=bool)
            live[order[: self.max_pairs]] = True
        if live.all():
            return
        keep = np.flatnonzero(live)
        self.evicted += n - len(keep)
        for name in ("_pair", "_wld", "_last", "_head", "_ts", "_bytes"):
            arr = getattr(self, name)
            arr[: len(keep)] = arr[keep]
        self._n = len(keep)
        self._slot = dict(zip(self._pair[: self._n].tolist(), range(self._n), strict=True))

    # ------------------------------------------------------------------ reading
    def history(self, pairs: np.ndarray, now: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per pair (rows): connection starts sorted ascending (NaN-padded), their sizes, counts.

        Pairs unknown to the log get an all-NaN row and a count of 0.
        """
        get = self._slot.get
        slot = np.fromiter((get(p, -1) for p in pairs.tolist()), dtype="int64", count=len(pairs))
        known = slot >= 0
        ts = np.full((len(pairs), self.depth), np.nan)
        size = np.zeros((len(pairs), self.depth))
        ts[known] = self._ts[slot[known]]
        size[known] = self._bytes[slot[known]]
        ts[~(ts >= now - self.horizon_s)] = np.nan  # also NaN where never written
        order = np.argsort(ts, axis=1)  # NaN last
        ts = np.take_along_axis(ts, order, axis=1)
        size = np.take_along_axis(size, order, axis=1)
        return ts, size, (~np.isnan(ts)).sum(axis=1)

    def peers(self, wlds: np.ndarray, now: float) -> np.ndarray:
        """Per workload-destination key: how many pairs (pods) talked to it within the horizon."""
        n = self._n
        live = self._last[:n] >= now - self.horizon_s
        counts = pd.Series(self._wld[:n][live]).value_counts()
        return counts.reindex(pd.Index(wlds)).fillna(1).to_numpy(dtype="float64")

    # ------------------------------------------------------------------ state
    def export(self) -> pd.DataFrame:
        n = self._n
        written = np.arange(self.depth)[None, :] < np.minimum(self._head[:n], self.depth)[:, None]
        rows, cols = np.nonzero(written)
        return pd.DataFrame(
            {
                "pair": self._pair[rows],
                "wld": self._wld[rows],
                "ts": self._ts[rows, cols],
                "bytes": self._bytes[rows, cols].astype("float64"),
            }
        )

    def load(self, table: pd.DataFrame) -> None:
        """Replace the memory with an exported table (older exports lack ``wld``: the pair stands in)."""
        self._reset()
        if not len(table):
            return
        t = table.copy()
        if "wld" not in t.columns:
            t["wld"] = t["pair"]
        t = t.astype({"pair": "uint64", "wld": "uint64", "ts": "float64", "bytes": "float64"})
        now = float(t["ts"].max())
        self.add(t, now)
