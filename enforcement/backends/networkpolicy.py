"""Kubernetes NetworkPolicy backend: one policy per decision, written to GitOps and optionally applied.

NetworkPolicy has no deny rule, so a *block* is expressed as the source pod's egress
allowed everywhere except the targets (``ipBlock.except`` under 0.0.0.0/0 and ::/0).
Policies are additive: if another policy already allows the source to reach a target,
the union still allows it, and ipBlock for pod IPs depends on the CNI. That is why the
Calico backend (a real Deny) is preferred where Calico runs; this one is the portable floor.

The policy selects the source pod by a label the enforcer puts on it
(``flowwarden.io/block-<decision>``), since a NetworkPolicy cannot select a pod by name.
Policies are additive among flowwarden's own too: two block policies on one pod, "all but
X" and "all but Y", together allow everything. So each block policy of a pod excepts the
targets of *every* active block on that pod (and allows nothing while the pod is
quarantined); applying or lifting one block rewrites the pod's other block policies, and
reconciliation rewrites any that differ from what the active decisions call for.
A *quarantine* labels the pod ``flowwarden.io/quarantine=true``; one pre-approved policy
per namespace isolates such pods (no ingress; egress only to the cluster DNS and the API
server, so the pod can still be inspected and terminated cleanly).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from flowwarden.enforcement.backends.base import BACKENDS, Backend, BackendError
from flowwarden.enforcement.backends.kube import KubeCall, KubeClient, dump, write_manifest
from flowwarden.enforcement.targets import check_decision_id, check_name, check_namespace, parse_target
from flowwarden.records import Decision
from flowwarden.retry import RetryPolicy
from flowwarden.settings import Settings

QUARANTINE_LABEL = "flowwarden.io/quarantine"
MANAGED_BY = {"app.kubernetes.io/managed-by": "flowwarden"}


def block_label(decision_id: str) -> str:
    return f"flowwarden.io/block-{decision_id}"  # name part <= 63 chars: ids are <= 22


@BACKENDS.register("networkpolicy")
class NetworkPolicyBackend(Backend):
    name = "networkpolicy"

    def __init__(self, settings: Settings, client: KubeClient | None = None) -> None:
        self.settings = settings
        self.dir = Path(settings.enforcement.gitops_dir) / "networkpolicies"
        self.client = client or KubeClient(
            settings.enforcement.apply_to_cluster,
            retry=RetryPolicy.from_settings(settings.retry, "kubernetes", attempts=4),
        )
        # Active decisions this backend knows (applied here, or given to reconcile): a block
        # policy excepts the targets of every active block on the same pod.
        self.known: dict[str, Decision] = {}
        # The same, by source pod: a pod's other blocks are found without a scan of every block.
        self._by_pod: dict[tuple[str, str], dict[str, Decision]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, protected: Iterable[str] = ()) -> NetworkPolicyBackend:
        return cls(settings)

    # ------------------------------------------------------------------ manifests

    def manifests(self, d: Decision, others: Iterable[Decision] | None = None) -> list[dict[str, Any]]:
        """``d``'s objects; a block's policy accounts for ``others`` (default: the known active
        decisions) on the same pod: their targets are excepted too, a quarantine allows nothing."""
        ns = self._namespace(d)
        if d.action == "quarantine":
            return [self.quarantine_policy(ns)]
        pod = (ns, d.source.pod)
        same = [
            o
            for o in (self._by_pod.get(pod, {}).values() if others is None else others)
            if o.id != d.id and (o.source.namespace, o.source.pod) == pod
        ]
        nets = {parse_target(t) for o in [d, *same] if o.action == "block" for t in o.targets}
        v4 = [str(n) for n in sorted(n for n in nets if n.version == 4)]  # the same in every policy
        v6 = [str(n) for n in sorted(n for n in nets if n.version == 6)]
        to: list[dict[str, Any]] = [
            {"ipBlock": {"cidr": "0.0.0.0/0", **({"except": v4} if v4 else {})}},
            {"ipBlock": {"cidr": "::/0", **({"except": v6} if v6 else {})}},
        ]
        quarantined = any(o.action == "quarantine" for o in same)
        return [
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {
                    "name": f"flowwarden-{d.id}",
                    "namespace": ns,
                    "labels": {**MANAGED_BY, "flowwarden.io/decision": d.id},
                    "annotations": {
                        "flowwarden.io/reason": d.reason[:1000],
                        "flowwarden.io/source": d.source.ip,
                    },
                },
                "spec": {
                    "podSelector": {"matchLabels": {block_label(d.id): "true"}},
                    "policyTypes": ["Egress"],
                    "egress": [] if quarantined else [{"to": to}],
                },
            }
        ]

    def quarantine_policy(self, namespace: str) -> dict[str, Any]:
        cp = self.settings.control_plane
        egress: list[dict[str, Any]] = []
        dns = [_host(ip) for ip in self.settings.cluster.cluster_dns]
        if dns:
            egress.append(
                {
                    "to": [{"ipBlock": {"cidr": c}} for c in dns],
                    "ports": [
                        {"protocol": "UDP", "port": cp.dns_port},
                        {"protocol": "TCP", "port": cp.dns_port},
                    ],
                }
            )
        if cp.api_server_ips:
            egress.append(
                {
                    "to": [{"ipBlock": {"cidr": _host(ip)}} for ip in cp.api_server_ips],
                    "ports": [{"protocol": "TCP", "port": cp.api_server_port}],
                }
            )
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "flowwarden-quarantine", "namespace": namespace, "labels": dict(MANAGED_BY)},
            "spec": {
                "podSelector": {"matchLabels": {QUARANTINE_LABEL: "true"}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [],
                "egress": egress,
            },
        }

    def calls(self, d: Decision, *, revoke: bool = False) -> list[KubeCall]:
        ns = self._namespace(d)
        pod = d.source.pod
        label = QUARANTINE_LABEL if d.action == "quarantine" else block_label(d.id)
        patch = {"metadata": {"labels": {label: None if revoke else "true"}}}
        calls = [KubeCall("CoreV1Api", "patch_namespaced_pod", {"name": pod, "namespace": ns, "body": patch})]
        if d.action == "quarantine":
            if not revoke:  # the quarantine policy stays: it is pre-approved and selects nobody unlabelled
                calls.insert(
                    0,
                    KubeCall(
                        "NetworkingV1Api",
                        "create_namespaced_network_policy",
                        {"namespace": ns, "body": self.quarantine_policy(ns)},
                    ),
                )
            return calls
        name = f"flowwarden-{d.id}"
        if revoke:
            return [
                *calls,
                KubeCall(
                    "NetworkingV1Api", "delete_namespaced_network_policy", {"name": name, "namespace": ns}
                ),
            ]
        body = self.manifests(d)[0]
        return [
            KubeCall("NetworkingV1Api", "create_namespaced_network_policy", {"namespace": ns, "body": body}),
            *calls,
        ]

    # ------------------------------------------------------------------ backend

    def apply(self, decision: Decision) -> dict[str, Any]:
        path = self._path(decision)
        self._know(decision)
        write_manifest(path, self.manifests(decision))
        out: dict[str, Any] = {"manifest": str(path), "calls": self.client.run(self.calls(decision))}
        updated = self._rewrite_siblings(decision)
        if updated:
            out["updated"] = updated
        return out

    def revoke(self, decision: Decision) -> dict[str, Any]:
        path = self._path(decision)
        self._forget(decision)
        if decision.action != "quarantine":
            path.unlink(missing_ok=True)
        out = {"removed": str(path), "calls": self.client.run(self.calls(decision, revoke=True))}
        updated = self._rewrite_siblings(decision)
        if updated:
            out["updated"] = updated
        return out

    def _rewrite_siblings(self, d: Decision) -> list[str]:
        """Rewrite the other block policies of ``d``'s pod (their excepts include ``d``'s targets)."""
        pod = (d.source.namespace, d.source.pod)
        out = []
        for o in list(self._by_pod.get(pod, {}).values()):
            if o.id != d.id and o.action == "block" and (o.source.namespace, o.source.pod) == pod:
                body = self.manifests(o)
                write_manifest(self._path(o), body)
                ns = self._namespace(o)
                self.client.run(
                    [
                        KubeCall(
                            "NetworkingV1Api",
                            "create_namespaced_network_policy",
                            {"namespace": ns, "body": body[0]},
                        )
                    ]
                )
                out.append(o.id)
        return out

    def list_rules(self) -> list[dict[str, Any]]:
        if not self.dir.exists():
            return []
        return [
            {"namespace": p.parent.name, "file": p.name} for p in sorted(self.dir.glob("*/flowwarden-*.yaml"))
        ]

    def reconcile(self, active: list[Decision]) -> dict[str, Any]:
        """Files and (with ``apply_to_cluster``) the cluster's flowwarden policies match ``active``."""
        wanted: dict[Path, Decision] = {}
        self.known = {}
        self._by_pod = {}
        for d in active:
            try:
                wanted[self._path(d)] = d
            except BackendError:
                continue  # not expressible here (no namespace/pod): it was never applied on this backend
            self._know(d)
        restored = []
        for path, d in wanted.items():
            # Missing, or a block policy written before another block on its pod began or ended.
            docs = self.manifests(d)
            if _stale(path, docs):
                write_manifest(path, docs)
                self.client.run(self.calls(d))
                restored.append(d.id)
        removed = []
        for path in sorted(self.dir.glob("*/flowwarden-[dm]-*.yaml")):
            if path not in wanted:
                path.unlink()
                removed.append(path.name)
        names = {(p.parent.name, p.stem) for p in wanted}
        for ns, name in self.cluster_policies():
            if (ns, name) not in names and name != "flowwarden-quarantine":
                self.client.run(
                    [
                        KubeCall(
                            "NetworkingV1Api",
                            "delete_namespaced_network_policy",
                            {"name": name, "namespace": ns},
                        )
                    ]
                )
                removed.append(f"{ns}/{name}")
        return {"removed": removed, "restored": restored}

    def list_calls(self) -> list[KubeCall]:
        """Listing flowwarden's policies, namespace by namespace (the RBAC is per namespace)."""
        selector = "app.kubernetes.io/managed-by=flowwarden"
        return [
            KubeCall(
                "NetworkingV1Api",
                "list_namespaced_network_policy",
                {"namespace": ns, "label_selector": selector},
            )
            for ns in self.settings.enforcement.kube_namespaces
        ]

    def cluster_policies(self) -> list[tuple[str, str]]:
        return [n for call in self.list_calls() for n in self.client.names(call)]

    def preview(self, decision: Decision) -> Any:
        try:
            return [str(self._path(decision)), *(c.describe() for c in self.calls(decision))]
        except BackendError as exc:
            return f"would fail: {exc}"

    def render(self, decisions: list[Decision]) -> str:
        docs: list[dict[str, Any]] = []
        seen = set()
        by_pod: dict[tuple[str, str], list[Decision]] = {}
        for d in decisions:
            by_pod.setdefault((d.source.namespace, d.source.pod), []).append(d)
        for d in decisions:
            for m in self._manifests_or_none(d, by_pod[(d.source.namespace, d.source.pod)]):
                key = (m["metadata"]["namespace"], m["metadata"]["name"])
                if key not in seen:
                    seen.add(key)
                    docs.append(m)
        return dump(docs)

    # ------------------------------------------------------------------ helpers

    def _know(self, d: Decision) -> None:
        self.known[d.id] = d
        self._by_pod.setdefault((d.source.namespace, d.source.pod), {})[d.id] = d

    def _forget(self, d: Decision) -> None:
        self.known.pop(d.id, None)
        mine = self._by_pod.get((d.source.namespace, d.source.pod), {})
        mine.pop(d.id, None)
        if not mine:
            self._by_pod.pop((d.source.namespace, d.source.pod), None)

    def _manifests_or_none(self, d: Decision, others: list[Decision]) -> list[dict[str, Any]]:
        try:
            return self.manifests(d, others)
        except BackendError:
            return []

    def _namespace(self, d: Decision) -> str:
        check_decision_id(d.id)
        if not (d.source.namespace and d.source.pod):
            raise BackendError(
                "networkpolicy: the source's namespace and pod are unknown (no inventory match)"
            )
        ns = check_namespace(d.source.namespace)
        check_name(d.source.pod, "source.pod")
        allowed = self.settings.enforcement.kube_namespaces
        if allowed and ns not in allowed:
            raise BackendError(f"networkpolicy: namespace {ns} is not in enforcement.kube_namespaces")
        return ns

    def _path(self, d: Decision) -> Path:
        name = "flowwarden-quarantine" if d.action == "quarantine" else f"flowwarden-{d.id}"
        return self.dir / self._namespace(d) / f"{name}.yaml"


def _stale(path: Path, docs: list[dict[str, Any]]) -> bool:
    """The file is missing, or its objects' specs are not ``docs``' (annotations may differ)."""
    try:
        current = list(yaml.safe_load_all(path.read_text()))
    except (OSError, yaml.YAMLError):
        return True
    specs = [c.get("spec") if isinstance(c, dict) else None for c in current]
    return specs != [d["spec"] for d in docs]


def _host(ip: str) -> str:
    return str(ipaddress.ip_network(ip))
