"""A running enforcer keeps the threat-feed export current in real nftables (enforcement.feed_export).

The enforcer runs in this process (SQLite store, no bus); its nft commands run inside the lab's
router namespace. The feed is a file: an edit is exported at the next look (``refresh_s``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from flowwarden.bus_memory import MemoryBus
from flowwarden.enforcement.enforcer import Enforcer
from flowwarden.settings import RulesSettings, Settings
from flowwarden.store import Store
from tests.integration.enforce_lab import (
    API_PORT,
    CONTROL,
    TARGET,
    TARGET_PORT,
    EnforceLab,
    enforce_lab,
)
from tests.support.netns import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.netns]
__all__ = ["enforce_lab"]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'fw.db'}").start()
    yield s
    s.stop()


def _settings(lab: EnforceLab, feed: Path, gitops: Path) -> Settings:
    base = lab.settings(
        mode="enforce", feed_export={"nft": True, "calico_dir": str(gitops), "refresh_s": 0.05}
    )
    rules = RulesSettings.model_validate(
        {"feeds": [{"name": "bad", "url": str(feed), "format": "lines"}], "feed_cache_dir": str(feed.parent)}
    )
    return base.model_copy(update={"rules": rules})


def _metric(enforcer: Enforcer, line_start: str) -> float:
    for line in generate_latest(enforcer.metrics.registry).decode().splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


def test_running_enforcer_loads_the_feed_picks_up_an_edit_and_never_exports_a_protected_address(
    enforce_lab: EnforceLab, store: Store, tmp_path: Path
) -> None:
    lab = enforce_lab
    feed = tmp_path / "feeds" / "bad.txt"
    feed.parent.mkdir()
    # CONTROL is the API server: listed, never exported (reported instead), still reachable.
    feed.write_text(f"# c2\n{TARGET}\n{CONTROL}\n")
    gitops = tmp_path / "gitops"
    enforcer = Enforcer(_settings(lab, feed, gitops), store=store, bus=MemoryBus(default_partitions=1))
    enforcer.start()
    try:
        loop = enforcer.feed_export
        assert loop is not None and loop.exports == 1  # the first export is done by start()
        assert lab.elements("feed_v4", table="flowwarden_feeds") == [TARGET]
        assert not lab.can_connect(TARGET, TARGET_PORT)
        assert lab.can_connect(CONTROL, API_PORT)
        assert loop.last_report is not None
        assert [(h.feed, h.entry) for h in loop.last_report.protected] == [("bad", f"{CONTROL}/32")]
        assert _metric(enforcer, 'flowwarden_feed_export_entries{feed="bad"}') == 1.0
        assert _metric(enforcer, "flowwarden_feed_export_protected_entries") == 1.0
        assert _metric(enforcer, "flowwarden_feed_export_last_success_timestamp_seconds") > 0
        calico = list(yaml.safe_load_all((gitops / "calico" / "feeds" / "bad.yaml").read_text()))
        assert calico[0]["spec"]["nets"] == [f"{TARGET}/32"]

        # An edit of the feed file: the next look exports it, in one batch.
        feed.write_text("# c2, moved\n198.51.100.7\n203.0.113.0/24\n")
        wait_for(
            lambda: (
                lab.elements("feed_v4", table="flowwarden_feeds")
                == ["198.51.100.7", {"prefix": {"addr": "203.0.113.0", "len": 24}}]
            ),
            timeout=20,
            what="the edited feed in the nft set",
        )
        assert lab.can_connect(TARGET, TARGET_PORT)
        wait_for(
            lambda: _metric(enforcer, 'flowwarden_feed_export_entries{feed="bad"}') == 2.0,
            timeout=10,
            what="the export's entry metric",
        )

        # The feed file gone: the last good copy stays exported and the failure is counted.
        exports = loop.exports
        feed.unlink()
        wait_for(
            lambda: _metric(enforcer, 'flowwarden_feed_export_failures_total{stage="fetch"}') >= 1.0,
            timeout=10,
            what="the fetch failure to be counted",
        )
        assert loop.exports == exports
        assert len(lab.elements("feed_v4", table="flowwarden_feeds")) == 2
    finally:
        enforcer.stop()
    assert enforcer.feed_export is not None and enforcer.feed_export._thread is None


def test_no_feed_export_without_the_setting_nor_in_a_one_shot_command(
    enforce_lab: EnforceLab, store: Store, tmp_path: Path
) -> None:
    feed = tmp_path / "bad.txt"
    feed.write_text(f"{TARGET}\n")
    settings = enforce_lab.settings(mode="enforce").model_copy(
        update={"rules": RulesSettings.model_validate({"feeds": [{"name": "bad", "url": str(feed)}]})}
    )
    enforcer = Enforcer(settings, store=store, bus=MemoryBus(default_partitions=1))
    enforcer.start()
    try:
        assert enforcer.feed_export is None
        assert "flowwarden_feeds" not in enforce_lab.tables()
    finally:
        enforcer.stop()
    # Export switched on, but a one-shot command (``blocks add`` starts without consuming).
    on = _settings(enforce_lab, feed, tmp_path / "gitops")
    one_shot = Enforcer(on, store=store)
    one_shot.start(consume=False)
    try:
        assert one_shot.feed_export is None
        assert "flowwarden_feeds" not in enforce_lab.tables()
    finally:
        one_shot.stop()
