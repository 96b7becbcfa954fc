"""The one retry policy: limits, stop-awareness, and the ``flowwarden_retries_total{target}`` count."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from flowwarden.build_info import build_facts
from flowwarden.retry import RETRIES, RetryPolicy
from flowwarden.settings import RetrySettings


class Flaky:
    """Fails ``failures`` times with ``exc``, then returns the number of calls."""

    def __init__(self, failures: int, exc: type[Exception] = ConnectionError) -> None:
        self.failures = failures
        self.exc = exc
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc(f"try {self.calls}")
        return self.calls


def test_retries_are_counted_per_target_until_success() -> None:
    before = RETRIES.value("test-a")
    policy = RetryPolicy(target="test-a", initial_s=0.001, max_s=0.002, attempts=5)
    assert policy.call(Flaky(3), ConnectionError) == 4
    assert RETRIES.value("test-a") == before + 3


def test_the_last_failure_is_raised_as_itself_and_other_errors_are_not_retried() -> None:
    policy = RetryPolicy(target="test-b", initial_s=0.001, max_s=0.002, attempts=3)
    flaky = Flaky(10)
    with pytest.raises(ConnectionError, match="try 3"):
        policy.call(flaky, ConnectionError)
    assert flaky.calls == 3
    wrong = Flaky(10, exc=ValueError)
    with pytest.raises(ValueError, match="try 1"):
        policy.call(wrong, ConnectionError)
    assert wrong.calls == 1


def test_a_deadline_keeps_trying_until_it_and_no_longer() -> None:
    policy = RetryPolicy(target="test-c", initial_s=0.05, max_s=0.2, deadline_s=0.5)
    started = time.monotonic()
    with pytest.raises(ConnectionError):
        policy.call(Flaky(1000), ConnectionError)
    assert 0.5 <= time.monotonic() - started < 1.5


def test_a_stop_event_ends_the_wait_at_once_with_the_last_failure() -> None:
    stop = threading.Event()
    policy = RetryPolicy(target="test-d", initial_s=60.0, max_s=60.0)  # would wait a minute
    flaky = Flaky(1000)
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="try 1"):
        # stop() arrives just as the back-off starts: the wait ends, no further try is made
        policy.call(flaky, ConnectionError, stop_event=stop, on_retry=lambda _exc: stop.set())
    assert flaky.calls == 1 and time.monotonic() - started < 5.0


def test_the_policy_comes_from_settings_and_the_count_is_a_prometheus_counter() -> None:
    policy = RetryPolicy.from_settings(RetrySettings(initial_s=0.001, max_s=0.004), "test-e", attempts=2)
    assert (policy.initial_s, policy.max_s, policy.jitter, policy.attempts) == (0.001, 0.004, True, 2)
    policy.call(Flaky(1), ConnectionError)
    registry = CollectorRegistry()
    registry.register(RETRIES)
    assert registry.get_sample_value("flowwarden_retries_total", {"target": "test-e"}) == 1.0


def test_every_component_exports_build_info_and_the_retry_counter() -> None:
    from flowwarden.collectors.metrics import CollectorMetrics
    from flowwarden.enforcement.metrics import EnforcerMetrics
    from flowwarden.pipeline.runtime.metrics import PipelineMetrics

    facts = build_facts()
    assert facts["version"] not in ("", "unknown") and facts["python"].count(".") == 2
    RetryPolicy(target="test-f", initial_s=0.001, attempts=2).call(Flaky(1), ConnectionError)
    for registry in (PipelineMetrics().registry, EnforcerMetrics().registry, CollectorMetrics("n1").registry):
        assert registry.get_sample_value("flowwarden_build_info", facts) == 1.0
        assert registry.get_sample_value("flowwarden_retries_total", {"target": "test-f"}) == 1.0


def test_counters_that_only_grow_are_counters() -> None:
    """A running total exported as a Gauge cannot be rate()d across restarts: none is left."""
    from prometheus_client import Counter, Gauge

    from flowwarden.collectors.metrics import CollectorMetrics
    from flowwarden.enforcement.metrics import EnforcerMetrics
    from flowwarden.pipeline.runtime.metrics import PipelineMetrics

    pipeline = PipelineMetrics()
    assert isinstance(pipeline.evicted, Counter)  # flowwarden_pipeline_state_evicted_total
    metrics: list[object] = [pipeline, EnforcerMetrics(), CollectorMetrics("n1")]
    totals = ("evicted", "dropped", "errors", "retries", "failures", "total")
    gauges = [
        value._name
        for m in metrics
        for value in vars(m).values()
        if isinstance(value, Gauge) and any(word in value._name for word in totals)
    ]
    assert gauges == []
