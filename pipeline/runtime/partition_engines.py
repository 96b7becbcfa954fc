"""One engine per assigned partition: detection state that moves with its partitions (issue 19).

Behind the enrich stage, every flow of a workload is on one partition of the topic keyed by
workload, so a partition's engine holds everything that partition's workloads have taught:
baselines, seen edges, recent connections, open alerts. That is what makes the state
movable. A detect worker runs one engine per partition it is assigned (as Kafka Streams runs
one task per input partition) and checkpoints each under the *partition's* key in the store,
not the worker's; whichever worker is assigned the partition next, after a rebalance, a
crash or a restart under a new pod name, restores that state and replays from the group's
committed offset (see :class:`~flowwarden.pipeline.runtime.stage.PipelineStage`).

The engines keep one clock: after each feed every engine is advanced to the newest watermark
among them, so a partition that went quiet closes its windows exactly when one engine over
all the worker's partitions would have (and its batches can be committed).

Why the store and not a changelog topic: the state is exported whole (numpy tables), one
value per partition where the newest wins, which is what a compacted changelog converges to;
tansu, like any broker before compaction runs, would keep every snapshot and make a restore
read them all. The store already holds the batch marks and verdicts that the same checkpoint
must agree with.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import pandas as pd

from flowwarden.kube import PodInventory
from flowwarden.models.registry import LoadedModel
from flowwarden.pipeline.detection.detectors.flow_rules import rule_tallies
from flowwarden.pipeline.detection.stats import EngineStats
from flowwarden.pipeline.runtime.ports import Engine
from flowwarden.records import Alert, empty_flows


class ClockedEngine(Engine, Protocol):
    """An engine that tells the event time its windows close by (the detection engine does)."""

    def watermark(self) -> float: ...

    def note_stream_start(self, ts: float) -> None: ...


@dataclass
class MergedOutput:
    """Several engine calls' results as one (alerts in partition order)."""

    alerts: list[Alert] = field(default_factory=list)
    enriched: pd.DataFrame = field(default_factory=pd.DataFrame)
    windows: pd.DataFrame = field(default_factory=pd.DataFrame)

    def add(self, out: Any) -> None:
        self.alerts.extend(out.alerts)
        if len(out.windows):
            self.windows = out.windows if not len(self.windows) else pd.concat([self.windows, out.windows])


class PartitionEngines:
    """The engines of the partitions this worker owns, behind the :class:`Engine` interface.

    Data goes to one partition's engine (:meth:`process_partition`); everything else (the
    idle clock, flush, the model, the pod inventory, the rules, verdicts, the cluster-wide
    memory, the counters) goes to all of them, and a newly assigned partition's engine gets
    the current model, inventory, rules and memory before its state is restored.
    """

    def __init__(self, factory: Callable[[], ClockedEngine]) -> None:
        self.factory = factory
        self.engines: dict[int, ClockedEngine] = {}
        # What the runtime handed over so far (unset: the factory's engine keeps its own).
        self._model: tuple[LoadedModel | None] | None = None
        self._inventory: tuple[PodInventory | None] | None = None
        self._rules: tuple[Any, str, Any, str] | None = None
        self._sharing = False  # the cluster-wide memory is exchanged (take_global_memory was called)
        self._known: dict[int, float] = {}  # every cluster-wide first sighting merged so far
        self._retired = EngineStats()  # the totals of engines whose partitions moved away
        self._retired_tallies: dict[str, dict[str, int]] = {}
        # Restored partitions replaying from their committed offset, behind the others' clock:
        # never advanced by it (their replayed rows would all be late) until they catch up.
        self._catching_up: dict[int, float] = {}  # partition -> the clock when it was restored

    # ------------------------------------------------------------------ partitions
    def __contains__(self, partition: int) -> bool:
        return partition in self.engines

    def __iter__(self) -> Iterator[tuple[int, ClockedEngine]]:
        return iter(sorted(self.engines.items()))

    def __len__(self) -> int:
        return len(self.engines)

    def assign(self, partition: int, state: bytes | None = None) -> ClockedEngine:
        """A fresh engine for ``partition`` (restored from ``state`` when there is one)."""
        engine = self.factory()
        if self._model is not None:  # before the state: a model's shipped warm start yields to it
            engine.set_model(self._model[0])
        if self._inventory is not None:
            engine.set_inventory(self._inventory[0])
        if self._rules is not None:
            engine.set_rules(*self._rules)
        if self._sharing:
            take = getattr(engine, "take_global_memory", None)
            if callable(take):
                take()  # start the engine's bookkeeping of what it learns
            self._merge_into(engine, self._known)
        if state:
            engine.import_state(state)
            self._catching_up[partition] = self._clock()
        self.engines[partition] = engine
        return engine

    def revoke(self, partition: int) -> None:
        """Drop ``partition``'s engine: its new owner restores the last checkpoint."""
        engine = self.engines.pop(partition, None)
        self._catching_up.pop(partition, None)
        if engine is not None:
            self._retired = _add_totals(self._retired, engine.stats())
            self._retired_tallies = _add_tallies(self._retired_tallies, _tallies_of(engine))

    def engine(self, partition: int) -> ClockedEngine:
        return self.engines[partition]

    def process_partition(self, partition: int, flows: pd.DataFrame) -> Any:
        return self.engines[partition].process(flows)

    def advance(self) -> MergedOutput:
        """Drive every engine to the newest watermark among them: the windows that closed.

        One engine over all these partitions would close its windows by that one clock; a
        partition that went quiet does the same here (and its batches can be committed). A
        partition restored after a rebalance replays from its committed offset, behind that
        clock: it keeps its own until it has caught up (the uninterrupted run closed its
        windows as it went, not at the clock of partitions that were ahead)."""
        out = MergedOutput()
        # A restored partition rejoins the clock once its replay has reached where it was
        # when the partition came here.
        self._catching_up = {p: t for p, t in self._catching_up.items() if self.engines[p].watermark() < t}
        now = self._clock()
        if not math.isfinite(now):
            return out
        for p, engine in self:
            if p not in self._catching_up and engine.watermark() < now:
                out.add(engine.process(empty_flows(), now=now))
        return out

    # ------------------------------------------------------------------ Engine
    def process(
        self, flows: pd.DataFrame, *, now: float | None = None, enriched: bool = False
    ) -> MergedOutput:
        """The idle clock (no rows): every engine to ``now``. Rows need a partition."""
        if len(flows):
            raise ValueError("flows go to their partition's engine: process_partition(p, flows)")
        out = MergedOutput()
        for _, engine in self:
            out.add(engine.process(flows, now=now))
        return out

    def flush(self) -> MergedOutput:
        out = MergedOutput()
        for _, engine in self:
            out.add(engine.flush())
        return out

    def open_window_floor(self) -> float | None:
        floors = [f for _, e in self if (f := e.open_window_floor()) is not None]
        return min(floors) if floors else None

    def _clock(self) -> float:
        """The newest watermark among the engines that are not replaying."""
        return max((e.watermark() for p, e in self if p not in self._catching_up), default=-math.inf)

    def set_model(self, model: LoadedModel | None) -> None:
        self._model = (model,)
        for _, engine in self:
            engine.set_model(model)

    def set_inventory(self, inventory: PodInventory | None) -> None:
        self._inventory = (inventory,)
        for _, engine in self:
            engine.set_inventory(inventory)

    def set_rules(self, policy: Any, policy_version: str, feeds: Any, feeds_version: str) -> None:
        self._rules = (policy, policy_version, feeds, feeds_version)
        for _, engine in self:
            engine.set_rules(policy, policy_version, feeds, feeds_version)

    def export_state(self) -> bytes:
        raise TypeError("partitioned state is exported per partition: engine(p).export_state()")

    def import_state(self, data: bytes) -> None:
        raise TypeError("partitioned state is restored per partition: assign(p, state)")

    def stats(self) -> EngineStats:
        total = self._retired
        level = 0
        for _, engine in self:
            s = engine.stats()
            total = _add_totals(total, s)
            level += s.state_entities
        return EngineStats(**{**total.__dict__, "state_entities": level})

    def resolve(self, alert: Alert, *, benign: bool) -> int:
        """Every engine (the one whose workload raised it holds its edges; the others hold none)."""
        return sum(engine.resolve(alert, benign=benign) for _, engine in self)

    def rule_tallies(self) -> dict[str, dict[str, int]]:
        """The rule detectors' running totals over every engine this worker has run."""
        total = self._retired_tallies
        for _, engine in self:
            total = _add_tallies(total, _tallies_of(engine))
        return total

    # ------------------------------------------------------------------ global memory
    def take_global_memory(self) -> dict[int, float]:
        """What any engine saw first since the last call (the earliest per edge)."""
        self._sharing = True
        out: dict[int, float] = {}
        for _, engine in self:
            take = getattr(engine, "take_global_memory", None)
            if callable(take):
                for edge, first in take().items():
                    out[edge] = min(first, out.get(edge, first))
        for edge, first in out.items():
            self._known[edge] = min(first, self._known.get(edge, first))
        return out

    def merge_global_memory(self, entries: dict[int, float]) -> None:
        for edge, first in entries.items():
            self._known[edge] = min(first, self._known.get(edge, first))
        for _, engine in self:
            self._merge_into(engine, entries)

    @staticmethod
    def _merge_into(engine: Engine, entries: dict[int, float]) -> None:
        merge = getattr(engine, "merge_global_memory", None)
        if callable(merge) and entries:
            merge(entries)


def _tallies_of(engine: Engine) -> dict[str, dict[str, int]]:
    return rule_tallies(getattr(engine, "detectors", []))


def _add_tallies(a: dict[str, dict[str, int]], b: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    out = {name: dict(t) for name, t in a.items()}
    for name, t in b.items():
        into = out.setdefault(name, {})
        for k, n in t.items():
            into[k] = into.get(k, 0) + n
    return out


def _add_totals(a: EngineStats, b: EngineStats) -> EngineStats:
    """The running totals of two engines as one (``state_entities``, a level, is ``a``'s)."""

    def add(x: dict[str, int], y: dict[str, int]) -> dict[str, int]:
        return {k: x.get(k, 0) + y.get(k, 0) for k in x.keys() | y.keys()}

    return EngineStats(
        flows_in=a.flows_in + b.flows_in,
        flows_scored=a.flows_scored + b.flows_scored,
        flows_unscored=a.flows_unscored + b.flows_unscored,
        late_flows=a.late_flows + b.late_flows,
        windows_scored=a.windows_scored + b.windows_scored,
        early_alerts=a.early_alerts + b.early_alerts,
        state_entities=a.state_entities,
        evicted=add(a.evicted, b.evicted),
        suppressed=add(a.suppressed, b.suppressed),
    )
