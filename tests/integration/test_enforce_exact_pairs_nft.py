"""Issue 16 in the kernel: the nftables rules deny exactly the decided pairs.

The offline plan's ``rules.nft`` (simulator alerts from the project's own detection plus
mutated copies) is loaded with ``nft -f`` into a namespace made for the test, and the same
decisions are applied by the backend into another; each ruleset is listed back with
``nft -j list ruleset`` and read by :func:`enforcement.audit.nftables_pairs`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowwarden.enforcement.audit import decided_pairs, nftables_pairs
from flowwarden.enforcement.backends.nftables import NftablesBackend, NftCommand
from flowwarden.enforcement.guardrails import Guardrails
from flowwarden.enforcement.offline import plan_offline
from flowwarden.records import Decision
from tests.support.netns import Lab
from tests.unit.enforce_audit_support import lab, mutations

pytestmark = [pytest.mark.integration, pytest.mark.netns]


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Decision], Path, list[str]]:
    sim = lab()
    out = tmp_path_factory.mktemp("rules")
    s = sim.settings.model_copy(deep=True)
    s.enforcement.gitops_dir = out / "gitops"
    decisions = plan_offline([*sim.alerts, *mutations(sim.alerts, s)], s, out, inventory=sim.inventory)
    protected = [str(n) for g in Guardrails(s, sim.inventory).protected for n in g.networks]
    return decisions, out, protected


@pytest.fixture
def netns() -> Iterator[Lab]:
    with Lab() as lab_:
        yield lab_


def test_the_rules_file_loaded_in_the_kernel_denies_exactly_the_decided_pairs(
    plan: tuple[list[Decision], Path, list[str]], netns: Lab
) -> None:
    decisions, out, _ = plan
    host = netns.host("nft")
    host.run("nft", "-f", str(out / "rules.nft"))
    listing = json.loads(host.run("nft", "-j", "list", "ruleset").stdout)
    assert nftables_pairs(listing) == decided_pairs(decisions)


def test_the_backend_applying_each_decision_denies_exactly_the_decided_pairs(
    plan: tuple[list[Decision], Path, list[str]], netns: Lab
) -> None:
    decisions, _, protected = plan
    host = netns.host("nft")
    backend = NftablesBackend(table="flowwarden", protected=protected, transport=NftCommand(host.name))
    backend.start()
    for d in decisions:
        if d.status == "simulated":
            backend.apply(d)
    listing = json.loads(host.run("nft", "-j", "list", "ruleset").stdout)
    assert nftables_pairs(listing) == decided_pairs(decisions)
