"""The shared feed refresher (pipeline and enforcer) and the enforcer's export loop, with file feeds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from flowwarden.enforcement.feeds_export import FeedExportLoop, feed_export_enabled
from flowwarden.enforcement.metrics import EnforcerMetrics
from flowwarden.errors import ConfigError
from flowwarden.feeds_refresh import FeedRefresher
from flowwarden.settings import Settings, load_settings


def _settings(tmp_path: Path, feed: Path, **feed_export: object) -> Settings:
    return Settings.model_validate(
        {
            "rules": {
                "feeds": [{"name": "bad", "url": str(feed)}],
                "feed_cache_dir": str(tmp_path / "cache"),
            },
            "enforcement": {"feed_export": feed_export},
        }
    )


def _touch_later(path: Path, text: str) -> None:
    """Rewrite with a modification time that differs whatever the file system's resolution."""
    st = path.stat()
    path.write_text(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_an_edited_file_feed_is_read_at_the_next_look_and_a_lost_one_keeps_its_last_copy(
    tmp_path: Path,
) -> None:
    feed = tmp_path / "bad.txt"
    feed.write_text("192.0.2.1\n")
    r = FeedRefresher(_settings(tmp_path, feed))
    _, changed = r.refresh()
    assert changed and r.feed_set() is not None and len(r.feed_set() or []) == 1
    v1 = r.version()
    _, changed = r.refresh()  # not due, not edited: nothing read
    assert not changed and r.version() == v1
    _touch_later(feed, "192.0.2.1\n198.51.100.0/24\n")
    _, changed = r.refresh()
    assert changed and r.version() != v1
    assert [s.entries for s in r.stats()] == [2]
    feed.unlink()
    results, changed = r.refresh()
    assert not changed and results[0].error
    assert [(s.entries, s.failures) for s in r.stats()] == [(2, 1)]  # the last good copy stays in use
    assert (fs := r.feed_set()) is not None and fs.address_hit("198.51.100.9") is not None


def test_feed_export_setting_is_validated_with_the_nearest_name(tmp_path: Path) -> None:
    config = tmp_path / "fw.yaml"
    config.write_text("enforcement:\n  feed_export:\n    calico_dri: /tmp/x\n")
    with pytest.raises(
        ConfigError,
        match=r"enforcement\.feed_export\.calico_dri'; did you mean 'enforcement\.feed_export\.calico_dir'",
    ):
        load_settings(config)
    feed = tmp_path / "bad.txt"
    assert not feed_export_enabled(_settings(tmp_path, feed))  # feeds, but no export switched on
    assert feed_export_enabled(_settings(tmp_path, feed, nft=True))
    assert not feed_export_enabled(Settings.model_validate({"enforcement": {"feed_export": {"nft": True}}}))


def test_export_loop_writes_network_sets_skips_protected_and_rewrites_on_change(tmp_path: Path) -> None:
    feed = tmp_path / "bad.txt"
    feed.write_text("192.0.2.1\n10.96.0.10\n")  # the cluster DNS: never exported
    gitops = tmp_path / "gitops"
    metrics = EnforcerMetrics()
    loop = FeedExportLoop(
        _settings(tmp_path, feed, calico_dir=str(gitops)), metrics, protected=lambda: ["192.0.2.0/30"]
    )
    assert loop.nft is None and loop.mode == "dry_run"
    loop.refresher.load_cached()
    assert loop.tick()
    out = gitops / "calico" / "feeds" / "bad.yaml"
    assert [d["spec"]["nets"] for d in yaml.safe_load_all(out.read_text())] == [[]]
    assert loop.last_report is not None
    assert sorted(h.entry for h in loop.last_report.protected) == ["10.96.0.10/32", "192.0.2.1/32"]
    assert not loop.tick()  # nothing changed: nothing written
    _touch_later(feed, "203.0.113.5\n")
    assert loop.tick()
    assert [d["spec"]["nets"] for d in yaml.safe_load_all(out.read_text())] == [["203.0.113.5/32"]]
    text = generate_latest(metrics.registry).decode()
    assert 'flowwarden_feed_export_entries{feed="bad"} 1.0' in text
    assert "flowwarden_feed_export_protected_entries 0.0" in text
    assert loop.exports == 2
