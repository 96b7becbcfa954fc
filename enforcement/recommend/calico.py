"""The recommendation as Calico policies (``projectcalico.org/v3``).

One namespaced ``NetworkPolicy`` per workload (selector from its labels) with the merged
rules: peer workloads by selector and namespace selector, outside peers by ``nets``. One
rule per protocol, as Calico needs a protocol to name ports. Egress by name (``domains``)
exists in Calico Enterprise only: those rules go to a file of their own (see
:func:`~.recommend.add_domain_policy`). Cluster DNS is one ``GlobalNetworkPolicy`` (order 10)
selecting the recommended workloads only, so no other pod becomes isolated; the API server
is allowed per workload for ``control_plane.api_clients_namespaces``.
"""

from __future__ import annotations

import json
from typing import Any

from flowwarden.enforcement.backends.networkpolicy import MANAGED_BY
from flowwarden.enforcement.recommend.evaluate import NS_NAME_LABEL
from flowwarden.enforcement.recommend.recommend import (
    Endpoint,
    Recommendation,
    Rule,
    add_domain_policy,
    calico_protocols,
    calico_selector,
    policy_name,
)
from flowwarden.settings import Settings

ORDER_DNS = 10.0
ORDER_WORKLOAD = 100.0


def calico_policies(out: Recommendation, settings: Settings) -> None:
    """Fill ``out.manifests`` (namespace -> docs; the global DNS policy under ``_global``)."""
    cp = settings.control_plane
    api_ns = set(cp.api_clients_namespaces)
    selected: list[str] = []
    for w in out.workloads:
        wl = w.workload
        if not wl.labels:
            out.skipped.append(f"{wl.namespace}/{wl.workload}")
            continue
        selected.append(f"(projectcalico.org/namespace == '{wl.namespace}' && {calico_selector(wl.labels)})")
        egress = [x for r in w.egress for x in _rules(r, wl)]
        if wl.namespace in api_ns and cp.api_server_ips:
            nets = [_host(ip) for ip in cp.api_server_ips]
            egress.insert(0, _allow("TCP", "destination", {"nets": nets}, [cp.api_server_port]))
        ingress = [x for r in w.ingress for x in _rules(r, wl)]
        evidence = {f"{r.direction}:{_peer_text(r)}": r.evidence for r in w.egress + w.ingress}
        out.manifests.setdefault(wl.namespace, []).append(
            {
                "apiVersion": "projectcalico.org/v3",
                "kind": "NetworkPolicy",
                "metadata": {
                    "name": policy_name(wl),
                    "namespace": wl.namespace,
                    "labels": {**MANAGED_BY, "flowwarden.io/recommended": "true"},
                    "annotations": {"flowwarden.io/evidence": json.dumps(evidence, sort_keys=True)},
                },
                "spec": {
                    "order": ORDER_WORKLOAD,
                    "selector": calico_selector(wl.labels),
                    "types": ["Ingress", "Egress"],
                    "ingress": ingress,
                    "egress": egress,
                },
            }
        )
        out.rules[wl.namespace] = out.rules.get(wl.namespace, 0) + len(egress) + len(ingress)
        add_domain_policy(out, w)
    dns = [_host(ip) for ip in settings.cluster.cluster_dns]
    if selected and dns:
        out.manifests["_global"] = [
            {
                "apiVersion": "projectcalico.org/v3",
                "kind": "GlobalNetworkPolicy",
                "metadata": {"name": "flowwarden-rec-cluster-dns", "labels": dict(MANAGED_BY)},
                "spec": {
                    "order": ORDER_DNS,
                    "selector": " || ".join(selected),
                    "types": ["Egress"],
                    "egress": [
                        _allow(p, "destination", {"nets": dns}, [cp.dns_port]) for p in ("UDP", "TCP")
                    ],
                },
            }
        ]


def _rules(rule: Rule, wl: Endpoint) -> list[dict[str, Any]]:
    side = "destination" if rule.direction == "egress" else "source"
    peers: list[dict[str, Any]] = []
    if rule.peer is not None:
        if not rule.peer.labels:
            return []
        peer: dict[str, Any] = {"selector": calico_selector(rule.peer.labels)}
        if rule.peer.namespace != wl.namespace:
            peer["namespaceSelector"] = f"{NS_NAME_LABEL} == '{rule.peer.namespace}'"
        peers.append(peer)
    else:
        peers.append({"nets": list(rule.cidrs)})  # domains: Calico Enterprise only (see recommend)
    by_proto: dict[str, list[int]] = {}
    for proto, port in rule.ports:
        for name in calico_protocols(proto):
            by_proto.setdefault(name, []).append(port)
    return [_allow(proto, side, p, ports) for p in peers for proto, ports in sorted(by_proto.items())]


def _allow(proto: str, side: str, peer: dict[str, Any], ports: list[int]) -> dict[str, Any]:
    """An Allow rule; ports always sit on the destination."""
    if side == "destination":
        return {"action": "Allow", "protocol": proto, "destination": {**peer, "ports": ports}}
    return {"action": "Allow", "protocol": proto, "source": peer, "destination": {"ports": ports}}


def _peer_text(rule: Rule) -> str:
    if rule.peer is not None:
        return f"{rule.peer.namespace}/{rule.peer.workload}"
    return ",".join(rule.cidrs + rule.domains)


def _host(ip: str) -> str:
    return f"{ip}/{128 if ':' in ip else 32}"
