"""Where the pod inventory comes from: one interface, a file, the API watch, or nothing.

The pipeline's runtime and the enforcer own a source: they start it, ask it for
:meth:`InventorySource.current` between batches (a new snapshot when the pods changed, the
same object otherwise, so the check is cheap), and stop it. The detection engine and the
guardrails only ever hold a :class:`~flowwarden.kube.inventory.PodInventory` snapshot and do
no I/O themselves.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from flowwarden.errors import ConfigError
from flowwarden.kube.inventory import PodInventory
from flowwarden.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class SourceStats:
    """What a source did; counters for logs, metrics and tests (a file source only rebuilds and fails)."""

    lists: int = 0  # complete lists (start, after 410 Gone)
    watches: int = 0  # watch requests opened
    events: int = 0  # watch events applied (bookmarks included)
    failures: int = 0  # list, watch or reload attempts that failed (connection, API error, 410, bad file)
    rebuilds: int = 0  # inventory snapshots built

    def counts(self) -> dict[str, int]:
        """Each counter by name (the label of the pipeline's inventory metric)."""
        return asdict(self)


class InventorySource(Protocol):
    """Pods from somewhere, as immutable snapshots. The constructor does no I/O."""

    @property
    def stats(self) -> SourceStats: ...

    def start(self) -> InventorySource:
        """Read or list the pods once, so the first snapshot is complete; errors stop the process here."""
        ...

    def stop(self) -> None: ...

    def current(self) -> PodInventory:
        """The newest snapshot: the same object while nothing changed, a new one after a change."""
        ...


class FixedSource:
    """One inventory that never changes (``inventory_source: none``, tests, offline runs)."""

    def __init__(self, inventory: PodInventory | None = None) -> None:
        self.inventory = inventory if inventory is not None else PodInventory.empty()
        self.stats = SourceStats()

    def start(self) -> FixedSource:
        return self

    def stop(self) -> None:
        return None

    def current(self) -> PodInventory:
        return self.inventory


class FileSource:
    """The JSON of ``kubectl get pods -A -o json`` in a file, read again when its mtime changes.

    A file that cannot be read or parsed at :meth:`start` is a start-up error. Later, a
    broken rewrite (half-written, invalid) is logged and counted, and the last good snapshot
    stays until the file changes again; a file that disappeared keeps it too.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.stats = SourceStats()
        self._inventory: PodInventory | None = None
        self._mtime: int | None = None

    def start(self) -> FileSource:
        self._load()
        return self

    def stop(self) -> None:
        return None

    def current(self) -> PodInventory:
        if self._inventory is None:
            return self._load()
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            return self._inventory
        if mtime == self._mtime:
            return self._inventory
        log.info("inventory changed, reloading path=%s", self.path)
        try:
            return self._load()
        except ConfigError as exc:
            self._mtime = mtime  # not again until it changes
            self.stats.failures += 1
            log.error("inventory reload failed, keeping the previous one path=%s error=%s", self.path, exc)
            return self._inventory

    def _load(self) -> PodInventory:
        mtime = self.path.stat().st_mtime_ns if self.path.exists() else None
        self._inventory = PodInventory.from_file(self.path)
        self._mtime = mtime
        self.stats.rebuilds += 1
        return self._inventory


def inventory_source_from_settings(settings: Settings, *, api: Any = None) -> InventorySource:
    """The source ``kubernetes.inventory_source`` names, not started: the file (no pods when
    ``inventory_path`` is unset), a watch on the API (``api``: a ``CoreV1Api``, by default made
    at start from ``in_cluster`` credentials), or none (no pods)."""
    k = settings.kubernetes
    if k.inventory_source == "kubernetes":
        from flowwarden.kube.watch import WatchSource

        return WatchSource(
            api=api,
            in_cluster=k.in_cluster,
            deleted_retention_s=k.deleted_retention_s,
            min_refresh_s=k.min_refresh_s,
            watch_timeout_s=k.watch_timeout_s,
            request_timeout_s=k.request_timeout_s,
            page_size=k.page_size,
            backoff_initial_s=settings.retry.initial_s,
            backoff_max_s=settings.retry.max_s,
            jitter=settings.retry.jitter,
        )
    if k.inventory_source == "file" and k.inventory_path is not None:
        return FileSource(k.inventory_path)
    return FixedSource()
