"""One pod as the inventory knows it, and the one parser that reads it from the API's JSON.

The JSON is a pod object in the API's camelCase: an item of ``kubectl get pods -A -o json``,
or what a watch on the Kubernetes API delivers. Pod IPs are reused, so a pod carries its
lifetime (creation to deletion or finish, plus a grace period for a terminating pod) and is
the owner of its address only within it. Enrichment and the enforcer's guardrails both read
pods parsed here, so they agree on workloads, lifetimes and which pods are ending.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flowwarden.errors import ConfigError

DELETION_GRACE_S = 30.0  # a terminating pod still sends packets for a little while
DELETED_AT = "flowwarden.io/deleted-at"  # a pod's end of life when it has no deletionTimestamp
FINISHED_PHASES = ("Succeeded", "Failed")  # the pod ran to its end; its IP is free again
_HASH_SUFFIX = re.compile(r"-[a-z0-9]{5,10}$")  # ReplicaSet pod-template-hash
_CRONJOB_SUFFIX = re.compile(r"-\d{6,}$")  # Job created by a CronJob: <cronjob>-<minutes>

# What parse_pod reads of a pod, besides ownerReferences (kind, name), the DELETED_AT
# annotation and a finished pod's phase and container finish times. slim_pod keeps exactly this.
METADATA_READ = ("name", "namespace", "creationTimestamp", "deletionTimestamp", "labels")
SPEC_READ = ("nodeName", "hostNetwork")
STATUS_READ = ("hostIP", "podIP", "podIPs", "startTime")


@dataclass(frozen=True)
class Pod:
    """A pod with its lifetime, its workload and where it runs."""

    namespace: str
    name: str
    workload: str  # from the owner references; a bare pod is its own workload
    owned: bool  # it has owner references: it is one of its workload's replicas
    node: str
    host_ip: str  # its node's address ("" when not reported)
    host_network: bool  # it shares its node's address: the address is the node's, not a pod's
    ips: tuple[str, ...]  # its own addresses (none for a host-network pod)
    start: float  # created (-inf when unknown)
    end: float  # deleted or finished, plus DELETION_GRACE_S (inf while it lives)
    ending: bool  # deleting, deleted or finished: no longer one of its workload's live replicas
    labels: Mapping[str, str] = field(default_factory=dict)


def timestamp(value: Any) -> float | None:
    """Seconds since the epoch from the API's ISO 8601 text (or a number); None when empty."""
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise ConfigError(f"inventory: timestamp {value!r} is not ISO 8601") from exc


def workload_of(pod_name: str, owners: list[dict[str, Any]]) -> str:
    """The workload name a pod belongs to, from its owner references.

    A ReplicaSet's name is its Deployment's name plus the pod-template hash; a Job made by a
    CronJob carries the schedule time as a suffix. Both are stripped so every replica (and
    every run) shares one workload, and so one baseline.
    """
    for owner in owners:
        kind, name = str(owner.get("kind", "")), str(owner.get("name", ""))
        if not name:
            continue
        if kind == "ReplicaSet":
            return _HASH_SUFFIX.sub("", name)
        if kind == "Job":
            return _CRONJOB_SUFFIX.sub("", name)
        return name  # Deployment, StatefulSet, DaemonSet, CronJob, ReplicationController, others
    return pod_name  # a bare pod is its own workload


def finish_times(status: Mapping[str, Any]) -> list[Any]:
    """The ``finishedAt`` of every container (init ones too) that terminated, as reported."""
    return [
        t
        for key in ("containerStatuses", "initContainerStatuses")
        for c in status.get(key) or []
        if isinstance(c, dict)
        and (t := ((c.get("state") or {}).get("terminated") or {}).get("finishedAt")) is not None
    ]


def _finished_at(status: Mapping[str, Any]) -> float | None:
    """When a pod that ran to its end (a Job's, phase Succeeded or Failed) let go of its IP.

    Such a pod stays in the API, its IP still in its status, until something deletes it,
    while the network already gives the IP to new pods: it is the pod only until its last
    container finished. ``None`` while it runs, or when no finish time is reported.
    """
    if status.get("phase") not in FINISHED_PHASES:
        return None
    known = [t for t in (timestamp(v) for v in finish_times(status)) if t is not None]
    return max(known) if known else None


def parse_pod(item: Mapping[str, Any], index: int = 0) -> Pod:
    """The inventory's record of one pod JSON object; ``index`` names it in errors."""
    meta = item.get("metadata") or {}
    spec = item.get("spec") or {}
    status = item.get("status") or {}
    if not isinstance(meta, dict) or not meta.get("name"):
        raise ConfigError(f"inventory: items[{index}].metadata.name is missing")
    name, ns = str(meta["name"]), str(meta.get("namespace", "default"))
    owners = list(meta.get("ownerReferences") or [])
    annotations = meta.get("annotations") or {}
    host_network = bool(spec.get("hostNetwork"))
    host_ip = str(status.get("hostIP", "") or "")
    ips: list[str] = []
    if host_network:
        host_ip = host_ip or str(status.get("podIP", "") or "")
    else:
        ips = [str(p.get("ip")) for p in status.get("podIPs") or [] if p.get("ip")]
        if not ips and status.get("podIP"):
            ips = [str(status["podIP"])]
        for ip in ips:
            try:
                ipaddress.ip_address(ip)
            except ValueError as exc:
                raise ConfigError(
                    f"inventory: items[{index}].status.podIP {ip!r} is not an IP address"
                ) from exc
    start = timestamp(meta.get("creationTimestamp")) or timestamp(status.get("startTime")) or -math.inf
    end_ts = timestamp(meta.get("deletionTimestamp")) or timestamp(annotations.get(DELETED_AT))
    finished = _finished_at(status)
    if finished is not None and (end_ts is None or finished < end_ts):
        end_ts = finished
    ending = bool(meta.get("deletionTimestamp") or annotations.get(DELETED_AT)) or (
        status.get("phase") in FINISHED_PHASES
    )
    return Pod(
        namespace=ns,
        name=name,
        workload=workload_of(name, owners),
        owned=bool(owners),
        node=str(spec.get("nodeName", "") or ""),
        host_ip=host_ip,
        host_network=host_network,
        ips=tuple(ips),
        start=start,
        end=end_ts + DELETION_GRACE_S if end_ts is not None else math.inf,
        ending=ending,
        labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
    )


def slim_pod(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The pod JSON cut down to what :func:`parse_pod` reads (and the uid that keys it).

    Real pod objects carry specs, managed fields and container statuses (kilobytes each);
    the watch keeps only this, which bounds its memory and makes a MODIFIED event that
    changed nothing the inventory reads compare equal, so it costs no rebuild. None: not a
    usable pod (no name).
    """
    meta = pod.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        return None
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    slim_meta: dict[str, Any] = {k: meta[k] for k in (*METADATA_READ, "uid") if meta.get(k) is not None}
    owners = [{"kind": o.get("kind"), "name": o.get("name")} for o in meta.get("ownerReferences") or []]
    if owners:
        slim_meta["ownerReferences"] = owners
    deleted_at = (meta.get("annotations") or {}).get(DELETED_AT)
    if deleted_at:
        slim_meta["annotations"] = {DELETED_AT: deleted_at}
    slim_status = {k: status[k] for k in STATUS_READ if status.get(k)}
    if status.get("phase") in FINISHED_PHASES:  # its end of life: when its containers finished
        slim_status["phase"] = status["phase"]
        slim_status["containerStatuses"] = [
            {"state": {"terminated": {"finishedAt": t}}} for t in finish_times(status)
        ]
    return {
        "metadata": slim_meta,
        "spec": {k: spec[k] for k in SPEC_READ if spec.get(k) is not None},
        "status": slim_status,
    }
