"""Where the stage's results go: the ``alerts`` topic and the store.

Thin edges around the bus and the store. :class:`StoreSink` writes everything one engine
call produced (alerts, per-minute rollups of the batches fed, and the marks of those
batches) in ONE transaction: after a crash either all of it is in the store or none of it
is, and a replayed batch is recognised by its mark so its rollups are never added twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from flowwarden.bus import Producer
from flowwarden.records import Alert

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

log = logging.getLogger(__name__)

BatchId = tuple[str, int, int]  # (topic, partition, offset)


class AlertPublisher:
    """Produce alerts as JSON on the alerts topic, keyed by entity so one entity stays ordered."""

    def __init__(self, producer: Producer, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    def publish(self, alerts: Sequence[Alert]) -> None:
        for a in alerts:
            self.producer.send(self.topic, a.to_json().encode(), key=a.entity.key().encode())


class StoreSink:
    """Exactly-once effects of consumed batches in the store (see the module docstring)."""

    def __init__(self, store: Any, group_id: str) -> None:
        self.store = store
        self.group_id = group_id

    def seen(self, batches: Iterable[BatchId]) -> set[BatchId]:
        """The batches whose effects are already stored (a replay after a crash or a rebalance)."""
        ids = list(batches)
        if not ids:
            return set()
        found = self.store.seen_batches(self.group_id, ids)
        return {(str(t), int(p), int(o)) for t, p, o in found}

    def write(
        self, alerts: Sequence[Alert], enriched: pd.DataFrame | None, batches: Sequence[BatchId]
    ) -> None:
        """Alerts, the rollups of ``enriched`` and the batch marks, in one transaction."""
        from flowwarden.rollups import rollup_flows

        rollups = rollup_flows(enriched) if enriched is not None and len(enriched) else None
        if not alerts and rollups is None and not batches:
            return

        def work(conn: Connection) -> None:
            if alerts:
                self.store.upsert_alerts(list(alerts), conn=conn)
            if rollups is not None and len(rollups):
                self.store.add_rollups(rollups, conn=conn)
            if batches:
                self.store.mark_batches(self.group_id, list(batches), conn=conn)

        self.store.in_transaction(work)  # a deadlock or a lost connection: tried again

    def load_state(self, key: str) -> bytes | None:
        data: bytes | None = self.store.get_state(key)
        return data

    def save_state(self, key: str, data: bytes, offsets: bytes | None = None) -> None:
        """The engine's state and the offsets it holds, together (``key`` and ``key/offsets``)."""

        def work(conn: Connection) -> None:
            self.store.put_state(key, data, conn=conn)
            if offsets is not None:
                self.store.put_state(key + "/offsets", offsets, conn=conn)

        self.store.in_transaction(work)
