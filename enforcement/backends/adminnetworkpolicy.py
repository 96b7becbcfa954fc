"""AdminNetworkPolicy backend: one Kubernetes AdminNetworkPolicy with Deny rules per active decision.

Where the cluster's CNI implements the ``policy.networking.k8s.io`` AdminNetworkPolicy API, a
deny is a deny: it is evaluated before every NetworkPolicy and no NetworkPolicy can allow what it
denies (no additive workaround as with NetworkPolicy). Each decision ``<id>`` becomes the policy
``flowwarden-<id>`` (labels ``flowwarden.io/decision``, ``flowwarden.io/action``) whose subject
is exactly the source pod (its namespace, and the label ``flowwarden.io/block-<id>`` the enforcer
patches onto it, as for NetworkPolicy) and whose egress rules are:

* a block: ``Deny`` to the targets (``networks`` peers of at most 25 CIDRs each, the API's limit);
* a quarantine: ``Pass`` to the cluster DNS and the API server (left to the NetworkPolicies),
  then ``Deny`` to ``0.0.0.0/0`` and ``::/0``.

All of flowwarden's policies share one priority, ``enforcement.anp_priority`` (lower numbers
win over higher ones; keep it below any AdminNetworkPolicy that must allow over a block). Their
rules never conflict (Deny, and Pass only to protected addresses that no block may target), so
the order among them does not matter. Manifests go to ``<gitops_dir>/adminnetworkpolicies/<id>.yaml``
and, with ``apply_to_cluster``, through the Kubernetes API (``v1alpha1``).
:func:`enforcement.audit.adminnetworkpolicy_pairs` computes the pairs a set of these denies.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from flowwarden.enforcement.backends.base import BACKENDS, BackendError
from flowwarden.enforcement.backends.pod_policy import (
    ACTION_LABEL,
    DECISION_LABEL,
    MANAGED_BY,
    PodPolicyBackend,
    block_label,
)
from flowwarden.enforcement.targets import (
    parse_ip,
    parse_target,
)
from flowwarden.records import Decision

GROUP, VERSION, PLURAL = "policy.networking.k8s.io", "v1alpha1", "adminnetworkpolicies"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "AdminNetworkPolicy"
NAMESPACE_LABEL = "kubernetes.io/metadata.name"
NETWORKS_PER_PEER = 25  # the API's maxItems for one ``networks`` peer
MAX_PEERS = 100  # the API's maxItems for a rule's ``to``: 2,500 networks per decision
EVERYWHERE = ["0.0.0.0/0", "::/0"]


@BACKENDS.register("adminnetworkpolicy")
class AdminNetworkPolicyBackend(PodPolicyBackend):
    name = "adminnetworkpolicy"

    group, version, plural, subdir = GROUP, VERSION, PLURAL, "adminnetworkpolicies"

    # ------------------------------------------------------------------ manifests

    def keep(self) -> list[str]:
        """What a quarantined pod may still reach (cluster DNS, API server)."""
        s = self.settings
        return [
            str(ipaddress.ip_network(ip)) for ip in [*s.control_plane.api_server_ips, *s.cluster.cluster_dns]
        ]

    def policy(self, d: Decision) -> dict[str, Any]:
        """The one AdminNetworkPolicy of ``d``."""
        ns = self._namespace(d)
        src = parse_ip(d.source.ip)
        rule_name = f"flowwarden-{d.id}"
        if d.action == "quarantine":
            keep = self.keep()
            egress = [{"name": f"{rule_name}-keep", "action": "Pass", "to": _peers(keep)}] if keep else []
            egress.append({"name": rule_name, "action": "Deny", "to": _peers(EVERYWHERE)})
        else:
            nets = sorted(
                {parse_target(t) for t in d.targets}, key=lambda n: (n.version, int(n.network_address))
            )
            same = [str(n) for n in nets if n.version == src.version]
            if not same:
                raise BackendError(f"adminnetworkpolicy: no target of {d.id} has the source's address family")
            egress = [{"name": rule_name, "action": "Deny", "to": _peers(same)}]
            if len(egress[0]["to"]) > MAX_PEERS:
                raise BackendError(f"adminnetworkpolicy: {len(same)} targets exceed the API's limit")
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {
                "name": f"flowwarden-{d.id}",
                "labels": {**MANAGED_BY, DECISION_LABEL: d.id, ACTION_LABEL: d.action},
            },
            "spec": {
                "priority": self.settings.enforcement.anp_priority,
                "subject": {
                    "pods": {
                        "namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: ns}},
                        "podSelector": {"matchLabels": {block_label(d.id): "true"}},
                    }
                },
                "egress": egress,
            },
        }


def _peers(nets: list[str]) -> list[dict[str, Any]]:
    return [{"networks": nets[i : i + NETWORKS_PER_PEER]} for i in range(0, len(nets), NETWORKS_PER_PEER)]
