"""The notifier interface and the dispatcher that keeps slow receivers off the hot path.

A notifier turns a list of :class:`~flowwarden.records.Alert` into one HTTP request. The
:class:`NotifierHub` gives every notifier its own bounded queue and thread: a receiver that
is down is retried with the one retry policy (:mod:`flowwarden.retry`, target
``notifier:<name>``), and when its queue is full new batches are
dropped and counted, so the consume loop never waits on a person's chat tool.
Each notifier registers itself on :data:`NOTIFIERS` (``@NOTIFIERS.register("slack")``) and
says from :meth:`Notifier.from_settings` which receivers the settings configure for it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import requests

from flowwarden.alert_formats import AlertExporter
from flowwarden.plugins import Registry
from flowwarden.records import SEVERITY_ORDER, Alert
from flowwarden.retry import RetryPolicy
from flowwarden.settings import NotifierSettings

log = logging.getLogger(__name__)

MAX_KNOWN_ALERTS = 100_000  # alert ids remembered to tell an update from a new alert

# Outcome callback: (notifier name, status) with status in delivered | failed | retried | dropped.
OnResult = Callable[[str, str], None]


class DeliveryError(Exception):
    """A receiver answered with an error status or could not be reached."""


class Notifier(ABC):
    """One receiver of alerts over HTTP."""

    name: str = "notifier"
    # False: only an alert's first sighting and severity escalations reach this receiver (a
    # chat channel); True: every update too (Alertmanager resolves alerts not resent).
    wants_updates: bool = False
    # The format and cluster of exported alerts (alerts.format), given by build_hub; a
    # notifier with a format of its own (Slack, Alertmanager) reads only the cluster from it.
    exporter: AlertExporter | None = None

    def __init__(self, url: str, *, timeout_s: float = 5.0, session: requests.Session | None = None) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._session = session or requests.Session()

    @classmethod
    @abstractmethod
    def from_settings(cls, cfg: NotifierSettings) -> list[Notifier]:
        """One notifier per receiver of this kind that ``cfg`` configures (none: an empty list)."""

    @abstractmethod
    def payload(self, alerts: Sequence[Alert]) -> Any:
        """The JSON document this receiver expects for these alerts."""

    def send(self, alerts: Sequence[Alert]) -> None:
        """Deliver once; raises :class:`DeliveryError` on any failure."""
        try:
            resp = self._session.post(self.url, json=self.payload(alerts), timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise DeliveryError(f"{self.name}: {self.url}: {exc}") from exc
        if resp.status_code >= 300:
            raise DeliveryError(f"{self.name}: {self.url}: HTTP {resp.status_code} {resp.text[:200]!r}")

    def close(self) -> None:
        self._session.close()


NOTIFIERS: Registry[type[Notifier]] = Registry("notifier", "notifiers")


class _Worker:
    """A notifier's queue and thread: deliver in order, retried by the one retry policy."""

    def __init__(
        self, notifier: Notifier, *, policy: RetryPolicy, queue_max: int, on_result: OnResult
    ) -> None:
        self.notifier = notifier
        self.policy = policy
        self.on_result = on_result
        self.queue: queue.Queue[list[Alert] | None] = queue.Queue(maxsize=queue_max)
        self.abort = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"notify-{notifier.name}", daemon=True)

    def _run(self) -> None:
        while True:
            batch = self.queue.get()
            if batch is None or self.abort.is_set():
                return
            self._deliver(batch)

    def _deliver(self, batch: list[Alert]) -> None:
        name = self.notifier.name
        try:
            self.policy.call(
                lambda: self.notifier.send(batch),
                DeliveryError,
                stop_event=self.abort,
                on_retry=lambda _exc: self.on_result(name, "retried"),
            )
        except DeliveryError as exc:
            log.warning("notify failed for good notifier=%s alerts=%d error=%s", name, len(batch), exc)
            self.on_result(name, "failed")
        except Exception:  # a notifier bug must not kill the thread
            log.exception("notify crashed notifier=%s", name)
            self.on_result(name, "failed")
        else:
            self.on_result(name, "delivered")


class NotifierHub:
    """Fan alerts out to every notifier, filtered by severity, without blocking the caller."""

    def __init__(
        self,
        notifiers: Sequence[Notifier],
        *,
        min_severity: str = "medium",
        retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        jitter: bool = True,
        queue_max: int = 1000,
        on_result: OnResult | None = None,
    ) -> None:
        self.min_rank = SEVERITY_ORDER[min_severity]
        self.on_result: OnResult = on_result or (lambda _n, _s: None)
        # retries after the first try; the back-off is settings.retry's (build_hub passes it).
        self._workers = [
            _Worker(
                n,
                policy=RetryPolicy(
                    target=f"notifier:{n.name}",
                    initial_s=backoff_s,
                    max_s=max(max_backoff_s, backoff_s),
                    jitter=jitter,
                    attempts=retries + 1,
                ),
                queue_max=queue_max,
                on_result=self._result,
            )
            for n in notifiers
        ]
        self._started = False
        self._known: OrderedDict[str, int] = OrderedDict()  # alert id -> highest severity sent

    def __len__(self) -> int:
        return len(self._workers)

    def _news(self, alerts: Sequence[Alert]) -> list[Alert]:
        """The alerts seen for the first time, or at a higher severity than before (remembered)."""
        out = []
        for a in alerts:
            rank = SEVERITY_ORDER[a.severity]
            before = self._known.get(a.id)
            if before is None or rank > before:
                out.append(a)
                self._known[a.id] = rank
            self._known.move_to_end(a.id)
        while len(self._known) > MAX_KNOWN_ALERTS:
            self._known.popitem(last=False)
        return out

    def _result(self, notifier: str, status: str) -> None:
        self.on_result(notifier, status)

    def start(self) -> None:
        if not self._started:
            for w in self._workers:
                w.thread.start()
            self._started = True

    def submit(self, alerts: Sequence[Alert]) -> int:
        """Queue the alerts at or above the minimum severity; returns how many were queued.

        An open alert comes back at every window while its behaviour lasts: receivers that
        do not want updates get it once, and again only if its severity rises.
        """
        chosen = [a for a in alerts if SEVERITY_ORDER[a.severity] >= self.min_rank]
        if not chosen or not self._workers:
            return 0
        news = self._news(chosen)
        self.start()
        for w in self._workers:
            batch = chosen if w.notifier.wants_updates else news
            if not batch:
                continue
            try:
                w.queue.put_nowait(list(batch))
            except queue.Full:
                log.warning("notify queue full notifier=%s dropped=%d", w.notifier.name, len(batch))
                self._result(w.notifier.name, "dropped")
        return len(chosen)

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued within ``timeout_s``, then give up on the rest (logged)."""
        if self._started:
            for w in self._workers:
                try:
                    w.queue.put_nowait(None)
                except queue.Full:
                    w.abort.set()
                    log.warning("notify queue full at close notifier=%s", w.notifier.name)
            end = time.monotonic() + timeout_s
            for w in self._workers:
                w.thread.join(timeout=max(0.0, end - time.monotonic()))
                if w.thread.is_alive():
                    w.abort.set()
                    log.warning("notify gave up on queued alerts notifier=%s", w.notifier.name)
        for w in self._workers:
            w.notifier.close()
