"""Policy: filters, action, mode per detector, TTL escalation, deterministic ids."""

from __future__ import annotations

from flowwarden.enforcement import policy
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


def test_a_later_decision_on_an_open_alert_is_named_by_its_new_targets() -> None:
    a = alert(targets=["10.244.2.7", "10.244.2.8", "10.244.2.9"])
    cfg = settings().enforcement
    later = policy.propose(a, cfg, targets=["10.244.2.9", "10.244.2.8"])
    assert later is not None and later.targets == ["10.244.2.9", "10.244.2.8"]
    assert later.id == policy.decision_id(a.id, "block", ["10.244.2.8", "10.244.2.9"])  # order-free
    assert later.id not in {
        policy.decision_id(a.id, "block"),
        policy.decision_id(a.id, "block", ["10.244.2.8"]),
    }
    assert "2 new target(s) of the open alert" in later.reason
    quarantine = policy.propose(a, settings(action="quarantine").enforcement, targets=["10.244.2.9"])
    assert (
        quarantine is not None
        and quarantine.targets == []
        and quarantine.id == policy.decision_id(a.id, "quarantine")
    )


def test_new_targets_are_those_no_earlier_decision_covers() -> None:
    cfg = settings().enforcement
    first = policy.propose(alert(targets=["10.244.2.7", "10.0.0.7"]), cfg)
    assert first is not None
    # The enforcer dropped the node's address from the first decision: it is covered too.
    first = first.model_copy(
        update={
            "targets": ["10.244.2.7"],
            "backend_result": {"dropped_targets": [{"target": "10.0.0.7", "guardrail": "node_address"}]},
        }
    )
    assert policy.covered_targets([first]) == {"10.244.2.7", "10.0.0.7"}
    assert policy.new_targets(alert(targets=["10.0.0.7", "10.244.2.7"]), [first]) == []
    grown = alert(targets=["10.244.2.7", "10.0.0.7", "10.244.2.9", "10.244.2.8"])
    assert policy.new_targets(grown, [first]) == ["10.244.2.9", "10.244.2.8"]
    assert policy.new_targets(grown, []) == grown.targets


def test_a_malformed_target_goes_along_with_every_new_set() -> None:
    cfg = settings().enforcement
    bad = "::ffff:10.0.0.1"  # a valid Alert target, refused by the malformed guardrail
    first = policy.propose(alert(targets=["10.244.2.7", bad]), cfg)
    assert first is not None
    assert policy.new_targets(alert(targets=["10.244.2.7", bad]), [first]) == []
    grown = policy.new_targets(alert(targets=["10.244.2.7", bad, "10.244.2.8"]), [first])
    assert len(grown) == 2 and grown[1] == "10.244.2.8" and "ffff" in grown[0]
