"""What the rule detectors share per batch (the factorised columns) and what a loaded feed costs the GC."""

from __future__ import annotations

import gc
import random

import numpy as np
import pytest

from flowwarden.feeds import FeedSet, parse_feed
from flowwarden.policy import parse_policy
from flowwarden.policy_match import BatchCodes, CompiledPolicy
from tests.unit.test_policy_match_equivalence import ENV, random_flows, random_policy


@pytest.mark.parametrize("seed", range(40))
def test_a_judgement_with_shared_codes_equals_one_without(seed: int) -> None:
    """The codes another judge factorised (and filled its caches on) give the same verdicts."""
    rng = random.Random(seed)
    policy = CompiledPolicy(parse_policy(random_policy(rng)), ENV)
    flows = random_flows(rng, rng.choice([1, 7, 300, 2000]))
    codes = BatchCodes(flows)
    FeedSet([parse_feed("f", "192.0.2.1\nevil.example\n", "lines")]).domains.match_codes(
        codes.column("dns_qname").codes, codes.column("dns_qname").uniques
    )
    first = policy.evaluate(flows, codes=codes)  # fills the shared columns' caches
    again = policy.evaluate(flows, codes=codes)  # reads them
    alone = policy.evaluate(flows)
    for v in (first, again):
        assert np.array_equal(v.violation, alone.violation)
        assert v.rule.tolist() == alone.rule.tolist()
        assert v.reason.tolist() == alone.reason.tolist()
        assert v.matched_name.tolist() == alone.matched_name.tolist()


def _values(codes: BatchCodes, name: str) -> list[object]:
    col = codes.column(name)
    return col.uniques[col.codes].tolist()


@pytest.mark.parametrize("seed", range(10))
def test_codes_from_vocabulary_ids_read_as_the_text_does(seed: int) -> None:
    """The engine's ids of the destination give each row the value factorising its text does,
    and the same verdicts (a missing address reads as "" both ways)."""
    rng = random.Random(seed)
    policy = CompiledPolicy(parse_policy(random_policy(rng)), ENV)
    flows = random_flows(rng, rng.choice([1, 7, 300, 2000]))
    if len(flows) > 3:
        flows.loc[2, "dst_ip"] = None
    strings = ["", *sorted({v for v in flows["dst_ip"].tolist() if isinstance(v, str)} - {""})]
    index = {v: i for i, v in enumerate(strings)}
    ids = np.array([index.get(v, 0) if isinstance(v, str) else 0 for v in flows["dst_ip"].tolist()])
    given, text = BatchCodes(flows, {"dst_ip": (ids, strings)}), BatchCodes(flows)
    assert _values(given, "dst_ip") == _values(text, "dst_ip")
    a, b = policy.evaluate(flows, codes=given), policy.evaluate(flows, codes=text)
    assert np.array_equal(a.violation, b.violation) and a.rule.tolist() == b.rule.tolist()
    assert a.reason.tolist() == b.reason.tolist() and a.matched_name.tolist() == b.matched_name.tolist()


@pytest.mark.parametrize("seed", range(10))
def test_mostly_empty_names_factorised_on_their_filled_rows_read_as_all_rows(seed: int) -> None:
    rng = random.Random(seed)
    flows = random_flows(rng, rng.choice([1, 7, 300, 2000]))
    if len(flows) > 3:
        flows.loc[1, "dns_qname"] = None
    codes = BatchCodes(flows)
    for name in ("dns_qname", "server_name"):
        want = [v if isinstance(v, str) else "" for v in flows[name].tolist()]
        assert _values(codes, name) == want


def test_codes_of_another_frame_are_not_used() -> None:
    rng = random.Random(1)
    a, b = random_flows(rng, 50), random_flows(rng, 60)
    codes = BatchCodes(a)
    assert codes.of(a) is codes
    other = codes.of(b)
    assert other is not codes and len(other.column("dst_ip").codes) == 60


def test_a_parsed_feeds_networks_are_not_walked_by_the_gc() -> None:
    text = "".join(f"10.{i // 256}.{i % 256}.0/24\n" for i in range(5000)) + "bad.example\n"
    feed = parse_feed("f", text, "lines")
    feeds = FeedSet([feed], protected=["10.0.0.10"])
    gc.collect()  # the entries are untracked first (tuples of ints), then the tuple holding them
    gc.collect()
    assert isinstance(feed.networks, tuple) and len(feed.networks) == 5000
    assert not gc.is_tracked(feed.networks)  # a full collection no longer walks a million entries
    assert feeds.protected_entries[0].entry == "10.0.0.0/24"  # still judged and reported
    assert len(feeds.exportable_cidrs("f")) == 4999
