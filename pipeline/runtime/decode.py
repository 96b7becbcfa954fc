"""A poll of clean flow batches kept as Arrow until the engine takes them.

:func:`~flowwarden.bus.read_flow_batches` turns every message into its own pandas frame. In a
worker that costs twice per message: splitting the poll's frame into one frame per message,
and concatenating those frames again for the engine call (pandas works per column block, and
a flow frame has ~25). Behind the enrich stage each source batch arrives as one small message
per partition, so that was a third of a detect worker's CPU. Here a poll whose messages all
decode and whose rows are all valid (the usual case) keeps each message's own Arrow table,
checked by converting only the columns the row checks read; :func:`engine_input` converts
what one engine call takes, once. Anything else (garbage, bad rows, nulls, flows from the
future) goes the general way, with its dead letters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa

from flowwarden.bus import Message
from flowwarden.records import CHECKED_COLUMNS, split_invalid_flows
from flowwarden.wire import UnreadableBatch, decode_table, table_to_flows

Rows: TypeAlias = pd.DataFrame | pa.Table
"""A batch's valid rows: a pandas frame (general path) or its Arrow table (clean poll)."""


def read_clean_poll(messages: Sequence[Message], *, max_event_ts: float) -> list[pa.Table] | None:
    """Each message's Arrow table when the whole poll is clean; None: take the general path.

    Clean: every message decodes, no column holds a null, every row passes the row checks of
    :func:`~flowwarden.records.split_invalid_flows` and none lies beyond ``max_event_ts``.
    """
    try:
        tables = [decode_table(m.value) for m in messages]
    except UnreadableBatch:
        return None
    if not tables or any(col.null_count for t in tables for col in t.columns):
        return None
    checked = pa.concat_tables(tables).select(list(CHECKED_COLUMNS)).to_pandas()
    _, invalid = split_invalid_flows(checked)
    if len(invalid):
        return None
    ahead = (checked["ts_end"].to_numpy() > max_event_ts) | (checked["ts_start"].to_numpy() > max_event_ts)
    return None if ahead.any() else tables


def n_rows(rows: Rows | None) -> int:
    return 0 if rows is None else len(rows)


def ts_end(rows: Rows) -> np.ndarray:
    """The rows' ``ts_end`` as float64 (no copy for a pandas frame)."""
    if isinstance(rows, pa.Table):
        return rows.column("ts_end").to_numpy()
    return rows["ts_end"].to_numpy()


def keep_rows(rows: Rows, mask: np.ndarray) -> Rows:
    """The rows where ``mask`` holds."""
    if isinstance(rows, pa.Table):
        return rows.filter(pa.array(mask))
    return rows[mask]


def engine_input(parts: Sequence[Rows]) -> pd.DataFrame:
    """One flow frame of ``parts`` in their order: Arrow tables converted once, together."""
    tables = [p for p in parts if isinstance(p, pa.Table)]
    if len(tables) == len(parts):
        return table_to_flows(pa.concat_tables(tables))
    frames = [table_to_flows(p) if isinstance(p, pa.Table) else p for p in parts]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
