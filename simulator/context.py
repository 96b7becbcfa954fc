"""What every traffic generator is given: the cluster, the interval, its own random stream.

Each generator draws from a random stream named after it (seeded from the run's seed and
the name), so adding or changing one kind of traffic never reshuffles the others.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from flowwarden.settings import Settings
from flowwarden.simulator.cluster import Cluster
from flowwarden.simulator.flows import FlowParts


def stream(seed: int, name: str) -> np.random.Generator:
    """A random stream derived from the run's seed and a name (stable across versions)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


@dataclass(frozen=True)
class External:
    """A stable service outside the cluster that benign workloads talk to."""

    name: str
    ip: str
    port: int = 443


# Benign destinations live in 203.0.113.0/25; ingress clients in 198.51.100.0/24 and
# 203.0.113.128/25; attackers' servers in 192.0.2.0/24 (never seen in benign traffic).
EXTERNALS: dict[str, External] = {
    "paygate": External("api.paygate.example.com", "203.0.113.20"),
    "crm": External("api.crm-saas.example.com", "203.0.113.30"),
    "hooks": External("hooks.chat.example.net", "203.0.113.40"),
    "objects": External("objects.storage.example.com", "203.0.113.50"),
    "registry": External("registry.example.com", "203.0.113.60"),
    "license": External("license.vendor.example.org", "203.0.113.70"),
    "geo": External("geo.maps.example.com", "203.0.113.80"),
    "exports": External("exports.partner.example.com", "203.0.113.90"),
}
ATTACKER_NET = "192.0.2."


@dataclass
class SimContext:
    cluster: Cluster
    settings: Settings
    seed: int
    t0: float
    t1: float
    parts: FlowParts = field(default_factory=FlowParts)

    def rng(self, name: str) -> np.random.Generator:
        """An independent random stream for the generator ``name``."""
        return stream(self.seed, name)

    @property
    def interval_s(self) -> float:
        """How often a long-lived flow is reported: the collector's active timeout."""
        return float(self.settings.collector.active_timeout_s)
