"""The pod inventory kept current by a list, then a watch, on the Kubernetes API.

A ``kubectl get pods -A -o json`` dump every N seconds misses pods that live less than N
seconds and maps a reused IP to the wrong pod until the next dump. A list, then a watch from
the list's resourceVersion (client-go's reflector pattern), sees every change as it happens.

:meth:`WatchSource.current` returns a fresh snapshot when the watch changed something: at
most every ``min_refresh_s``, and less often when a rebuild is slow, since it costs O(pods)
on the caller's thread (the pipeline's loop, the enforcer's). Pod IPs are reused, and flows
arrive late: a deleted pod stays ``deleted_retention_s`` with its end time, so a late flow
still maps to it while a new pod with the same IP takes the flows after.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import urllib3

from flowwarden.errors import ConfigError, ServiceUnavailable
from flowwarden.kube.inventory import PodInventory
from flowwarden.kube.pods import DELETED_AT, slim_pod
from flowwarden.kube.source import SourceStats
from flowwarden.retry import RetryPolicy

log = logging.getLogger(__name__)

_GONE = 410  # the resourceVersion is older than the API server's history: list again
_MAX_PAGES = 10_000  # of page_size pods each: a bound on one list, far above any cluster
_REBUILD_SHARE = 0.1  # of the caller's time at most spent rebuilding (a 20k-pod rebuild is ~0.3 s)
_HEALTHY_STREAM_S = 1.0  # a watch that ends sooner with no event counts as a failure (no spinning)
_RBAC_HINT = (
    "the service account needs list and watch on pods cluster-wide "
    "(deploy/kubernetes/pipeline.yaml, enforcer.yaml)"
)


class _QuickEnd(Exception):
    """A watch stream that ended at once without an event: backed off like a failure."""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(pod: dict[str, Any]) -> str:
    meta = pod["metadata"]
    return str(meta.get("uid") or f"{meta.get('namespace', 'default')}/{meta['name']}")


def _ended(pod: dict[str, Any], now: float) -> dict[str, Any]:
    """The pod with an end of life: its deletionTimestamp, else ``now`` (when it was seen gone)."""
    meta = pod["metadata"]
    if meta.get("deletionTimestamp") or (meta.get("annotations") or {}).get(DELETED_AT):
        return pod
    return {**pod, "metadata": {**meta, "annotations": {DELETED_AT: _iso(now)}}}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason  # the cause, without the URL urllib3 wraps it in
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status:
        reason = f"{status} {getattr(exc, 'reason', '') or ''}".strip()
        return f"{reason}; {_RBAC_HINT}" if status in (401, 403) else reason
    return f"{type(exc).__name__}: {exc}"


def _core_api(*, in_cluster: bool) -> Any:
    """A ``CoreV1Api`` from the pod's service account or the local kubeconfig (its own configuration)."""
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=cfg)
        else:
            # $KUBECONFIG as it is now (the client reads it once, at its first import).
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=cfg)
    except config.ConfigException as exc:
        where = "in-cluster service account" if in_cluster else "kubeconfig"
        raise ServiceUnavailable(f"kubernetes: no cluster credentials ({where}: {exc})") from exc
    # One try per request: the watch backs off and counts failures itself; urllib3's own three
    # retries only logged three warnings per attempt while the API was down.
    cfg.retries = 0
    return client.CoreV1Api(client.ApiClient(cfg))


class WatchSource:
    """Every pod of the cluster, kept current by a list-then-watch in a daemon thread.

    An :class:`~flowwarden.kube.source.InventorySource`. ``api``: a
    ``kubernetes.client.CoreV1Api`` (tests, out-of-cluster use); by default one is made in
    :meth:`start` from the pod's service account (``in_cluster``) or the kubeconfig. The
    constructor does no I/O. The watch thread writes the pod table under a lock;
    :meth:`current` and :meth:`snapshot` (the owner's one thread) copy it under the lock.
    """

    def __init__(
        self,
        *,
        api: Any = None,
        in_cluster: bool = True,
        deleted_retention_s: float = 120.0,
        min_refresh_s: float = 2.0,
        watch_timeout_s: int = 300,
        request_timeout_s: float = 30.0,
        page_size: int = 500,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        jitter: bool = True,
        stop_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.in_cluster = in_cluster
        self.deleted_retention_s = deleted_retention_s
        self.min_refresh_s = min_refresh_s
        self.watch_timeout_s = watch_timeout_s
        self.request_timeout_s = request_timeout_s
        self.page_size = page_size
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.jitter = jitter
        self.stop_timeout_s = stop_timeout_s
        self.clock = clock  # wall clock: deletion times and retention
        self.stats = SourceStats()
        self._lock = threading.Lock()
        self._pods: dict[str, dict[str, Any]] = {}  # uid -> slim pod JSON (never mutated in place)
        self._forget_at: dict[str, float] = {}  # uid of a deleted pod -> when to drop it
        self._version = 0  # bumped on every change the inventory can see
        self._resource_version: str | None = None  # None: list before watching
        self._next_build = -float("inf")  # time.monotonic() before which current() keeps its snapshot
        self._snapshot: PodInventory | None = None  # the last one built, of pods at _snapshot_version
        self._snapshot_version = -1
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Any = None
        self._owns_api = False  # made here from credentials: closed at stop()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> WatchSource:
        """List every pod (so the first snapshot is complete), then watch in a daemon thread.

        Raises :class:`ServiceUnavailable` when the API cannot be reached or refuses the list:
        a start-up error, named with its cause (a 403 names the RBAC the pipeline needs).
        """
        if self._thread is not None:
            return self
        if self.api is None:
            self.api = _core_api(in_cluster=self.in_cluster)
            self._owns_api = True
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        try:
            self._relist()
        except (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise ServiceUnavailable(f"kubernetes: cannot list pods ({_describe(exc)})") from exc
        self._watch = watch.Watch()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="pod-watch", daemon=True)
        self._thread.start()
        log.info("pod watch started pods=%d resource_version=%s", len(self._pods), self._resource_version)
        return self

    def stop(self) -> None:
        """End the watch thread promptly: the stop event ends a back-off, closing the socket ends a read."""
        self._stopping.set()
        thread = self._thread
        if thread is None:
            return
        deadline = time.monotonic() + self.stop_timeout_s
        while thread.is_alive() and time.monotonic() < deadline:
            if self._watch is not None:
                self._watch.stop()  # shuts the stream's socket down, if one is open now
            thread.join(timeout=0.05)
        if thread.is_alive():
            log.warning("pod watch did not stop within %.1fs (daemon thread left)", self.stop_timeout_s)
        elif self._owns_api:
            self.api.api_client.close()
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def version(self) -> int:
        """Bumped on every change the inventory can see; a snapshot of an older one is stale."""
        with self._lock:
            return self._version

    # ------------------------------------------------------------------ snapshots
    def snapshot(self) -> PodInventory:
        """A new inventory of the pods now (deleted ones within their retention); it becomes current."""
        started = time.monotonic()
        with self._lock:
            self._forget_expired(self.clock())
            items = list(self._pods.values())
            version = self._version
        inv = PodInventory.from_dict({"items": items})
        self._throttle(started)
        self._snapshot, self._snapshot_version = inv, version
        self.stats.rebuilds += 1
        return inv

    def current(self) -> PodInventory:
        """The last snapshot while nothing changed or it is too recent; else a new one.

        A rebuild that fails (one odd object) keeps the last good snapshot: it must not stop
        enrichment or the guardrails.
        """
        with self._lock:
            self._forget_expired(self.clock())
            version = self._version
        last = self._snapshot
        if last is None:
            return self.snapshot()
        if version == self._snapshot_version or time.monotonic() < self._next_build:
            return last
        started = time.monotonic()
        try:
            return self.snapshot()
        except ConfigError as exc:
            log.error("pod inventory rebuild failed, keeping the previous one error=%s", exc)
            self._throttle(started)
            return last

    def _throttle(self, started: float) -> None:
        """No rebuild before ``min_refresh_s``, nor before the caller had 1/share of its time back."""
        now = time.monotonic()
        self._next_build = now + max(self.min_refresh_s, (now - started) * (1 / _REBUILD_SHARE - 1))

    def _forget_expired(self, now: float) -> None:
        """Drop deleted pods past their retention (caller holds the lock)."""
        expired = [uid for uid, at in self._forget_at.items() if at <= now]
        for uid in expired:
            del self._forget_at[uid]
            self._pods.pop(uid, None)
        if expired:
            self._version += 1

    # ------------------------------------------------------------------ list and watch
    def _relist(self) -> None:
        """Every pod, page by page, as raw JSON (the same camelCase as kubectl, and far cheaper
        than building a ``V1PodList``); pods that vanished since the last list count as deleted."""
        items: list[dict[str, Any]] = []
        resource_version: str | None = None
        cont: str | None = None
        for _page in range(_MAX_PAGES):
            resp = self.api.list_pod_for_all_namespaces(
                limit=self.page_size,
                _continue=cont,
                _preload_content=False,
                _request_timeout=(self.request_timeout_s, self.request_timeout_s),
            )
            try:
                body = json.loads(resp.data)
            finally:
                resp.release_conn()
            meta = body.get("metadata") or {}
            resource_version = resource_version or meta.get("resourceVersion")
            items.extend(body.get("items") or [])
            cont = meta.get("continue") or None
            if cont is None:
                break
        else:
            raise ValueError(f"pod list did not end after {_MAX_PAGES} pages")
        fresh: dict[str, dict[str, Any]] = {}
        for item in items:
            pod = slim_pod(item)
            if pod is not None:
                fresh[_key(pod)] = pod
        now = self.clock()
        with self._lock:
            for uid, old in self._pods.items():
                if uid in fresh:
                    self._forget_at.pop(uid, None)
                    continue
                # Deleted while no watch was open (or already deleted): keep it for late flows.
                fresh[uid] = _ended(old, now)
                self._forget_at.setdefault(uid, now + self.deleted_retention_s)
            if fresh != self._pods:
                self._version += 1
            self._pods = fresh
            self._resource_version = str(resource_version) if resource_version else None
            self.stats.lists += 1
        log.info("pods listed pods=%d resource_version=%s", len(fresh), resource_version)

    def _watch_once(self) -> int:
        """Follow changes from the last resourceVersion until the server ends the stream."""
        stream = self._watch.stream(
            self.api.list_pod_for_all_namespaces,
            resource_version=self._resource_version,
            timeout_seconds=self.watch_timeout_s,
            allow_watch_bookmarks=True,
            _request_timeout=(self.request_timeout_s, self.watch_timeout_s + self.request_timeout_s),
        )
        self.stats.watches += 1
        applied = 0
        try:
            for event in stream:
                if self._stopping.is_set():
                    break
                self._apply(str(event.get("type")), event.get("raw_object") or {})
                applied += 1
        finally:
            stream.close()
        return applied

    def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        """One watch event on the pod table; the resourceVersion moves on with it."""
        meta = obj.get("metadata") or {}
        now = self.clock()
        pod = slim_pod(obj) if kind in ("ADDED", "MODIFIED", "DELETED") else None
        with self._lock:
            if pod is not None:
                uid = _key(pod)
                if kind == "DELETED":
                    self._pods[uid] = _ended(pod, now)
                    self._forget_at[uid] = now + self.deleted_retention_s
                    self._version += 1
                elif self._pods.get(uid) != pod:
                    self._pods[uid] = pod
                    self._forget_at.pop(uid, None)
                    self._version += 1
            self._forget_expired(now)
            if meta.get("resourceVersion"):
                self._resource_version = str(meta["resourceVersion"])
            self.stats.events += 1
        if pod is None and kind != "BOOKMARK":
            log.debug("pod watch event ignored type=%s", kind)

    def _run(self) -> None:
        """Watch until stopped: resume from the last resourceVersion, list again on 410 Gone,
        and back off with the one retry policy (target ``kubernetes``, stop-aware) on anything
        else; a healthy stream that the server ended starts the back-off afresh."""
        policy = RetryPolicy(
            target="kubernetes",
            initial_s=self.backoff_initial_s,
            max_s=self.backoff_max_s,
            jitter=self.jitter,
        )
        while not self._stopping.is_set():
            try:
                policy.call(self._session, Exception, stop_event=self._stopping)
            except Exception:  # only when stopping: the policy never gives up otherwise
                if not self._stopping.is_set():
                    raise
        log.info("pod watch stopped")

    def _session(self) -> None:
        """One list (when needed) and one watch stream; raises to be tried again after a back-off."""
        from kubernetes.client.exceptions import ApiException

        started = time.monotonic()
        try:
            try:
                if self._resource_version is None:
                    self._relist()
                applied = self._watch_once()
            except ApiException as exc:
                if exc.status != _GONE or self._stopping.is_set():
                    raise
                # The normal expiry of a resourceVersion: list again at once; a second 410 backs off.
                self.stats.failures += 1
                log.info("pod watch expired, listing again resource_version=%s", self._resource_version)
                self._resource_version = None
                self._relist()
                applied = self._watch_once()
        except ApiException as exc:
            self._failed(exc, "pod watch refused")
            if exc.status == _GONE:
                self._resource_version = None
            raise
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            self._failed(exc, "pod watch connection failed")
            raise
        except Exception as exc:  # keep watching: a dead thread would freeze the inventory silently
            # An event that cannot be read would fail again from the same resourceVersion.
            self._resource_version = None
            self._failed(exc, "pod watch failed unexpectedly, listing again")
            raise
        if not applied and time.monotonic() - started < _HEALTHY_STREAM_S:
            self.stats.failures += 1
            raise _QuickEnd("an empty watch stream ended at once")  # do not spin

    def _failed(self, exc: BaseException, what: str) -> None:
        if not self._stopping.is_set():
            self.stats.failures += 1
            log.warning("%s error=%s", what, _describe(exc))
