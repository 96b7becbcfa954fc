"""Calico backend: blocks are GlobalNetworkSets; one pre-approved policy denies traffic between them.

A block is a change of data, never of rules: each decision becomes GlobalNetworkSets
labelled ``flowwarden.io/set`` = ``blocked-sources`` (the source address) and
``blocked-destinations`` (the targets), or ``quarantined`` (the source). A single
GlobalNetworkPolicy in flowwarden's own tier, reviewed once, denies egress from
blocked sources to blocked destinations and all traffic of quarantined sources (except
to the cluster DNS and the API server), then passes everything else on to the next tier.

Trade-off, stated plainly: a label selector cannot pair a source set with *its* target
set, so two concurrent blocks A->X and B->Y also block A->Y and B->X. The over-blocking is
confined to sources already judged hostile and targets already judged worth protecting;
the guardrails have vetted every address in every set. Use nftables for exact pairs.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from flowwarden.enforcement.backends.base import Backend
from flowwarden.enforcement.backends.kube import KubeCall, KubeClient, dump, write_manifest
from flowwarden.enforcement.targets import check_decision_id, parse_target
from flowwarden.records import Decision
from flowwarden.settings import Settings

TIER = "flowwarden"
POLICY = f"{TIER}.enforce"
SET_LABEL = "flowwarden.io/set"
# Served by the Calico API server (calico-apiserver), not the crd.projectcalico.org CRDs,
# which Calico documents as internal: writing them directly bypasses its validation.
GROUP, VERSION = "projectcalico.org", "v3"
API_VERSION = "projectcalico.org/v3"


class CalicoBackend(Backend):
    name = "calico"

    def __init__(self, settings: Settings, client: KubeClient | None = None) -> None:
        self.settings = settings
        self.dir = Path(settings.enforcement.gitops_dir) / "calico"
        self.client = client or KubeClient(settings.enforcement.apply_to_cluster)

    # ------------------------------------------------------------------ manifests

    def network_sets(self, d: Decision) -> list[dict[str, Any]]:
        check_decision_id(d.id)
        src = str(parse_target(d.source.ip))
        if d.action == "quarantine":
            return [_gns(f"flowwarden-{d.id}-q", "quarantined", [src], d)]
        return [
            _gns(f"flowwarden-{d.id}-src", "blocked-sources", [src], d),
            _gns(
                f"flowwarden-{d.id}-dst", "blocked-destinations", [str(parse_target(t)) for t in d.targets], d
            ),
        ]

    def policy(self) -> list[dict[str, Any]]:
        """The tier and the one pre-approved policy; static, so review it once."""
        s = self.settings
        keep = [
            str(ipaddress.ip_network(ip)) for ip in [*s.control_plane.api_server_ips, *s.cluster.cluster_dns]
        ]
        quarantined = f"{SET_LABEL} == 'quarantined'"
        quarantine_dst: dict[str, Any] = {"notNets": keep} if keep else {}
        return [
            {
                "apiVersion": API_VERSION,
                "kind": "Tier",
                "metadata": {"name": TIER},
                "spec": {"order": 100, "defaultAction": "Pass"},
            },
            {
                "apiVersion": API_VERSION,
                "kind": "GlobalNetworkPolicy",
                "metadata": {"name": POLICY},
                "spec": {
                    "tier": TIER,
                    "order": 10,
                    "selector": "all()",
                    "types": ["Ingress", "Egress"],
                    "ingress": [
                        {"action": "Deny", "source": {"selector": quarantined}},
                        {"action": "Pass"},
                    ],
                    "egress": [
                        {
                            "action": "Deny",
                            "source": {"selector": f"{SET_LABEL} == 'blocked-sources'"},
                            "destination": {"selector": f"{SET_LABEL} == 'blocked-destinations'"},
                        },
                        {
                            "action": "Deny",
                            "source": {"selector": quarantined},
                            "destination": quarantine_dst,
                        },
                        {"action": "Pass"},
                    ],
                },
            },
        ]

    def calls(self, d: Decision, *, revoke: bool = False) -> list[KubeCall]:
        out = []
        for gns in self.network_sets(d):
            name = gns["metadata"]["name"]
            common = {"group": GROUP, "version": VERSION, "plural": "globalnetworksets"}
            if revoke:
                out.append(
                    KubeCall("CustomObjectsApi", "delete_cluster_custom_object", {**common, "name": name})
                )
            else:
                out.append(
                    KubeCall("CustomObjectsApi", "create_cluster_custom_object", {**common, "body": gns})
                )
        return out

    # ------------------------------------------------------------------ backend

    def start(self) -> None:
        write_manifest(self.dir / "policy.yaml", self.policy())

    def apply(self, decision: Decision) -> dict[str, Any]:
        path = self.dir / "sets" / f"{decision.id}.yaml"
        write_manifest(path, self.network_sets(decision))
        return {"manifest": str(path), "calls": self.client.run(self.calls(decision))}

    def revoke(self, decision: Decision) -> dict[str, Any]:
        path = self.dir / "sets" / f"{check_decision_id(decision.id)}.yaml"
        path.unlink(missing_ok=True)
        return {"removed": str(path), "calls": self.client.run(self.calls(decision, revoke=True))}

    def list_rules(self) -> list[dict[str, Any]]:
        return [{"decision": p.stem, "file": str(p)} for p in sorted((self.dir / "sets").glob("*.yaml"))]

    def reconcile(self, active: list[Decision]) -> dict[str, Any]:
        self.start()
        wanted = {d.id: d for d in active}
        restored = [d.id for d in active if not (self.dir / "sets" / f"{d.id}.yaml").exists()]
        for decision_id in restored:
            self.apply(wanted[decision_id])
        removed = []
        for path in sorted((self.dir / "sets").glob("*.yaml")):
            if path.stem not in wanted:
                self.revoke_file(path)
                removed.append(path.stem)
        return {"removed": removed, "restored": restored}

    def revoke_file(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        names = [f"flowwarden-{path.stem}-{suffix}" for suffix in ("src", "dst", "q")]
        common = {"group": GROUP, "version": VERSION, "plural": "globalnetworksets"}
        self.client.run(
            [
                KubeCall("CustomObjectsApi", "delete_cluster_custom_object", {**common, "name": n})
                for n in names
            ]
        )

    def preview(self, decision: Decision) -> Any:
        return [c.describe() for c in self.calls(decision)]

    def render(self, decisions: list[Decision]) -> str:
        docs = self.policy()
        for d in decisions:
            docs.extend(self.network_sets(d))
        return dump(docs)


def _gns(name: str, role: str, nets: list[str], d: Decision) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "GlobalNetworkSet",
        "metadata": {
            "name": name,
            "labels": {
                SET_LABEL: role,
                "flowwarden.io/decision": d.id,
                "app.kubernetes.io/managed-by": "flowwarden",
            },
        },
        "spec": {"nets": nets},
    }
