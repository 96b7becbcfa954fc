"""Fuzzing the flow decoder: nothing a producer sends makes it raise (issue 22).

Every message handed to :func:`~flowwarden.bus.read_flow_batches` comes out either as a
decoded batch or as dead letters carrying its own topic, partition and offset; the rows of
a readable message are all accounted for (valid, or in a dead letter that counts them).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowwarden.bus import DeadLetter, Message, read_flow_batches
from flowwarden.records import FLOW_SCHEMA, conform_flows
from flowwarden.wire import MAGIC, WIRE_VERSION, encode_flows

HEADER = MAGIC + bytes([WIRE_VERSION])
NAMES = list(FLOW_SCHEMA)
ARROW_TYPES = [pa.float64(), pa.int64(), pa.int32(), pa.int16(), pa.bool_(), pa.string(), pa.binary()]


def valid_batch(n: int = 3, t0: float = 1_700_000_000.0) -> pd.DataFrame:
    return conform_flows(
        {
            "ts_start": [t0 + i for i in range(n)],
            "ts_end": [t0 + i + 0.5 for i in range(n)],
            "node": ["node-a"] * n,
            "src_ip": [f"10.244.0.{i + 1}" for i in range(n)],
            "dst_ip": ["10.96.0.10"] * n,
            "src_port": [40000 + i for i in range(n)],
            "dst_port": [53] * n,
            "proto": [17] * n,
            "bytes_out": [100] * n,
            "pkts_out": [1] * n,
        }
    )


VALID = encode_flows(valid_batch())


def ipc(table: pa.Table, *, compression: str | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return HEADER + sink.getvalue().to_pybytes()


def messages(payloads: list[bytes]) -> list[Message]:
    return [Message("flows", i % 3, 100 + i, None, p, 0) for i, p in enumerate(payloads)]


def check_accounted(msgs: list[Message], *, max_event_ts: float | None = None) -> list[DeadLetter]:
    """read_flow_batches never raises and accounts for every message, with its coordinates."""
    good, dead = read_flow_batches(msgs, max_event_ts=max_event_ts)
    by_offset = {m.offset: m for m in msgs}
    for d in dead:
        m = by_offset[d.source_offset]
        assert (d.source_topic, d.source_partition) == (m.topic, m.partition)
        assert d.reason and d.field and d.reason.startswith(d.field)
        assert d.rows == -1 or d.rows >= 0
    whole = {d.source_offset for d in dead if d.payload == by_offset[d.source_offset].value}
    decoded = {m.offset for m, _ in good}
    for m in msgs:
        assert m.offset in decoded or m.offset in whole, f"message at offset {m.offset} lost"
    for m, df in good:
        assert {c: str(t) for c, t in df.dtypes.items()} == FLOW_SCHEMA
        if max_event_ts is not None and len(df):
            assert df["ts_end"].max() <= max_event_ts and df["ts_start"].max() <= max_event_ts
    return dead


@settings(max_examples=150, deadline=5_000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2_000))
def test_random_bytes_after_a_valid_header(body: bytes) -> None:
    check_accounted(messages([VALID, HEADER + body, VALID]))


@settings(max_examples=150, deadline=5_000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=8), st.binary(max_size=64))
def test_random_wire_headers(header: bytes, tail: bytes) -> None:
    check_accounted(messages([header + VALID[len(HEADER) :], header, header + tail]))


@settings(max_examples=200, deadline=5_000, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=len(VALID) - 1), st.integers(0, 255), st.sampled_from("rid")
        ),
        min_size=1,
        max_size=8,
    )
)
def test_mutated_valid_messages(edits: list[tuple[int, int, str]]) -> None:
    """A valid message with bytes replaced, inserted or deleted (uncompressed and zstd)."""
    for original in (VALID, ipc(pa.Table.from_pandas(valid_batch(), preserve_index=False))):
        data = bytearray(original)
        for pos, byte, op in edits:
            pos = min(pos, len(data) - 1)
            if op == "r":
                data[pos] = byte
            elif op == "i":
                data.insert(pos, byte)
            elif len(data) > 1:
                del data[pos]
        check_accounted(messages([VALID, bytes(data), VALID]))


def column(draw: st.DrawFn, kind: pa.DataType, n: int) -> pa.Array:
    if kind == pa.string():
        values: list[object] = draw(
            st.lists(st.one_of(st.none(), st.text(max_size=20)), min_size=n, max_size=n)
        )
    elif kind == pa.binary():
        values = draw(st.lists(st.one_of(st.none(), st.binary(max_size=8)), min_size=n, max_size=n))
    elif kind == pa.bool_():
        values = draw(st.lists(st.one_of(st.none(), st.booleans()), min_size=n, max_size=n))
    elif kind == pa.float64():
        values = draw(st.lists(st.one_of(st.none(), st.floats(allow_nan=True)), min_size=n, max_size=n))
    else:
        bits = kind.bit_width
        ints = st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        values = draw(st.lists(st.one_of(st.none(), ints), min_size=n, max_size=n))
    return pa.array(values, type=kind)


@st.composite
def odd_tables(draw: st.DrawFn) -> bytes:
    """Arrow tables another writer might send: any names (duplicates too), types and values."""
    n = draw(st.integers(0, 5))
    names = draw(
        st.lists(st.one_of(st.sampled_from(NAMES), st.text(max_size=6)), min_size=0, max_size=len(NAMES) + 3)
    )
    if draw(st.booleans()):
        names = NAMES + draw(st.lists(st.sampled_from(NAMES), max_size=2))  # the schema, with duplicates
    arrays = [column(draw, draw(st.sampled_from(ARROW_TYPES)), n) for _ in names]
    return ipc(pa.Table.from_arrays(arrays, names=names), compression=draw(st.sampled_from([None, "zstd"])))


@settings(max_examples=200, deadline=5_000, suppress_health_check=[HealthCheck.too_slow])
@given(odd_tables())
def test_arrow_tables_of_any_shape(payload: bytes) -> None:
    check_accounted(messages([VALID, payload, VALID]))


@st.composite
def odd_values(draw: st.DrawFn) -> pd.DataFrame:
    """The right columns and types, with values a broken collector could write."""
    n = draw(st.integers(1, 6))
    df = valid_batch(n)
    floats = st.floats(allow_nan=True, allow_infinity=True)
    for name in draw(st.lists(st.sampled_from(NAMES), max_size=6, unique=True)):
        dtype = FLOW_SCHEMA[name]
        if dtype == "float64":
            df[name] = draw(st.lists(floats, min_size=n, max_size=n))
        elif dtype.startswith("int"):
            info = np.iinfo(dtype)
            df[name] = np.array(
                draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=n, max_size=n)), dtype=dtype
            )
        elif dtype == "bool":
            df[name] = draw(st.lists(st.booleans(), min_size=n, max_size=n))
        else:
            df[name] = draw(st.lists(st.text(max_size=30), min_size=n, max_size=n))
    return conform_flows(df)  # the strings back to the schema's string dtype


@settings(max_examples=200, deadline=5_000, suppress_health_check=[HealthCheck.too_slow])
@given(odd_values(), st.floats(1_600_000_000, 1_800_000_000))
def test_record_values_are_valid_or_dead_lettered_row_by_row(df: pd.DataFrame, bound: float) -> None:
    """Every row of a readable message is valid or in a dead letter that counts it.

    Written as another writer would (nullable columns: a NaN travels as a null), so the
    values reach the decoder as they are.
    """
    msgs = messages([ipc(pa.Table.from_pandas(df, preserve_index=False))])
    good, dead = read_flow_batches(msgs, max_event_ts=bound)
    check_accounted(msgs, max_event_ts=bound)
    assert all(d.rows > 0 and (d.source_partition, d.source_offset) == (0, 100) for d in dead)
    if good:  # readable: row by row
        assert len(good[0][1]) + sum(d.rows for d in dead) == len(df)
        assert all(d.cause == "future" for d in dead if "event-time bound" in d.reason)
    else:  # a required value missing: the whole message, its rows counted
        assert [d.rows for d in dead] == [len(df)] and dead[0].payload == msgs[0].value


def test_a_duplicate_column_is_a_dead_letter_with_its_coordinates() -> None:
    """The issue's poison message: the flow schema with ``src_ip`` twice."""
    table = pa.Table.from_pandas(valid_batch(4), preserve_index=False)
    poison = ipc(table.append_column("src_ip", pa.array(["10.0.0.9"] * 4)))
    msgs = messages([VALID, poison, VALID])
    good, dead = read_flow_batches(msgs)
    assert [m.offset for m, _ in good] == [100, 102]
    (letter,) = dead
    assert letter.payload == poison
    assert (letter.source_topic, letter.source_partition, letter.source_offset, letter.rows) == (
        "flows",
        1,
        101,
        4,
    )
    assert letter.field == "batch" and "'src_ip' appears 2 times" in letter.reason


def test_future_rows_are_dead_lettered_and_the_rest_kept() -> None:
    df = valid_batch(5)
    df.loc[1, "ts_end"] = 3_976_000_000.0  # 2096
    df.loc[3, "ts_start"] = 3_976_000_000.0
    df.loc[3, "ts_end"] = 3_976_000_001.0
    good, dead = read_flow_batches(messages([encode_flows(df)]), max_event_ts=1_800_000_000.0)
    assert len(good[0][1]) == 3
    assert sum(d.rows for d in dead) == 2 and {d.cause for d in dead} == {"future"}
