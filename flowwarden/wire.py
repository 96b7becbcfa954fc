"""Wire format of a flow batch: one Kafka message per batch.

Layout: ``b"FWF"`` magic, one version byte, then an Arrow IPC stream compressed as ONE zstd
frame (version 4; before, an Arrow stream whose buffers were each zstd-compressed, which
readers still take). Arrow keeps the dtypes exactly, costs no per-row Python work and
compresses columns well; JSON per flow was ~10x slower to produce (figures in the README).
One frame rather than one per buffer: a batch has ~90 buffers, most of them tiny (empty DNS
and pod columns), and starting a zstd context per buffer cost more than the data (decoding a
1,250-flow message 1.1 ms, against 0.26 ms as one frame, for 4 % more bytes).
A change of :data:`~flowwarden.records.FLOW_SCHEMA` bumps :data:`WIRE_VERSION`; readers
keep decoding the versions before it (recorded files, and messages in flight while the
producers and consumers of a cluster are upgraded one by one), filling the columns that
version lacked with their defaults (:data:`ADDED_IN`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pandas as pd
import pyarrow as pa

from flowwarden.errors import RecordError
from flowwarden.records import DNS_AGGREGATES, FLOW_DEFAULTS, FLOW_SCHEMA, conform_flows

MAGIC = b"FWF"
WIRE_VERSION = 4  # 4: the stream is one zstd frame (no new column)
# The columns each version added; a message of an older version gets them as defaults.
ADDED_IN: dict[int, tuple[str, ...]] = {
    2: (
        "first",
        "end_reason",
        *DNS_AGGREGATES,
        "dns_answers",
        "dns_answer_ttl",
        "tunnel",
        "outer_src_ip",
        "outer_dst_ip",
    ),
    3: ("community_id", "dns_rtt_n", "dns_rtt_mean_ms", "dns_rtt_max_ms"),
}
READABLE_VERSIONS: frozenset[int] = frozenset({1, *ADDED_IN, WIRE_VERSION})
_HEADER = MAGIC + bytes([WIRE_VERSION])
_ZSTD = pa.Codec("zstd")
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # a zstd frame; an Arrow stream starts with 0xFFFFFFFF
# A frame that says it holds more than this is not a flow batch (Kafka caps a message at a
# few MiB, and a batch compresses about 6x): refused before anything is allocated for it.
MAX_STREAM_BYTES = 256 << 20
# One thread: a message's buffers are small, and handing each to Arrow's pool to decompress
# (streams of versions 1-3) cost a quarter more CPU than doing it in line.
_READ_OPTIONS = pa.ipc.IpcReadOptions(use_threads=False)


def _arrow_type(dtype: str) -> pa.DataType:
    return {
        "float64": pa.float64(),
        "int16": pa.int16(),
        "int32": pa.int32(),
        "int64": pa.int64(),
        "bool": pa.bool_(),
        "str": pa.string(),
    }[dtype]


ARROW_SCHEMA = pa.schema(
    [pa.field(name, _arrow_type(dtype), nullable=False) for name, dtype in FLOW_SCHEMA.items()],
    metadata={b"flowwarden.wire_version": str(WIRE_VERSION).encode()},
)


_COLUMNS = list(FLOW_SCHEMA)
_DTYPES = list(FLOW_SCHEMA.values())


def _has_schema(df: pd.DataFrame) -> bool:
    """Columns and dtypes already exactly the schema (conforming again costs ~2 ms a batch)."""
    return list(df.columns) == _COLUMNS and [str(t) for t in df.dtypes] == _DTYPES


def encode_flows(df: pd.DataFrame) -> bytes:
    """Serialise a flow batch (conformed to the schema first) into one message."""
    if not _has_schema(df):
        df = conform_flows(df)
    try:
        table = pa.Table.from_pandas(df, schema=ARROW_SCHEMA, preserve_index=False)
    except (ValueError, pa.ArrowException):  # e.g. a missing string (NaN): conform fills it
        table = pa.Table.from_pandas(conform_flows(df), schema=ARROW_SCHEMA, preserve_index=False)
    # One record batch: string columns of a concatenated frame arrive in many chunks, and
    # each chunk would otherwise become its own (uncompressible, ~1 KiB) record batch.
    return _message(table.combine_chunks())


def _message(table: pa.Table) -> bytes:
    """The header and ``table`` as an Arrow stream in one zstd frame."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, ARROW_SCHEMA) as writer:
        writer.write_table(table)
    return _HEADER + _ZSTD.compress(sink.getvalue(), asbytes=True)


def _frame_content_size(frame: pa.Buffer) -> int:
    """The size a zstd frame declares for its content (RFC 8878 3.1.1.1); -1 when it does not."""
    head = frame[4:18].to_pybytes()
    if len(head) < 2:
        return -1
    fhd = head[0]
    single, fcs_flag = (fhd >> 5) & 1, fhd >> 6
    at = 1 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3]
    width = (single, 2, 4, 8)[fcs_flag]
    if not width or len(head) < at + width:
        return -1
    size = int.from_bytes(head[at : at + width], "little")
    return size + 256 if width == 2 else size


def _read_stream(data: bytes) -> pa.Table:
    """The message's Arrow stream as a table: one zstd frame (version 4), or plain."""
    body = pa.py_buffer(data)[4:]
    if body[:4].to_pybytes() != _ZSTD_MAGIC:
        with pa.ipc.open_stream(body, options=_READ_OPTIONS) as reader:
            return reader.read_all()
    size = _frame_content_size(body)
    if not 0 <= size <= MAX_STREAM_BYTES:
        raise ValueError(f"zstd frame declares {size} bytes (at most {MAX_STREAM_BYTES})")
    with pa.ipc.open_stream(_ZSTD.decompress(body, decompressed_size=size), options=_READ_OPTIONS) as reader:
        return reader.read_all()  # every column a view of the one decompressed frame


class UnreadableBatch(RecordError):
    """A message that is not a usable flow batch; ``rows`` is how many rows its Arrow stream
    held when it could be parsed at all (-1: unknown)."""

    def __init__(self, field: str, reason: str, rows: int = -1) -> None:
        super().__init__(field, reason)
        self.rows = rows


def decode_table(data: bytes) -> pa.Table:
    """Parse one message into an Arrow table whose columns and types are the schema's.

    Raises :class:`UnreadableBatch` (a :class:`RecordError`; field ``batch``, or the
    column) for garbage, an unknown version or a schema that does not match, and for
    anything else a producer could get wrong: no input makes it raise another exception.
    Nulls are left for :func:`table_to_flows`.
    """
    data = bytes(data)
    if len(data) < len(_HEADER) or data[:3] != MAGIC:
        raise UnreadableBatch("batch", "not a flowwarden flow batch (bad magic)")
    version = data[3]
    if version not in READABLE_VERSIONS:
        raise UnreadableBatch(
            "batch",
            f"wire version {version} is not supported (this build reads "
            f"{', '.join(map(str, sorted(READABLE_VERSIONS)))})",
        )
    try:
        table = _read_stream(data)
        # Arrow trusts a stream's offsets and UTF-8 until asked: a crafted one could make
        # the conversion read out of bounds. Full validation costs well under a millisecond
        # for a collector's batch.
        table.validate(full=True)
    except Exception as exc:  # Arrow raises many kinds on crafted input
        raise UnreadableBatch("batch", f"corrupt Arrow stream: {type(exc).__name__}: {exc}") from exc
    try:
        return _conform_table(_upgrade(table, version))
    except UnreadableBatch:
        raise
    except RecordError as exc:
        raise UnreadableBatch(exc.field, exc.reason, table.num_rows) from exc
    except Exception as exc:  # never let a message stop the consumer
        raise UnreadableBatch(
            "batch", f"unusable Arrow table: {type(exc).__name__}: {exc}", table.num_rows
        ) from exc


def _upgrade(table: pa.Table, version: int) -> pa.Table:
    """Add, as defaults, the columns that versions after ``version`` introduced."""
    for v in sorted(ADDED_IN):
        if v <= version:
            continue
        for name in ADDED_IN[v]:
            if name in table.column_names:
                continue
            arrow_type = _arrow_type(FLOW_SCHEMA[name])
            value = pa.scalar(FLOW_DEFAULTS[name], type=arrow_type)
            table = table.append_column(
                pa.field(name, arrow_type, nullable=False),
                pa.array([value.as_py()] * table.num_rows, type=arrow_type),
            )
    return table


def _conform_table(table: pa.Table) -> pa.Table:
    if table.schema.equals(ARROW_SCHEMA):
        return table  # written by encode_flows (the usual case)
    names = table.column_names
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:  # which one would be the flow's? neither: the writer is broken
        raise RecordError("batch", f"column {dupes[0]!r} appears {names.count(dupes[0])} times")
    missing = [n for n in FLOW_SCHEMA if n not in names]
    if missing:
        raise RecordError(missing[0], "required column is missing")
    for name, dtype in FLOW_SCHEMA.items():
        if table.schema.field(name).type != _arrow_type(dtype):
            raise RecordError(name, f"has type {table.schema.field(name).type}, expected {dtype}")
    # Other writers may differ in column order, nullability or metadata: one schema for all,
    # so the tables of a poll concatenate without copies (nulls are still seen and fixed
    # by table_to_flows; the schema's non-null flag is not enforced by Arrow).
    try:
        return pa.Table.from_arrays([table.column(n) for n in _COLUMNS], schema=ARROW_SCHEMA)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise RecordError("batch", f"columns do not fit the flow schema: {exc}") from exc


def table_to_flows(table: pa.Table) -> pd.DataFrame:
    """Decoded tables (one, or several concatenated) as a flow frame with the exact schema.

    Several tables are first copied into one buffer per column: a decoded message's columns
    are views of its one decompressed frame, and pandas' text columns keep Arrow's character
    data (only the offsets are widened), so a frame made of views would hold every message it
    came from in memory as long as any string of it lives (+20 % peak RSS in a detect worker,
    bench_scale_out). One copy per conversion, not per message.
    """
    if table.num_columns and table.column(0).num_chunks > 1:
        table = table.combine_chunks()
    if not any(col.null_count for col in table.columns):
        df = table.to_pandas()
        if _has_schema(df):
            return df  # the common case: written by encode_flows, nothing to fix
    return conform_flows(table.to_pandas())


def decode_flows(data: bytes) -> pd.DataFrame:
    """Parse one message back into a flow batch with the exact schema.

    Raises :class:`RecordError` (field ``batch``) for garbage, an unknown version or a
    schema that does not match; row-level problems are left to
    :func:`~flowwarden.records.split_invalid_flows`.
    """
    return table_to_flows(decode_table(data))


def encode_flow_parts(df: pd.DataFrame, bounds: Sequence[int]) -> list[bytes]:
    """One message per row range ``bounds[i]:bounds[i + 1]`` of ``df`` (a batch split by
    partition): converted to Arrow once and sliced, since most of :func:`encode_flows`'s cost
    is per call, not per row (the enrich stage splits every batch over every partition)."""
    if not _has_schema(df):
        df = conform_flows(df)
    table = pa.Table.from_pandas(df, schema=ARROW_SCHEMA, preserve_index=False).combine_chunks()
    return [_message(table.slice(lo, hi - lo)) for lo, hi in itertools.pairwise(bounds)]
