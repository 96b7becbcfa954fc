"""Calico backend: one GlobalNetworkPolicy per active decision, in flowwarden's own tier.

Each decision becomes one policy, ``flowwarden.<decision id>`` (labels
``flowwarden.io/decision`` = the id, ``flowwarden.io/action``, ``app.kubernetes.io/managed-by``),
whose rules name the decision's own addresses inline: a block denies egress from the source
(``source.nets`` = the source's /32 or /128) to exactly its targets (``destination.nets``); a
quarantine denies the source's traffic, egress and ingress, to everything except the cluster DNS
and the API server (``destination.notNets``). So a policy denies its decision's (source, target)
pairs and nothing else: two concurrent blocks A->X and B->Y deny A->X and B->Y, never A->Y.
Targets of the other address family than the source's are left out (no such traffic exists).

What a reviewer approves once and what changes:

* fixed, written at start to ``calico/policy.yaml`` (apply it with the deployment): the Tier
  ``flowwarden`` (order 100, ``defaultAction: Pass``) and the last policy of the tier,
  ``flowwarden.pass`` (order 10000, passes everything on to the next tier), so traffic that no
  decision denies continues to the policies people wrote, which flowwarden never touches;
* per decision, ``calico/policies/<id>.yaml``: one policy at order 100 made of Deny rules only
  (never Allow, never Pass: a Pass would skip the later decisions of the tier).

Auditing: ``kubectl get globalnetworkpolicies -l app.kubernetes.io/managed-by=flowwarden`` lists one
policy per line of ``flowwarden blocks list`` (same ids), and
:func:`enforcement.audit.calico_pairs` computes the pairs a set of these objects denies.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from flowwarden.enforcement.backends.base import BACKENDS, Backend, BackendError
from flowwarden.enforcement.backends.kube import KubeCall, KubeClient, dump, write_manifest
from flowwarden.enforcement.targets import check_decision_id, parse_ip, parse_target
from flowwarden.records import Decision
from flowwarden.retry import RetryPolicy
from flowwarden.settings import Settings

TIER = "flowwarden"
PASS_POLICY = f"{TIER}.pass"
TIER_ORDER = 100
DECISION_ORDER = 100  # every decision's policy: the order among them does not matter (Deny only)
PASS_ORDER = 10000  # after every decision
DECISION_LABEL = "flowwarden.io/decision"
ACTION_LABEL = "flowwarden.io/action"
MANAGED_BY = {"app.kubernetes.io/managed-by": "flowwarden"}
# Served by the Calico API server (calico-apiserver), not the crd.projectcalico.org CRDs,
# which Calico documents as internal: writing them directly bypasses its validation.
GROUP, VERSION = "projectcalico.org", "v3"
API_VERSION = "projectcalico.org/v3"


@BACKENDS.register("calico")
class CalicoBackend(Backend):
    name = "calico"

    def __init__(self, settings: Settings, client: KubeClient | None = None) -> None:
        self.settings = settings
        self.dir = Path(settings.enforcement.gitops_dir) / "calico"
        self.client = client or KubeClient(
            settings.enforcement.apply_to_cluster,
            retry=RetryPolicy.from_settings(settings.retry, "kubernetes", attempts=4),
        )

    @classmethod
    def from_settings(cls, settings: Settings, protected: Iterable[str] = ()) -> CalicoBackend:
        return cls(settings)

    # ------------------------------------------------------------------ manifests

    def keep(self, version: int) -> list[str]:
        """What a quarantined source may still reach (cluster DNS, API server), of one family."""
        s = self.settings
        ips = [*s.control_plane.api_server_ips, *s.cluster.cluster_dns]
        nets = [ipaddress.ip_network(ip) for ip in ips]
        return [str(n) for n in nets if n.version == version]

    def decision_policy(self, d: Decision) -> dict[str, Any]:
        """The one GlobalNetworkPolicy of ``d``: Deny rules naming ``d``'s own addresses only."""
        check_decision_id(d.id)
        src_ip = parse_ip(d.source.ip)
        src = str(ipaddress.ip_network(src_ip))
        ingress: list[dict[str, Any]]
        if d.action == "quarantine":
            keep = self.keep(src_ip.version)
            dst: dict[str, Any] = {"notNets": keep} if keep else {}
            deny = {"action": "Deny", "source": {"nets": [src]}, "destination": dst}
            types, ingress, egress = ["Ingress", "Egress"], [deny], [dict(deny)]
        else:
            nets = [parse_target(t) for t in d.targets]
            same = sorted(
                {n for n in nets if n.version == src_ip.version}, key=lambda n: int(n.network_address)
            )
            if not same:
                raise BackendError(f"calico: no target of {d.id} has the source's address family")
            rule = {
                "action": "Deny",
                "source": {"nets": [src]},
                "destination": {"nets": [str(n) for n in same]},
            }
            types, ingress, egress = ["Egress"], [], [rule]
        spec: dict[str, Any] = {"tier": TIER, "order": DECISION_ORDER, "selector": "all()", "types": types}
        if ingress:
            spec["ingress"] = ingress
        spec["egress"] = egress
        return {
            "apiVersion": API_VERSION,
            "kind": "GlobalNetworkPolicy",
            "metadata": {
                "name": f"{TIER}.{d.id}",
                "labels": {**MANAGED_BY, DECISION_LABEL: d.id, ACTION_LABEL: d.action},
            },
            "spec": spec,
        }

    def policy(self) -> list[dict[str, Any]]:
        """The tier and its last policy (pass everything on); static, so review it once."""
        return [
            {
                "apiVersion": API_VERSION,
                "kind": "Tier",
                "metadata": {"name": TIER, "labels": dict(MANAGED_BY)},
                "spec": {"order": TIER_ORDER, "defaultAction": "Pass"},
            },
            {
                "apiVersion": API_VERSION,
                "kind": "GlobalNetworkPolicy",
                "metadata": {"name": PASS_POLICY, "labels": dict(MANAGED_BY)},
                "spec": {
                    "tier": TIER,
                    "order": PASS_ORDER,
                    "selector": "all()",
                    "types": ["Ingress", "Egress"],
                    "ingress": [{"action": "Pass"}],
                    "egress": [{"action": "Pass"}],
                },
            },
        ]

    def calls(self, d: Decision, *, revoke: bool = False) -> list[KubeCall]:
        if revoke:
            check_decision_id(d.id)
            return [_delete_policy(f"{TIER}.{d.id}")]
        body = self.decision_policy(d)
        return [KubeCall("CustomObjectsApi", "create_cluster_custom_object", {**_COMMON, "body": body})]

    # ------------------------------------------------------------------ backend

    def start(self) -> None:
        write_manifest(self.dir / "policy.yaml", self.policy())

    def apply(self, decision: Decision) -> dict[str, Any]:
        path = self.dir / "policies" / f"{check_decision_id(decision.id)}.yaml"
        calls = self.calls(decision)
        write_manifest(path, [calls[0].kwargs["body"]])
        return {"manifest": str(path), "calls": self.client.run(calls)}

    def revoke(self, decision: Decision) -> dict[str, Any]:
        path = self.dir / "policies" / f"{check_decision_id(decision.id)}.yaml"
        path.unlink(missing_ok=True)
        return {"removed": str(path), "calls": self.client.run(self.calls(decision, revoke=True))}

    def list_rules(self) -> list[dict[str, Any]]:
        return [{"decision": p.stem, "file": str(p)} for p in sorted((self.dir / "policies").glob("*.yaml"))]

    def reconcile(self, active: list[Decision]) -> dict[str, Any]:
        self.start()
        wanted = {d.id: d for d in active}
        restored = []
        for d in active:
            path = self.dir / "policies" / f"{d.id}.yaml"
            if _stale(path, self.decision_policy(d)):
                self.apply(d)
                restored.append(d.id)
        removed = []
        for path in sorted((self.dir / "policies").glob("*.yaml")):
            if path.stem not in wanted:
                path.unlink(missing_ok=True)
                self.client.run([_delete_policy(f"{TIER}.{path.stem}")])
                removed.append(path.stem)
        removed += self._remove_network_sets()
        return {"removed": removed, "restored": restored}

    def _remove_network_sets(self) -> list[str]:
        """Objects of the former design (GlobalNetworkSets shared by one policy): removed."""
        out = []
        for path in sorted((self.dir / "sets").glob("*.yaml")):
            path.unlink(missing_ok=True)
            common = {"group": GROUP, "version": VERSION, "plural": "globalnetworksets"}
            names = [f"flowwarden-{path.stem}-{suffix}" for suffix in ("src", "dst", "q")]
            self.client.run(
                [
                    KubeCall("CustomObjectsApi", "delete_cluster_custom_object", {**common, "name": n})
                    for n in names
                ]
            )
            out.append(f"sets/{path.stem}")
        return out

    def preview(self, decision: Decision) -> Any:
        try:
            return [c.describe() for c in self.calls(decision)]
        except BackendError as exc:
            return f"would fail: {exc}"

    def render(self, decisions: list[Decision]) -> str:
        docs = self.policy()
        for d in decisions:
            try:
                docs.append(self.decision_policy(d))
            except BackendError:
                continue  # nothing of it is expressible here (no target of the source's family)
        return dump(docs)


_COMMON = {"group": GROUP, "version": VERSION, "plural": "globalnetworkpolicies"}


def _delete_policy(name: str) -> KubeCall:
    return KubeCall("CustomObjectsApi", "delete_cluster_custom_object", {**_COMMON, "name": name})


def _stale(path: Path, doc: dict[str, Any]) -> bool:
    try:
        current = list(yaml.safe_load_all(path.read_text()))
    except (OSError, yaml.YAMLError):
        return True
    return current != [doc]
