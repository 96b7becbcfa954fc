"""Prometheus metrics of the enforcer (names fixed by the dashboards).

Each :class:`EnforcerMetrics` has its own registry, so several enforcers (tests, the
benchmark) can live in one process; :meth:`serve` exposes it on ``/metrics``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from flowwarden.build_info import register_build_info
from flowwarden.retry import register_retry_metrics


class EnforcerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.decisions = Counter(
            "flowwarden_enforcer_decisions_total",
            "Decisions taken, by mode, backend and status.",
            ["mode", "backend", "status"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "flowwarden_enforcer_refusals_total",
            "Decisions refused, and targets dropped from automatic decisions, by guardrail.",
            ["guardrail"],
            registry=self.registry,
        )
        self.targets_over_limit = Counter(
            "flowwarden_enforcer_targets_over_limit_total",
            "Targets of alerts beyond enforcement.max_targets_per_block (such alerts become a "
            "quarantine proposal waiting for approval).",
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "flowwarden_enforcer_dead_letters_total",
            "Alert messages sent to the alerts dead-letter topic, by the field at fault.",
            ["field"],
            registry=self.registry,
        )
        self.active_blocks = Gauge(
            "flowwarden_enforcer_active_blocks", "Blocks and quarantines in force.", registry=self.registry
        )
        self.apply_seconds = Histogram(
            "flowwarden_enforcer_apply_seconds",
            "Time to apply one decision on its backends.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
            registry=self.registry,
        )
        # Threat feeds exported by the running enforcer (enforcement.feed_export).
        self.feed_export_entries = Gauge(
            "flowwarden_feed_export_entries",
            "CIDRs of each threat feed in the last export that applied (protected entries left out).",
            ["feed"],
            registry=self.registry,
        )
        self.feed_export_protected = Gauge(
            "flowwarden_feed_export_protected_entries",
            "Feed entries left out of the export because they cover a protected address.",
            registry=self.registry,
        )
        self.feed_export_last_success = Gauge(
            "flowwarden_feed_export_last_success_timestamp_seconds",
            "When the feed export last applied without error (epoch seconds).",
            registry=self.registry,
        )
        self.feed_export_failures = Counter(
            "flowwarden_feed_export_failures",
            "Feed refreshes or exports that failed (the last good copy stayed in force), by stage.",
            ["stage"],
            registry=self.registry,
        )
        for stage in ("fetch", "apply"):
            self.feed_export_failures.labels(stage)
        register_build_info(self.registry)
        register_retry_metrics(self.registry)

    def serve(self, port: int) -> None:
        if port:
            start_http_server(port, registry=self.registry)
