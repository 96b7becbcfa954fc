"""The collector's Prometheus metrics (names fixed by the dashboards), on their own registry.

A registry per collector (not the process-global one) lets tests and the embedded demo run
several stages in one process without clashing names.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from flowwarden.build_info import register_build_info
from flowwarden.retry import register_retry_metrics

log = logging.getLogger("flowwarden.collector")


class CollectorMetrics:
    """Counters of everything that moves through one collector, labelled by node."""

    def __init__(self, node: str, registry: CollectorRegistry | None = None) -> None:
        self.node = node
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.packets = Counter("flowwarden_collector_packets", "Packets read.", ["node"], registry=r)
        self.bytes = Counter("flowwarden_collector_bytes", "Frame bytes read.", ["node"], registry=r)
        self.kernel_drops = Counter(
            "flowwarden_collector_kernel_drops",
            "Packets the kernel dropped before capture.",
            ["node"],
            registry=r,
        )
        self.undecoded = Counter(
            "flowwarden_collector_undecoded_packets",
            "Packets not metered (or metered without ports), by cause.",
            ["node", "cause"],
            registry=r,
        )
        self.flows = Counter("flowwarden_collector_flows", "Flow records emitted.", ["node"], registry=r)
        self.evicted = Counter(
            "flowwarden_collector_flows_evicted",
            "Flows ended early because the table was full.",
            ["node"],
            registry=r,
        )
        self.spool_bytes = Gauge(
            "flowwarden_collector_spool_bytes", "Bytes waiting in the on-disk spool.", ["node"], registry=r
        )
        self.publish_errors = Counter(
            "flowwarden_collector_publish_errors", "Messages the bus could not deliver.", ["node"], registry=r
        )
        self.dropped_flows = Counter(
            "flowwarden_collector_dropped_flows",
            "Flow records lost, by cause.",
            ["node", "cause"],
            registry=r,
        )
        self.encrypted = Counter(
            "flowwarden_collector_encrypted_overlay_packets",
            "WireGuard packets seen (an encrypted overlay: only workload interfaces show the pods).",
            ["node"],
            registry=r,
        )
        self.duplicates = Counter(
            "flowwarden_collector_duplicate_sightings",
            "Packets left out because another captured interface already counts them.",
            ["node"],
            registry=r,
        )
        self.interfaces = Gauge(
            "flowwarden_collector_interfaces",
            "Interfaces captured now, by role (workload, uplink).",
            ["node", "role"],
            registry=r,
        )
        self._warned_encrypted = False
        moving = (self.packets, self.bytes, self.kernel_drops, self.flows, self.evicted)
        for m in (*moving, self.publish_errors, self.encrypted, self.duplicates):
            m.labels(node=node)
        self.spool_bytes.labels(node=node).set(0)
        register_build_info(r)
        register_retry_metrics(r)

    def count_undecoded(self, causes: dict[str, int]) -> None:
        for cause, n in causes.items():
            self.undecoded.labels(node=self.node, cause=cause).inc(n)
        wg = causes.get("wireguard", 0)
        if wg:
            self.encrypted.labels(node=self.node).inc(wg)
            if not self._warned_encrypted:
                self._warned_encrypted = True
                log.warning(
                    "wireguard-encrypted overlay on a captured interface: pod addresses inside are "
                    "unreadable; capture on workload interfaces (collector.interfaces: cali*, lxc*, "
                    "veth*) to see pod traffic node=%s",
                    self.node,
                )

    def drop(self, cause: str, flows: int) -> None:
        self.dropped_flows.labels(node=self.node, cause=cause).inc(flows)

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample (tests and the CLI summary read it)."""
        v = self.registry.get_sample_value(name, {"node": self.node, **labels})
        return float(v or 0.0)

    def serve(self, port: int, addr: str = "0.0.0.0") -> object:  # noqa: S104 - a node exporter listens on the node
        """Expose ``/metrics`` on ``port`` (0: pick a free one); returns the server."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server
