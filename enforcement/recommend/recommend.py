"""Least-privilege NetworkPolicies (and Calico domain rules) from observed edges.

One NetworkPolicy per workload, selecting its pods by the labels all of them share, with
ingress and egress. Merging keeps a namespace readable: one rule per peer workload with all
its ports; external addresses one rule per port set, and addresses that share a DNS name/SNI
collapse to their smallest covering CIDR when that is a /24 (IPv6: /64) or narrower;
ingress from more than 16 outside addresses on one port set becomes 0.0.0.0/0 (an entry point). Names
go to a Calico NetworkPolicy as domain egress. Every policy allows DNS to the cluster DNS
(and the API server for ``control_plane.api_clients_namespaces``), using the rules of the
NetworkPolicy backend's quarantine policy, and carries each rule's evidence as annotation.
"""

from __future__ import annotations

import ipaddress
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flowwarden.enforcement.backends.networkpolicy import MANAGED_BY, NetworkPolicyBackend
from flowwarden.enforcement.recommend.evaluate import NS_NAME_LABEL, PROTOCOLS, Endpoint
from flowwarden.enforcement.recommend.flows import Edge
from flowwarden.settings import Settings

COLLAPSE_PREFIX = {4: 24, 6: 64}
PUBLIC_ENTRY_SOURCES = 16  # more outside sources than this on one port set: allow any source


@dataclass
class Recommendation:
    manifests: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # namespace -> docs
    rules: dict[str, int] = field(default_factory=dict)  # namespace -> rules written
    skipped: list[str] = field(default_factory=list)  # workloads without a label to select them


def recommend(
    edges: Iterable[Edge],
    settings: Settings,
    excluded: set[tuple[str, str]] = frozenset(),  # type: ignore[assignment]
) -> Recommendation:
    """Policies allowing ``edges`` minus ``excluded`` (src ip, dst ip) pairs of open/malicious alerts."""
    baseline = NetworkPolicyBackend(settings).quarantine_policy("default")["spec"]["egress"]
    api_ns = set(settings.control_plane.api_clients_namespaces)
    dns_ips = set(settings.cluster.cluster_dns)
    egress: dict[Endpoint, list[Edge]] = defaultdict(list)
    ingress: dict[Endpoint, list[Edge]] = defaultdict(list)
    for e in edges:
        if (e.src.ip, e.dst.ip) in excluded:
            continue
        if e.src.is_pod and not (e.dst.ip in dns_ips and e.port == settings.control_plane.dns_port):
            egress[_wl(e.src)].append(e)
        if e.dst.is_pod:
            ingress[_wl(e.dst)].append(e)
    out = Recommendation()
    for wl in sorted(set(egress) | set(ingress), key=lambda w: (w.namespace, w.workload)):
        if not wl.labels:
            out.skipped.append(f"{wl.namespace}/{wl.workload}")
            continue
        base = [r for r in baseline if wl.namespace in api_ns or _is_dns(r, settings)]
        eg, eg_ev, domains = _rules(egress.get(wl, []), wl, "egress")
        ing, ing_ev, _ = _rules(ingress.get(wl, []), wl, "ingress")
        evidence = {f"egress[{i + len(base)}]": v for i, v in enumerate(eg_ev)}
        evidence |= {f"ingress[{i}]": v for i, v in enumerate(ing_ev)}
        docs = out.manifests.setdefault(wl.namespace, [])
        docs.append(_policy(wl, base + eg, ing, evidence))
        if domains:
            docs.append(_calico(wl, domains))
        out.rules[wl.namespace] = out.rules.get(wl.namespace, 0) + len(base) + len(eg) + len(ing)
    return out


def _wl(ep: Endpoint) -> Endpoint:
    return Endpoint("", ep.namespace, ep.workload, ep.labels)


def _is_dns(rule: dict[str, Any], settings: Settings) -> bool:
    return any(p.get("port") == settings.control_plane.dns_port for p in rule.get("ports", []))


def _rules(
    edges: list[Edge], wl: Endpoint, direction: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, set[tuple[int, int]]]]:
    """Merged rules, their evidence, and the domains seen (name -> ports) for egress."""
    by_peer: dict[Any, list[Edge]] = defaultdict(list)
    domains: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for e in edges:
        peer = e.dst if direction == "egress" else e.src
        if peer.is_pod:
            by_peer[("pod", peer.namespace, peer.workload, tuple(sorted(peer.labels.items())))].append(e)
        else:
            by_peer[("ip", peer.ip, e.name)].append(e)
            if direction == "egress" and e.name:
                domains[e.name].add((e.proto, e.port))
    pod_rules: list[tuple[dict[str, Any], list[Edge]]] = []
    ip_by_ports: dict[tuple[tuple[int, int], ...], dict[str, list[Edge]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for key, es in sorted(by_peer.items(), key=lambda kv: str(kv[0])):
        ports = tuple(sorted({(e.proto, e.port) for e in es if e.proto in PROTOCOLS}))
        if not ports:
            continue
        if key[0] == "pod":
            _, ns, _, labels = key
            if not labels:
                continue  # a peer without labels cannot be selected
            match: dict[str, Any] = {"podSelector": {"matchLabels": dict(labels)}}
            if ns != wl.namespace:
                match["namespaceSelector"] = {"matchLabels": {NS_NAME_LABEL: ns}}
            side = "to" if direction == "egress" else "from"
            pod_rules.append(({side: [match], "ports": _ports(ports)}, es))
        else:
            ip_by_ports[ports][key[2]].extend(es)
    rules = [r for r, _ in pod_rules]
    evidence = [_evidence(es) for _, es in pod_rules]
    for ports, by_name in sorted(ip_by_ports.items()):
        cidrs: set[str] = set()
        all_edges: list[Edge] = []
        for name, es in by_name.items():
            ips = {(e.dst if direction == "egress" else e.src).ip for e in es}
            cidrs |= _collapse(ips) if name else {str(ipaddress.ip_network(ip)) for ip in ips}
            all_edges += es
        side = "to" if direction == "egress" else "from"
        if direction == "ingress" and len(cidrs) > PUBLIC_ENTRY_SOURCES:
            cidrs = {"0.0.0.0/0"}  # many outside clients: a public entry point (e.g. an ingress)
        rules.append({side: [{"ipBlock": {"cidr": c}} for c in sorted(cidrs)], "ports": _ports(ports)})
        evidence.append(_evidence(all_edges))
    return rules, evidence, dict(domains)


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


def _ports(ports: Iterable[tuple[int, int]]) -> list[dict[str, Any]]:
    return [{"protocol": PROTOCOLS[proto], "port": port} for proto, port in ports]


def _evidence(edges: list[Edge]) -> dict[str, Any]:
    return {
        "flows": sum(e.flows for e in edges),
        "first_seen": _iso(min(e.first_seen for e in edges)),
        "last_seen": _iso(max(e.last_seen for e in edges)),
    }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _name(wl: Endpoint) -> str:
    return f"flowwarden-rec-{wl.workload}"[:253]


def _policy(
    wl: Endpoint, egress: list[dict[str, Any]], ingress: list[dict[str, Any]], evidence: dict[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": _name(wl),
            "namespace": wl.namespace,
            "labels": {**MANAGED_BY, "flowwarden.io/recommended": "true"},
            "annotations": {"flowwarden.io/evidence": json.dumps(evidence, sort_keys=True)},
        },
        "spec": {
            "podSelector": {"matchLabels": dict(wl.labels)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }


def _calico(wl: Endpoint, domains: dict[str, set[tuple[int, int]]]) -> dict[str, Any]:
    """Calico domain egress for names the flows carried (DNS/SNI); Calico resolves them itself."""
    selector = " && ".join(f"{k} == '{v}'" for k, v in sorted(wl.labels.items()))
    by_ports: dict[tuple[tuple[int, int], ...], list[str]] = defaultdict(list)
    for name, ports in sorted(domains.items()):
        by_ports[tuple(sorted(ports))].append(name)
    egress = [
        {
            "action": "Allow",
            "protocol": PROTOCOLS[proto],
            "destination": {"domains": names, "ports": [port]},
        }
        for ports, names in sorted(by_ports.items())
        for proto, port in ports
        if proto in PROTOCOLS
    ]
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"{_name(wl)}-domains", "namespace": wl.namespace, "labels": dict(MANAGED_BY)},
        "spec": {"selector": selector, "types": ["Egress"], "egress": egress},
    }
