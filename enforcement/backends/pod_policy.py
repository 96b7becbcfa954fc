"""Backends that write one cluster-scoped policy object per decision, selecting the source pod.

Cilium's CiliumClusterwideNetworkPolicy and the Kubernetes AdminNetworkPolicy share everything
but the object itself: the source pod is selected by its namespace and a label the enforcer
patches onto it (``flowwarden.io/block-<id>``, the one NetworkPolicy uses: the pod's own labels
would select its sibling replicas too), the object is named ``flowwarden-<id>``, written to
``<gitops_dir>/<subdir>/<id>.yaml`` and, with ``apply_to_cluster``, created through the API;
revoke and reconcile remove exactly the objects of decisions no longer active. A subclass says
which custom resource it writes (``group``, ``version``, ``plural``, ``subdir``) and builds
the object of one decision in :meth:`PodPolicyBackend.policy`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Self

import yaml

from flowwarden.enforcement.backends.base import Backend, BackendError
from flowwarden.enforcement.backends.kube import KubeCall, KubeClient, dump, write_manifest
from flowwarden.enforcement.targets import check_decision_id, check_name, check_namespace
from flowwarden.records import Decision
from flowwarden.retry import RetryPolicy
from flowwarden.settings import Settings

DECISION_LABEL = "flowwarden.io/decision"
ACTION_LABEL = "flowwarden.io/action"
MANAGED_BY = {"app.kubernetes.io/managed-by": "flowwarden"}


def block_label(decision_id: str) -> str:
    """The label put on the source pod; the same as NetworkPolicy's, so backends may run side by side."""
    return f"flowwarden.io/block-{decision_id}"


class PodPolicyBackend(Backend):
    """One policy object per decision (see the module docstring); subclasses build the object."""

    group: str
    version: str
    plural: str
    subdir: str

    def __init__(self, settings: Settings, client: KubeClient | None = None) -> None:
        self.settings = settings
        self.dir = Path(settings.enforcement.gitops_dir) / self.subdir
        self.client = client or KubeClient(
            settings.enforcement.apply_to_cluster,
            retry=RetryPolicy.from_settings(settings.retry, "kubernetes", attempts=4),
        )

    @classmethod
    def from_settings(cls, settings: Settings, protected: Iterable[str] = ()) -> Self:
        return cls(settings)

    def policy(self, d: Decision) -> dict[str, Any]:
        """The one policy object of ``d`` (BackendError when ``d`` cannot be expressed)."""
        raise NotImplementedError

    def calls(self, d: Decision, *, revoke: bool = False) -> list[KubeCall]:
        ns = self._namespace(d)
        patch = {"metadata": {"labels": {block_label(d.id): None if revoke else "true"}}}
        label = KubeCall(
            "CoreV1Api", "patch_namespaced_pod", {"name": d.source.pod, "namespace": ns, "body": patch}
        )
        if revoke:
            return [self._delete(f"flowwarden-{d.id}"), label]
        # The policy first: the pod is selected only once it is there to deny.
        body = self.policy(d)
        return [
            KubeCall(
                "CustomObjectsApi", "create_cluster_custom_object", {**self._custom_object(), "body": body}
            ),
            label,
        ]

    # ------------------------------------------------------------------ backend

    def apply(self, decision: Decision) -> dict[str, Any]:
        calls = self.calls(decision)
        path = self._path(decision)
        write_manifest(path, [calls[0].kwargs["body"]])
        return {"manifest": str(path), "calls": self.client.run(calls)}

    def revoke(self, decision: Decision) -> dict[str, Any]:
        path = self._path(decision)
        path.unlink(missing_ok=True)
        return {"removed": str(path), "calls": self.client.run(self.calls(decision, revoke=True))}

    def list_rules(self) -> list[dict[str, Any]]:
        return [{"decision": p.stem, "file": str(p)} for p in sorted(self.dir.glob("*.yaml"))]

    def reconcile(self, active: list[Decision]) -> dict[str, Any]:
        wanted: set[str] = set()
        restored = []
        for d in active:
            try:
                doc = self.policy(d)
            except BackendError:
                continue  # not expressible here: it was never applied on this backend
            wanted.add(d.id)
            if _stale(self._path(d), doc):
                self.apply(d)
                restored.append(d.id)
        removed = []
        for path in sorted(self.dir.glob("*.yaml")):
            if path.stem not in wanted:
                path.unlink(missing_ok=True)
                self.client.run([self._delete(f"flowwarden-{path.stem}")])
                removed.append(path.stem)
        return {"removed": removed, "restored": restored}

    def preview(self, decision: Decision) -> Any:
        try:
            return [c.describe() for c in self.calls(decision)]
        except BackendError as exc:
            return f"would fail: {exc}"

    def render(self, decisions: list[Decision]) -> str:
        docs = []
        for d in decisions:
            try:
                docs.append(self.policy(d))
            except BackendError:
                continue  # no pod to select, or no target of the source's family
        return dump(docs)

    # ------------------------------------------------------------------ helpers

    def _namespace(self, d: Decision) -> str:
        check_decision_id(d.id)
        if not (d.source.namespace and d.source.pod):
            raise BackendError(
                f"{self.name}: the source's namespace and pod are unknown (no inventory match)"
            )
        check_name(d.source.pod, "source.pod")
        ns = check_namespace(d.source.namespace)
        allowed = self.settings.enforcement.kube_namespaces
        if allowed and ns not in allowed:  # the pod label needs the namespaced Role there
            raise BackendError(f"{self.name}: namespace {ns} is not in enforcement.kube_namespaces")
        return ns

    def _path(self, d: Decision) -> Path:
        return self.dir / f"{check_decision_id(d.id)}.yaml"

    def _custom_object(self) -> dict[str, str]:
        return {"group": self.group, "version": self.version, "plural": self.plural}

    def _delete(self, name: str) -> KubeCall:
        return KubeCall(
            "CustomObjectsApi", "delete_cluster_custom_object", {**self._custom_object(), "name": name}
        )


def _stale(path: Path, doc: dict[str, Any]) -> bool:
    try:
        current = list(yaml.safe_load_all(path.read_text()))
    except (OSError, yaml.YAMLError):
        return True
    return current != [doc]
