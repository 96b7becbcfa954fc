"""Per-minute flow rollups: what the store keeps of every flow, computed in pandas.

One row per (minute, node, source side, destination side, port, direction) with byte,
packet and connection counts: Grafana's traffic panels and the retention that outlives the
flows read these. :func:`rollup_flows` aggregates an enriched flow batch (vectorised over
integer codes); :func:`conform_rollups` checks a rollup frame before it is stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from flowwarden.errors import RecordError
from flowwarden.records import FlowState
from flowwarden.store_schema import ROLLUP_COLUMNS, ROLLUP_DIMENSIONS, ROLLUP_MEASURES

_REJECTED_STATES = (FlowState.REJECTED.value, FlowState.SYN_ONLY.value)
_ROLLUP_INPUT = (
    "ts_end",
    "node",
    "src_ip",
    "dst_ip",
    "dst_port",
    "bytes_out",
    "bytes_in",
    "pkts_out",
    "pkts_in",
    "state",
    "first",
    "dns_queries",
    "dns_nxdomain",
    "direction",
    "src_namespace",
    "src_pod",
    "src_workload",
    "dst_namespace",
    "dst_pod",
    "dst_workload",
)


def empty_rollups() -> pd.DataFrame:
    """A rollup frame with no rows and the right dtypes."""
    return rollup_dtypes(pd.DataFrame({c: [] for c in ROLLUP_COLUMNS}))


def rollup_dtypes(df: pd.DataFrame) -> pd.DataFrame:
    out = df.loc[:, list(ROLLUP_COLUMNS)].copy()
    out["minute"] = pd.to_datetime(out["minute"], utc=True).astype("datetime64[us, UTC]")
    for c in ROLLUP_DIMENSIONS[1:-1]:
        out[c] = out[c].astype("str")
    out["dst_port"] = out["dst_port"].astype("int32")
    for c in ROLLUP_MEASURES:
        out[c] = out[c].astype("int64")
    return out


def _codes(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per row a code into the distinct values (-1 where missing), and those values."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    return np.asarray(codes, dtype=np.int64), np.asarray(uniques, dtype=object)


def _pick(
    use_first: np.ndarray, first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Per row the first column's value where ``use_first``, else the second's, as codes.

    Works on the distinct values only: equal text from either column gets one code.
    """
    (c1, u1), (c2, u2) = first, second
    merged, uniques = pd.factorize(np.concatenate([u1, u2]))
    lookup = np.append(np.asarray(merged, dtype=np.int64), -1)  # index -1: missing stays missing
    ids = np.where(use_first, c1, np.where(c2 >= 0, c2 + len(u1), -1))
    return lookup[ids], np.asarray(uniques, dtype=object)


def _group_codes(columns: Sequence[np.ndarray]) -> tuple[np.ndarray, int]:
    """One code per distinct combination of non-negative code columns, in order of first appearance."""
    key = np.zeros(len(columns[0]), dtype=np.int64)
    size = 1
    for codes in columns:
        card = int(codes.max()) + 1 if len(codes) else 1
        if size * card >= 2**62:
            compact, uniques = pd.factorize(key)
            key, size = np.asarray(compact, dtype=np.int64), len(uniques)
        key = key * card + codes
        size *= card
    compact, uniques = pd.factorize(key)
    return np.asarray(compact, dtype=np.int64), len(uniques)


def rollup_flows(flows: pd.DataFrame, *, max_ports_per_peer: int = 20) -> pd.DataFrame:
    """Aggregate an *enriched* flow batch into per-minute ``flow_rollups`` rows.

    A flow counts in the minute of its ``ts_end``. A side with no namespace is no known pod:
    its IP goes to ``src_external``/``dst_external`` (else ""). A source talking to one peer
    on more than ``max_ports_per_peer`` ports in a minute (a port scan) is rolled up with
    ``dst_port`` 0, so that one scanner cannot add thousands of rows. ``flows`` counts final
    first records (each flow has exactly one; its later records are deltas, and a flow may end
    without a final record) and ``rejected`` those of them whose connection failed
    (``rejected`` or ``syn_only``: the collector reports a first record once the handshake
    is answered or has waited a second). ``dns_queries`` and ``dns_nxdomain`` add up the
    records' DNS aggregates. Returns one row per key, in the order the keys first appear.
    """
    # Vectorised over integer codes: each text column is factorised once (its distinct
    # values are few), the keys are combined as integers and the sums are taken over a
    # group codes, so no per-row text is copied or hashed twice. Rows with a missing key
    # value are left out, as a pandas groupby would.
    missing = [c for c in _ROLLUP_INPUT if c not in flows.columns]
    if missing:
        raise RecordError(missing[0], "required column is missing for rollups")
    if flows.empty:
        return empty_rollups()
    ts_end = flows["ts_end"].to_numpy(dtype="float64")
    if not np.isfinite(ts_end).all():
        raise RecordError("ts_end", "not a finite number")

    def side(prefix: str) -> list[tuple[np.ndarray, np.ndarray]]:
        ns = _codes(flows[f"{prefix}_namespace"])
        workload = _codes(flows[f"{prefix}_workload"])
        pod = _codes(flows[f"{prefix}_pod"])
        ip = _codes(flows[f"{prefix}_ip"])
        named = np.append(workload[1] != "", True)[workload[0]]  # missing: kept (and left out)
        no_pod = np.append(ns[1] == "", False)[ns[0]]
        empty = (np.zeros(len(ts_end), dtype=np.int64), np.array([""], dtype=object))
        return [ns, _pick(named, workload, pod), _pick(no_pod, ip, empty)]

    minute = np.floor(ts_end / 60.0).astype("int64")
    first_minute, span = int(minute.min()), int(minute.max()) - int(minute.min()) + 1
    if span <= len(minute):  # a batch covers a few minutes: their offsets are the codes
        minutes = (minute - first_minute, (np.arange(span, dtype=np.int64) + first_minute) * 60)
    else:
        minutes = _codes(minute * 60)
    dims = [
        minutes,
        _codes(flows["node"]),
        *side("src"),
        *side("dst"),
        _codes(flows["direction"]),
    ]
    dst_port = flows["dst_port"].to_numpy(dtype="int64")
    opens = flows["first"].to_numpy(dtype=bool)  # a flow's first record
    dns_queries = flows["dns_queries"].to_numpy(dtype="int64")
    dns_nxdomain = flows["dns_nxdomain"].to_numpy(dtype="int64")
    bytes_out = flows["bytes_out"].to_numpy(dtype="int64")
    bytes_in = flows["bytes_in"].to_numpy(dtype="int64")
    packets = flows["pkts_out"].to_numpy(dtype="int64") + flows["pkts_in"].to_numpy(dtype="int64")
    rejected = opens & flows["state"].isin(_REJECTED_STATES).to_numpy(dtype=bool)
    keep = np.logical_and.reduce([codes >= 0 for codes, _ in dims])
    if not keep.all():
        dims = [(codes[keep], uniques) for codes, uniques in dims]
        dst_port, opens, bytes_out, bytes_in, packets, rejected, dns_queries, dns_nxdomain = (
            a[keep]
            for a in (dst_port, opens, bytes_out, bytes_in, packets, rejected, dns_queries, dns_nxdomain)
        )
        if not keep.any():
            return empty_rollups()
    peer, _ = _group_codes([codes for codes, _ in dims])
    port_codes, _ = _codes(dst_port)
    pairs = np.unique(peer * (int(port_codes.max()) + 1) + port_codes) // (int(port_codes.max()) + 1)
    ports_per_peer = np.bincount(pairs, minlength=int(peer.max()) + 1)
    dst_port = np.where(ports_per_peer[peer] > max_ports_per_peer, 0, dst_port)
    group, n_groups = _group_codes([peer, _codes(dst_port)[0]])
    first = np.full(n_groups, len(group), dtype=np.int64)
    np.minimum.at(first, group, np.arange(len(group), dtype=np.int64))  # the first row of each group
    out: dict[str, Any] = {}
    for name, (codes, uniques) in zip(ROLLUP_DIMENSIONS[:-1], dims, strict=True):
        out[name] = uniques[codes[first]]
    out["minute"] = pd.to_datetime(out["minute"].astype("int64"), unit="s", utc=True)
    out["dst_port"] = dst_port[first]
    measures = {
        "bytes": bytes_out + bytes_in,
        "bytes_out": bytes_out,
        "bytes_in": bytes_in,
        "packets": packets,
        "flows": opens.astype("int64"),
        "rejected": rejected.astype("int64"),
        "dns_queries": dns_queries,
        "dns_nxdomain": dns_nxdomain,
    }
    for name in ROLLUP_MEASURES:
        total = np.zeros(n_groups, dtype=np.int64)
        np.add.at(total, group, measures[name])
        out[name] = total
    return rollup_dtypes(pd.DataFrame(out))


def conform_rollups(df: pd.DataFrame) -> pd.DataFrame:
    """Validate a rollup frame: one row per key (duplicates summed), store dtypes, no NUL."""
    missing = [c for c in ROLLUP_COLUMNS if c not in df.columns]
    if missing:
        raise RecordError(missing[0], "required rollup column is missing")
    if df.empty:
        return df
    df = df.loc[:, list(ROLLUP_COLUMNS)]
    for c in ROLLUP_MEASURES:
        values = pd.to_numeric(df[c], errors="coerce")
        if values.isna().any():
            raise RecordError(c, "not a number")
        if (values < 0).any():
            raise RecordError(c, "negative")
    try:
        minute = df["minute"]
        if pd.api.types.is_numeric_dtype(minute):
            minute = pd.to_datetime(minute, unit="s", utc=True)
        df = df.assign(minute=pd.to_datetime(minute, utc=True))
    except (ValueError, TypeError) as exc:
        raise RecordError("minute", f"not a timestamp: {exc}") from exc
    if df.duplicated(list(ROLLUP_DIMENSIONS)).any():
        df = df.groupby(list(ROLLUP_DIMENSIONS), sort=False, as_index=False)[list(ROLLUP_MEASURES)].sum()
    df = rollup_dtypes(df)
    for c in ROLLUP_DIMENSIONS[1:-1]:
        if df[c].str.contains("\x00", regex=False).any():
            df[c] = df[c].str.replace("\x00", "\ufffd", regex=False)
    return df
