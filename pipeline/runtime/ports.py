"""What the runtime needs of the detection engine and of the store, as typed protocols.

The stage drives any engine and any store that has these methods (the real
:class:`~flowwarden.pipeline.detection.engine.DetectionEngine` and
:class:`~flowwarden.store.Store`, a test's stand-in, the demo's recording engine): no
``Any``, no attribute probing, and mypy checks each implementation where it is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import pandas as pd

from flowwarden.kube import PodInventory
from flowwarden.models.registry import LoadedModel
from flowwarden.pipeline.detection.stats import EngineStats
from flowwarden.records import Alert
from flowwarden.store import BatchRef

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

T = TypeVar("T")


class EngineOutput(Protocol):
    """One engine call's results."""

    @property
    def alerts(self) -> Sequence[Alert]: ...  # of every window that closed
    @property
    def enriched(self) -> pd.DataFrame: ...  # the call's flows, enriched, row for row
    @property
    def windows(self) -> pd.DataFrame: ...  # the entity-windows scored


class VerdictTaker(Protocol):
    """What applying a person's verdict on an alert needs of the engine."""

    def resolve(self, alert: Alert, *, benign: bool) -> int: ...


class Engine(Protocol):
    """Windows, features, detectors and alerts over a stream of flow batches."""

    def process(
        self, flows: pd.DataFrame, *, now: float | None = None, enriched: bool = False
    ) -> EngineOutput: ...
    def flush(self) -> EngineOutput: ...
    def open_window_floor(self) -> float | None: ...
    def set_model(self, model: LoadedModel | None) -> None: ...
    def set_inventory(self, inventory: PodInventory | None) -> None: ...
    def set_rules(self, policy: Any, policy_version: str, feeds: Any, feeds_version: str) -> None: ...
    def export_state(self) -> bytes: ...
    def import_state(self, data: bytes) -> None: ...
    def stats(self) -> EngineStats: ...
    def resolve(self, alert: Alert, *, benign: bool) -> int: ...  # a person's verdict on an alert


class PipelineStore(Protocol):
    """The store's side of exactly-once effects: alerts, rollups, batch marks, engine state;
    and people's verdicts on alerts (a state key, and the alerts they name)."""

    on_retry: Callable[[str], None] | None

    def in_transaction(self, work: Callable[[Connection], T]) -> T: ...
    def upsert_alerts(self, items: Iterable[Alert], *, conn: Connection | None = None) -> int: ...
    def add_rollups(self, df: pd.DataFrame, *, conn: Connection | None = None) -> int: ...
    def add_dns_rollups(self, df: pd.DataFrame, *, conn: Connection | None = None) -> int: ...
    def prune_rollups(self, before: datetime, *, conn: Connection | None = None) -> int: ...
    def prune_batches(self, before: datetime, *, conn: Connection | None = None) -> int: ...
    def mark_batches(
        self, group_id: str, batches: Iterable[BatchRef], *, epoch: int = 0, conn: Connection | None = None
    ) -> None: ...
    def seen_batches(
        self, group_id: str, batches: Iterable[BatchRef], *, epoch: int = 0, conn: Connection | None = None
    ) -> set[BatchRef]: ...
    def put_state(self, key: str, value: bytes, *, conn: Connection | None = None) -> None: ...
    def get_state(self, key: str, *, conn: Connection | None = None) -> bytes | None: ...
    def claim_state(self, key: str, *, conn: Connection | None = None) -> int: ...
    def holds_claim(self, key: str, claim: int, *, conn: Connection | None = None) -> bool: ...
    def get_alert(self, alert_id: str, *, conn: Connection | None = None) -> Alert | None: ...
