"""The nftables backend describes its table once, as libnftables JSON; ``rules.nft`` is that JSON as text.

The kernel-side proof (both forms loaded into network namespaces, listed back) is in
``tests/integration/test_enforce_exact_pairs_nft.py``; here the two forms are read by the
audit's own checkers and must deny the same, decided, pairs.
"""

from __future__ import annotations

from typing import Any

import pytest

from flowwarden.enforcement.audit import decided_pairs, nftables_pairs, nftables_text_pairs
from flowwarden.enforcement.backends.nftables import NftablesBackend, nft_text
from flowwarden.records import Decision
from tests.unit.enforcement_support import decision

NOW = 1_800_000_000.0


def _decisions() -> list[Decision]:
    ds = [
        decision(id="d-1", ip="10.244.1.2", targets=["10.244.2.7", "10.244.3.0/24"], ttl_s=600),
        decision(id="d-2", ip="10.244.1.2", targets=["10.244.3.9"], ttl_s=900),  # inside d-1's /24
        decision(id="d-3", ip="10.244.1.5", action="quarantine", targets=[], ttl_s=60),
        decision(id="d-4", ip="fd00:10:244::5", targets=["fd00:10:244::/120", "10.244.2.7"], ttl_s=60),
    ]
    return [d.model_copy(update={"status": "simulated"}) for d in ds]


def _listing(commands: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``nft -j list table`` would show after these add commands (sets with their elements)."""
    sets: dict[str, dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for cmd in commands:
        ((kind, obj),) = cmd["add"].items()
        if kind == "set":
            sets[obj["name"]] = {**obj, "elem": []}
        elif kind == "element":
            sets[obj["name"]]["elem"].extend(obj["elem"])
        elif kind in ("chain", "rule"):
            out.append({kind: obj})
    return {"nftables": [{"set": s} for s in sets.values()] + out}


@pytest.mark.parametrize("verdict", ["reject", "drop"])
def test_the_json_and_the_text_deny_exactly_the_decided_pairs(verdict: str) -> None:
    backend = NftablesBackend(
        table="flowwarden", protected=["10.96.0.0/12", "10.0.0.1"], verdict=verdict, clock=lambda: NOW
    )
    decisions = _decisions()
    doc = backend.render_json(decisions)
    assert [next(iter(c)) for c in doc["nftables"]] == ["add"] * len(doc["nftables"])  # nothing else
    text = backend.render(decisions)
    assert text == nft_text(doc["nftables"])
    assert nftables_pairs(_listing(doc["nftables"])) == decided_pairs(decisions)
    assert nftables_text_pairs(text) == decided_pairs(decisions)
    # Overlapping targets of one source are merged into the widest (the kernel refuses overlaps).
    assert "10.244.1.2 . 10.244.3.9" not in text and "10.244.1.2 . 10.244.3.0/24 timeout 900s" in text


def test_text_refuses_what_it_cannot_write() -> None:
    with pytest.raises(ValueError, match="only single add commands"):
        nft_text([{"delete": {"table": {"family": "inet", "name": "t"}}}])
    with pytest.raises(ValueError, match="no text form"):
        nft_text([{"add": {"rule": {"chain": "c", "expr": [{"jump": {"target": "x"}}]}}}])
