"""Threat feeds over real HTTP on loopback: conditional refresh (304), last good copy, the CLI."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flowwarden.cli import app
from flowwarden.errors import ConfigError
from flowwarden.feeds_fetch import FeedCache, build_feed_set
from flowwarden.pipeline.runtime.feeds import RulesSource
from flowwarden.settings import Settings, load_settings

DROP_V1 = "; Spamhaus DROP List\n1.10.16.0/20 ; SBL256894\n2.56.192.0/22 ; SBL459831\n"
DROP_V2 = DROP_V1 + "5.134.128.0/19 ; SBL270738\n"
NAMES = "# c2 names\nevil.example.net\n"


@dataclass
class Served:
    """What the loopback server answers, and what it was asked."""

    bodies: dict[str, str] = field(default_factory=dict)
    etags: dict[str, str] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, If-None-Match)


@pytest.fixture
def server() -> Iterator[tuple[str, Served]]:
    served = Served()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            inm = self.headers.get("If-None-Match", "")
            served.requests.append((self.path, inm))
            body = served.bodies.get(self.path)
            if body is None:
                self.send_error(404)
                return
            etag = served.etags[self.path]
            if inm == etag:
                self.send_response(304)
                self.send_header("ETag", etag)
                self.end_headers()
                return
            data = body.encode()
            self.send_response(200)
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", "Fri, 04 Dec 2026 08:00:00 GMT")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def _settings(tmp_path: Path, base: str, **extra: object) -> Settings:
    return Settings(
        rules={
            "feed_cache_dir": str(tmp_path / "cache"),
            "feed_timeout_s": 5,
            "feeds": [
                {"name": "drop", "url": f"{base}/drop.txt"},
                {"name": "names", "url": f"{base}/names.txt", "format": "lines"},
            ],
            **extra,
        }
    )


def test_refresh_uses_etag_and_304_keeps_the_copy_then_picks_up_a_change(
    tmp_path: Path, server: tuple[str, Served]
) -> None:
    base, served = server
    served.bodies.update({"/drop.txt": DROP_V1, "/names.txt": NAMES})
    served.etags.update({"/drop.txt": '"v1"', "/names.txt": '"n1"'})
    cache = FeedCache(_settings(tmp_path, base))
    first = {r.name: r for r in cache.refresh_due(now=0.0)}
    assert {n: r.status for n, r in first.items()} == {"drop": "updated", "names": "updated"}
    assert first["drop"].feed is not None and first["drop"].feed.entries == 2
    assert cache.refresh_due(now=1.0) == []  # not due before refresh_s

    again = {r.name: r for r in cache.refresh_due(now=10_000.0)}
    assert again["drop"].status == "not_modified" and again["drop"].feed is first["drop"].feed
    assert ("/drop.txt", '"v1"') in served.requests

    served.bodies["/drop.txt"], served.etags["/drop.txt"] = DROP_V2, '"v2"'
    changed = {r.name: r for r in cache.refresh_due(now=20_000.0)}
    assert changed["drop"].status == "updated"
    assert changed["drop"].feed is not None and changed["drop"].feed.entries == 3
    assert (tmp_path / "cache" / "drop.txt").read_text() == DROP_V2


def test_unreachable_url_and_garbage_keep_the_last_good_copy_across_a_restart(
    tmp_path: Path, server: tuple[str, Served]
) -> None:
    base, served = server
    served.bodies.update({"/drop.txt": DROP_V1, "/names.txt": NAMES})
    served.etags.update({"/drop.txt": '"v1"', "/names.txt": '"n1"'})
    FeedCache(_settings(tmp_path, base)).refresh_due(now=0.0)

    served.bodies["/drop.txt"], served.etags["/drop.txt"] = "<html>maintenance</html>\n", '"bad"'
    garbage = {r.name: r for r in FeedCache(_settings(tmp_path, base)).refresh_due(force=True)}
    assert garbage["drop"].status == "cached" and "no valid entry" in garbage["drop"].error
    assert garbage["drop"].feed is not None and garbage["drop"].feed.entries == 2

    # A restart with the server gone: a closed port on loopback refuses at once.
    dead = "http://127.0.0.1:9"
    restarted = FeedCache(_settings(tmp_path, dead))
    results = {r.name: r for r in restarted.refresh_due(now=0.0)}
    assert results["drop"].status == "cached" and results["drop"].error
    feeds = build_feed_set(results.values(), Settings())
    assert feeds.address_hit("1.10.20.1") is not None
    assert feeds.name_hit("a.b.evil.example.net") is not None


def test_rules_source_and_cli_list_update_check(tmp_path: Path, server: tuple[str, Served]) -> None:
    base, served = server
    served.bodies.update({"/drop.txt": DROP_V1 + "10.96.0.0/24 ; SBL1\n", "/names.txt": NAMES})
    served.etags.update({"/drop.txt": '"v1"', "/names.txt": '"n1"'})
    policy = tmp_path / "policy.yaml"
    policy.write_text("namespaces:\n  shop:\n    egress:\n      - ports: ['443/tcp']\n")
    settings = _settings(tmp_path, base, policy_file=str(policy))
    source = RulesSource(settings)
    source.start()
    try:
        snap = source.current()
        assert snap.policy.rule_count() == 1 and snap.feeds is not None and len(snap.feeds) == 4
        # The cluster DNS (10.96.0.10) is protected: listed, never exported, and reported.
        assert [(p.feed, p.entry) for p in snap.feeds.protected_entries] == [("drop", "10.96.0.0/24")]
    finally:
        source.stop()

    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump({"rules": settings.rules.model_dump(mode="json")}))
    load_settings(config)
    run = CliRunner()
    out = run.invoke(app, ["feeds", "update", "-c", str(config)], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "drop\tnot_modified\t3 entries" in out.output
    out = run.invoke(app, ["feeds", "list", "-c", str(config)], catch_exceptions=False)
    assert "drop\tauto\tcached\t3 entries, 0 rejected" in out.output
    out = run.invoke(app, ["feeds", "check", "10.96.0.10", "-c", str(config)], catch_exceptions=False)
    assert out.exit_code == 5 and "10.96.0.0/24\tprotected" in out.output
    out = run.invoke(app, ["feeds", "check", "x.evil.example.net", "-c", str(config)], catch_exceptions=False)
    assert out.exit_code == 5 and "names\tevil.example.net" in out.output
    out = run.invoke(app, ["feeds", "check", "8.8.8.8", "-c", str(config)], catch_exceptions=False)
    assert out.exit_code == 0 and "not listed" in out.output


def test_policy_check_cli_names_the_key_and_the_nearest_name(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "namespaces:\n  shop:\n    egress:\n"
        "      - to: {domains: ['*.stripe.com']}\n        ports: [443/tcp]\n"
    )
    out = CliRunner().invoke(app, ["policy", "check", str(good)], catch_exceptions=False)
    assert out.exit_code == 0 and "valid; 1 namespaces, 1 rules" in out.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("namespaces:\n  shop:\n    egress:\n      - too: {domains: ['*.stripe.com']}\n")
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'namespaces\.shop\.egress\.0\.too'; "
        r"did you mean 'namespaces\.shop\.egress\.0\.to'",
    ):
        CliRunner().invoke(app, ["policy", "check", str(bad)], catch_exceptions=False)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    out = CliRunner().invoke(app, ["policy", "check", str(empty)], catch_exceptions=False)
    assert "declares nothing" in out.output


def test_feeds_export_cli_writes_network_sets_and_reports_protected_entries(tmp_path: Path) -> None:
    feed = tmp_path / "mine.txt"
    feed.write_text("# mine\n198.51.100.7\n10.96.0.10\n")
    config = tmp_path / "settings.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "rules": {
                    "feeds": [{"name": "mine", "url": str(feed)}],
                    "feed_cache_dir": str(tmp_path / "c"),
                },
                "enforcement": {"gitops_dir": str(tmp_path / "gitops")},
            }
        )
    )
    out = CliRunner().invoke(
        app, ["feeds", "export", "-c", str(config), "--no-update"], catch_exceptions=False
    )
    assert out.exit_code == 0, out.output
    assert "mode dry_run" in out.output and "mine: 1 CIDRs exported" in out.output
    assert "mine: 10.96.0.10/32 not exported (covers a protected address)" in out.output
    (doc,) = yaml.safe_load_all((tmp_path / "gitops" / "calico" / "feeds" / "mine.yaml").read_text())
    assert doc["spec"]["nets"] == ["198.51.100.7/32"]


def test_policy_reload_takes_a_good_edit_and_keeps_the_policy_on_a_bad_one(tmp_path: Path) -> None:

    policy = tmp_path / "policy.yaml"
    policy.write_text("namespaces:\n  shop:\n    egress: []\n")
    source = RulesSource(Settings(rules={"policy_file": str(policy)}))
    source.start()
    try:
        first = source.current()
        assert first.policy.declared and not source.reload_policy()  # unchanged file: nothing to do
        policy.write_text("namespaces:\n  shop:\n    egress:\n      - ports: [443/tcp]\n")
        os.utime(policy, (1_000_000, 1_000_000))
        assert source.reload_policy() and source.current().policy.rule_count() == 1
        assert source.current().policy_version != first.policy_version
        policy.write_text("namespaces:\n  shop:\n    egres: []\n")  # a typo
        os.utime(policy, (2_000_000, 2_000_000))
        assert not source.reload_policy() and source.current().policy.rule_count() == 1
    finally:
        source.stop()
    bad = RulesSource(Settings(rules={"policy_file": str(policy)}))
    with pytest.raises(ConfigError, match=r"did you mean 'namespaces\.shop\.egress'"):
        bad.start()  # at start, a bad policy file stops the process
