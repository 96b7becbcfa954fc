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
from dataclasses import dataclass
from pathlib import Path

from flowwarden.errors import ConfigError
from flowwarden.feeds import FeedSet
from flowwarden.feeds_fetch import FeedResult
from flowwarden.feeds_refresh import FeedRefresher, FeedStats
from flowwarden.policy import Policy, load_policy
from flowwarden.settings import Settings

log = logging.getLogger(__name__)
__all__ = ["FeedStats", "RulesSnapshot", "RulesSource"]

POLICY_POLL_S = 5.0  # how often the policy file's modification time is looked at


@dataclass(frozen=True)
class RulesSnapshot:
    """What the rule detectors judge with; the versions go into the alerts' evidence."""

    policy: Policy
    policy_version: str
    feeds: FeedSet | None
    feeds_version: str


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


class RulesSource:
    """Policy file and feeds; ``start``/``stop`` own the refresh thread, ``current`` is lock-free."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.policy_path: Path | None = settings.rules.policy_file
        self.feeds = FeedRefresher(settings)  # the refresh logic the enforcer's feed export shares
        self.cache = self.feeds.cache
        self._snapshot = RulesSnapshot(Policy(), "", None, "")
        self._policy_mtime: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> RulesSnapshot:
        return self._snapshot

    def start(self) -> None:
        """Load the policy (an error stops the start) and each usable feed; then refresh in the background."""
        if self.policy_path is not None:
            self._load_policy(strict=True)
        self.feeds.load_cached()  # the last good copies first: a refresh may fail
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
        results, changed = self.feeds.refresh(force=force)
        if changed and self._thread is not None:
            self._publish()
        return results

    @property
    def refreshes(self) -> int:
        return self.feeds.refreshes

    @property
    def failures(self) -> int:
        return self.feeds.failures

    @property
    def last_success(self) -> dict[str, float]:
        return self.feeds.last_success

    def feed_stats(self) -> list[FeedStats]:
        """Per configured feed: entries in use, last good refresh, failures (for the metrics)."""
        return self.feeds.stats()

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
        feeds = self.feeds.feed_set()
        snap = self._snapshot
        self._snapshot = RulesSnapshot(snap.policy, snap.policy_version, feeds, self.feeds.version())
        if feeds is not None:
            log.info("feeds loaded feeds=%d entries=%d", len(feeds.feeds), len(feeds))
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
