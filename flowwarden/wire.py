"""Wire format of a flow batch: one Kafka message per batch.

Layout: ``b"FWF"`` magic, one version byte, then an Arrow IPC stream whose record batches
are zstd-compressed. Arrow keeps the dtypes exactly, costs no per-row Python work and
compresses columns well; JSON per flow was ~10x slower to produce (figures in the README).
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
WIRE_VERSION = 3
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
READABLE_VERSIONS: frozenset[int] = frozenset({1, *ADDED_IN})
_HEADER = MAGIC + bytes([WIRE_VERSION])
_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")


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
    table = table.combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, ARROW_SCHEMA, options=_OPTIONS) as writer:
        writer.write_table(table)
    return _HEADER + sink.getvalue().to_pybytes()


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
        with pa.ipc.open_stream(pa.py_buffer(data)[4:]) as reader:
            table = reader.read_all()
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
    """Decoded tables (one, or several concatenated) as a flow frame with the exact schema."""
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
    out = []
    for lo, hi in itertools.pairwise(bounds):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, ARROW_SCHEMA, options=_OPTIONS) as writer:
            writer.write_table(table.slice(lo, hi - lo))
        out.append(_HEADER + sink.getvalue().to_pybytes())
    return out
