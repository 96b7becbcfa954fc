"""The wire format of a flow batch: exact round trip, versioned, garbage rejected by name."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowwarden.errors import RecordError
from flowwarden.records import FLOW_SCHEMA, conform_flows, empty_flows
from flowwarden.wire import (
    ADDED_IN,
    ARROW_SCHEMA,
    MAGIC,
    MAX_STREAM_BYTES,
    WIRE_VERSION,
    decode_flows,
    encode_flows,
)
from tests.unit.test_records import flow_rows


def sample() -> pd.DataFrame:
    return conform_flows(
        {
            "ts_start": [1_700_000_000.123456, 1_700_000_001.5],
            "ts_end": [1_700_000_002.0, 1_700_000_001.5],
            "node": ["node-a", "node-b"],
            "src_ip": ["10.244.0.5", "fd00:10:244::7"],
            "dst_ip": ["169.254.169.254", "2001:db8::1"],
            "src_port": [40000, 0],
            "dst_port": [80, 443],
            "proto": [6, 6],
            "bytes_out": [2**62, 0],
            "pkts_out": [1, 0],
            "dns_qname": ["", "xn--caf-dma.example"],
            "server_name": ["", "données.example"],
            "final": [False, True],
            "src_namespace": ["shop", ""],
        }
    )


def arrow_message(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return MAGIC + bytes([WIRE_VERSION]) + sink.getvalue().to_pybytes()


def test_round_trip_is_exact():
    df = sample()
    out = decode_flows(encode_flows(df))
    pd.testing.assert_frame_equal(out, df)
    assert {c: str(t) for c, t in out.dtypes.items()} == FLOW_SCHEMA


def test_a_version_1_message_still_decodes_with_the_new_columns_as_defaults():
    """Recorded files and messages in flight while a cluster upgrades are version 1."""
    df = sample()
    v1_columns = [c for c in FLOW_SCHEMA if c not in ADDED_IN[2]]
    v1_schema = pa.schema([ARROW_SCHEMA.field(c) for c in v1_columns])
    table = pa.Table.from_pandas(df[v1_columns], schema=v1_schema, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    out = decode_flows(MAGIC + bytes([1]) + sink.getvalue().to_pybytes())
    pd.testing.assert_frame_equal(out[v1_columns], df[v1_columns])
    assert out["first"].all() and (out["end_reason"] == "").all() and (out["dns_queries"] == 0).all()
    assert (out["dns_answer_ttl"] == -1).all() and {c: str(t) for c, t in out.dtypes.items()} == FLOW_SCHEMA
    with pytest.raises(RecordError, match="wire version 9 is not supported"):
        decode_flows(MAGIC + bytes([9]) + sink.getvalue().to_pybytes())


def test_empty_batch_round_trips():
    out = decode_flows(encode_flows(empty_flows()))
    assert len(out) == 0 and list(out.columns) == list(FLOW_SCHEMA)


def test_message_is_versioned_and_compressed():
    df = pd.concat([sample()] * 2000, ignore_index=True)
    data = encode_flows(df)
    assert data[:3] == MAGIC and data[3] == WIRE_VERSION
    assert len(data) < len(df) * 20, "zstd keeps a repetitive batch small"


def test_the_stream_is_one_zstd_frame_and_per_buffer_streams_still_decode():
    """Version 4 compresses the whole stream once; a version 3 message (each Arrow buffer
    zstd-compressed) from a producer not yet upgraded decodes the same."""
    df = pd.concat([sample()] * 50, ignore_index=True)
    data = encode_flows(df)
    assert data[4:8] == b"\x28\xb5\x2f\xfd", "a zstd frame after the header"
    table = pa.Table.from_pandas(df, schema=ARROW_SCHEMA, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, ARROW_SCHEMA, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(table)
    v3 = MAGIC + bytes([3]) + sink.getvalue().to_pybytes()
    pd.testing.assert_frame_equal(decode_flows(v3), decode_flows(data))
    pd.testing.assert_frame_equal(decode_flows(data), df)


def test_a_frame_declaring_a_huge_size_is_rejected_before_allocating():
    frame = bytearray(encode_flows(sample()))
    # Frame header descriptor: 8-byte content size, single segment, no dictionary.
    frame[8] = 0b1110_0000
    frame[9:17] = (MAX_STREAM_BYTES + 1).to_bytes(8, "little")
    with pytest.raises(RecordError) as err:
        decode_flows(bytes(frame))
    assert err.value.field == "batch" and "zstd frame declares" in err.value.reason


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"", "bad magic"),
        (b'{"ts_start": 1}', "bad magic"),
        (MAGIC + bytes([WIRE_VERSION + 1]) + b"xx", f"wire version {WIRE_VERSION + 1}"),
        (MAGIC + bytes([WIRE_VERSION]) + b"\x00\x01 not arrow", "corrupt Arrow stream"),
    ],
)
def test_garbage_is_rejected_as_batch(payload: bytes, why: str):
    with pytest.raises(RecordError) as err:
        decode_flows(payload)
    assert err.value.field == "batch" and why in err.value.reason


def test_truncated_message_is_rejected():
    data = encode_flows(sample())
    with pytest.raises(RecordError) as err:
        decode_flows(data[: len(data) // 2])
    assert err.value.field == "batch"


def test_wrong_dtype_on_the_wire_names_the_column():
    table = pa.Table.from_pandas(sample(), schema=ARROW_SCHEMA, preserve_index=False)
    i = table.schema.get_field_index("dst_port")
    bad = table.set_column(i, "dst_port", pa.array(["80", "443"]))
    with pytest.raises(RecordError) as err:
        decode_flows(arrow_message(bad))
    assert err.value.field == "dst_port" and "expected int32" in err.value.reason


def test_missing_column_on_the_wire_names_it():
    table = pa.Table.from_pandas(sample(), schema=ARROW_SCHEMA, preserve_index=False).drop_columns(["src_ip"])
    with pytest.raises(RecordError) as err:
        decode_flows(arrow_message(table))
    assert err.value.field == "src_ip"


def test_encode_refuses_a_batch_without_required_columns():
    with pytest.raises(RecordError) as err:
        encode_flows(sample().drop(columns=["bytes_out"]))
    assert err.value.field == "bytes_out"


def test_row_problems_travel_so_the_consumer_can_route_them():
    df = sample()
    df.loc[0, "bytes_out"] = -1
    df.loc[1, "src_ip"] = "bogus"
    out = decode_flows(encode_flows(df))
    assert out["bytes_out"].iloc[0] == -1 and out["src_ip"].iloc[1] == "bogus"


@settings(max_examples=50, deadline=None)
@given(st.lists(flow_rows(), min_size=0, max_size=30))
def test_property_round_trip_ipv4_and_ipv6(rows: list[dict]):
    df = conform_flows(pd.DataFrame(rows, columns=list(flow_rows_columns())))
    out = decode_flows(encode_flows(df))
    pd.testing.assert_frame_equal(out, df)


def flow_rows_columns() -> tuple[str, ...]:
    return (
        "ts_start",
        "ts_end",
        "src_ip",
        "dst_ip",
        "src_port",
        "dst_port",
        "proto",
        "bytes_out",
        "bytes_in",
        "pkts_out",
        "pkts_in",
        "state",
        "dns_qname",
        "final",
    )


def test_missing_text_in_a_schema_frame_still_arrives_as_empty_string():
    df = sample()
    df["dns_qname"] = pd.Series(["a.example", None], dtype="str")
    out = decode_flows(encode_flows(df))
    assert out["dns_qname"].tolist() == ["a.example", ""]
    assert {c: str(t) for c, t in out.dtypes.items()} == FLOW_SCHEMA


def test_extra_columns_on_the_wire_are_dropped():
    table = pa.Table.from_pandas(sample(), schema=ARROW_SCHEMA, preserve_index=False)
    table = table.append_column("future_field", pa.array([1, 2]))
    out = decode_flows(arrow_message(table))
    assert list(out.columns) == list(FLOW_SCHEMA)


def test_a_poll_mixing_writers_decodes_in_one_go():
    """Another writer's batch (reordered, nullable columns, a null) joins ours in one poll."""
    from flowwarden.bus import Message, read_flow_batches

    ours = encode_flows(sample())
    nullable = pa.schema([pa.field(f.name, f.type) for f in ARROW_SCHEMA])  # no metadata either
    table = pa.Table.from_pandas(sample(), schema=nullable, preserve_index=False)
    table = table.select(list(reversed(table.column_names)))
    i = table.schema.get_field_index("dns_qname")
    table = table.set_column(i, "dns_qname", pa.array(["x.example", None]))
    theirs = arrow_message(table)
    msgs = [Message("flows", 0, n, None, payload, 0) for n, payload in enumerate([ours, theirs, ours])]
    good, dead = read_flow_batches(msgs)
    assert not dead and [len(df) for _, df in good] == [2, 2, 2]
    assert good[1][1]["dns_qname"].tolist() == ["x.example", ""]
    assert {c: str(t) for c, t in good[1][1].dtypes.items()} == FLOW_SCHEMA
