"""The declared policy and the threat feeds, kept current for the pipeline (the I/O side).

:class:`RulesSource` reads the policy file and the feeds when the stage starts (a bad policy
file stops the start with its key path; a feed that cannot be fetched starts from its last
good copy), then a background thread reloads the policy when the file changes (a bad edit
keeps the policy in force and is logged) and refreshes each URL feed on its schedule. The
stage hands each new :class:`RulesSnapshot` to the engine's rule detectors, which do no I/O.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from flowwarden.errors import ConfigError
from flowwarden.feeds import FeedSet
from flowwarden.feeds_fetch import FeedCache, FeedResult, build_feed_set, is_url
from flowwarden.policy import Policy, load_policy
from flowwarden.settings import Settings

log = logging.getLogger(__name__)

POLICY_POLL_S = 5.0  # how often the policy file's modification time is looked at


@dataclass(frozen=True)
class RulesSnapshot:
    """What the rule detectors judge with; the versions go into the alerts' evidence."""

    policy: Policy
    policy_version: str
    feeds: FeedSet | None
    feeds_version: str


@dataclass(frozen=True)
class FeedStats:
    """One feed's health: what the metrics export (entries, last good refresh, failures)."""

    name: str
    entries: int
    last_success: float | None  # epoch seconds; None: never refreshed since the start
    failures: int


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


class RulesSource:
    """Policy file and feeds; ``start``/``stop`` own the refresh thread, ``current`` is lock-free."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.policy_path: Path | None = settings.rules.policy_file
        self.cache = FeedCache(settings)
        self._snapshot = RulesSnapshot(Policy(), "", None, "")
        self._policy_mtime: float | None = None
        self._results: dict[str, FeedResult] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refreshes = 0
        self.failures = 0
        self.failures_by_feed: Counter[str] = Counter()
        self.last_success: dict[str, float] = {}  # feed -> epoch seconds of its last good refresh

    def current(self) -> RulesSnapshot:
        return self._snapshot

    def start(self) -> None:
        """Load the policy (an error stops the start) and each usable feed; then refresh in the background."""
        if self.policy_path is not None:
            self._load_policy(strict=True)
        for src in self.cache.sources:  # the last good copies first: a refresh may fail
            feed = self.cache.cached(src) if is_url(src.url) else None
            if feed is not None:
                self._results[src.name] = FeedResult(src.name, "cached", feed)
        self.refresh_feeds()
        self._publish()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="flowwarden-rules", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.rules.feed_timeout_s + 5.0)
            self._thread = None

    def refresh_feeds(self, *, force: bool = False) -> list[FeedResult]:
        """Refresh the due feeds now (every one with ``force``); publish a new snapshot if any changed."""
        results = self.cache.refresh_due(force=force)
        changed = False
        for r in results:
            self.refreshes += 1
            if r.error:
                self.failures += 1
                self.failures_by_feed[r.name] += 1
            elif r.status in ("updated", "not_modified", "file"):
                self.last_success[r.name] = time.time()
            if r.feed is not None and r.status in ("updated", "file", "cached"):
                prev = self._results.get(r.name)
                changed |= prev is None or prev.feed is not r.feed
            self._results[r.name] = r
        if changed and self._thread is not None:
            self._publish()
        return results

    def feed_stats(self) -> list[FeedStats]:
        """Per configured feed: entries in use, last good refresh, failures (for the metrics)."""
        out = []
        for src in self.cache.sources:
            r = self._results.get(src.name)
            out.append(
                FeedStats(
                    src.name,
                    r.feed.entries if r is not None and r.feed is not None else 0,
                    self.last_success.get(src.name),
                    self.failures_by_feed[src.name],
                )
            )
        return out

    def _load_policy(self, *, strict: bool) -> None:
        assert self.policy_path is not None
        try:
            mtime = self.policy_path.stat().st_mtime
            if mtime == self._policy_mtime:
                return
            data = self.policy_path.read_bytes()
            policy = load_policy(self.policy_path)
        except (OSError, ConfigError) as exc:
            if strict:
                raise ConfigError(str(exc)) from exc
            log.error("policy reload failed, the previous policy stays in force: %s", exc)
            return
        self._policy_mtime = mtime
        snap = self._snapshot
        self._snapshot = RulesSnapshot(policy, _digest(data), snap.feeds, snap.feeds_version)
        log.info(
            "policy loaded path=%s rules=%d version=%s", self.policy_path, policy.rule_count(), _digest(data)
        )

    def _publish(self) -> None:
        usable = [r for r in self._results.values() if r.feed is not None]
        feeds = build_feed_set(usable, self.settings) if usable else None
        version = _digest(
            "|".join(f"{r.name}:{r.feed.entries if r.feed else 0}:{id(r.feed)}" for r in usable).encode()
        )
        snap = self._snapshot
        self._snapshot = RulesSnapshot(snap.policy, snap.policy_version, feeds, version if usable else "")
        if feeds is not None:
            log.info("feeds loaded feeds=%d entries=%d", len(usable), len(feeds))
            for hit in feeds.protected_entries:  # alerts still fire; exports and blocks leave it out
                log.warning(
                    "feed lists a protected address, never blocked feed=%s entry=%s", hit.feed, hit.entry
                )

    def reload_policy(self) -> bool:
        """Read the policy file again if it changed; a bad edit keeps the policy in force (logged).

        Returns whether a new policy is in force.
        """
        if self.policy_path is None:
            return False
        before = self._snapshot
        self._load_policy(strict=False)
        return self._snapshot is not before

    def _loop(self) -> None:
        while not self._stop.wait(POLICY_POLL_S):
            self.reload_policy()
            try:
                self.refresh_feeds()
            except Exception:  # a refresh must never end the pipeline; the last good copy stays
                log.exception("feed refresh failed")
