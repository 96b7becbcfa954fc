"""What the engine counted, as one object: the runtime exports it, tests read it.

Totals since the engine started (never reset), plus two levels (``state_entities``,
``evicted``) read when the snapshot is taken; the runtime turns the totals' growth into
Prometheus counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EngineStats:
    flows_in: int = 0  # flows given to the engine
    flows_scored: int = 0  # flows of an in-cluster source, in windows that closed
    flows_unscored: int = 0  # ingress and transit flows: enriched and counted, no source to score
    late_flows: int = 0  # arrived after their window closed: dropped
    windows_scored: int = 0  # entity-windows that went through the detectors
    early_alerts: int = 0  # alerts raised or updated from still-open windows (early firing)
    state_entities: int = 0  # sources with a baseline now
    evicted: dict[str, int] = field(default_factory=dict)  # memory bounds hit, by kind (totals)
    suppressed: dict[str, int] = field(default_factory=dict)  # alerts not raised, by reason (totals)
