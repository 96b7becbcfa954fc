"""The bus between stages: one interface, an in-memory and a Kafka implementation.

Use :func:`open_bus` once per process and pass the bus down (in the embedded mode the
stages of one process share the in-memory bus). Flow batches travel one message per
batch (:mod:`flowwarden.wire`); :func:`publish_flows` keeps every flow of one source IP in
one partition, so a consumer sees a source's whole story; :func:`read_flow_batches`
decodes what a consumer polled and separates the garbage and the bad rows, which
:func:`route_dead_letters` sends to ``flows.dlq``.

Dead letters (a choice, documented once): the *value* is the original bytes when the
whole message was unreadable, or the bad rows re-encoded as a flow batch (the wire
format, so the same tools read it) when only some rows were bad; the *headers* say why:

* ``dlq.reason``: the :class:`~flowwarden.errors.RecordError` text, ``"field: why"``;
* ``dlq.field``: the field it names;
* ``dlq.source_topic``, ``dlq.source_partition``, ``dlq.source_offset``: where it came
  from (partition and offset ``-1`` when it never reached the bus, e.g. a collector's
  own bad rows);
* ``dlq.rows``: how many flow rows the value holds (``-1``: unknown, the bytes could not
  even be parsed as Arrow).

Nothing a producer can send makes :func:`read_flow_batches` raise: every decode or
validation failure becomes a dead letter with its source coordinates.

Headers rather than a JSON envelope keep the payload byte-identical, so a fixed consumer
can replay the dead letters as they are.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from flowwarden.bus_base import (
    Bus,
    CommitFailed,
    Consumer,
    ErrorCallback,
    FailedSend,
    Headers,
    Message,
    Producer,
    highest_offsets,
)
from flowwarden.bus_memory import MemoryBus
from flowwarden.records import split_invalid_flows
from flowwarden.settings import Settings
from flowwarden.wire import UnreadableBatch, decode_table, encode_flows, table_to_flows

if TYPE_CHECKING:
    from flowwarden.bus_kafka import KafkaBus

__all__ = [
    "DLQ_FIELD",
    "DLQ_REASON",
    "DLQ_ROWS",
    "DLQ_SOURCE_OFFSET",
    "DLQ_SOURCE_PARTITION",
    "DLQ_SOURCE_TOPIC",
    "FUTURE",
    "Bus",
    "CommitFailed",
    "Consumer",
    "DeadLetter",
    "ErrorCallback",
    "FailedSend",
    "Headers",
    "KafkaBus",
    "MemoryBus",
    "Message",
    "Producer",
    "dead_letter_of",
    "flow_partitions",
    "future_flow_reasons",
    "highest_offsets",
    "open_bus",
    "publish_flows",
    "read_flow_batches",
    "route_dead_letters",
    "send_dlq",
]

DLQ_REASON = "dlq.reason"
DLQ_FIELD = "dlq.field"
DLQ_SOURCE_TOPIC = "dlq.source_topic"
DLQ_SOURCE_PARTITION = "dlq.source_partition"
DLQ_SOURCE_OFFSET = "dlq.source_offset"
DLQ_ROWS = "dlq.rows"

DEFAULT_MAX_ROWS = 50_000

FUTURE = "future"
"""Cause of the rows dated after the event-time bound (the metric's label)."""


def __getattr__(name: str) -> object:
    # KafkaBus imports kafka-python (slow); only pay for it when asked.
    if name == "KafkaBus":
        from flowwarden.bus_kafka import KafkaBus

        return KafkaBus
    raise AttributeError(name)


def open_bus(settings: Settings) -> Bus:
    """The bus ``settings.bus.kind`` names; no I/O until a client is asked for."""
    if settings.bus.kind == "kafka":
        from flowwarden.bus_kafka import KafkaBus
        from flowwarden.retry import RetryPolicy

        return KafkaBus(settings.kafka, RetryPolicy.from_settings(settings.retry, "kafka"))
    return MemoryBus(default_partitions=settings.kafka.partitions)


# --------------------------------------------------------------------------- flows out


def flow_partitions(src_ip: pd.Series, partitions: int) -> np.ndarray:
    """Partition per row: CRC-32 of the source IP text, stable across processes and runs."""
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    codes, uniques = pd.factorize(src_ip, use_na_sentinel=False)
    per_unique = np.fromiter(
        (zlib.crc32(str(u).encode()) % partitions for u in uniques), dtype=np.int64, count=len(uniques)
    )
    return per_unique[codes] if len(codes) else np.zeros(0, dtype=np.int64)


def publish_flows(
    producer: Producer,
    topic: str,
    df: pd.DataFrame,
    partitions: int,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> int:
    """Send a flow batch as one message per partition (split further above ``max_rows``).

    Every flow of one source IP lands in the same partition. Returns the number of
    messages queued; delivery failures surface on ``producer.failed``. Raises
    :class:`RecordError` if ``df`` cannot be conformed to the flow schema.
    """
    if len(df) == 0:
        return 0
    parts = flow_partitions(df["src_ip"], partitions)
    sent = 0
    for p in np.unique(parts):
        rows = df[parts == p]
        for start in range(0, len(rows), max_rows):
            producer.send(topic, encode_flows(rows.iloc[start : start + max_rows]), partition=int(p))
            sent += 1
    return sent


# --------------------------------------------------------------------------- flows in


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Something that could not be used, why, and where it came from."""

    payload: bytes
    reason: str
    field: str
    source_topic: str
    source_partition: int = -1
    source_offset: int = -1
    rows: int = -1

    @property
    def cause(self) -> str:
        """The label a dead-letter counter uses: ``future`` for rows past the event-time
        bound, else the field at fault."""
        return FUTURE if self.reason.partition(": ")[2].startswith(FUTURE + ":") else self.field

    def headers(self) -> Headers:
        return (
            (DLQ_REASON, self.reason.encode()),
            (DLQ_FIELD, self.field.encode()),
            (DLQ_SOURCE_TOPIC, self.source_topic.encode()),
            (DLQ_SOURCE_PARTITION, str(self.source_partition).encode()),
            (DLQ_SOURCE_OFFSET, str(self.source_offset).encode()),
            (DLQ_ROWS, str(self.rows).encode()),
        )


def dead_letter_of(message: Message) -> DeadLetter:
    """Read a ``flows.dlq`` message back into a :class:`DeadLetter`."""

    def text(name: str, default: str = "") -> str:
        raw = message.header(name)
        return raw.decode(errors="replace") if raw is not None else default

    return DeadLetter(
        payload=message.value,
        reason=text(DLQ_REASON),
        field=text(DLQ_FIELD),
        source_topic=text(DLQ_SOURCE_TOPIC),
        source_partition=int(text(DLQ_SOURCE_PARTITION, "-1")),
        source_offset=int(text(DLQ_SOURCE_OFFSET, "-1")),
        rows=int(text(DLQ_ROWS, "-1")),
    )


def read_flow_batches(
    messages: Iterable[Message], *, max_event_ts: float | None = None
) -> tuple[list[tuple[Message, pd.DataFrame]], list[DeadLetter]]:
    """Decode polled messages: (message, valid rows) for each readable one, and the dead letters.

    An unreadable message becomes one dead letter holding its original bytes; bad rows of
    a readable one become one dead letter per distinct reason, holding those rows. Every
    readable message appears in the first list, even when none of its rows was valid, so
    the caller can commit everything it was handed. No message raises: whatever a producer
    sends ends up in one of the two lists, with its source coordinates.

    ``max_event_ts`` bounds event time (the caller's wall clock plus the clock skew it
    tolerates): rows that start or end after it are bad rows, with field ``ts_end`` (or
    ``ts_start``) and cause ``future``, so one broken clock cannot drag event time ahead.
    """
    decoded: list[tuple[Message, pa.Table]] = []
    dead: list[DeadLetter] = []
    for m in messages:
        try:
            decoded.append((m, decode_table(m.value)))
        except UnreadableBatch as exc:
            dead.append(DeadLetter(m.value, str(exc), exc.field, m.topic, m.partition, m.offset, exc.rows))
        except Exception as exc:  # decode_table should not, but never stop the consumer
            reason = f"batch: undecodable: {type(exc).__name__}: {exc}"
            dead.append(DeadLetter(m.value, reason, "batch", m.topic, m.partition, m.offset))
    if not decoded:
        return [], dead
    try:
        good, bad = _split_rows(decoded, max_event_ts)
    except Exception:  # one message spoilt the poll-wide conversion: find it
        good, bad = [], []
        for m, table in decoded:
            try:
                g, b = _split_rows([(m, table)], max_event_ts)
            except Exception as exc:
                reason = f"batch: rows cannot be converted: {type(exc).__name__}: {exc}"
                dead.append(
                    DeadLetter(m.value, reason, "batch", m.topic, m.partition, m.offset, table.num_rows)
                )
                continue
            good += g
            bad += b
    return good, dead + bad


def _split_rows(
    decoded: list[tuple[Message, pa.Table]], max_event_ts: float | None
) -> tuple[list[tuple[Message, pd.DataFrame]], list[DeadLetter]]:
    """Convert and check the rows of decoded messages; (message, valid rows) and the bad rows."""
    # Convert and validate every row of the poll at once: both cost milliseconds per call
    # whatever the size, so one call over the (zero-copy) concatenation beats one per message.
    sizes = np.fromiter((t.num_rows for _, t in decoded), dtype=np.int64, count=len(decoded))
    rows = table_to_flows(pa.concat_tables([t for _, t in decoded]))
    valid, invalid = split_invalid_flows(rows.assign(_msg=np.repeat(np.arange(len(decoded)), sizes)))
    if max_event_ts is not None and len(valid):
        ahead = future_flow_reasons(valid, max_event_ts)
        late = ahead.to_numpy() != ""
        if late.any():
            invalid = pd.concat([invalid, valid[late].assign(reason=ahead[late])], ignore_index=True)
            valid = valid[~late].reset_index(drop=True)
    bounds = np.concatenate(([0], np.cumsum(np.bincount(valid["_msg"].to_numpy(), minlength=len(decoded)))))
    valid = valid.drop(columns="_msg")
    good = [
        (m, valid.iloc[bounds[i] : bounds[i + 1]].reset_index(drop=True)) for i, (m, _) in enumerate(decoded)
    ]
    dead: list[DeadLetter] = []
    if len(invalid):
        for i, bad in invalid.groupby("_msg", sort=True):
            m = decoded[int(i)][0]  # type: ignore[arg-type]
            dead.extend(_row_dead_letters(bad.drop(columns="_msg"), m.topic, m.partition, m.offset))
    return good, dead


def future_flow_reasons(flows: pd.DataFrame, max_event_ts: float) -> pd.Series:
    """Per row, why it lies beyond ``max_event_ts`` ("" when it does not)."""
    ts_end = flows["ts_end"].to_numpy()
    ts_start = flows["ts_start"].to_numpy()
    out = np.full(len(flows), "", dtype=object)
    out[ts_end > max_event_ts] = f"ts_end: {FUTURE}: after the event-time bound {max_event_ts:.0f}"
    out[(ts_start > max_event_ts) & (out == "")] = (
        f"ts_start: {FUTURE}: after the event-time bound {max_event_ts:.0f}"
    )
    return pd.Series(out, index=flows.index, dtype=object)


def _row_dead_letters(invalid: pd.DataFrame, topic: str, partition: int, offset: int) -> list[DeadLetter]:
    out = []
    for reason, rows in invalid.groupby("reason", sort=True):
        text = str(reason)
        field = text.partition(": ")[0]
        payload = encode_flows(rows.drop(columns="reason"))
        out.append(DeadLetter(payload, text, field, topic, partition, offset, rows=len(rows)))
    return out


def send_dlq(
    producer: Producer,
    topic: str,
    payload: bytes,
    reason: str,
    source_topic: str,
    *,
    field: str = "",
    source_partition: int = -1,
    source_offset: int = -1,
    rows: int = -1,
) -> None:
    """Send one dead letter: the payload as it was, the reason and its origin in headers."""
    letter = DeadLetter(
        payload,
        reason,
        field or reason.partition(": ")[0],
        source_topic,
        source_partition,
        source_offset,
        rows,
    )
    producer.send(topic, payload, headers=letter.headers())


def route_dead_letters(producer: Producer, topic: str, letters: Sequence[DeadLetter]) -> int:
    """Send every dead letter to ``topic`` (usually ``settings.kafka.topics.flows_dlq``)."""
    for d in letters:
        producer.send(topic, d.payload, headers=d.headers())
    return len(letters)
