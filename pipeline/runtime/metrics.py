"""Prometheus metrics of the pipeline stage, served on ``settings.pipeline.metrics_port``.

Every process gets its own :class:`~prometheus_client.CollectorRegistry` (no module-level
globals), so two stages in one test process never share counters. The names are the
contract with the dashboards: change them only together with ``dashboards/``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from flowwarden.build_info import register_build_info
from flowwarden.retry import register_retry_metrics

if TYPE_CHECKING:
    from flowwarden.pipeline.runtime.feeds import FeedStats

log = logging.getLogger(__name__)

# From a flow's end to its alert: live streams sit in the seconds, a backlog in the minutes.
LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 300, 600, 1800, 3600)


class PipelineMetrics:
    """The pipeline's counters, gauges and the latency histogram, on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.flows = Counter("flowwarden_pipeline_flows", "Valid flow records consumed.", registry=r)
        self.batches = Counter("flowwarden_pipeline_batches", "Flow batches (messages) consumed.", registry=r)
        self.consumer_lag = Gauge(
            "flowwarden_pipeline_consumer_lag",
            "Messages behind the end of the partition.",
            ["partition"],
            registry=r,
        )
        # One series per worker and topic: what a HorizontalPodAutoscaler scales the stage on
        # (summed over the stage's pods: the messages its consumer group is behind).
        self.topic_lag = Gauge(
            "flowwarden_pipeline_topic_lag",
            "Messages behind the end of the partitions this worker owns, summed, per topic it consumes.",
            ["topic"],
            registry=r,
        )
        self.windows_scored = Counter(
            "flowwarden_pipeline_windows_scored", "Entity-windows closed and scored.", registry=r
        )
        self.alerts = Counter(
            "flowwarden_pipeline_alerts",
            "Alerts produced (new or updated).",
            ["kind", "detector"],
            registry=r,
        )
        self.dlq = Counter(
            "flowwarden_pipeline_dlq", "Batches or rows sent to the dead-letter topic.", ["cause"], registry=r
        )
        self.suppressed = Counter(
            "flowwarden_pipeline_suppressed", "Alerts or rows suppressed on purpose.", ["reason"], registry=r
        )
        self.latency = Histogram(
            "flowwarden_pipeline_latency_seconds",
            "From the end of the newest flow of an alert's window to the alert's production.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "flowwarden_pipeline_model_info", "The model in use (value 1).", ["version"], registry=r
        )
        self.state_entities = Gauge(
            "flowwarden_pipeline_state_entities", "Entities held in the engine's state.", registry=r
        )
        # Beyond the dashboard contract: what the runtime itself does.
        self.commits = Counter("flowwarden_pipeline_commits", "Offset commits.", ["status"], registry=r)
        self.checkpoints = Counter(
            "flowwarden_pipeline_checkpoints", "State checkpoints written.", ["status"], registry=r
        )
        self.partition_restores = Counter(
            "flowwarden_pipeline_partition_restores",
            "Partitions a detect worker was assigned: state restored from its last checkpoint, or cold.",
            ["state"],
            registry=r,
        )
        self.replayed_batches = Counter(
            "flowwarden_pipeline_replayed_batches",
            "Batches seen again after a restart (their rollups were already stored).",
            registry=r,
        )
        self.evicted = Counter(
            "flowwarden_pipeline_state_evicted",
            "Entries evicted from the engine's state.",
            ["kind"],
            registry=r,
        )
        self.notifications = Counter(
            "flowwarden_pipeline_notifications",
            "Notifier deliveries by outcome.",
            ["notifier", "status"],
            registry=r,
        )
        self.early_alerts = Counter(
            "flowwarden_pipeline_early_alerts",
            "Alerts raised or updated from a still-open window (conclusive rule evidence).",
            registry=r,
        )
        self.late_flows = Counter(
            "flowwarden_pipeline_late_flows",
            "Flows that arrived after their window closed (folded into the oldest open one).",
            registry=r,
        )
        self.buffered_flows = Gauge(
            "flowwarden_pipeline_buffered_flows",
            "Flows held back to align partitions in event time.",
            registry=r,
        )
        self.inventory_watch = Counter(
            "flowwarden_pipeline_inventory_watch",
            "Kubernetes pod watch: lists, watches opened, events applied, failures, inventory rebuilds.",
            ["what"],
            registry=r,
        )
        self.store_retries = Counter(
            "flowwarden_pipeline_store_retries",
            "Store transactions run again after the database aborted them, by cause "
            "(deadlock, serialization, connection, busy).",
            ["cause"],
            registry=r,
        )
        self.offset_resets = Counter(
            "flowwarden_pipeline_offset_resets",
            "Partitions whose offsets started again (topic recreated, broker data lost): "
            "taken as new data under a new epoch.",
            ["topic"],
            registry=r,
        )
        self.resolutions = Counter(
            "flowwarden_alert_resolutions",
            "People's verdicts on alerts (flowwarden alerts resolve) the engine has applied.",
            ["verdict"],
            registry=r,
        )
        for verdict in ("benign", "malicious"):
            self.resolutions.labels(verdict=verdict)
        # Declared policy and threat feeds (issue 17).
        self.feed_entries = Gauge(
            "flowwarden_feed_entries", "Entries of each threat feed in use.", ["feed"], registry=r
        )
        self.feed_last_success = Gauge(
            "flowwarden_feed_last_success_timestamp_seconds",
            "When each feed last refreshed without error (epoch seconds).",
            ["feed"],
            registry=r,
        )
        self.feed_failures = Counter(
            "flowwarden_feed_refresh_failures",
            "Feed refreshes that failed (the last good copy stayed in use).",
            ["feed"],
            registry=r,
        )
        self.feed_hits = Counter(
            "flowwarden_feed_hits",
            "Flows to a feed-listed address or name, by feed and the threat_feed detector's mode.",
            ["feed", "mode"],
            registry=r,
        )
        self.policy_violations = Counter(
            "flowwarden_policy_violations",
            "Flows the declared policy does not allow, by rule kind (egress, ingress, a cluster endpoint).",
            ["kind"],
            registry=r,
        )
        self._rule_totals: dict[tuple[str, ...], float] = {}
        register_build_info(r)
        register_retry_metrics(r)
        self._server: WSGIServer | None = None
        self._current_model: str | None = None

    def record_lag(self, topic: str, lag: dict[int, int]) -> None:
        """The lag per partition just measured, and its sum for the topic."""
        for partition, n in lag.items():
            self.consumer_lag.labels(partition=str(partition)).set(n)
        self.topic_lag.labels(topic=topic).set(sum(lag.values()))

    def set_model(self, version: str | None) -> None:
        """Keep exactly one ``model_info`` series: the version in use."""
        if self._current_model is not None:
            self.model_info.remove(self._current_model)
        self._current_model = version
        if version is not None:
            self.model_info.labels(version=version).set(1)

    def record_rules(
        self, feeds: Iterable[FeedStats], tallies: dict[str, dict[str, int]], feed_mode: str
    ) -> None:
        """Export the feeds' health and the rule detectors' running totals (their growth)."""
        for f in feeds:
            self.feed_entries.labels(feed=f.name).set(f.entries)
            if f.last_success is not None:
                self.feed_last_success.labels(feed=f.name).set(f.last_success)
            self._grow(self.feed_failures.labels(feed=f.name), ("failures", f.name), f.failures)
        for feed, n in tallies.get("threat_feed", {}).items():
            self._grow(self.feed_hits.labels(feed=feed, mode=feed_mode), ("hits", feed, feed_mode), n)
        for kind, n in tallies.get("policy_violation", {}).items():
            self._grow(self.policy_violations.labels(kind=kind), ("violations", kind), n)

    def _grow(self, counter: Counter, key: tuple[str, ...], total: float) -> None:
        seen = self._rule_totals.get(key, 0.0)
        if total > seen:
            counter.inc(total - seen)
        self._rule_totals[key] = float(total)

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:  # noqa: S104 - scraped from the pod network
        """Expose ``/metrics``; port 0 picks a free one. Returns the bound port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        bound = int(server.server_address[1])
        log.info("metrics listening port=%d", bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
