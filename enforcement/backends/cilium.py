"""Cilium backend: one CiliumClusterwideNetworkPolicy with ``egressDeny`` per active decision.

Cilium has real deny rules, and a deny wins over every allow, whatever policy allows it: no
additive workaround as with NetworkPolicy. Each decision ``<id>`` becomes the policy
``flowwarden-<id>`` (labels ``flowwarden.io/decision``, ``flowwarden.io/action``,
``app.kubernetes.io/managed-by``) that selects exactly the source pod and denies:

* a block: egress to the decision's targets (``egressDeny: [{toCIDRSet: [{cidr: <target>}…]}]``);
* a quarantine: egress to everything except the cluster DNS and the API server
  (``toCIDRSet`` ``0.0.0.0/0`` and ``::/0`` with those in ``except``).

The source pod is selected by its namespace (``io.kubernetes.pod.namespace``) and a label the
enforcer patches onto it, ``flowwarden.io/block-<id>`` (the one NetworkPolicy uses): a selector
on the pod's own labels would select its sibling replicas too, and an endpoint cannot be selected
by address. A source whose namespace and pod are unknown cannot be expressed here (BackendError).
No port restriction (``toPorts``): like every other backend, a block denies the (source, target)
pair on every port.

Limit (Cilium's, documented for CIDR rules): ``toCIDR``/``toCIDRSet`` do not match traffic to
endpoints Cilium manages or to cluster nodes, so targets that are pods of the same cluster are
not denied by this policy; it denies what leaves the cluster. Run NetworkPolicy or nftables
beside it for pod-to-pod blocks.

Manifests go to ``<gitops_dir>/cilium/<id>.yaml`` and, with ``apply_to_cluster``, through the
Kubernetes API (``cilium.io/v2``, plural ``ciliumclusterwidenetworkpolicies``).
:func:`enforcement.audit.cilium_pairs` computes the pairs a set of these objects denies.
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

GROUP, VERSION, PLURAL = "cilium.io", "v2", "ciliumclusterwidenetworkpolicies"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "CiliumClusterwideNetworkPolicy"
NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
EVERYWHERE = {4: "0.0.0.0/0", 6: "::/0"}


@BACKENDS.register("cilium")
class CiliumBackend(PodPolicyBackend):
    name = "cilium"

    group, version, plural, subdir = GROUP, VERSION, PLURAL, "cilium"

    # ------------------------------------------------------------------ manifests

    def keep(self, version: int) -> list[str]:
        """What a quarantined pod may still reach (cluster DNS, API server), of one family."""
        s = self.settings
        ips = [*s.control_plane.api_server_ips, *s.cluster.cluster_dns]
        return [str(n) for n in (ipaddress.ip_network(ip) for ip in ips) if n.version == version]

    def policy(self, d: Decision) -> dict[str, Any]:
        """The one CiliumClusterwideNetworkPolicy of ``d``."""
        ns = self._namespace(d)
        src = parse_ip(d.source.ip)
        if d.action == "quarantine":
            cidrs = [
                {"cidr": EVERYWHERE[v], **({"except": self.keep(v)} if self.keep(v) else {})} for v in (4, 6)
            ]
        else:
            nets = sorted(
                {parse_target(t) for t in d.targets}, key=lambda n: (n.version, int(n.network_address))
            )
            cidrs = [{"cidr": str(n)} for n in nets if n.version == src.version]
            if not cidrs:
                raise BackendError(f"cilium: no target of {d.id} has the source's address family")
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {
                "name": f"flowwarden-{d.id}",
                "labels": {**MANAGED_BY, DECISION_LABEL: d.id, ACTION_LABEL: d.action},
                "annotations": {
                    "flowwarden.io/source": str(src),
                    "flowwarden.io/pod": f"{ns}/{d.source.pod}",
                },
            },
            "spec": {
                "endpointSelector": {"matchLabels": {NAMESPACE_LABEL: ns, block_label(d.id): "true"}},
                "egressDeny": [{"toCIDRSet": cidrs}],
            },
        }
