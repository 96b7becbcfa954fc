"""Where the stage's results go: the ``alerts`` topic and the store.

Thin edges around the bus and the store. :class:`StoreSink` writes two kinds of effects:
alerts as soon as an engine call raises them (an idempotent upsert: an alert's id is derived
from its evidence, so a replay writes the same rows again), and, every ``store_flush_s``,
the per-minute rollups of the batches fed since together with the marks of those batches in
ONE transaction: after a crash either a batch's rollups and its mark are both in the store or
neither is, and a replayed batch is recognised by its mark so its rollups are never added
twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import pandas as pd

from flowwarden.alert_formats import AlertExporter
from flowwarden.bus import Producer
from flowwarden.pipeline.runtime.ports import PipelineStore
from flowwarden.records import Alert
from flowwarden.settings import Settings
from flowwarden.store import BatchRef

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

log = logging.getLogger(__name__)

BatchId = tuple[str, int, int, int]
"""A consumed batch: (topic, partition, offset, epoch of the partition's offsets)."""


class AlertPublisher:
    """Produce alerts as JSON on the alerts topic, keyed by entity so one entity stays ordered.

    The alerts topic carries the native record (the enforcer reads it), naming the cluster;
    with an ``exporter`` in another format (``alerts.format: ecs | ocsf``) each alert also
    goes, in that format, to ``export_topic``.
    """

    def __init__(
        self,
        producer: Producer,
        topic: str,
        *,
        exporter: AlertExporter | None = None,
        export_topic: str = "",
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.exporter = exporter
        self.export_topic = export_topic if exporter is not None and exporter.format != "native" else ""

    @classmethod
    def from_settings(cls, producer: Producer, settings: Settings) -> AlertPublisher:
        return cls(
            producer,
            settings.kafka.topics.alerts,
            exporter=AlertExporter.from_settings(settings),
            export_topic=settings.alerts.export_topic,
        )

    def publish(self, alerts: Sequence[Alert]) -> None:
        for a in alerts:
            key = a.entity.key().encode()
            native = self.exporter.native(a) if self.exporter is not None else a
            self.producer.send(self.topic, native.to_json().encode(), key=key)
            if self.export_topic and self.exporter is not None:
                self.producer.send(self.export_topic, self.exporter.encode(a), key=key)


class StoreSink:
    """Exactly-once effects of consumed batches in the store (see the module docstring)."""

    def __init__(self, store: PipelineStore, group_id: str) -> None:
        self.store = store
        self.group_id = group_id

    def seen(self, batches: Iterable[BatchId]) -> set[BatchId]:
        """The batches whose effects are already stored (a replay after a crash or a rebalance)."""
        by_epoch = _by_epoch(batches)
        if not by_epoch:
            return set()

        def work(conn: Connection) -> set[BatchId]:
            out: set[BatchId] = set()
            for epoch, refs in by_epoch.items():
                found = self.store.seen_batches(self.group_id, refs, epoch=epoch, conn=conn)
                out.update((str(t), int(p), int(o), epoch) for t, p, o in found)
            return out

        return self.store.in_transaction(work)  # a read, retried like the writes

    def write(
        self, alerts: Sequence[Alert], enriched: pd.DataFrame | None, batches: Sequence[BatchId]
    ) -> None:
        """Whatever of alerts, the rollups of ``enriched`` and batch marks is given, in one transaction.

        The stage gives alerts alone (at once) or rollups with their marks (at a flush).
        """
        from flowwarden.dns_rollups import rollup_dns
        from flowwarden.rollups import rollup_flows

        has_flows = enriched is not None and len(enriched) > 0
        rollups = rollup_flows(enriched) if enriched is not None and has_flows else None
        dns = rollup_dns(enriched) if enriched is not None and has_flows else None
        if not alerts and rollups is None and not batches:
            return

        def work(conn: Connection) -> None:
            if alerts:
                self.store.upsert_alerts(list(alerts), conn=conn)
            if rollups is not None and len(rollups):
                self.store.add_rollups(rollups, conn=conn)
            if dns is not None and len(dns):
                self.store.add_dns_rollups(dns, conn=conn)
            for epoch, refs in _by_epoch(batches).items():
                self.store.mark_batches(self.group_id, refs, epoch=epoch, conn=conn)

        self.store.in_transaction(work)  # a deadlock or a lost connection: tried again

    def load_state(self, key: str) -> bytes | None:
        return self.store.in_transaction(lambda conn: self.store.get_state(key, conn=conn))

    def bump_epoch(self, key: str, partition: tuple[str, int], at_least: int) -> int:
        """A new epoch for ``partition`` in the group's epoch table under ``key``; returns it.

        One epoch per partition for the whole group (every worker reads the same table), one
        more than the highest anyone recorded (and than ``at_least``, what this worker knew).
        """

        def work(conn: Connection) -> int:
            table = _epoch_table(self.store.get_state(key, conn=conn))
            epoch = max(table.get(partition, 0), at_least) + 1
            table[partition] = epoch
            self.store.put_state(key, _epoch_bytes(table), conn=conn)
            return epoch

        return self.store.in_transaction(work)

    def load_epochs(self, key: str) -> dict[tuple[str, int], int]:
        """The group's epoch per partition (partitions never reset are absent: epoch 0)."""
        return _epoch_table(self.load_state(key))

    def save_state(
        self, key: str, data: bytes, offsets: bytes | None = None, *, claim: int | None = None
    ) -> bool:
        """The engine's state and the offsets it holds, together (``key`` and ``key/offsets``).

        With ``claim`` (what :meth:`claim_state` returned for ``key``), only while that claim is
        the newest: a worker the group has replaced (it stalled past the session timeout) must
        not overwrite the state its successor restored. Returns False when it did not write.
        """

        def work(conn: Connection) -> bool:
            if claim is not None and not self.store.holds_claim(key + "/owner", claim, conn=conn):
                return False
            self.store.put_state(key, data, conn=conn)
            if offsets is not None:
                self.store.put_state(key + "/offsets", offsets, conn=conn)
            return True

        return self.store.in_transaction(work)

    def claim_state(self, key: str) -> int:
        """Own the state under ``key`` from now on (a fencing token; see :meth:`save_state`)."""
        return self.store.in_transaction(lambda conn: self.store.claim_state(key + "/owner", conn=conn))


def _by_epoch(batches: Iterable[BatchId]) -> dict[int, list[BatchRef]]:
    out: dict[int, list[BatchRef]] = {}
    for t, p, o, e in batches:
        out.setdefault(int(e), []).append((t, p, o))
    return out


def _epoch_table(raw: bytes | None) -> dict[tuple[str, int], int]:
    if not raw:
        return {}
    try:
        return {(str(t), int(p)): int(e) for t, p, e in json.loads(raw)["epochs"]}
    except (ValueError, KeyError, TypeError) as exc:
        log.error("epoch table unreadable, starting from epoch 0: %s", exc)
        return {}


def _epoch_bytes(table: dict[tuple[str, int], int]) -> bytes:
    return json.dumps({"epochs": [[t, p, e] for (t, p), e in sorted(table.items())]}).encode()
