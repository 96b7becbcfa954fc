"""Pipeline health: is every node capturing, is the pipeline keeping up, is anything lost."""

from __future__ import annotations

from flowwarden.dashboards.model import Json, Row, dashboard, promql, stat, table, timeseries

UID = "flowwarden-pipeline-health"
RATE = "[$__rate_interval]"


def _per_node(metric: str) -> str:
    return f"sum by (node) (rate({metric}{RATE}))"


def build() -> Json:
    collectors = [
        timeseries(
            "Packets/s per node",
            [promql(_per_node("flowwarden_collector_packets_total"), legend="{{node}}")],
            unit="pps",
            w=8,
        ),
        timeseries(
            "Flows/s per node",
            [promql(_per_node("flowwarden_collector_flows_total"), legend="{{node}}")],
            unit="ops",
            w=8,
        ),
        timeseries(
            "Kernel drops/s per node",
            [promql(_per_node("flowwarden_collector_kernel_drops_total"), legend="{{node}}")],
            unit="pps",
            w=8,
            description="Packets the kernel dropped before the capture read them: the node is too busy.",
        ),
        timeseries(
            "Undecoded packets/s by cause",
            [
                promql(
                    f"sum by (node, cause) (rate(flowwarden_collector_undecoded_packets_total{RATE}))",
                    legend="{{node}} {{cause}}",
                )
            ],
            unit="pps",
            w=8,
        ),
        timeseries(
            "Flows evicted and dropped/s",
            [
                promql(_per_node("flowwarden_collector_flows_evicted_total"), legend="evicted {{node}}"),
                promql(
                    f"sum by (node, cause) (rate(flowwarden_collector_dropped_flows_total{RATE}))",
                    legend="dropped {{node}} {{cause}}",
                    ref="B",
                ),
            ],
            unit="ops",
            w=8,
            description="Evicted: the flow table was full. Dropped: spool full or queue over.",
        ),
        timeseries(
            "Spool bytes and publish errors",
            [
                promql("sum by (node) (flowwarden_collector_spool_bytes)", legend="spool {{node}}"),
                promql(
                    _per_node("flowwarden_collector_publish_errors_total"),
                    legend="errors/s {{node}}",
                    ref="B",
                ),
            ],
            unit="bytes",
            w=8,
            description="The spool grows while Kafka is unreachable and drains on return.",
        ),
    ]
    pipeline = [
        timeseries(
            "Pipeline flows/s and batches/s",
            [
                promql(f"sum(rate(flowwarden_pipeline_flows_total{RATE}))", legend="flows/s"),
                promql(f"sum(rate(flowwarden_pipeline_batches_total{RATE}))", legend="batches/s", ref="B"),
            ],
            unit="ops",
            w=8,
        ),
        timeseries(
            "Consumer lag per partition",
            [
                promql(
                    "sum by (partition) (flowwarden_pipeline_consumer_lag)", legend="partition {{partition}}"
                )
            ],
            unit="short",
            w=8,
            description="Flow batches waiting in Kafka: a growing line means falling behind.",
        ),
        timeseries(
            "End-to-end latency (flow end to alert)",
            [
                promql(
                    f"histogram_quantile({q}, sum by (le)"
                    f" (rate(flowwarden_pipeline_latency_seconds_bucket{RATE})))",
                    legend=f"p{round(q * 100)}",
                    ref=ref,
                )
                for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
            ],
            unit="s",
            w=8,
        ),
        timeseries(
            "Dead letters/s by cause",
            [promql(f"sum by (cause) (rate(flowwarden_pipeline_dlq_total{RATE}))", legend="{{cause}}")],
            unit="ops",
            w=8,
            description="Malformed input sent to the dead-letter topic with its reason.",
        ),
        timeseries(
            "Windows scored/s and alerts/s",
            [
                promql(f"sum(rate(flowwarden_pipeline_windows_scored_total{RATE}))", legend="windows/s"),
                promql(
                    f"sum by (kind, detector) (rate(flowwarden_pipeline_alerts_total{RATE}))",
                    legend="{{kind}} {{detector}}",
                    ref="B",
                ),
            ],
            unit="ops",
            w=8,
        ),
        timeseries(
            "Suppressed alerts/s by reason",
            [
                promql(
                    f"sum by (reason) (rate(flowwarden_pipeline_suppressed_total{RATE}))", legend="{{reason}}"
                )
            ],
            unit="ops",
            w=8,
            description="Alerts not raised: allowlists, duplicates, cool-down.",
        ),
        timeseries(
            "Notifications/s by notifier and status",
            [
                promql(
                    f"sum by (notifier, status) (rate(flowwarden_pipeline_notifications_total{RATE}))",
                    legend="{{notifier}} {{status}}",
                )
            ],
            unit="ops",
            w=8,
            description="Deliveries to webhooks, Slack and Alertmanager: failed and dropped ones are "
            "alerts a receiver never got (alert FlowwardenNotifierFailing).",
        ),
        stat(
            "Entities in state",
            [promql("sum(flowwarden_pipeline_state_entities)")],
            w=8,
            description="Sources whose baselines the pipeline keeps in memory.",
        ),
        table(
            "Model in use",
            [promql("max by (version) (flowwarden_pipeline_model_info)", instant=True)],
            w=8,
            h=4,
        ),
    ]
    return dashboard(
        UID,
        "flowwarden / Pipeline health",
        "Packets and flows per node, consumer lag, dead letters, end-to-end latency, kernel drops.",
        [Row("Collectors", collectors), Row("Pipeline", pipeline)],
        tags=["pipeline-health"],
    )
