"""Feed export into a real nftables table inside test namespaces, and as Calico network sets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flowwarden.enforcement.backends.nftables import NftCommand
from flowwarden.enforcement.feeds_export import (
    NftFeedExporter,
    calico_network_sets,
    export_mode,
    write_calico,
)
from flowwarden.feeds import FeedSet, parse_feed
from flowwarden.feeds_fetch import protected_addresses
from tests.integration.enforce_lab import (
    API_PORT,
    CONTROL,
    TARGET,
    TARGET6,
    TARGET_PORT,
    EnforceLab,
    enforce_lab,
)

pytestmark = [pytest.mark.integration, pytest.mark.netns]
__all__ = ["enforce_lab"]


def _feeds(lab: EnforceLab, *lines: str) -> FeedSet:
    settings = lab.settings()
    return FeedSet([parse_feed("bad", "\n".join(lines) + "\n")], protected_addresses(settings))


def test_enforce_blocks_listed_targets_never_the_protected_one_and_refresh_is_atomic(
    enforce_lab: EnforceLab,
) -> None:
    lab = enforce_lab
    settings = lab.settings(mode="enforce")
    assert export_mode(settings) == "enforce"
    exporter = NftFeedExporter(settings, "enforce", NftCommand(lab.router.name))
    # The API server's /24 is listed too: it covers a protected address, so it is not exported.
    feeds = _feeds(lab, TARGET, "10.10.3.0/24", "203.0.113.0/25", "203.0.113.128/25", TARGET6)
    report = exporter.apply(feeds)
    assert report.cidrs == {"bad": 4}
    assert [(h.feed, h.entry) for h in report.protected] == [("bad", "10.10.3.0/24")]
    assert not lab.can_connect(TARGET, TARGET_PORT)
    assert not lab.can_connect(TARGET6, TARGET_PORT)
    assert lab.can_connect(CONTROL, API_PORT)
    v4 = lab.elements("feed_v4", table="flowwarden_feeds")
    assert {"prefix": {"addr": "203.0.113.0", "len": 24}} in v4  # the two halves merged

    # A refresh without the target: one batch, the set now holds only the new content.
    exporter.apply(_feeds(lab, "198.51.100.7"))
    assert lab.can_connect(TARGET, TARGET_PORT)
    assert lab.elements("feed_v4", table="flowwarden_feeds") == ["198.51.100.7"]
    exporter.remove()
    assert "flowwarden_feeds" not in lab.tables()


def test_dry_run_counts_but_never_blocks(enforce_lab: EnforceLab) -> None:
    lab = enforce_lab
    settings = lab.settings(mode="dry_run")
    exporter = NftFeedExporter(settings, export_mode(settings), NftCommand(lab.router.name))
    exporter.apply(_feeds(lab, TARGET))
    assert lab.can_connect(TARGET, TARGET_PORT)
    listed = lab.nft("list", "chain", "inet", "flowwarden_feeds", "feeds_forward").stdout
    assert "@feed_v4 counter packets" in listed and "reject" not in listed
    assert "packets 0 " not in listed.split("@feed_v4", 1)[1].splitlines()[0]


def test_calico_sets_chunk_and_leave_protected_entries_out(tmp_path: Path, enforce_lab: EnforceLab) -> None:
    feeds = _feeds(
        enforce_lab, TARGET, "10.10.3.0/24", *(f"198.18.{i // 256}.{i % 256}" for i in range(25_000))
    )
    docs, report = calico_network_sets(feeds)
    assert [d["metadata"]["name"] for d in docs] == ["flowwarden.feed.bad.0", "flowwarden.feed.bad.1"]
    nets = [n for d in docs for n in d["spec"]["nets"]]
    assert len(nets) == 25_001 and "10.10.3.0/24" not in nets
    assert [h.entry for h in report.protected] == ["10.10.3.0/24"]
    write_calico(feeds, tmp_path, "enforce")
    policy = yaml.safe_load((tmp_path / "calico" / "feeds-policy.yaml").read_text())
    assert policy["spec"]["egress"][0] == {
        "action": "Deny",
        "destination": {"selector": 'flowwarden.io/threat-feed == "true"'},
    }
    loaded = list(yaml.safe_load_all((tmp_path / "calico" / "feeds" / "bad.yaml").read_text()))
    assert sum(len(d["spec"]["nets"]) for d in loaded) == 25_001
