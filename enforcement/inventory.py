"""Who owns an address: pods, namespaces and workload sizes for the guardrails.

From where ``pipeline.inventory_source`` says, as the pipeline: a ``kubectl get pods -A -o
json`` dump (``pipeline.inventory_path``), the pods a watch on the Kubernetes API keeps
current (:meth:`Inventory.from_kubectl_json` over ``WatchedInventory.pods()``), or a
mapping. The guardrails need it to refuse blocks whose *target* sits in an allowlisted
namespace or workload, and to cap the share of one workload's pods blocked. Workload names
are the pipeline's (:func:`pipeline.enrich.workload_of`), so an alert's source workload
finds its size here; a pod without an owner belongs to no workload.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowwarden.errors import ConfigError
from flowwarden.pipeline.detection.enrich import DELETED_AT, FINISHED_PHASES, workload_of


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
        """Every listed pod by IP; a workload's size counts only its pods that are not ending.

        A terminating, deleted or finished pod still owns its address for a moment (a block
        of it is still checked against the allowlists) but is no longer one of its
        workload's replicas: counting it would make the share of a workload blocked look
        smaller than it is during a rollout.
        """
        pods: list[tuple[str, PodRef]] = []
        live: Counter[str] = Counter()
        for item in data.get("items", []):
            meta = item.get("metadata") or {}
            status = item.get("status") or {}
            if (item.get("spec") or {}).get("hostNetwork"):
                continue  # its address is its node's, never a pod's
            owners = list(meta.get("ownerReferences") or [])
            name = str(meta.get("name", ""))
            ref = PodRef(str(meta.get("namespace", "")), name, workload_of(name, owners) if owners else "")
            ips = [p.get("ip", "") for p in status.get("podIPs") or []] or [status.get("podIP", "")]
            pods.extend((ip, ref) for ip in ips if ip)
            ending = meta.get("deletionTimestamp") or (meta.get("annotations") or {}).get(DELETED_AT)
            if ref.workload and not ending and status.get("phase") not in FINISHED_PHASES:
                live[f"{ref.namespace}/{ref.workload}"] += 1
        return cls(pods_by_ip=dict(pods), workload_pods=dict(live))

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
