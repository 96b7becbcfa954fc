"""Alert -> proposed decision: which alerts lead to action, what action, for how long, in which mode.

Pure functions over the settings: the enforcer supplies the history (how many times this
source was acted on before) so that repeat offenders get an escalated TTL. Nothing here
looks at guardrails; every proposal still goes through :mod:`enforcement.guardrails`.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime

from flowwarden.records import SEVERITY_ORDER, Action, Alert, Decision, Entity, Mode, utcnow
from flowwarden.settings import EnforcementSettings


def decision_id(alert_id: str, action: str) -> str:
    """Deterministic: replaying the same alert never creates a second decision."""
    return "d-" + hashlib.sha256(f"{alert_id}|{action}".encode()).hexdigest()[:20]


def manual_decision_id() -> str:
    return "m-" + uuid.uuid4().hex[:20]


def ineligible_reason(alert: Alert, cfg: EnforcementSettings) -> str:
    """Why this alert leads to no decision at all ("" when it does)."""
    if alert.kind not in cfg.kinds:
        return f"kind {alert.kind} not enforced"
    if cfg.detectors and alert.detector not in cfg.detectors:
        return f"detector {alert.detector} not enforced"
    if SEVERITY_ORDER[alert.severity] < SEVERITY_ORDER[cfg.min_severity]:
        return f"severity {alert.severity} below {cfg.min_severity}"
    if alert.score < cfg.min_score:
        return f"score {alert.score:.3f} below {cfg.min_score}"
    return ""


def mode_for(detector: str, cfg: EnforcementSettings) -> Mode:
    return cfg.mode_by_detector.get(detector, cfg.mode)


def escalated_ttl(prior_offences: int, cfg: EnforcementSettings) -> int:
    """Each repeat multiplies the TTL by ``escalation_factor``, capped at ``ttl_max_s``."""
    ttl = float(cfg.ttl_s) * (cfg.escalation_factor ** max(prior_offences, 0))
    return int(min(ttl, cfg.ttl_max_s))


def propose(alert: Alert, cfg: EnforcementSettings, *, prior_offences: int = 0) -> Decision | None:
    """The decision policy would take on ``alert`` (status ``pending``), or None when not eligible."""
    if ineligible_reason(alert, cfg):
        return None
    action: Action = cfg.action
    ttl = escalated_ttl(prior_offences, cfg)
    repeat = f" (repeat offence #{prior_offences}, TTL escalated)" if prior_offences else ""
    return Decision(
        id=decision_id(alert.id, action),
        alert_id=alert.id,
        action=action,
        source=alert.entity,
        targets=[] if action == "quarantine" else list(dict.fromkeys(alert.targets)),
        target_ports=list(alert.target_ports),
        ttl_s=ttl,
        mode=mode_for(alert.detector, cfg),
        status="pending",
        detector=alert.detector,
        reason=f"{alert.kind} alert {alert.id} by {alert.detector} score={alert.score:.2f} "
        f"severity={alert.severity}{repeat}",
        decided_by="policy",
    )


def manual(
    *,
    source: Entity,
    targets: list[str],
    action: Action,
    ttl_s: int,
    mode: Mode,
    decided_by: str,
    reason: str = "",
    now: datetime | None = None,
) -> Decision:
    """A decision a person asked for from the CLI; it passes the same guardrails."""
    return Decision(
        id=manual_decision_id(),
        action=action,
        source=source,
        targets=targets,
        ttl_s=ttl_s,
        mode=mode,
        status="pending",
        decided_by=decided_by,
        reason=reason or "manual decision",
        created_at=now or utcnow(),
    )
