"""The threat feeds kept current for a long-running stage: what is due is refreshed, the last
good copy of each feed stays in use, and a new :class:`~flowwarden.feeds.FeedSet` is built
only when some feed changed.

Shared by the pipeline's rules source (which hands the set to the ``threat_feed`` detector)
and the enforcer's feed export (which loads it into nftables / Calico network sets); it lives
in the base so that neither stage imports the other. No thread of its own: the caller
schedules :meth:`FeedRefresher.refresh`.

A file feed is read again when its modification time or size changed (an edit is picked up at
the next look, not after its ``refresh_s``), besides its schedule; a URL feed is asked when its
``refresh_s`` is due (conditionally: ``If-None-Match`` / ``If-Modified-Since``).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from flowwarden.feeds import FeedSet
from flowwarden.feeds_fetch import FeedCache, FeedResult, build_feed_set, is_url
from flowwarden.settings import Settings


@dataclass(frozen=True)
class FeedStats:
    """One feed's health: what the metrics export (entries, last good refresh, failures)."""

    name: str
    entries: int
    last_success: float | None  # epoch seconds; None: never refreshed since the start
    failures: int


def _file_signature(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(Path(path))
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class FeedRefresher:
    """The configured feeds' copies in use, their health, and the set built from them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cache = FeedCache(settings)
        self.results: dict[str, FeedResult] = {}
        self.refreshes = 0
        self.failures = 0
        self.failures_by_feed: Counter[str] = Counter()
        self.last_success: dict[str, float] = {}  # feed -> epoch seconds of its last good refresh
        self._signatures: dict[str, tuple[int, int] | None] = {}

    def load_cached(self) -> None:
        """The last good copies on disk first (a refresh may fail, or the network be down)."""
        for src in self.cache.sources:
            feed = self.cache.cached(src) if is_url(src.url) else None
            if feed is not None:
                self.results[src.name] = FeedResult(src.name, "cached", feed)

    def refresh(self, *, force: bool = False, now: float | None = None) -> tuple[list[FeedResult], bool]:
        """Refresh what is due (every feed with ``force``) and every file feed that changed on disk.

        Returns the results and whether the copy in use of some feed changed. A failure keeps
        the copy in use (the last good one) and is counted.
        """
        results = self.cache.refresh_due(now, force=force)
        done = {r.name for r in results}
        for src in self.cache.sources:  # an edited file feed: read now, not at its next schedule
            changed_on_disk = _file_signature(src.url) != self._signatures.get(src.name)
            if src.name not in done and not is_url(src.url) and changed_on_disk:
                results.append(self.cache.refresh(src))
        changed = False
        for r in results:
            src_url = next((s.url for s in self.cache.sources if s.name == r.name), "")
            if not is_url(src_url):
                self._signatures[r.name] = _file_signature(src_url)
            self.refreshes += 1
            prev = self.results.get(r.name)
            if r.error:
                self.failures += 1
                self.failures_by_feed[r.name] += 1
            elif r.status in ("updated", "not_modified", "file"):
                self.last_success[r.name] = time.time()
            if r.feed is None and prev is not None and prev.feed is not None:
                r = FeedResult(r.name, r.status, prev.feed, r.error, r.seconds)  # keep the last good copy
            if r.feed is not None and r.status in ("updated", "file", "cached"):
                changed |= prev is None or prev.feed is not r.feed
            self.results[r.name] = r
        return results, changed

    def usable(self) -> list[FeedResult]:
        return [r for r in self.results.values() if r.feed is not None]

    def feed_set(self, node_ips: Iterable[str] = ()) -> FeedSet | None:
        """Every usable feed as one set (protected addresses set aside); None when none is usable."""
        usable = self.usable()
        return build_feed_set(usable, self.settings, node_ips) if usable else None

    def version(self) -> str:
        """Names the copies in use (changes whenever one of them does)."""
        usable = self.usable()
        if not usable:
            return ""
        key = "|".join(f"{r.name}:{r.feed.entries if r.feed else 0}:{id(r.feed)}" for r in usable)
        return hashlib.sha256(key.encode()).hexdigest()[:12]

    def stats(self) -> list[FeedStats]:
        """Per configured feed: entries in use, last good refresh, failures (for the metrics)."""
        out = []
        for src in self.cache.sources:
            r = self.results.get(src.name)
            out.append(
                FeedStats(
                    src.name,
                    r.feed.entries if r is not None and r.feed is not None else 0,
                    self.last_success.get(src.name),
                    self.failures_by_feed[src.name],
                )
            )
        return out
