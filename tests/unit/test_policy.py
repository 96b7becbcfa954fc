"""Policy: filters, action, mode per detector, TTL escalation, deterministic ids."""

from __future__ import annotations

from enforcement import policy
from tests.unit.enforcement_support import alert, settings


def test_eligible_alert_becomes_a_pending_block_in_the_default_mode() -> None:
    cfg = settings().enforcement
    d = policy.propose(alert(), cfg)
    assert d is not None
    assert (d.action, d.mode, d.status, d.ttl_s) == ("block", "dry_run", "pending", 4 * 3600)
    assert d.targets == ["10.244.2.7"] and d.source.ip == "10.244.1.2" and d.detector == "port_scan"


def test_filters() -> None:
    cfg = settings(kinds=["exfiltration"], min_score=0.9, min_severity="high").enforcement
    assert policy.propose(alert(), cfg) is None  # kind
    assert policy.propose(alert(kind="exfiltration", score=0.85), cfg) is None
    assert policy.propose(alert(kind="exfiltration", severity="medium"), cfg) is None
    assert policy.propose(alert(kind="exfiltration"), cfg) is not None
    only = settings(detectors=["dns_tunnel"]).enforcement
    assert policy.ineligible_reason(alert(), only) == "detector port_scan not enforced"


def test_mode_per_detector_and_quarantine() -> None:
    cfg = settings(
        mode="approval", mode_by_detector={"port_scan": "enforce"}, action="quarantine"
    ).enforcement
    d = policy.propose(alert(), cfg)
    assert d is not None and d.mode == "enforce" and d.action == "quarantine" and d.targets == []
    other = policy.propose(alert(detector="volume"), cfg)
    assert other is not None and other.mode == "approval"


def test_ttl_doubles_per_repeat_and_is_capped() -> None:
    cfg = settings(ttl_s=100, ttl_max_s=700).enforcement
    assert [policy.escalated_ttl(n, cfg) for n in range(5)] == [100, 200, 400, 700, 700]
    d = policy.propose(alert(), cfg, prior_offences=2)
    assert d is not None and d.ttl_s == 400 and "repeat offence #2" in d.reason


def test_decision_id_is_deterministic_and_safe() -> None:
    a = alert()
    first, again = policy.propose(a, settings().enforcement), policy.propose(a, settings().enforcement)
    assert first is not None and again is not None and first.id == again.id
    assert first.id.startswith("d-") and len(first.id) == 22
    assert policy.decision_id(a.id, "block") != policy.decision_id(a.id, "quarantine")
