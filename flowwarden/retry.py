"""One retry policy for every outbound call: Kafka, store, notifiers, webhooks, Kubernetes API, Grafana.

Each caller used to carry its own loop and its own back-off; now they all describe what
to retry (the exceptions, how long, how many tries) and :class:`RetryPolicy` does it with
tenacity: exponential back-off from ``retry.initial_s`` to ``retry.max_s`` with jitter,
a log line per retry, and one count per retry in ``flowwarden_retries_total{target}``.

The count is kept per process (:data:`RETRIES`), not per registry, because the retries
happen in base code (the bus, the store) that no stage hands a registry to; every
component's metrics registry exports it through :func:`register_retry_metrics`, the way
``process_*`` metrics describe the process rather than the stage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

import tenacity
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from flowwarden.settings import RetrySettings

log = logging.getLogger("flowwarden.retry")

T = TypeVar("T")

# What a caller may retry on: exception classes, or a predicate over the exception.
RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


class RetryCounts(Collector):
    """Retries per target, exported as the counter ``flowwarden_retries_total{target}``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def inc(self, target: str) -> None:
        with self._lock:
            self._counts[target] = self._counts.get(target, 0) + 1

    def value(self, target: str) -> int:
        with self._lock:
            return self._counts.get(target, 0)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "flowwarden_retries",
            "Outbound calls tried again after a failure (one retry policy), by target.",
            labels=["target"],
        )
        with self._lock:
            for target, n in sorted(self._counts.items()):
                family.add_metric([target], n)
        yield family


RETRIES = RetryCounts()


def register_retry_metrics(registry: CollectorRegistry) -> None:
    """Export :data:`RETRIES` on ``registry`` (each component's own /metrics)."""
    registry.register(RETRIES)


@dataclass(frozen=True)
class RetryPolicy:
    """How one target retries: back-off shape from the settings, limits from the caller.

    ``attempts`` (tries in all, None: no limit) and ``deadline_s`` (seconds since the first
    try after which no new try starts, the last wait ending at it; None: no limit) stop it;
    with neither it retries until ``stop_event`` is set. ``stop_event`` also cuts a wait
    short, so ``stop()`` of a component is never held up by a back-off.
    """

    target: str
    initial_s: float = 0.5
    max_s: float = 30.0
    jitter: bool = True
    attempts: int | None = None
    deadline_s: float | None = None

    @classmethod
    def from_settings(
        cls,
        settings: RetrySettings,
        target: str,
        *,
        attempts: int | None = None,
        deadline_s: float | None = None,
    ) -> RetryPolicy:
        return cls(
            target=target,
            initial_s=settings.initial_s,
            max_s=settings.max_s,
            jitter=settings.jitter,
            attempts=attempts,
            deadline_s=deadline_s,
        )

    def with_limits(self, *, attempts: int | None = None, deadline_s: float | None = None) -> RetryPolicy:
        """The same back-off with other limits (one call that must give up sooner)."""
        return replace(self, attempts=attempts, deadline_s=deadline_s)

    def retrying(
        self,
        retry_on: RetryOn,
        *,
        stop_event: threading.Event | None = None,
        sleep: Callable[[float], None] | None = None,
        on_retry: Callable[[BaseException], None] | None = None,
    ) -> tenacity.Retrying:
        """A tenacity ``Retrying`` for this policy; iterate it (``for attempt in ...: with attempt:``).

        The last failure is raised as itself (``reraise``), not wrapped in ``RetryError``.
        ``on_retry`` sees each failure that will be tried again (a caller's own cause metric).
        """
        stops: list[Any] = []
        if self.attempts is not None:
            stops.append(tenacity.stop_after_attempt(self.attempts))
        if self.deadline_s is not None:
            stops.append(tenacity.stop_after_delay(self.deadline_s))
        if stop_event is not None:
            stops.append(lambda _state: stop_event.is_set())
        stop: Any = tenacity.stop_any(*stops) if stops else tenacity.stop_never
        wait: Any = tenacity.wait_exponential(multiplier=self.initial_s, max=self.max_s)
        if self.jitter:
            wait = wait + tenacity.wait_random(0, self.initial_s)
        if self.deadline_s is not None:
            # Tries go on until the deadline: the last wait ends at it, not beyond.
            wait = _CappedWait(wait, self.deadline_s)
        if isinstance(retry_on, type | tuple):
            retry: Any = tenacity.retry_if_exception_type(retry_on)
        else:
            retry = tenacity.retry_if_exception(retry_on)
        last: list[BaseException] = []

        def wait_or_stop(seconds: float) -> None:
            # A stop during the wait ends it with the last failure: no further try is made.
            assert stop_event is not None
            if stop_event.wait(seconds) and last:
                raise last[-1]

        if sleep is None:
            sleep = wait_or_stop if stop_event is not None else time.sleep

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            if exc is not None:
                last[:] = [exc]
            RETRIES.inc(self.target)
            wait_s = state.next_action.sleep if state.next_action is not None else 0.0
            log.warning(
                "retrying target=%s attempt=%d retry_in_s=%.2f error=%s",
                self.target,
                state.attempt_number,
                wait_s,
                _describe(exc),
            )
            if on_retry is not None and exc is not None:
                on_retry(exc)

        return tenacity.Retrying(
            stop=stop, wait=wait, retry=retry, sleep=sleep, before_sleep=before_sleep, reraise=True
        )

    def call(
        self,
        fn: Callable[[], T],
        retry_on: RetryOn,
        *,
        stop_event: threading.Event | None = None,
        on_retry: Callable[[BaseException], None] | None = None,
    ) -> T:
        """``fn()``, tried again on ``retry_on`` failures within this policy's limits."""
        return self.retrying(retry_on, stop_event=stop_event, on_retry=on_retry)(fn)


class _CappedWait(tenacity.wait.wait_base):
    """A wait that never sleeps past ``deadline_s`` after the first try."""

    def __init__(self, inner: Any, deadline_s: float) -> None:
        self.inner = inner
        self.deadline_s = deadline_s

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        left = self.deadline_s - (retry_state.seconds_since_start or 0.0)
        return max(0.0, min(float(self.inner(retry_state)), left))


def attempts_of(retrying: Iterable[Any]) -> Iterator[tuple[int, Any]]:
    """``(attempt number, attempt)`` pairs of a ``Retrying`` (the number sizes per-try timeouts)."""
    for attempt in retrying:
        yield attempt.retry_state.attempt_number, attempt


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "-"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
