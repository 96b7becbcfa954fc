"""Threat feeds fetched and kept: conditional HTTP refresh, the last good copy on disk.

Each URL feed lives in ``rules.feed_cache_dir`` as ``<name>.txt`` (the last copy that
parsed) beside ``<name>.json`` (ETag, Last-Modified, when fetched, entry counts). A refresh
asks with ``If-None-Match`` / ``If-Modified-Since``; a ``304`` keeps the copy. A failed
download, a body over ``feed_max_bytes``, or a body in which nothing parses (an error page,
an empty file) keeps the last good copy too, and the failure is reported, never silently
swallowed: a restart without network still starts with every feed it had.
Files are replaced atomically (write, fsync, rename), so a reader never sees half a feed.
A file feed (a path) is read as it is, every time.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import requests

from flowwarden.feeds import FeedSet, ParsedFeed, parse_feed
from flowwarden.settings import FeedSource, Settings

log = logging.getLogger(__name__)

Status = Literal["updated", "not_modified", "cached", "file", "failed", "missing"]


@dataclass
class FeedResult:
    """What one refresh did; ``feed`` is the copy now in use (None: nothing usable yet)."""

    name: str
    status: Status
    feed: ParsedFeed | None
    error: str = ""
    seconds: float = 0.0


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FeedCache:
    """The feeds of the settings, refreshed on demand; no thread of its own (the runtime schedules it)."""

    def __init__(self, settings: Settings) -> None:
        r = settings.rules
        self.sources = [f for f in r.feeds if f.enabled]
        self.dir = r.feed_cache_dir
        self.timeout_s = r.feed_timeout_s
        self.max_bytes = r.feed_max_bytes
        self._loaded: dict[str, ParsedFeed] = {}
        self._next: dict[str, float] = {}

    def _paths(self, name: str) -> tuple[Path, Path]:
        return self.dir / f"{name}.txt", self.dir / f"{name}.json"

    def meta(self, name: str) -> dict[str, object]:
        _, meta = self._paths(name)
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def cached(self, src: FeedSource) -> ParsedFeed | None:
        """The last good copy on disk (None when there is none)."""
        if src.name in self._loaded:
            return self._loaded[src.name]
        body, _ = self._paths(src.name)
        try:
            text = body.read_text(errors="replace")
        except OSError:
            return None
        feed = parse_feed(src.name, text, src.format)
        self._loaded[src.name] = feed
        return feed

    def refresh(self, src: FeedSource, *, force: bool = False) -> FeedResult:
        """Fetch one feed (conditionally); on any failure keep and return the last good copy."""
        t0 = time.perf_counter()
        if not is_url(src.url):
            try:
                text = Path(src.url).read_text(errors="replace")
            except OSError as exc:
                return FeedResult(src.name, "failed", None, f"cannot read {src.url}: {exc}")
            feed = parse_feed(src.name, text, src.format)
            return FeedResult(src.name, "file", feed, seconds=time.perf_counter() - t0)
        self.dir.mkdir(parents=True, exist_ok=True)
        last = self.cached(src)
        meta = self.meta(src.name) if last is not None else {}
        headers = {"User-Agent": "flowwarden-feeds"}
        if not force and last is not None:
            if meta.get("etag"):
                headers["If-None-Match"] = str(meta["etag"])
            if meta.get("last_modified"):
                headers["If-Modified-Since"] = str(meta["last_modified"])
        try:
            with requests.get(src.url, headers=headers, timeout=self.timeout_s, stream=True) as resp:
                if resp.status_code == 304 and last is not None:
                    self._save_meta(src, meta | {"checked_at": time.time()})
                    return FeedResult(src.name, "not_modified", last, seconds=time.perf_counter() - t0)
                resp.raise_for_status()
                chunks, size = [], 0
                for chunk in resp.iter_content(1 << 16):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ValueError(f"larger than feed_max_bytes ({self.max_bytes})")
                    chunks.append(chunk)
                data = b"".join(chunks)
                etag, modified = resp.headers.get("ETag", ""), resp.headers.get("Last-Modified", "")
        except (requests.RequestException, ValueError) as exc:
            return self._failed(src, last, f"{type(exc).__name__}: {exc}", t0)
        feed = parse_feed(src.name, data.decode("utf-8", errors="replace"), src.format)
        if feed.entries == 0:
            return self._failed(
                src, last, f"no valid entry in {len(data)} bytes ({feed.rejected} rejected)", t0
            )
        body, _ = self._paths(src.name)
        _write_atomic(body, data)
        now = time.time()
        self._save_meta(
            src,
            {
                "url": src.url,
                "etag": etag,
                "last_modified": modified,
                "fetched_at": now,
                "checked_at": now,
                "entries": feed.entries,
                "rejected": feed.rejected,
            },
        )
        self._loaded[src.name] = feed
        return FeedResult(src.name, "updated", feed, seconds=time.perf_counter() - t0)

    def _failed(self, src: FeedSource, last: ParsedFeed | None, error: str, t0: float) -> FeedResult:
        log.warning(
            "feed refresh failed feed=%s error=%s kept_last_good=%s", src.name, error, last is not None
        )
        status: Status = "cached" if last is not None else "failed"
        return FeedResult(src.name, status, last, error, time.perf_counter() - t0)

    def _save_meta(self, src: FeedSource, meta: dict[str, object]) -> None:
        _, path = self._paths(src.name)
        _write_atomic(path, json.dumps(meta, sort_keys=True).encode())

    def due(self, now: float) -> list[FeedSource]:
        """The feeds whose refresh time has come (every feed on the first call)."""
        return [s for s in self.sources if now >= self._next.get(s.name, -1.0)]

    def refresh_due(self, now: float | None = None, *, force: bool = False) -> list[FeedResult]:
        """Refresh what is due (``force``: every feed, unconditionally); schedule the next."""
        now = time.time() if now is None else now
        todo = self.sources if force else self.due(now)
        results = [self.refresh(s, force=force) for s in todo]
        for s in todo:
            self._next[s.name] = now + s.refresh_s
        return results

    def load_all(self) -> list[FeedResult]:
        """Every feed's copy in use without any download: files read, URLs from the disk cache."""
        out = []
        for s in self.sources:
            if not is_url(s.url):
                out.append(self.refresh(s))
            else:
                feed = self.cached(s)
                out.append(FeedResult(s.name, "cached" if feed is not None else "missing", feed))
        return out


def protected_addresses(settings: Settings, node_ips: Iterable[str] = ()) -> list[str]:
    """What no feed may block: nodes, the API server, the cluster DNS, protected and allowed addresses."""
    c, cp, e = settings.cluster, settings.control_plane, settings.enforcement
    return [
        *c.node_ips,
        *node_ips,
        *c.node_cidrs,
        *c.cluster_dns,
        *cp.api_server_ips,
        *e.protected_ips,
        *e.allow_cidrs,
    ]


def build_feed_set(
    results: Iterable[FeedResult], settings: Settings, node_ips: Iterable[str] = ()
) -> FeedSet:
    """One snapshot of every usable feed, with the protected addresses set aside for exports."""
    return FeedSet([r.feed for r in results if r.feed is not None], protected_addresses(settings, node_ips))
