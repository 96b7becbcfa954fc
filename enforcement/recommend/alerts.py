"""Edges a recommendation must never allow: those of open or malicious alerts.

An alert is *open* until a person records a verdict on it (``flowwarden alerts resolve``);
one resolved ``--malicious`` stays excluded, one resolved ``--benign`` no longer is. Each
such alert forbids its (source, target, port) edges: the source is the alert's workload
(else its address), the targets its addresses plus the workloads its example flows and the
pod inventory name for them, the ports its ``target_ports`` (none listed: any port).
An alert naming no target forbids nothing specific and is reported as such.

The pipeline keeps at most ``cap`` targets and ports per alert (the busiest): a scan's list is
partial. A capped port list forbids every port to the listed targets; a capped target list
also forbids every edge of the source that began while the alert was active (its first and
last seen, a minute either side: the store's rollups are per minute).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from flowwarden.enforcement.recommend.evaluate import Endpoint
from flowwarden.enforcement.recommend.flows import Edge
from flowwarden.errors import InputError
from flowwarden.records import Alert


@dataclass(frozen=True)
class AlertEdge:
    """The edges one alert forbids."""

    alert_id: str
    why: str  # "open" | "malicious"
    source: str  # "namespace/workload", or the address
    targets: frozenset[str]  # addresses and "namespace/workload" names
    ports: frozenset[int]  # empty: any port
    span: tuple[float, float] | None = None  # set when the targets were capped: edges begun then


def alert_edges(
    alerts: Iterable[Alert],
    verdicts: Mapping[str, str],
    pods_by_ip: Mapping[str, str] | None = None,
    cap: int = 20,
) -> tuple[list[AlertEdge], list[str]]:
    """The forbidden edges of the alerts not resolved benign; and the ids of those naming no target.

    ``verdicts``: alert id -> "benign"/"malicious"; ``pods_by_ip``: address -> "ns/workload".
    """
    out: list[AlertEdge] = []
    untargeted: list[str] = []
    names = pods_by_ip or {}
    for a in alerts:
        verdict = verdicts.get(a.id, "")
        if verdict == "benign":
            continue
        ent = a.entity
        source = f"{ent.namespace}/{ent.workload}" if ent.namespace and ent.workload else ent.ip
        targets = set(a.targets)
        ports = set(a.target_ports) if len(a.target_ports) < cap else set()
        span = None
        if len(a.targets) >= cap and a.first_seen and a.last_seen:
            span = (a.first_seen.timestamp() - 60.0, a.last_seen.timestamp() + 60.0)
        for f in a.example_flows:
            if f.get("dst_ip"):
                targets.add(str(f["dst_ip"]))
            if f.get("dst_namespace") and f.get("dst_workload"):
                targets.add(f"{f['dst_namespace']}/{f['dst_workload']}")
        targets |= {names[t] for t in list(targets) if t in names}
        if not targets:
            untargeted.append(a.id)
            continue
        why = "malicious" if verdict == "malicious" else "open"
        out.append(AlertEdge(a.id, why, source, frozenset(targets), frozenset(ports), span))
    return out, untargeted


def matching_alert(edge: Edge, alerts: Sequence[AlertEdge]) -> AlertEdge | None:
    """The first alert forbidding ``edge``, or None."""
    if not alerts:
        return None
    src, dst = _names(edge.src), _names(edge.dst)
    for a in alerts:
        if a.source not in src:
            continue
        if not a.targets.isdisjoint(dst) and (not a.ports or edge.port in a.ports):
            return a
        if a.span is not None and a.span[0] <= edge.first_seen <= a.span[1]:
            return a
    return None


def _names(ep: Endpoint) -> set[str]:
    out = {ep.ip} if ep.ip else set()
    if ep.is_pod:
        out.add(f"{ep.namespace}/{ep.workload}")
    return out


def read_alerts_jsonl(path: str | Path) -> list[Alert]:
    """Alerts one JSON object a line (``alerts.jsonl`` of ``flowwarden pipeline score``)."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(Alert.model_validate(json.loads(line)))
        except ValueError as exc:
            raise InputError(f"{path}:{n}: not an alert: {exc}") from exc
    return out
