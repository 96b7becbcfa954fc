"""The recommendation as flowwarden's own declared policy (:mod:`flowwarden.policy`).

One format for both: a person can adopt the recommendation as the policy the
``policy_violation`` detector checks. Each observed workload gets its own scope
(``namespaces.<ns>.workloads.<wl>``) with the merged rules: peer workloads by
``namespace/workload`` (no labels needed), outside peers by CIDR and, for egress, by the
names the flows carried. Cluster DNS stays allowed (``allow_cluster_dns``, the default);
workloads of ``control_plane.api_clients_namespaces`` may reach ``api_server_ips``. The
evidence of each rule (flows, first and last seen) goes beside it, keyed by rule path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flowwarden.enforcement.recommend.recommend import ANY_PROTO, Ports, Rule, WorkloadRules
from flowwarden.policy import POLICY_VERSION, check_domain, parse_policy
from flowwarden.settings import Settings

_PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp"}


def declared_policy(
    workloads: Sequence[WorkloadRules], settings: Settings, dropped: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """The policy document (validated by flowwarden's own loader) with ``x-evidence`` beside it.

    The caller writes the document without ``x-evidence`` and ``x-excluded`` (the loader
    rejects unknown keys) and keeps those two in a file of their own.
    """
    cp = settings.control_plane
    api_ns = set(cp.api_clients_namespaces)
    namespaces: dict[str, Any] = {}
    evidence: dict[str, Any] = {}
    for w in workloads:
        ns, wl = w.workload.namespace, w.workload.workload
        path = f"namespaces.{ns}.workloads.{wl}"
        egress = [_rule(r, "to") for r in w.egress]
        if ns in api_ns and cp.api_server_ips:
            egress.insert(
                0,
                {
                    "name": "api-server",
                    "to": {"cidrs": list(cp.api_server_ips)},
                    "ports": [f"{cp.api_server_port}/tcp"],
                },
            )
        ingress = [_rule(r, "from") for r in w.ingress]
        base = len(egress) - len(w.egress)
        evidence |= {f"{path}.egress.{i + base}": r.evidence for i, r in enumerate(w.egress)}
        evidence |= {f"{path}.ingress.{i}": r.evidence for i, r in enumerate(w.ingress)}
        scope = namespaces.setdefault(ns, {"workloads": {}})
        scope["workloads"][wl] = {"egress": egress, "ingress": ingress}
    doc = {"version": POLICY_VERSION, "namespaces": namespaces}
    parse_policy(doc, "recommended policy")  # a bug here must not reach a reviewer's commit
    return {**doc, "x-evidence": evidence, "x-excluded": list(dropped)}


def _rule(rule: Rule, side: str) -> dict[str, Any]:
    peers: dict[str, list[str]] = {}
    if rule.peer is not None:
        peers["workloads"] = [f"{rule.peer.namespace}/{rule.peer.workload}"]
    else:
        peers["cidrs"] = list(rule.cidrs)
        domains = [d for d in (_domain(n) for n in rule.domains) if d]
        if domains:
            peers["domains"] = domains
    return {side: peers, "ports": port_texts(rule.ports)}


def port_texts(ports: Ports) -> list[str]:
    """``443`` (TCP and UDP: the protocol is unknown), ``443/tcp``, ``53/udp``."""
    return [str(port) if proto == ANY_PROTO else f"{port}/{_PROTO_NAMES[proto]}" for proto, port in ports]


def _domain(name: str) -> str:
    """A name a flow carried, if it is a valid domain (an SNI may be an address or junk)."""
    try:
        return check_domain(name)
    except ValueError:
        return ""
