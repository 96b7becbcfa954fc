"""People's verdicts on alerts, followed from the store into the running engine.

``flowwarden alerts resolve ID --benign|--malicious`` (or a dashboard) records a verdict in
the store (:data:`~flowwarden.pipeline.detection.feedback.RESOLUTIONS_KEY`); the stage asks
:class:`VerdictFollower` at most every ``pipeline.resolution_poll_s`` which verdicts are new,
and hands each to the engine (:meth:`~flowwarden.pipeline.detection.engine.DetectionEngine.resolve`).

A verdict is applied once: the follower remembers each alert's verdict by its time, and that
memory is saved in the checkpoint beside the engine state it changed (:meth:`export` /
:meth:`restore`). After a crash, the restored state predates exactly the verdicts the restored
memory lacks, so those are applied again and no others. A changed verdict (benign, then
malicious) is a new one. A verdict on an alert the store does not hold (yet) waits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flowwarden.errors import RecordError
from flowwarden.pipeline.detection.feedback import RESOLUTIONS_KEY, parse_resolutions
from flowwarden.pipeline.runtime.ports import PipelineStore, VerdictTaker
from flowwarden.records import Alert

log = logging.getLogger(__name__)


@dataclass
class VerdictFollower:
    """Which verdicts the engine holds (alert id -> the verdict's time), and the next poll."""

    poll_s: float
    applied: dict[str, str] = field(default_factory=dict)
    polls: int = 0  # how many times the store was asked
    _next_poll: float = float("-inf")

    def due(self, now: float) -> bool:
        return now >= self._next_poll

    def poll(
        self,
        store: PipelineStore,
        engine: VerdictTaker,
        now: float,
        on_applied: Callable[[Alert, str], None] | None = None,
    ) -> int:
        """Apply the verdicts recorded since the last poll; returns how many were applied."""
        return self.apply(self.read(store, now), store, engine, on_applied)

    def read(self, store: PipelineStore, now: float) -> list[dict[str, str]]:
        """Every verdict recorded (the store keeps one list); schedules the next poll."""
        self._next_poll = now + self.poll_s
        self.polls += 1
        try:
            return parse_resolutions(store.get_state(RESOLUTIONS_KEY))
        except RecordError as exc:
            log.error("alert verdicts unreadable key=%s error=%s", RESOLUTIONS_KEY, exc)
            return []

    def apply(
        self,
        items: list[dict[str, str]],
        store: PipelineStore,
        engine: VerdictTaker,
        on_applied: Callable[[Alert, str], None] | None = None,
    ) -> int:
        """Hand ``engine`` the verdicts among ``items`` it does not hold yet; how many."""
        done = 0
        for item in items:
            alert_id, verdict, at = item.get("alert_id", ""), item.get("verdict", ""), item.get("at", "")
            if not alert_id or self.applied.get(alert_id) == at:
                continue
            if verdict not in ("benign", "malicious"):
                log.error("alert verdict ignored alert=%s verdict=%r", alert_id, verdict)
                self.applied[alert_id] = at
                continue
            alert = store.get_alert(alert_id)
            if alert is None:
                continue  # recorded before the alert reached this store: try again next poll
            edges = engine.resolve(alert, benign=verdict == "benign")
            self.applied[alert_id] = at
            done += 1
            log.info("alert verdict applied alert=%s verdict=%s edges=%d", alert_id, verdict, edges)
            if on_applied is not None:
                on_applied(alert, verdict)
        return done

    def export(self) -> dict[str, str]:
        """The checkpoint's part: the verdicts the engine state holds."""
        return dict(self.applied)

    def restore(self, saved: Any) -> None:
        """From :meth:`export` (anything else: none applied, so every verdict is applied again)."""
        self.applied = {str(k): str(v) for k, v in saved.items()} if isinstance(saved, dict) else {}
