"""The detection engine's memory: baselines, seen edges, recent connections.

* :class:`Baselines`: per key (a pod, or a workload), robust running statistics of a few
  window features over hours: an exponentially weighted mean and mean absolute deviation of
  ``log1p(value)`` (heavy-tailed counters become well-behaved; one huge window moves the
  baseline by ``alpha`` only). A new key starts as a plain average, so a fresh entity
  learns quickly; a new replica is compared with its workload's baseline, which its peers
  built.
* :class:`SeenEdges`: (source workload, destination workload or address, port) first and
  last seen, and the bytes sent over it; plus one cluster-wide edge per external address
  ("has anyone here talked to it?"). Kept for days, so a rolling deployment's new replica
  inherits its workload's edges.
* :class:`~flowwarden.pipeline.detection.connections.ConnectionLog` (its own module): recent connection starts
  and sizes per (entity, external destination), the raw material of the beacon score.
* :class:`RecentActivity`: new peers and failed targets per entity over the last minute.
* :class:`Vocab`: strings to integer ids for the hot path (not exported: edge keys are
  stable 64-bit hashes of the strings, so they survive a restart).

Everything is bounded by a TTL and a size limit, and evictions are counted. State exports
to Arrow IPC tables inside a JSON envelope: never pickle.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc

from flowwarden.records import WINDOW_OLD_NAMES

STATE_VERSION = 2  # 2: edge keys from vocabulary hashes, nodes as one peer group


_IPC_OPTIONS = ipc.IpcWriteOptions(compression="zstd")  # readers decompress on their own


def frame_to_b64(df: pd.DataFrame) -> str:
    table = pa.Table.from_pandas(df, preserve_index=False)
    sink = io.BytesIO()
    with ipc.new_stream(sink, table.schema, options=_IPC_OPTIONS) as writer:
        writer.write_table(table)
    return base64.b64encode(sink.getvalue()).decode()


def frame_from_b64(text: str) -> pd.DataFrame:
    with ipc.open_stream(io.BytesIO(base64.b64decode(text))) as reader:
        return reader.read_all().to_pandas()


def pack_state(tables: dict[str, pd.DataFrame], meta: dict[str, Any]) -> bytes:
    return json.dumps(
        {"version": STATE_VERSION, "meta": meta, "tables": {k: frame_to_b64(v) for k, v in tables.items()}}
    ).encode()


def unpack_state(data: bytes) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    from flowwarden.errors import RecordError

    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecordError("state", f"not a detection-engine state document: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
        raise RecordError("state.version", f"expected {STATE_VERSION}, got {doc.get('version')!r}")
    return {k: frame_from_b64(v) for k, v in doc.get("tables", {}).items()}, dict(doc.get("meta", {}))


# ------------------------------------------------------------------------- baselines


def _window_rank(codes: np.ndarray, ws: np.ndarray) -> np.ndarray:
    """For each row, how many earlier windows of its key are in the same call (0 for the first)."""
    order = np.lexsort((ws, codes))
    c, w = codes[order], ws[order]
    new_key = np.r_[True, c[1:] != c[:-1]]
    new_window = new_key | np.r_[True, w[1:] != w[:-1]]
    dense = np.cumsum(new_window)
    rank_sorted = dense - dense[np.maximum.accumulate(np.where(new_key, np.arange(len(c)), 0))]
    rank = np.empty(len(c), dtype="int64")
    rank[order] = rank_sorted
    return rank


class Baselines:
    """EWMA mean and mean absolute deviation of ``log1p(feature)`` per key (numpy rows + a key index)."""

    def __init__(self, features: list[str], *, half_life_s: float, ttl_s: float, max_keys: int) -> None:
        self.features = list(features)
        self.half_life_s = half_life_s
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self.evicted = 0
        self.columns = ["n", "first", "last"] + [f"m_{f}" for f in features] + [f"d_{f}" for f in features]
        self._index: dict[str, int] = {}
        self._rows = np.empty((0, len(self.columns)))

    def __len__(self) -> int:
        return len(self._index)

    @property
    def table(self) -> pd.DataFrame:
        keys = np.empty(len(self._index), dtype=object)
        for k, i in self._index.items():
            keys[i] = k
        return pd.DataFrame(self._rows, columns=self.columns, index=pd.Index(keys, name="key"))

    def _positions(self, keys: np.ndarray) -> np.ndarray:
        get = self._index.get
        return np.fromiter((get(k, -1) for k in keys), dtype="int64", count=len(keys))

    def lookup(self, keys: pd.Series) -> pd.DataFrame:
        """Rows of the table for ``keys`` (NaN where unknown), aligned with ``keys``."""
        codes, uniq = pd.factorize(keys.to_numpy(dtype=object))
        pos = (
            self._positions(np.asarray(uniq, dtype=object))[codes]
            if len(uniq)
            else np.empty(0, dtype="int64")
        )
        out = np.full((len(keys), len(self.columns)), np.nan)
        ok = pos >= 0
        out[ok] = self._rows[pos[ok]]
        return pd.DataFrame(out, columns=self.columns, index=keys.index)

    def update(self, keys: pd.Series, ws: np.ndarray, window_s: float, values: pd.DataFrame) -> None:
        """Fold the observed windows into the baselines, one EWMA step per window in window order.

        The rows of one key and one window (a workload's replicas) make one step together. A
        key's windows that close in the same call are still folded one step each, in order, so
        a baseline does not depend on how many windows each call closes (one worker closing
        three windows at once must learn what three workers closing one each learn).
        """
        if not len(keys):
            return
        logs = np.log1p(values[self.features].to_numpy(dtype="float64").clip(min=0))
        codes, uniq = pd.factorize(keys.to_numpy(dtype=object))
        pos = self._positions_adding(np.asarray(uniq, dtype=object))
        ws = np.asarray(ws, dtype="float64")
        step = _window_rank(codes, ws)
        if not step.any():
            self._fold(pos, codes, ws, window_s, logs)
            return
        order = np.argsort(step, kind="stable")
        bounds = np.flatnonzero(np.diff(step[order])) + 1
        for rows in np.split(order, bounds):
            self._fold(pos, codes[rows], ws[rows], window_s, logs[rows])

    def _positions_adding(self, uniq: np.ndarray) -> np.ndarray:
        """Row positions of ``uniq``; keys not yet known get rows of NaN (nothing learned)."""
        pos = self._positions(uniq)
        new = pos < 0
        if new.any():
            base = len(self._rows)
            count = int(new.sum())
            self._rows = np.vstack([self._rows, np.full((count, len(self.columns)), np.nan)])
            pos[new] = np.arange(base, base + count)
            self._index.update(zip(uniq[new].tolist(), pos[new].tolist(), strict=True))
        return pos

    def _fold(
        self, pos: np.ndarray, codes: np.ndarray, ws: np.ndarray, window_s: float, logs: np.ndarray
    ) -> None:
        """One EWMA step for each key in ``codes`` (its rows here all belong to one window)."""
        nf = len(self.features)
        used, codes = np.unique(codes, return_inverse=True)
        rows = pos[used]
        prev = self._rows[rows]
        m_old_obs = prev[codes, 3 : 3 + nf]
        m_old_obs = np.where(np.isnan(m_old_obs), logs, m_old_obs)
        absdev = np.abs(logs - m_old_obs)
        k = np.bincount(codes, minlength=len(used)).astype("float64")
        sums = [np.bincount(codes, weights=logs[:, j], minlength=len(used)) for j in range(nf)]
        devs = [np.bincount(codes, weights=absdev[:, j], minlength=len(used)) for j in range(nf)]
        xbar = np.stack(sums, 1).astype("float64") / k[:, None]
        abar = np.stack(devs, 1).astype("float64") / k[:, None]
        first = np.full(len(used), np.inf)
        last = np.full(len(used), -np.inf)
        np.minimum.at(first, codes, ws)
        np.maximum.at(last, codes, ws + window_s)
        n_old = np.nan_to_num(prev[:, 0])
        n_new = n_old + k
        a_hl = 1.0 - 0.5 ** (window_s / self.half_life_s)
        a_eff = np.maximum(k / n_new, 1.0 - (1.0 - a_hl) ** k)[:, None]
        m_old = prev[:, 3 : 3 + nf]
        d_old = prev[:, 3 + nf :]
        m_old = np.where(np.isnan(m_old), xbar, m_old)
        d_old = np.where(np.isnan(d_old), abar, d_old)
        self._rows[rows] = np.hstack(
            [
                n_new[:, None],
                np.fmin(prev[:, 1], first)[:, None],
                np.fmax(prev[:, 2], last)[:, None],
                m_old + a_eff * (xbar - m_old),
                d_old + a_eff * (abar - d_old),
            ]
        )

    def expire(self, now: float) -> int:
        """Drop keys idle for longer than the TTL, then the stalest beyond the size limit."""
        if not len(self._index):
            return 0
        last = self._rows[:, 2]
        keep = last >= now - self.ttl_s
        if keep.sum() > self.max_keys:
            cutoff = np.sort(last[keep])[-self.max_keys]
            keep &= last >= cutoff
        dropped = int((~keep).sum())
        if dropped:
            t = self.table[keep]
            self._set(t)
            self.evicted += dropped
        return dropped

    def _set(self, t: pd.DataFrame) -> None:
        self._rows = t[self.columns].to_numpy(dtype="float64").copy()
        self._index = {str(k): i for i, k in enumerate(t.index)}

    def export(self) -> pd.DataFrame:
        return self.table.reset_index()

    def load(self, df: pd.DataFrame) -> None:
        df = df.copy()
        for c in self.columns:
            if c not in df.columns:
                df[c] = np.nan  # a model trained with other features: learn the rest
        self._set(df.set_index("key")[self.columns].astype("float64"))


# ------------------------------------------------------------------------- seen edges


class SeenEdges:
    """Which edges (64-bit keys) have been seen, since when, and the bytes sent over them.

    An edge first used by an alerted lateral movement is *tainted* until ``taint_until``:
    it stays new to every entity but the one already alerted on (so the next pod doing the
    same stands out, while the alerted pod's alert can close).
    """

    def __init__(self, *, ttl_s: float, max_edges: int) -> None:
        self.ttl_s = ttl_s
        self.max_edges = max_edges
        self.evicted = 0
        self._index: dict[int, int] = {}
        self._first = np.empty(0, dtype="float64")
        self._last = np.empty(0, dtype="float64")
        self._bytes = np.empty(0, dtype="float64")
        self._taint_until = np.empty(0, dtype="float64")
        self._taint_ent = np.empty(0, dtype="uint64")
        self._alerted: dict[int, float] = {}  # mix(edge, entity) -> taint end

    def __len__(self) -> int:
        return len(self._index)

    def positions(self, hashes: np.ndarray) -> np.ndarray:
        """Row of each edge in the memory (-1: never seen)."""
        get = self._index.get
        return np.fromiter((get(h, -1) for h in hashes.tolist()), dtype="int64", count=len(hashes))

    def first_at(self, pos: np.ndarray) -> np.ndarray:
        out = np.full(len(pos), np.nan)
        ok = pos >= 0
        out[ok] = self._first[pos[ok]]
        return out

    def bytes_at(self, pos: np.ndarray) -> np.ndarray:
        out = np.zeros(len(pos))
        ok = pos >= 0
        out[ok] = self._bytes[pos[ok]]
        return out

    def taint_at(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        until = np.full(len(pos), -np.inf)
        ent = np.zeros(len(pos), dtype="uint64")
        ok = pos >= 0
        until[ok] = self._taint_until[pos[ok]]
        ent[ok] = self._taint_ent[pos[ok]]
        return until, ent

    def first_seen(self, hashes: np.ndarray) -> np.ndarray:
        return self.first_at(self.positions(hashes))

    def update(
        self, hashes: np.ndarray, pos: np.ndarray, first: np.ndarray, last: np.ndarray, nbytes: np.ndarray
    ) -> np.ndarray:
        """Record unique edges (``pos`` from :meth:`positions`) seen from ``first`` to ``last``.

        Returns every edge's row after the update.
        """
        pos = pos.copy()
        old = pos >= 0
        p = pos[old]
        self._last[p] = np.fmax(self._last[p], last[old])
        self._bytes[p] += nbytes[old]
        new = ~old
        n_new = int(new.sum())
        if n_new:
            base = len(self._first)
            self._first = np.concatenate([self._first, first[new]])
            self._last = np.concatenate([self._last, last[new]])
            self._bytes = np.concatenate([self._bytes, nbytes[new].astype("float64")])
            self._taint_until = np.concatenate([self._taint_until, np.full(n_new, -np.inf)])
            self._taint_ent = np.concatenate([self._taint_ent, np.zeros(n_new, dtype="uint64")])
            rows = np.arange(base, base + n_new)
            self._index.update(zip(hashes[new].tolist(), rows.tolist(), strict=True))
            pos[new] = rows
        return pos

    def merge_first(self, hashes: np.ndarray, first: np.ndarray) -> None:
        """Edges other workers saw first at ``first`` (unique ``hashes``): known ones keep the
        earliest sighting, unknown ones are remembered as seen then (no bytes, no taint)."""
        if not len(hashes):
            return
        hashes = np.asarray(hashes, dtype="uint64")
        first = np.asarray(first, dtype="float64")
        pos = self.positions(hashes)
        old = pos >= 0
        p = pos[old]
        self._first[p] = np.fmin(self._first[p], first[old])
        new = ~old
        if new.any():
            self.update(hashes[new], pos[new], first[new], first[new], np.zeros(int(new.sum())))

    def taint(
        self,
        rows: np.ndarray,
        hashes: np.ndarray,
        until: np.ndarray,
        entity: np.ndarray,
        own_until: np.ndarray,
    ) -> None:
        """Mark edges as used by an alerted movement of ``entity``: new to other entities until
        ``until``, and not news from ``entity`` itself until ``own_until`` (its alert said it)."""
        self._taint_until[rows] = np.fmax(self._taint_until[rows], until)
        self._taint_ent[rows] = entity
        pairs = mix(hashes, entity, 11)
        self._alerted.update(zip(pairs.tolist(), own_until.tolist(), strict=True))

    def vouch(self, rows: np.ndarray) -> None:
        """A person said these edges are fine (an alert resolved as benign): no longer tainted."""
        self._taint_until[rows] = -np.inf
        self._taint_ent[rows] = 0

    def alerted_before(self, hashes: np.ndarray, entity: np.ndarray, now: np.ndarray) -> np.ndarray:
        """Whether each entity was alerted on for using each edge, recently enough to not be news."""
        if not self._alerted:
            return np.zeros(len(hashes), dtype=bool)
        get = self._alerted.get
        until = np.fromiter((get(p, -np.inf) for p in mix(hashes, entity, 11).tolist()), dtype="float64")
        return until > now

    def forget_alerted(self, now: float) -> None:
        if self._alerted:
            self._alerted = {k: v for k, v in self._alerted.items() if v > now}

    def _hash_array(self) -> np.ndarray:
        hashes = np.empty(len(self._index), dtype="uint64")
        if self._index:
            rows = np.fromiter(self._index.values(), dtype="int64", count=len(self._index))
            hashes[rows] = np.fromiter(self._index.keys(), dtype="uint64", count=len(self._index))
        return hashes

    def expire(self, now: float) -> int:
        keep = self._last >= now - self.ttl_s
        if keep.sum() > self.max_edges:
            cutoff = np.sort(self._last[keep])[-self.max_edges]
            keep &= self._last >= cutoff
        dropped = int((~keep).sum())
        if dropped:
            self.load(self.export()[keep])
            self.evicted += dropped
        self.forget_alerted(now)
        return dropped

    def export(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "hash": self._hash_array(),
                "first": self._first,
                "last": self._last,
                "bytes": self._bytes,
                "taint_until": self._taint_until,
                "taint_ent": self._taint_ent,
            }
        )

    def load(self, df: pd.DataFrame) -> None:
        n = len(df)
        hashes = df["hash"].to_numpy(dtype="uint64")
        self._first = df["first"].to_numpy(dtype="float64").copy()
        self._last = df["last"].to_numpy(dtype="float64").copy()
        self._bytes = df["bytes"].to_numpy(dtype="float64").copy()
        self._taint_until = (
            df["taint_until"].to_numpy(dtype="float64").copy() if "taint_until" in df else np.full(n, -np.inf)
        )
        self._taint_ent = (
            df["taint_ent"].to_numpy(dtype="uint64").copy()
            if "taint_ent" in df
            else np.zeros(n, dtype="uint64")
        )
        self._index = dict(zip(hashes.tolist(), range(n), strict=True))

    def export_alerted(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "pair": np.array(list(self._alerted), dtype="uint64"),
                "until": np.array(list(self._alerted.values())),
            }
        )

    def load_alerted(self, df: pd.DataFrame) -> None:
        self._alerted = dict(
            zip(df["pair"].to_numpy(dtype="uint64").tolist(), df["until"].tolist(), strict=True)
        )


# ------------------------------------------------------------------------- recent activity


class RecentActivity:
    """What each entity did over the last ``horizon_s``: new peers, failed (destination, port).

    Slow scans and fan-outs spread a few probes over many windows; counting distinct
    targets over a short sliding horizon lets a detector see them within a couple of windows.
    """

    NEW_PEER = 0
    FAILED = 1

    def __init__(self, *, horizon_s: float, max_rows: int) -> None:
        self.horizon_s = horizon_s
        self.max_rows = max_rows
        self.evicted = 0
        self.table = pd.DataFrame(
            {
                "entity": pd.Series(dtype="uint64"),
                "kind": pd.Series(dtype="int8"),
                "dst": pd.Series(dtype="uint64"),
                "port": pd.Series(dtype="int64"),
                "window_start": pd.Series(dtype="float64"),
            }
        )

    def add(self, events: pd.DataFrame, now: float) -> None:
        keep = self.table[self.table["window_start"] > now - self.horizon_s]
        if len(events):
            new = events[list(self.table.columns)].astype(self.table.dtypes.to_dict())
            t = pd.concat([keep, new], ignore_index=True) if len(keep) else new
        else:
            t = keep
        if len(t) > self.max_rows:
            self.evicted += len(t) - self.max_rows
            t = t.nlargest(self.max_rows, "window_start")
        self.table = t.reset_index(drop=True)

    def load(self, df: pd.DataFrame) -> None:
        """Restore the table exported in a state (earlier versions named ``window_start`` ``ws``)."""
        df = df.rename(columns={o: n for o, n in WINDOW_OLD_NAMES.items() if o in df.columns})
        self.table = df[list(self.table.columns)].astype(self.table.dtypes.to_dict()).reset_index(drop=True)


# ------------------------------------------------------------------------- vocabulary


def mix(a: np.ndarray, b: np.ndarray | int, salt: int) -> np.ndarray:
    """Combine 64-bit hashes (stable across processes: no Python ``hash``)."""
    a = np.asarray(a, dtype="uint64")
    b = np.asarray(b).astype("uint64")
    with np.errstate(over="ignore"):
        x = a * np.uint64(0x9E3779B97F4A7C15) + b + np.uint64(salt) * np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(31)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(29)
    return x


class Vocab:
    """Strings (addresses, namespaces, pods, workloads, nodes, domains) to small integer ids.

    The engine works on integer ids (fast to select, group and count) and decodes strings
    only for the few rows that become alert evidence. Id 0 is always the empty string.
    Each id also has a stable 64-bit hash of its string, the raw material of edge keys.
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {"": 0}
        self.strings: list[str] = [""]
        self.hashes = np.zeros(1024, dtype="uint64")
        self._table: np.ndarray | None = None
        # Categorical columns (enrichment's, over the inventory's strings): the id of each
        # category once known, -1 before; keyed by the categories' identity (kept alive here).
        self._categories: dict[int, tuple[pd.Index, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.strings)

    def encode(self, values: pd.Series | np.ndarray) -> np.ndarray:
        """Ids of ``values`` (vectorised: one dictionary lookup per distinct value)."""
        if isinstance(values, pd.Series) and isinstance(values.dtype, pd.CategoricalDtype):
            return self._encode_categorical(values)
        codes, uniques = pd.factorize(values)
        return np.append(self._ids_of(uniques), 0)[codes]  # code -1 (missing) reads as ""

    def _encode_categorical(self, values: pd.Series) -> np.ndarray:
        """:meth:`encode` of a categorical column: a take through the categories' ids, looking
        up only the categories this vocabulary has not met yet (new ids in the order the
        column first names them, as :meth:`encode` gives them)."""
        cats = values.cat.categories
        entry = self._categories.get(id(cats))
        if entry is None or entry[0] is not cats:
            if len(self._categories) >= 64:
                self._categories.clear()
            entry = self._categories[id(cats)] = (cats, np.full(len(cats), -1, dtype="int64"))
        known = entry[1]
        codes = values.cat.codes.to_numpy()
        ids = np.append(known, 0)[codes]  # code -1 (missing) reads as ""
        fresh = ids < 0
        if fresh.any():
            need = pd.unique(codes[fresh])
            known[need] = self._ids_of(cats[need])
            ids = np.append(known, 0)[codes]
        return ids

    def _ids_of(self, uniques: pd.Index | np.ndarray) -> np.ndarray:
        """Ids of distinct strings, new ones numbered in their order."""
        # A plain list of str: iterating an Arrow-backed index yields one boxed scalar at a
        # time and cost more than the lookups themselves.
        strings = [str(u) for u in np.asarray(uniques, dtype=object).tolist()]
        get = self._ids.get
        found = [get(s, -1) for s in strings]
        ids = np.fromiter(found, dtype="int64", count=len(found))
        if (ids < 0).any():
            fresh = [s for s, j in zip(strings, found, strict=True) if j < 0]
            start = len(self.strings)
            for k, s in enumerate(dict.fromkeys(fresh)):
                self._ids[s] = start + k
                self.strings.append(s)
            self._grow()
            added = self.strings[start:]
            self.hashes[start : start + len(added)] = pd.util.hash_array(np.array(added, dtype=object))
            ids = np.fromiter((get(s) for s in strings), dtype="int64", count=len(strings))
        return ids

    def _grow(self) -> None:
        if len(self.strings) > len(self.hashes):
            size = max(len(self.strings), 2 * len(self.hashes))
            grown = np.zeros(size, dtype="uint64")
            grown[: len(self.hashes)] = self.hashes
            self.hashes = grown

    def id_of(self, value: str) -> int:
        return self._ids.get(value, -1)

    def decode(self, ids: np.ndarray) -> np.ndarray:
        if self._table is None or len(self._table) != len(self.strings):
            self._table = np.array(self.strings, dtype=object)
        return self._table[np.asarray(ids, dtype="int64")]

    def hash_of(self, ids: np.ndarray) -> np.ndarray:
        return self.hashes[np.asarray(ids, dtype="int64")]
