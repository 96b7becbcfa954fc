"""The compliance report's facts, read from the store and the policies (no rendering here).

What an auditor asks of a zero-trust cluster, answered from what it actually did in a range:
which namespaces no policy covers (neither the declared policy, :mod:`flowwarden.policy`,
nor a deployed Kubernetes NetworkPolicy), which workloads reached the control plane or the
cloud metadata API, where each namespace sends traffic outside the cluster, and every alert
and block with its outcome (the enforcer's decisions and a person's verdict). The rollups are
aggregated in SQL (one pass per question, any store dialect); :mod:`flowwarden.compliance_html`
renders the result.
"""

from __future__ import annotations

import ipaddress
import json
from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from flowwarden.errors import InputError
from flowwarden.policy import Policy
from flowwarden.records import Alert, Decision
from flowwarden.settings import Settings
from flowwarden.store import Store
from flowwarden.store_schema import flow_rollups

REPORT_VERSION = 1
MAX_EGRESS_PER_NAMESPACE = 50
Report = dict[str, Any]


def load_deployed_policies(path: str | Path) -> dict[str, int]:
    """NetworkPolicies per namespace from ``kubectl get networkpolicy -A -o json`` (a List or one object)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError as exc:
        raise InputError(f"{p}: no such file (write it with: kubectl get networkpolicy -A -o json)") from exc
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{p}: not JSON ({exc}); write it with: kubectl get networkpolicy -A -o json"
        ) from exc
    items = doc.get("items", [doc]) if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise InputError(f"{p}: expected a Kubernetes List of NetworkPolicy objects")
    out: dict[str, int] = defaultdict(int)
    for i, item in enumerate(items):
        kind = item.get("kind", "NetworkPolicy") if isinstance(item, dict) else None
        ns = (item.get("metadata") or {}).get("namespace") if isinstance(item, dict) else None
        if kind != "NetworkPolicy" or not isinstance(ns, str) or not ns:
            raise InputError(f"{p}: items[{i}] is not a namespaced NetworkPolicy (kind {kind!r})")
        out[ns] += 1
    return dict(out)


def declared_namespaces(policy: Policy | None) -> set[str]:
    """Namespaces whose egress or ingress the declared policy states (workload scopes count)."""
    if policy is None:
        return set()
    out = set()
    for ns, pol in policy.namespaces.items():
        scopes = [pol, *pol.workloads.values()]
        if any(s.egress is not None or s.ingress is not None for s in scopes):
            out.add(ns)
    return out


def _sensitive_targets(settings: Settings) -> tuple[dict[int, str], set[str], set[str]]:
    """Control-plane ports by name, the API server's addresses, the metadata API's addresses."""
    cp, cluster = settings.control_plane, settings.cluster
    ports = {cp.api_server_port: "api-server", cp.kubelet_port: "kubelet", cp.scheduler_port: "scheduler"}
    ports[cp.controller_manager_port] = "controller-manager"
    ports.update(dict.fromkeys(cp.etcd_ports, "etcd"))
    api = {*cp.api_server_ips, *(str(next(ipaddress.ip_network(c).hosts())) for c in cluster.service_cidrs)}
    return ports, api, set(cluster.metadata_api)


def _node_address(ip: str, settings: Settings) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    nets = [ipaddress.ip_network(c) for c in settings.cluster.node_cidrs]
    return (
        ip in settings.cluster.node_ips
        or ip in settings.control_plane.api_server_ips
        or any(addr in n for n in nets)
    )


def _iso(t: Any) -> str:
    if isinstance(t, str):
        t = datetime.fromisoformat(t)
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return str(t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


def _traffic(store: Store, since: datetime, until: datetime) -> tuple[dict[str, dict[str, int]], list[Any]]:
    """Per namespace: workloads, flows, bytes (as a source or a destination); and egress rows."""
    r = flow_rollups.c
    rng = sa.and_(r.minute >= since, r.minute < until)
    per_ns: dict[str, dict[str, int]] = defaultdict(lambda: {"workloads": 0, "flows": 0, "bytes": 0})
    with store.engine.connect() as conn:
        q = (
            sa.select(
                r.src_namespace,
                sa.func.count(sa.distinct(r.src_workload)),
                sa.func.sum(r.flows),
                sa.func.sum(r.bytes),
            )
            .where(rng, r.src_namespace != "")
            .group_by(r.src_namespace)
        )
        for ns, wls, flows, nbytes in conn.execute(q):
            per_ns[ns].update(workloads=int(wls), flows=int(flows or 0), bytes=int(nbytes or 0))
        q = sa.select(r.dst_namespace).where(rng, r.dst_namespace != "").distinct()
        for (ns,) in conn.execute(q):
            per_ns.setdefault(ns, {"workloads": 0, "flows": 0, "bytes": 0})  # destination-only
        q = (
            sa.select(
                r.src_namespace,
                r.src_workload,
                r.dst_external,
                r.dst_port,
                sa.func.sum(r.flows),
                sa.func.sum(r.bytes_out),
                sa.func.min(r.minute),
                sa.func.max(r.minute),
            )
            .where(rng, r.src_namespace != "", r.dst_external != "")
            .group_by(r.src_namespace, r.src_workload, r.dst_external, r.dst_port)
        )
        rows = list(conn.execute(q))
    return dict(per_ns), rows


def build_report(
    store: Store,
    settings: Settings,
    *,
    since: datetime,
    until: datetime | None = None,
    policy: Policy | None = None,
    deployed: Mapping[str, int] | None = None,
    verdicts: Mapping[str, str] | None = None,
    sources: Mapping[str, str | None] | None = None,
    inventory: Mapping[str, int] | None = None,
) -> Report:
    """The report as plain JSON values: what the store holds for ``[since, until)``.

    ``deployed``: NetworkPolicies per namespace (:func:`load_deployed_policies`), None when not
    given; ``verdicts``: a person's verdict per alert id (``benign``/``malicious``);
    ``inventory``: workloads per namespace of the pod inventory, so a namespace that sent
    nothing in the range is listed too.
    """
    until = until or datetime.now(UTC)
    per_ns, rows = _traffic(store, since, until)
    declared = declared_namespaces(policy)
    deployed = dict(deployed or {})
    namespaces = []
    inventory = dict(inventory or {})
    for ns in sorted(set(per_ns) | declared | set(deployed) | set(inventory)):
        t = dict(per_ns.get(ns, {"workloads": 0, "flows": 0, "bytes": 0}))
        t["workloads"] = max(t["workloads"], inventory.get(ns, 0))
        covered = ns in declared or deployed.get(ns, 0) > 0
        namespaces.append(
            {
                "namespace": ns,
                **t,
                "declared_policy": ns in declared,
                "deployed_policies": deployed.get(ns, 0),
                "covered": covered,
            }
        )
    ports, api_ips, metadata = _sensitive_targets(settings)
    allowed = set(settings.control_plane.api_clients_namespaces)
    sensitive, egress = [], defaultdict(list)
    for ns, wl, dst, port, flows, nbytes, first, last in rows:
        target = ""
        if dst in metadata:
            target = "metadata-api"
        elif dst in api_ips and port == 443:
            target = "api-server"
        elif port in ports and _node_address(dst, settings):
            target = ports[port]
        item = {
            "namespace": ns,
            "workload": wl,
            "address": dst,
            "port": int(port),
            "flows": int(flows or 0),
            "bytes_out": int(nbytes or 0),
            "first_seen": _iso(first),
            "last_seen": _iso(last),
        }
        if target:
            sensitive.append({**item, "target": target, "allowed_namespace": ns in allowed})
        elif not _internal(dst, settings):
            egress[ns].append(item)
    egress_out = {}
    for ns, items in sorted(egress.items()):
        by_dst: dict[tuple[str, int], dict[str, Any]] = {}
        for it in items:
            d = by_dst.setdefault(
                (it["address"], it["port"]),
                {"address": it["address"], "port": it["port"], "flows": 0, "bytes_out": 0, "workloads": []},
            )
            d["flows"] += it["flows"]
            d["bytes_out"] += it["bytes_out"]
            d["workloads"] = sorted({*d["workloads"], it["workload"]})
        ranked = sorted(by_dst.values(), key=lambda d: (-d["bytes_out"], d["address"], d["port"]))
        egress_out[ns] = {"destinations": len(ranked), "top": ranked[:MAX_EGRESS_PER_NAMESPACE]}
    alerts = store.list_alerts(since=since)
    alerts = [a for a in alerts if a.window_start < until]
    decisions = [d for d in store.list_decisions(since=since) if d.created_at < until]
    alert_rows = _alerts(alerts, decisions, verdicts or {})
    outcomes: dict[str, int] = defaultdict(int)
    for a in alert_rows:
        outcomes[a["outcome"]] += 1
    blocks = [_decision(d) for d in decisions if d.action != "unblock"]
    return {
        "version": REPORT_VERSION,
        "cluster": settings.cluster.name,
        "generated_at": _iso(datetime.now(UTC)),
        "since": _iso(since),
        "until": _iso(until),
        "sources": dict(sources or {}),
        "summary": {
            "namespaces": len(namespaces),
            "namespaces_without_policies": sum(not n["covered"] for n in namespaces),
            "control_plane_or_metadata_edges": len(sensitive),
            "egress_destinations": sum(e["destinations"] for e in egress_out.values()),
            "alerts": len(alert_rows),
            "alerts_by_outcome": dict(sorted(outcomes.items())),
            "decisions": len(blocks),
        },
        "namespaces": namespaces,
        "namespaces_without_policies": [n["namespace"] for n in namespaces if not n["covered"]],
        "control_plane_access": sorted(sensitive, key=lambda s: (s["allowed_namespace"], -s["flows"])),
        "egress": egress_out,
        "alerts": alert_rows,
        "decisions": blocks,
    }


def _internal(ip: str, settings: Settings) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in ipaddress.ip_network(c) for c in settings.cluster.internal_cidrs())


OUTCOME_BY_STATUS = {
    "applied": "blocked",
    "simulated": "blocked (dry-run)",
    "revoked": "blocked (lifted)",
    "expired": "blocked (lifted)",
    "pending": "awaiting approval",
    "failed": "block failed",
}


def outcome_of(decisions: list[Decision]) -> str:
    """One alert's outcome from its decisions, the strongest first."""
    statuses = {d.status for d in decisions if d.action != "unblock"}
    for status, text in OUTCOME_BY_STATUS.items():
        if status in statuses:
            return text
    refused = [d for d in decisions if d.status == "refused"]
    if refused:
        return f"refused ({refused[-1].guardrail or 'guardrail'})"
    return "not enforced"


def _decision(d: Decision) -> dict[str, Any]:
    return {
        "id": d.id,
        "alert_id": d.alert_id,
        "action": d.action,
        "status": d.status,
        "mode": d.mode,
        "backend": d.backend,
        "guardrail": d.guardrail,
        "reason": d.reason,
        "source": d.source.key(),
        "targets": list(d.targets),
        "created_at": _iso(d.created_at),
    }


def _alerts(
    alerts: list[Alert], decisions: list[Decision], verdicts: Mapping[str, str]
) -> list[dict[str, Any]]:
    by_alert: dict[str, list[Decision]] = defaultdict(list)
    for d in decisions:
        by_alert[d.alert_id].append(d)
    out = []
    for a in alerts:
        ds = by_alert.get(a.id, [])
        out.append(
            {
                "id": a.id,
                "kind": a.kind,
                "detector": a.detector,
                "technique": a.technique,
                "severity": a.severity,
                "score": round(float(a.score), 3),
                "source": a.entity.key(),
                "namespace": a.entity.namespace,
                "workload": a.entity.workload,
                "targets": list(a.targets),
                "first_seen": _iso(a.first_seen or a.window_start),
                "last_seen": _iso(a.last_seen or a.window_end),
                "summary": a.summary,
                "outcome": outcome_of(ds),
                "verdict": verdicts.get(a.id, ""),
                "decisions": [d.id for d in ds],
            }
        )
    return sorted(out, key=lambda r: (r["first_seen"], r["id"]))
