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


def test_the_rendered_json_and_text_are_one_ruleset_in_the_kernel(
    plan: tuple[list[Decision], Path, list[str]], tmp_path: Path
) -> None:
    """render_json loaded through the backend's own path (libnftables JSON, ``nft -j -f -``)
    and rules.nft loaded with ``nft -f`` list back as the same ruleset, denying the decided pairs."""
    decisions, _, protected = plan
    would = [d for d in decisions if d.status == "simulated"]
    # The traffic's own time, an hour before the first expiry: every element outlives the test.
    first = min(d.expires_at.timestamp() for d in would if d.expires_at is not None)
    backend = NftablesBackend(table="flowwarden", protected=protected, clock=lambda: first - 3600)
    listings = []
    with Lab() as lab_:
        by_json, by_text = lab_.host("json"), lab_.host("text")
        NftCommand(by_json.name).run(backend.render_json(would)["nftables"])
        (tmp_path / "rules.nft").write_text(backend.render(would))
        by_text.run("nft", "-f", str(tmp_path / "rules.nft"))
        for host in (by_json, by_text):
            listing = json.loads(host.run("nft", "-j", "list", "ruleset").stdout)
            listings.append(listing)
            assert nftables_pairs(listing) == decided_pairs(decisions)
    strip = [
        [_without_handles(i) for i in listing["nftables"] if "metainfo" not in i] for listing in listings
    ]
    assert strip[0] == strip[1]


def _without_handles(item: dict[str, object]) -> object:
    """A listed object without its kernel handle and the element expiry (the loads were not simultaneous)."""
    text = json.dumps(item, sort_keys=True)
    doc = json.loads(text)
    for obj in doc.values():
        if isinstance(obj, dict):
            obj.pop("handle", None)
            for e in obj.get("elem", []):
                if isinstance(e, dict) and "elem" in e:
                    e["elem"].pop("expires", None)
    return doc
