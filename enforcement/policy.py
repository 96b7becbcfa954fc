"""Alert -> proposed decision: which alerts lead to action, what action, for how long, in which mode.

Pure functions over the settings: the enforcer supplies the history (how many times this
source was acted on before, the decisions already taken on this alert) so that repeat
offenders get an escalated TTL and an open alert that gains targets gets a decision for the
new ones only. Nothing here looks at guardrails; every proposal still goes through
:mod:`enforcement.guardrails`.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime

from flowwarden.enforcement.targets import parse_target
from flowwarden.errors import RecordError
from flowwarden.records import SEVERITY_ORDER, Action, Alert, Decision, Entity, Mode, utcnow
from flowwarden.settings import EnforcementSettings

DROPPED_TARGETS = "dropped_targets"
"""Key of ``Decision.backend_result`` listing the targets a guardrail dropped from the decision."""

WIDE_ALERT = "wide_alert"
"""Key of ``Decision.backend_result`` on a quarantine proposed for an alert with too many targets:
``{"targets": <how many>, "limit": <max_targets_per_block>, "first": [<at most the limit>]}``."""

SHOWN_IN_REASON = 5  # targets of a wide alert named in the decision's reason


def decision_id(alert_id: str, action: str, targets: Sequence[str] = ()) -> str:
    """Deterministic: replaying the same alert never creates a second decision.

    The first decision on an alert is named by the alert and the action; a later one, for
    targets the open alert gained, by the alert, the action and that new target set.
    """
    key = f"{alert_id}|{action}" + (f"|{','.join(sorted(set(targets)))}" if targets else "")
    return "d-" + hashlib.sha256(key.encode()).hexdigest()[:20]


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


def covered_targets(earlier: Iterable[Decision]) -> set[str]:
    """Targets already decided on by ``earlier`` decisions: their targets and the ones dropped."""
    out: set[str] = set()
    for d in earlier:
        out.update(d.targets)
        dropped = d.backend_result.get(DROPPED_TARGETS)
        if isinstance(dropped, list):
            out.update(str(x["target"]) for x in dropped if isinstance(x, dict) and "target" in x)
    return out


def new_targets(alert: Alert, earlier: Iterable[Decision]) -> list[str]:
    """The targets of ``alert`` that no ``earlier`` decision on it covers ([] when none).

    Every decision ever taken on the alert counts, whatever its status: a replay never
    decides twice, and a block a person revoked (or a refusal) is not silently taken again.
    A malformed target goes along with every new set, so that the ``malformed`` guardrail
    refuses each decision on an alert that carries garbage.
    """
    covered = covered_targets(earlier)
    targets = list(dict.fromkeys(alert.targets))
    if all(t in covered for t in targets):
        return []
    return [t for t in targets if t not in covered or not _valid_target(t)]


def _valid_target(value: str) -> bool:
    try:
        parse_target(value)
    except RecordError:
        return False
    return True


def propose(
    alert: Alert,
    cfg: EnforcementSettings,
    *,
    prior_offences: int = 0,
    targets: Sequence[str] | None = None,
) -> Decision | None:
    """The decision policy would take on ``alert`` (status ``pending``), or None when not eligible.

    ``targets``: a later decision on an open alert, for the targets it gained (see
    :func:`new_targets`); the decision id then names that target set.
    """
    if ineligible_reason(alert, cfg):
        return None
    action: Action = cfg.action
    ttl = escalated_ttl(prior_offences, cfg)
    repeat = f" (repeat offence #{prior_offences}, TTL escalated)" if prior_offences else ""
    if action == "quarantine":
        chosen: list[str] = []
        did = decision_id(alert.id, action)
    elif targets is None:
        chosen = list(dict.fromkeys(alert.targets))
        did = decision_id(alert.id, action)
    else:
        chosen = list(dict.fromkeys(targets))
        did = decision_id(alert.id, action, chosen)
    more = f"; {len(chosen)} new target(s) of the open alert" if targets is not None else ""
    if action == "block" and len(chosen) > cfg.max_targets_per_block:
        return wide_alert_quarantine(alert, cfg, chosen, ttl=ttl, more=f"{repeat}{more}")
    return Decision(
        id=did,
        alert_id=alert.id,
        action=action,
        source=alert.entity,
        targets=chosen,
        target_ports=list(alert.target_ports),
        ttl_s=ttl,
        mode=mode_for(alert.detector, cfg),
        status="pending",
        detector=alert.detector,
        reason=f"{alert.kind} alert {alert.id} by {alert.detector} score={alert.score:.2f} "
        f"severity={alert.severity}{repeat}{more}",
        decided_by="policy",
    )


def wide_alert_quarantine(
    alert: Alert, cfg: EnforcementSettings, targets: Sequence[str], *, ttl: int, more: str = ""
) -> Decision:
    """An alert with more targets than ``max_targets_per_block``: never an automatic wide block.

    A sweep of a /16 is not a list of targets to block one by one but a source to isolate, and
    that is a person's call: the proposal is a quarantine of the source in ``approval`` mode
    (``pending`` until ``flowwarden blocks approve``), whatever the configured mode. The decision
    carries no target; the first ``max_targets_per_block`` are kept in ``backend_result``
    (:data:`WIDE_ALERT`) and the reason names a few and counts the rest.
    """
    limit = cfg.max_targets_per_block
    shown = ", ".join(targets[:SHOWN_IN_REASON])
    return Decision(
        id=decision_id(alert.id, "quarantine"),
        alert_id=alert.id,
        action="quarantine",
        source=alert.entity,
        targets=[],
        target_ports=list(alert.target_ports),
        ttl_s=ttl,
        mode="approval",
        status="pending",
        detector=alert.detector,
        reason=f"{alert.kind} alert {alert.id} by {alert.detector} score={alert.score:.2f} "
        f"severity={alert.severity}{more}; {len(targets)} targets exceed max_targets_per_block={limit} "
        f"({shown} and {len(targets) - min(len(targets), SHOWN_IN_REASON)} more): quarantine of the "
        "source proposed, waiting for a person's approval",
        decided_by="policy",
        backend_result={
            WIDE_ALERT: {"targets": len(targets), "limit": limit, "first": list(targets[:limit])}
        },
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
