"""Kubernetes NetworkPolicy semantics: would a set of policies allow a flow?

One evaluator for ``policy diff`` and ``policy simulate``. A pod is isolated for a direction
as soon as any policy of its namespace selects it for that direction (default deny); then a
flow passes only if some rule of a selecting policy matches its peer and port. A flow needs
the source's egress and the destination's ingress. ipBlock is matched on the peer's address
(with ``except``); named ports cannot be resolved from flows and are counted as unsupported.
Protocol 0 (the store's rollups keep no protocol) matches a TCP or a UDP port.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

NS_NAME_LABEL = "kubernetes.io/metadata.name"
PROTOCOLS = {6: "TCP", 17: "UDP", 132: "SCTP"}


@dataclass(frozen=True)
class Endpoint:
    """One side of a flow: a pod (namespace set) or an address outside the cluster."""

    ip: str
    namespace: str = ""
    workload: str = ""
    labels: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def is_pod(self) -> bool:
        return bool(self.namespace)


@dataclass
class Verdict:
    allowed: bool
    egress_rule: str = ""  # policy/index that allowed it ("" when not isolated)
    ingress_rule: str = ""
    unsupported: list[str] = field(default_factory=list)


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector: matchLabels and matchExpressions; an empty selector matches all."""
    if not selector:
        return True
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], set(expr.get("values") or [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def policy_types(spec: Mapping[str, Any]) -> set[str]:
    if spec.get("policyTypes"):
        return set(spec["policyTypes"])
    return {"Ingress"} | ({"Egress"} if "egress" in spec else set())


class PolicySet:
    """NetworkPolicies by namespace, from manifests or ``kubectl get networkpolicy -A -o json``."""

    def __init__(self, docs: Iterable[Mapping[str, Any]]) -> None:
        self.by_ns: dict[str, list[Mapping[str, Any]]] = {}
        for d in docs:
            if d.get("kind") == "List" or "items" in d:
                for item in d.get("items") or []:
                    self._add(item)
            else:
                self._add(d)
        self.used: dict[str, int] = {}  # "ns/name#direction[i]" -> flows it allowed

    def _add(self, doc: Mapping[str, Any]) -> None:
        if doc.get("kind", "NetworkPolicy") != "NetworkPolicy" or "spec" not in doc:
            return
        if doc.get("apiVersion", "networking.k8s.io/v1") != "networking.k8s.io/v1":
            return  # a Calico NetworkPolicy (domains) is not evaluated here
        ns = doc["metadata"].get("namespace") or "default"
        self.by_ns.setdefault(ns, []).append(doc)

    def rules(self) -> list[str]:
        """Every rule's key, to find the ones nothing used."""
        out = []
        for ns, docs in self.by_ns.items():
            for d in docs:
                for direction in ("ingress", "egress"):
                    for i, _ in enumerate(d["spec"].get(direction) or []):
                        out.append(f"{ns}/{d['metadata']['name']}#{direction}[{i}]")
        return out

    def evaluate(self, src: Endpoint, dst: Endpoint, proto: int, port: int, count: int = 1) -> Verdict:
        unsupported: list[str] = []
        e_ok, e_rule = self._direction(src, dst, "Egress", proto, port, unsupported)
        i_ok, i_rule = self._direction(dst, src, "Ingress", proto, port, unsupported)
        if e_ok and i_ok:
            for r in (e_rule, i_rule):
                if r:
                    self.used[r] = self.used.get(r, 0) + count
        return Verdict(e_ok and i_ok, e_rule, i_rule, unsupported)

    def _direction(
        self, pod: Endpoint, peer: Endpoint, kind: str, proto: int, port: int, unsupported: list[str]
    ) -> tuple[bool, str]:
        if not pod.is_pod:
            return True, ""
        selecting = [
            d
            for d in self.by_ns.get(pod.namespace, [])
            if kind in policy_types(d["spec"]) and selector_matches(d["spec"].get("podSelector"), pod.labels)
        ]
        if not selecting:
            return True, ""
        key = kind.lower()
        for d in selecting:
            for i, rule in enumerate(d["spec"].get(key) or []):
                peers = rule.get("to" if kind == "Egress" else "from")
                if peers and not any(_peer_matches(p, peer, pod.namespace) for p in peers):
                    continue
                if _ports_match(rule.get("ports"), proto, port, unsupported):
                    return True, f"{pod.namespace}/{d['metadata']['name']}#{key}[{i}]"
        return False, ""


def _peer_matches(peer: Mapping[str, Any], ep: Endpoint, own_ns: str) -> bool:
    if "ipBlock" in peer:
        try:
            addr = ipaddress.ip_address(ep.ip)
        except ValueError:
            return False
        block = peer["ipBlock"]
        net = ipaddress.ip_network(block["cidr"], strict=False)
        if addr.version != net.version or addr not in net:
            return False
        return not any(
            addr in ipaddress.ip_network(x, strict=False)
            for x in block.get("except") or []
            if ipaddress.ip_network(x, strict=False).version == addr.version
        )
    if not ep.is_pod:
        return False
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], {NS_NAME_LABEL: ep.namespace}):
            return False
    elif ep.namespace != own_ns:
        return False
    return selector_matches(peer.get("podSelector"), ep.labels)


def _ports_match(
    ports: list[Mapping[str, Any]] | None, proto: int, port: int, unsupported: list[str]
) -> bool:
    if not ports:
        return True
    names = ("TCP", "UDP") if proto == 0 else (PROTOCOLS.get(proto, ""),)  # 0: unknown (rollups)
    for p in ports:
        if p.get("protocol", "TCP") not in names:
            continue
        if "port" not in p:
            return True
        if isinstance(p["port"], str):
            unsupported.append(f"named port {p['port']!r}")
            continue
        if p["port"] <= port <= p.get("endPort", p["port"]):
            return True
    return False
