"""Least-privilege rules per workload from observed edges, emitted in three formats.

Merging keeps a namespace readable: one rule per peer workload with all its ports;
external addresses one rule per port set, and addresses that share a DNS name/SNI collapse
to their smallest covering CIDR when that is a /24 (IPv6: /64) or narrower; ingress from
more than 16 outside addresses on one port set becomes 0.0.0.0/0 (an entry point).
Edges of open or malicious alerts are dropped first (:mod:`.alerts`) and listed.

The merged :class:`Rule` list of each workload is written as Kubernetes NetworkPolicies
(plus Calico domain egress for the names flows carried), as Calico NetworkPolicies with a
GlobalNetworkPolicy for DNS (:mod:`.calico`), or as flowwarden's own declared policy
(:mod:`.declared`). Every format allows DNS to the cluster DNS (and the API server for
``control_plane.api_clients_namespaces``) and carries each rule's evidence.
"""

from __future__ import annotations

import ipaddress
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flowwarden.enforcement.backends.networkpolicy import MANAGED_BY, NetworkPolicyBackend
from flowwarden.enforcement.recommend.alerts import AlertEdge, matching_alert
from flowwarden.enforcement.recommend.evaluate import NS_NAME_LABEL, PROTOCOLS, Endpoint
from flowwarden.enforcement.recommend.flows import Edge
from flowwarden.settings import Settings

COLLAPSE_PREFIX = {4: 24, 6: 64}
PUBLIC_ENTRY_SOURCES = 16  # more outside sources than this on one port set: allow any source
ANY_PROTO = 0  # the protocol is unknown (store rollups keep only the port): TCP and UDP
FORMATS = ("networkpolicy", "calico", "declared")

Ports = tuple[tuple[int, int], ...]  # (proto, port); proto ANY_PROTO: TCP and UDP


@dataclass
class Rule:
    """One merged rule: a peer workload, or outside addresses (and the names they carried)."""

    direction: str  # "egress" | "ingress"
    ports: Ports
    evidence: dict[str, Any]
    peer: Endpoint | None = None  # a workload (namespace, workload, labels)
    cidrs: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)


@dataclass
class WorkloadRules:
    workload: Endpoint
    egress: list[Rule] = field(default_factory=list)
    ingress: list[Rule] = field(default_factory=list)


@dataclass
class Recommendation:
    manifests: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # file stem -> docs
    rules: dict[str, int] = field(default_factory=dict)  # namespace -> rules written
    skipped: list[str] = field(default_factory=list)  # workloads without a label to select them
    dropped: list[dict[str, Any]] = field(default_factory=list)  # edges of open/malicious alerts
    workloads: list[WorkloadRules] = field(default_factory=list)


def recommend(
    edges: Iterable[Edge],
    settings: Settings,
    excluded: set[tuple[str, str]] = frozenset(),  # type: ignore[assignment]
    *,
    alerts: Sequence[AlertEdge] = (),
    fmt: str = "networkpolicy",
) -> Recommendation:
    """Policies allowing ``edges`` minus those of ``alerts`` (and ``excluded`` (src ip, dst ip) pairs)."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
    dns_ips = set(settings.cluster.cluster_dns)
    egress: dict[Endpoint, list[Edge]] = defaultdict(list)
    ingress: dict[Endpoint, list[Edge]] = defaultdict(list)
    out = Recommendation()
    for e in edges:
        if (e.src.ip, e.dst.ip) in excluded:
            continue
        hit = matching_alert(e, alerts)
        if hit is not None:
            out.dropped.append(_dropped(e, hit))
            # Its workloads still get a policy: one left out would stay open to everything.
            if e.src.is_pod:
                egress[_wl(e.src)]
            if e.dst.is_pod:
                ingress[_wl(e.dst)]
            continue
        if e.src.is_pod and not (e.dst.ip in dns_ips and e.port == settings.control_plane.dns_port):
            egress[_wl(e.src)].append(e)
        if e.dst.is_pod:
            ingress[_wl(e.dst)].append(e)
    for wl in sorted(set(egress) | set(ingress), key=lambda w: (w.namespace, w.workload)):
        out.workloads.append(
            WorkloadRules(wl, _merge(egress.get(wl, []), "egress"), _merge(ingress.get(wl, []), "ingress"))
        )
    if fmt == "declared":
        from flowwarden.enforcement.recommend.declared import declared_policy

        out.manifests["flowwarden-policy"] = [declared_policy(out.workloads, settings, out.dropped)]
        for w in out.workloads:
            ns = w.workload.namespace
            out.rules[ns] = out.rules.get(ns, 0) + len(w.egress) + len(w.ingress)
        return out
    if fmt == "calico":
        from flowwarden.enforcement.recommend.calico import calico_policies

        calico_policies(out, settings)
        return out
    _networkpolicies(out, settings)
    return out


def _networkpolicies(out: Recommendation, settings: Settings) -> None:
    baseline = NetworkPolicyBackend(settings).quarantine_policy("default")["spec"]["egress"]
    api_ns = set(settings.control_plane.api_clients_namespaces)
    for w in out.workloads:
        wl = w.workload
        if not wl.labels:
            out.skipped.append(f"{wl.namespace}/{wl.workload}")
            continue
        base = [r for r in baseline if wl.namespace in api_ns or _is_dns(r, settings)]
        eg = [(r, _np_rule(r, wl)) for r in w.egress]
        ing = [(r, _np_rule(r, wl)) for r in w.ingress]
        eg_rules = [x for _, x in eg if x]
        ing_rules = [x for _, x in ing if x]
        evidence = {f"egress[{i + len(base)}]": r.evidence for i, (r, _) in enumerate(x for x in eg if x[1])}
        evidence |= {f"ingress[{i}]": r.evidence for i, (r, _) in enumerate(x for x in ing if x[1])}
        docs = out.manifests.setdefault(wl.namespace, [])
        docs.append(_policy(wl, base + eg_rules, ing_rules, evidence, out.dropped))
        add_domain_policy(out, w)
        out.rules[wl.namespace] = out.rules.get(wl.namespace, 0) + len(base) + len(eg_rules) + len(ing_rules)


def _np_rule(rule: Rule, wl: Endpoint) -> dict[str, Any] | None:
    """A NetworkPolicy rule; None for a peer workload without labels (it cannot be selected)."""
    side = "to" if rule.direction == "egress" else "from"
    if rule.peer is not None:
        if not rule.peer.labels:
            return None
        match: dict[str, Any] = {"podSelector": {"matchLabels": dict(rule.peer.labels)}}
        if rule.peer.namespace != wl.namespace:
            match["namespaceSelector"] = {"matchLabels": {NS_NAME_LABEL: rule.peer.namespace}}
        return {side: [match], "ports": np_ports(rule.ports)}
    return {side: [{"ipBlock": {"cidr": c}} for c in rule.cidrs], "ports": np_ports(rule.ports)}


def _wl(ep: Endpoint) -> Endpoint:
    return Endpoint("", ep.namespace, ep.workload, ep.labels)


def _is_dns(rule: dict[str, Any], settings: Settings) -> bool:
    return any(p.get("port") == settings.control_plane.dns_port for p in rule.get("ports", []))


def _merge(edges: list[Edge], direction: str) -> list[Rule]:
    """One rule per peer workload; outside addresses one rule per port set (see the module)."""
    by_peer: dict[Any, list[Edge]] = defaultdict(list)
    for e in edges:
        peer = e.dst if direction == "egress" else e.src
        if peer.is_pod:
            by_peer[("pod", peer.namespace, peer.workload, tuple(sorted(peer.labels.items())))].append(e)
        else:
            by_peer[("ip", peer.ip, e.name)].append(e)
    rules: list[Rule] = []
    ip_by_ports: dict[Ports, dict[str, list[Edge]]] = defaultdict(lambda: defaultdict(list))
    for key, es in sorted(by_peer.items(), key=lambda kv: str(kv[0])):
        ports = tuple(sorted({(e.proto, e.port) for e in es if _known(e)}))
        if not ports:
            continue
        if key[0] == "pod":
            _, ns, workload, labels = key
            rules.append(Rule(direction, ports, _evidence(es), peer=Endpoint("", ns, workload, dict(labels))))
        else:
            ip_by_ports[ports][key[2]].extend(es)
    for ports, by_name in sorted(ip_by_ports.items()):
        cidrs: set[str] = set()
        all_edges: list[Edge] = []
        for name, es in by_name.items():
            ips = {(e.dst if direction == "egress" else e.src).ip for e in es}
            cidrs |= _collapse(ips) if name else {str(ipaddress.ip_network(ip)) for ip in ips}
            all_edges += es
        if direction == "ingress" and len(cidrs) > PUBLIC_ENTRY_SOURCES:
            cidrs = {"0.0.0.0/0"}  # many outside clients: a public entry point (e.g. an ingress)
        names = sorted(n for n in by_name if n) if direction == "egress" else []
        rules.append(Rule(direction, ports, _evidence(all_edges), cidrs=sorted(cidrs), domains=names))
    return rules


def _known(e: Edge) -> bool:
    """A port a rule can name: a known protocol, and not the rollups' 0 (a scan rolled up)."""
    return (e.proto in PROTOCOLS or e.proto == ANY_PROTO) and 0 < e.port <= 65535


def _collapse(ips: set[str]) -> set[str]:
    """Addresses sharing a name: their smallest covering network if narrow enough, else /32s."""
    nets = [ipaddress.ip_network(ip) for ip in ips]
    if len(nets) > 1 and len({n.version for n in nets}) == 1:
        net = nets[0]
        while not all(n.subnet_of(net) for n in nets):  # type: ignore[arg-type]
            net = net.supernet()
        if net.prefixlen >= COLLAPSE_PREFIX[net.version]:
            return {str(net)}
    return {str(n) for n in nets}


def np_ports(ports: Iterable[tuple[int, int]]) -> list[dict[str, Any]]:
    """NetworkPolicy ports; an unknown protocol becomes TCP and UDP."""
    out = []
    for proto, port in ports:
        for name in ("TCP", "UDP") if proto == ANY_PROTO else (PROTOCOLS[proto],):
            out.append({"protocol": name, "port": port})
    return out


def _evidence(edges: list[Edge]) -> dict[str, Any]:
    return {
        "flows": sum(e.flows for e in edges),
        "first_seen": iso(min(e.first_seen for e in edges)),
        "last_seen": iso(max(e.last_seen for e in edges)),
    }


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def side_name(ep: Endpoint) -> str:
    return f"{ep.namespace}/{ep.workload}" if ep.is_pod else ep.ip


def _dropped(e: Edge, alert: AlertEdge) -> dict[str, Any]:
    return {
        "source": side_name(e.src),
        "target": side_name(e.dst),
        "port": e.port,
        "flows": e.flows,
        "alert": alert.alert_id,
        "why": alert.why,
    }


def policy_name(wl: Endpoint) -> str:
    return f"flowwarden-rec-{wl.workload}"[:253]


def _policy(
    wl: Endpoint,
    egress: list[dict[str, Any]],
    ingress: list[dict[str, Any]],
    evidence: dict[str, Any],
    dropped: list[dict[str, Any]],
) -> dict[str, Any]:
    annotations = {"flowwarden.io/evidence": json.dumps(evidence, sort_keys=True)}
    mine = [d for d in dropped if wl.namespace + "/" + wl.workload in (d["source"], d["target"])]
    if mine:
        annotations["flowwarden.io/excluded-alert-edges"] = json.dumps(mine, sort_keys=True)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": policy_name(wl),
            "namespace": wl.namespace,
            "labels": {**MANAGED_BY, "flowwarden.io/recommended": "true"},
            "annotations": annotations,
        },
        "spec": {
            "podSelector": {"matchLabels": dict(wl.labels)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }


def add_domain_policy(out: Recommendation, w: WorkloadRules) -> None:
    """Egress by the names the flows carried, in ``<namespace>.calico-enterprise``.

    ``destination.domains`` is a Calico Enterprise field: open-source Calico's CRD has no
    such field and would drop it, leaving a rule that allows any destination on the port.
    So these rules never share a file with the policies any cluster can apply; the address
    rules there already allow what was observed.
    """
    domains: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for r in w.egress:
        for d in r.domains:
            domains[d] |= set(r.ports)
    if domains and w.workload.labels:
        key = f"{w.workload.namespace}.calico-enterprise"
        out.manifests.setdefault(key, []).append(_calico_domains(w.workload, domains))


def calico_protocols(proto: int) -> tuple[str, ...]:
    return ("TCP", "UDP") if proto == ANY_PROTO else (PROTOCOLS[proto],)


def _calico_domains(wl: Endpoint, domains: dict[str, set[tuple[int, int]]]) -> dict[str, Any]:
    """Calico domain egress for names the flows carried (DNS/SNI); Calico resolves them itself."""
    by_ports: dict[Ports, list[str]] = defaultdict(list)
    for name, ports in sorted(domains.items()):
        by_ports[tuple(sorted(ports))].append(name)
    egress = [
        {"action": "Allow", "protocol": name, "destination": {"domains": names, "ports": [port]}}
        for ports, names in sorted(by_ports.items())
        for proto, port in ports
        for name in calico_protocols(proto)
    ]
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": f"{policy_name(wl)}-domains",
            "namespace": wl.namespace,
            "labels": dict(MANAGED_BY),
        },
        "spec": {"selector": calico_selector(wl.labels), "types": ["Egress"], "egress": egress},
    }


def calico_selector(labels: dict[str, str] | Any) -> str:
    return " && ".join(f"{k} == '{v}'" for k, v in sorted(labels.items()))
