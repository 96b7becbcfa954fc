"""Who owns an address: pods, namespaces and workload sizes for the guardrails.

Read from a ``kubectl get pods -A -o json`` dump (``settings.pipeline.inventory_path``)
or given as a mapping. The guardrails need it to refuse blocks whose *target* sits in an
allowlisted namespace or workload, and to cap the share of one workload's pods blocked.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowwarden.errors import ConfigError

_POD_TEMPLATE_HASH = re.compile(r"-[a-z0-9]{5,10}$")


@dataclass(frozen=True)
class PodRef:
    namespace: str
    pod: str
    workload: str


@dataclass
class Inventory:
    """Pods by IP and pod counts by "namespace/workload"."""

    pods_by_ip: dict[str, PodRef] = field(default_factory=dict)
    workload_pods: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_pods(
        cls, pods: Iterable[tuple[str, PodRef]], workload_pods: Mapping[str, int] | None = None
    ) -> Inventory:
        by_ip = dict(pods)
        counts = Counter(f"{p.namespace}/{p.workload}" for p in {p for p in by_ip.values()} if p.workload)
        counts.update(dict(workload_pods or {}))
        return cls(pods_by_ip=by_ip, workload_pods=dict(counts))

    @classmethod
    def from_kubectl_json(cls, data: Mapping[str, Any]) -> Inventory:
        pods: list[tuple[str, PodRef]] = []
        for item in data.get("items", []):
            meta = item.get("metadata", {})
            ref = PodRef(str(meta.get("namespace", "")), str(meta.get("name", "")), _workload(meta))
            status = item.get("status", {})
            ips = [p.get("ip", "") for p in status.get("podIPs", [])] or [status.get("podIP", "")]
            pods.extend((ip, ref) for ip in ips if ip)
        return cls.from_pods(pods)

    @classmethod
    def load(cls, path: Path | None) -> Inventory:
        if path is None:
            return cls()
        try:
            return cls.from_kubectl_json(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"pipeline.inventory_path: cannot read {path}: {exc}") from exc

    def pod_count(self, namespace: str, workload: str) -> int | None:
        return self.workload_pods.get(f"{namespace}/{workload}")


def _workload(meta: Mapping[str, Any]) -> str:
    """The owning Deployment/StatefulSet/DaemonSet name (a ReplicaSet loses its hash suffix)."""
    for owner in meta.get("ownerReferences", []) or []:
        name = str(owner.get("name", ""))
        if owner.get("kind") == "ReplicaSet":
            return _POD_TEMPLATE_HASH.sub("", name)
        if name:
            return name
    return ""
