"""Issue 16: every backend denies exactly the decided (source, target) pairs, nothing else.

Alerts: the project's detection on simulator traffic and on the real-traffic lab's reporting
capture, each plus mutated copies (:mod:`tests.unit.enforce_audit_support`). They go through
the offline enforcer (``plan_offline``, the code of ``flowwarden enforce --alerts``); each rule
file it writes is read back by the checker of :mod:`enforcement.audit` for its backend, and the
pairs the file denies must equal the pairs the simulated decisions asked for.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowwarden.enforcement.audit import (
    EVERYTHING,
    AuditError,
    Pairs,
    adminnetworkpolicy_pairs,
    calico_pairs,
    cilium_pairs,
    decided_pairs,
    extra_pairs,
    networkpolicy_pairs,
    nftables_text_pairs,
)
from flowwarden.enforcement.backends.adminnetworkpolicy import AdminNetworkPolicyBackend
from flowwarden.enforcement.backends.cilium import CiliumBackend
from flowwarden.enforcement.backends.kube import KubeClient
from flowwarden.enforcement.backends.networkpolicy import NetworkPolicyBackend
from flowwarden.enforcement.guardrails import Guardrails
from flowwarden.enforcement.offline import RULES_FILES, plan_offline, read_alerts
from flowwarden.errors import RecordError
from flowwarden.records import Decision
from flowwarden.settings import Settings
from tests.unit.enforce_audit_support import MARKERS, Lab, bad_lines, lab, lab_capture, mutations, pods_of

Planned = tuple[list[Decision], Path, Settings]


@pytest.fixture(scope="module")
def simulator_lab() -> Lab:
    return lab()


@pytest.fixture(scope="module", params=["simulator", "lab capture"])
def sim(request: pytest.FixtureRequest, simulator_lab: Lab) -> Lab:
    """Every backend's exact-pairs test runs on both: simulated traffic and the real lab capture."""
    return simulator_lab if request.param == "simulator" else lab_capture()


def _plan(sim: Lab, tmp_path_factory: pytest.TempPathFactory) -> Planned:
    out = tmp_path_factory.mktemp("rules")
    s = sim.settings.model_copy(deep=True)
    s.enforcement.gitops_dir = out / "gitops"
    s.enforcement.act_on_learning = True  # the short simulation is all learning; these tests are about rules
    alerts = [*sim.alerts, *mutations(sim.alerts, s)]
    decisions = plan_offline(alerts, s, out, inventory=sim.inventory)
    return decisions, out, s


@pytest.fixture(scope="module")
def planned(sim: Lab, tmp_path_factory: pytest.TempPathFactory) -> Planned:
    return _plan(sim, tmp_path_factory)


@pytest.fixture(scope="module")
def planned_simulator(simulator_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Planned:
    """The scenario tests need the simulator's several attacking sources and its sweep."""
    return _plan(simulator_lab, tmp_path_factory)


def protected(s: Settings, sim: Lab) -> list[str]:
    return [str(n) for g in Guardrails(s, sim.inventory).protected for n in g.networks]


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def simulated(decisions: list[Decision]) -> list[Decision]:
    return [d for d in decisions if d.status == "simulated"]


def test_the_lab_alerts_lead_to_blocks_of_several_sources(planned_simulator: Planned) -> None:
    decisions, _, _ = planned_simulator
    would = simulated(decisions)
    assert len({d.source.ip for d in would}) >= 3, "the audit needs concurrent blocks of several sources"
    assert sum(len(d.targets) for d in would) >= 40


def test_each_source_of_alerts_gives_blocks_to_audit(planned: Planned) -> None:
    decisions, _, _ = planned
    assert sum(len(d.targets) for d in simulated(decisions)) >= 4


def test_nftables_rules_deny_exactly_the_decided_pairs(
    planned: tuple[list[Decision], Path, Settings],
) -> None:
    decisions, out, _ = planned
    assert nftables_text_pairs((out / "rules.nft").read_text()) == decided_pairs(decisions)


def test_calico_policies_deny_exactly_the_decided_pairs(
    planned: tuple[list[Decision], Path, Settings], sim: Lab
) -> None:
    decisions, out, s = planned
    got = calico_pairs(docs(out / "calico.yaml"), protected(s, sim))
    assert got == decided_pairs(decisions)
    assert extra_pairs(got, decided_pairs(decisions)) == 0


def test_cilium_policies_deny_exactly_the_decided_pairs(
    planned: tuple[list[Decision], Path, Settings], sim: Lab
) -> None:
    decisions, out, s = planned
    pods = pods_of(simulated(decisions), CiliumBackend(s, KubeClient(enabled=False)), sim.inventory)
    assert cilium_pairs(docs(out / "cilium.yaml"), pods, protected(s, sim)) == decided_pairs(decisions)


def test_adminnetworkpolicies_deny_exactly_the_decided_pairs(
    planned: tuple[list[Decision], Path, Settings], sim: Lab
) -> None:
    decisions, out, s = planned
    pods = pods_of(
        simulated(decisions), AdminNetworkPolicyBackend(s, KubeClient(enabled=False)), sim.inventory
    )
    got = adminnetworkpolicy_pairs(docs(out / "adminnetworkpolicies.yaml"), pods, protected(s, sim))
    assert got == decided_pairs(decisions)


def test_networkpolicies_deny_exactly_the_decided_pairs(
    planned: tuple[list[Decision], Path, Settings], sim: Lab
) -> None:
    decisions, out, s = planned
    pods = pods_of(simulated(decisions), NetworkPolicyBackend(s, KubeClient(enabled=False)), sim.inventory)
    got = networkpolicy_pairs(docs(out / "networkpolicies.yaml"), pods, protected(s, sim))
    assert got == decided_pairs(decisions)


def test_nothing_protected_or_too_wide_is_denied_and_no_injected_text_is_written(
    planned: tuple[list[Decision], Path, Settings], sim: Lab
) -> None:
    decisions, out, s = planned
    g = Guardrails(s, sim.inventory)
    for src, nets in decided_pairs(decisions).items():
        assert not g.protected_ranges.overlaps(ipaddress.ip_network(src)), src
        assert EVERYTHING not in nets
    for d in simulated(decisions):
        for t in d.targets:
            net = ipaddress.ip_network(t)
            assert not g.protected_ranges.overlaps(net), t
            assert net.prefixlen >= (
                s.enforcement.min_prefix_v4 if net.version == 4 else s.enforcement.min_prefix_v6
            )
    for name in RULES_FILES:
        text = (out / name).read_text()
        for marker in MARKERS:
            assert marker not in text, (name, marker)


def test_the_mutations_meet_the_guardrails_that_refuse_them(planned_simulator: Planned) -> None:
    decisions, _, _ = planned_simulator
    refused = {d.guardrail for d in decisions if d.status == "refused"}
    assert {"malformed", "allow_namespace", "cluster_dns", "no_targets"} <= refused


def test_the_100k_target_sweep_is_a_quarantine_waiting_for_a_person(planned_simulator: Planned) -> None:
    decisions, _, s = planned_simulator
    wide = [d for d in decisions if "wide_alert" in d.backend_result]
    assert len(wide) == 1
    d = wide[0]
    assert (d.action, d.mode, d.status, d.targets) == ("quarantine", "approval", "pending", [])
    assert d.backend_result["wide_alert"]["targets"] == 100_000
    assert len(d.backend_result["wide_alert"]["first"]) == s.enforcement.max_targets_per_block
    assert "100000 targets exceed max_targets_per_block" in d.reason
    assert all(len(x.targets) <= s.enforcement.max_targets_per_block for x in decisions)


def test_quarantines_deny_everything_but_protected_in_every_backend(sim: Lab, tmp_path: Path) -> None:
    s = sim.settings.model_copy(deep=True)
    s.enforcement.action = "quarantine"
    s.enforcement.gitops_dir = tmp_path / "gitops"
    decisions = plan_offline(sim.alerts, s, tmp_path, inventory=sim.inventory)
    decided = decided_pairs(decisions)
    assert decided and all(v == {EVERYTHING} for v in decided.values())
    p = protected(s, sim)
    would = simulated(decisions)
    assert nftables_text_pairs((tmp_path / "rules.nft").read_text()) == decided
    assert calico_pairs(docs(tmp_path / "calico.yaml"), p) == decided
    cilium = CiliumBackend(s, KubeClient(enabled=False))
    assert cilium_pairs(docs(tmp_path / "cilium.yaml"), pods_of(would, cilium, sim.inventory), p) == decided
    netpol = NetworkPolicyBackend(s, KubeClient(enabled=False))
    got = networkpolicy_pairs(
        docs(tmp_path / "networkpolicies.yaml"), pods_of(would, netpol, sim.inventory), p
    )
    assert got == decided
    anp = AdminNetworkPolicyBackend(s, KubeClient(enabled=False))
    anp_docs = docs(tmp_path / "adminnetworkpolicies.yaml")
    assert adminnetworkpolicy_pairs(anp_docs, pods_of(would, anp, sim.inventory), p) == decided


def test_malformed_alert_lines_are_rejected_naming_the_line(sim: Lab, tmp_path: Path) -> None:
    good = sim.alerts[0].to_json()
    for n, line in enumerate(bad_lines(sim.alerts[0]), start=1):
        path = tmp_path / f"a{n}.jsonl"
        path.write_text(good + "\n" + line + "\n")
        with pytest.raises(RecordError, match=f"{path}:2"):
            read_alerts(path)


# --------------------------------------------------------------------------- the checkers can fail


def _old_calico(blocks: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The former Calico design: shared sets and one policy denying every source to every target."""
    out: list[dict[str, Any]] = [
        {
            "kind": "GlobalNetworkPolicy",
            "metadata": {"name": "flowwarden.enforce"},
            "spec": {
                "tier": "flowwarden",
                "selector": "all()",
                "egress": [
                    {
                        "action": "Deny",
                        "source": {"selector": "flowwarden.io/set == 'blocked-sources'"},
                        "destination": {"selector": "flowwarden.io/set == 'blocked-destinations'"},
                    },
                    {"action": "Pass"},
                ],
            },
        }
    ]
    for i, (src, targets) in enumerate(blocks.items()):
        for role, nets in (("blocked-sources", [f"{src}/32"]), ("blocked-destinations", targets)):
            out.append(
                {
                    "kind": "GlobalNetworkSet",
                    "metadata": {"name": f"s{i}-{role}", "labels": {"flowwarden.io/set": role}},
                    "spec": {"nets": nets},
                }
            )
    return out


def test_the_checker_finds_the_pairs_the_former_calico_design_added(planned_simulator: Planned) -> None:
    decisions, _, _ = planned_simulator
    decided: Pairs = decided_pairs(decisions)
    blocks = {src: sorted(nets) for src, nets in decided.items()}
    got = calico_pairs(_old_calico(blocks))
    assert got != decided
    assert extra_pairs(got, decided) > 0


def test_checkers_refuse_rules_they_do_not_understand() -> None:
    allow = {
        "kind": "GlobalNetworkPolicy",
        "metadata": {"name": "flowwarden.x"},
        "spec": {"tier": "flowwarden", "selector": "all()", "egress": [{"action": "Allow"}]},
    }
    with pytest.raises(AuditError):
        calico_pairs([allow])
    with pytest.raises(AuditError):
        nftables_text_pairs("table inet t {\n\tchain output {\n\t\tip daddr 10.0.0.1 drop\n\t}\n}\n")
    spare = {
        "kind": "GlobalNetworkPolicy",
        "metadata": {"name": "flowwarden.q"},
        "spec": {
            "tier": "flowwarden",
            "selector": "all()",
            "egress": [
                {
                    "action": "Deny",
                    "source": {"nets": ["10.1.1.1/32"]},
                    "destination": {"notNets": ["8.8.8.8/32"]},
                }
            ],
        },
    }
    with pytest.raises(AuditError, match="not a protected address"):
        calico_pairs([spare], ["10.96.0.10/32"])


def test_decided_pairs_are_per_source(planned: tuple[list[Decision], Path, Settings]) -> None:
    decisions, _, _ = planned
    decided = decided_pairs(decisions)
    for d in simulated(decisions):
        if d.action == "block":
            for t in d.targets:
                net = ipaddress.ip_network(t)
                assert any(net.subnet_of(ipaddress.ip_network(n)) for n in decided[d.source.ip])  # type: ignore[arg-type]
    assert json.dumps({k: sorted(v) for k, v in decided.items()})  # printable for a reviewer
