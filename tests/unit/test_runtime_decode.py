"""A clean poll stays Arrow until the engine takes it; anything else takes the general path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from flowwarden.bus import Message, read_flow_batches
from flowwarden.pipeline.runtime.decode import engine_input, keep_rows, read_clean_poll, ts_end
from flowwarden.records import CHECKED_COLUMNS, FLOW_SCHEMA, conform_flows, split_invalid_flows
from flowwarden.wire import encode_flows

T0 = 1_800_000_000.0


def flows(n: int, *, start: int = 0) -> pd.DataFrame:
    i = np.arange(start, start + n)
    return conform_flows(
        {
            "ts_start": T0 + i - 0.5,
            "ts_end": T0 + i,
            "src_ip": [f"10.244.0.{k % 250 + 1}" for k in i],
            "dst_ip": "10.96.0.10",
            "dst_port": 53,
            "proto": 17,
            "bytes_out": i,
            "pkts_out": 1,
            "state": "closed",
        }
    )


def poll(*frames: pd.DataFrame) -> list[Message]:
    return [Message("flows", 0, k, None, encode_flows(f), 0) for k, f in enumerate(frames)]


def test_a_clean_poll_gives_each_message_its_table_and_one_frame_equal_to_the_general_path():
    parts = [flows(5), flows(0, start=5), flows(7, start=5)]
    messages = poll(*parts)
    tables = read_clean_poll(messages, max_event_ts=T0 + 100)
    assert tables is not None and [len(t) for t in tables] == [5, 0, 7]
    good, dead = read_flow_batches(messages, max_event_ts=T0 + 100)
    assert not dead
    expected = pd.concat([f for _, f in good], ignore_index=True)
    pd.testing.assert_frame_equal(engine_input(tables), expected)
    assert {c: str(t) for c, t in engine_input(tables).dtypes.items()} == FLOW_SCHEMA


def test_mixed_parts_keep_their_order():
    """A poll that went the general way (frames) fed with clean ones (tables): rows in batch order."""
    a, b, c = flows(3), flows(4, start=3), flows(2, start=7)
    tables = read_clean_poll(poll(a, c), max_event_ts=T0 + 100)
    assert tables is not None
    out = engine_input([tables[0], b, tables[1]])
    pd.testing.assert_frame_equal(out, pd.concat([a, b, c], ignore_index=True))


@pytest.mark.parametrize(
    "spoil",
    [
        lambda f: f.assign(src_ip=["not-an-ip", *f["src_ip"][1:]]),  # a bad row: to the DLQ
        lambda f: f.assign(ts_end=f["ts_end"] + 1e6, ts_start=f["ts_start"] + 1e6),  # from the future
    ],
)
def test_a_poll_with_anything_to_dead_letter_takes_the_general_path(spoil):
    messages = poll(flows(5), spoil(flows(5, start=5)))
    assert read_clean_poll(messages, max_event_ts=T0 + 100) is None
    garbage = [*poll(flows(5)), Message("flows", 0, 9, None, b"garbage", 0)]
    assert read_clean_poll(garbage, max_event_ts=T0 + 100) is None


def test_the_checked_columns_are_what_the_row_checks_read():
    """Every column the row checks read is converted: a check on another would fail here."""
    df = flows(3)[list(CHECKED_COLUMNS)]
    good, bad = split_invalid_flows(df)
    assert len(good) == 3 and not len(bad)


def test_replay_trim_and_event_time_work_on_either_form():
    frame = flows(6)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    mask = ts_end(frame) >= T0 + 3
    assert np.array_equal(ts_end(table), ts_end(frame))
    trimmed = keep_rows(frame, mask)
    assert isinstance(trimmed, pd.DataFrame)
    pd.testing.assert_frame_equal(engine_input([keep_rows(table, mask)]), trimmed.reset_index(drop=True))
