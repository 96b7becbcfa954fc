"""The AdminNetworkPolicy backend: one policy per decision, checked against the API's documented
fields (``policy.networking.k8s.io/v1alpha1``: not in the core OpenAPI schema that
kubernetes-validate ships, so :data:`SCHEMA` encodes them: ``priority`` 0-1000, ``subject.pods``
with ``namespaceSelector`` and ``podSelector``, ``egress[]`` of at most 100 rules with ``name``
(at most 100 characters), ``action`` Allow / Deny / Pass and ``to[]`` (at most 100 peers;
``networks`` of at most 25 CIDRs)), its calls against the real client, and its lifecycle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest

from flowwarden.enforcement.backends.adminnetworkpolicy import AdminNetworkPolicyBackend
from flowwarden.enforcement.backends.base import BackendError
from flowwarden.settings import Settings
from tests.unit.enforcement_support import decision, settings
from tests.unit.test_backend_cilium import CIDR, SELECTOR
from tests.unit.test_backends_manifests import check_call

PEER = {
    "type": "object",
    "properties": {
        "networks": {"type": "array", "items": CIDR, "minItems": 1, "maxItems": 25},
        "pods": {"type": "object"},
        "namespaces": {"type": "object"},
        "nodes": {"type": "object"},
    },
    "minProperties": 1,
    "maxProperties": 1,
    "additionalProperties": False,
}
RULE = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 100},
        "action": {"enum": ["Allow", "Deny", "Pass"]},
        "to": {"type": "array", "items": PEER, "minItems": 1, "maxItems": 100},
        "ports": {"type": "array"},
    },
    "required": ["action", "to"],
    "additionalProperties": False,
}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "apiVersion": {"const": "policy.networking.k8s.io/v1alpha1"},
        "kind": {"const": "AdminNetworkPolicy"},
        "metadata": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 253}, "labels": {"type": "object"}},
            "required": ["name"],
            "additionalProperties": False,
        },
        "spec": {
            "type": "object",
            "properties": {
                "priority": {"type": "integer", "minimum": 0, "maximum": 1000},
                "subject": {
                    "type": "object",
                    "properties": {
                        "namespaces": SELECTOR,
                        "pods": {
                            "type": "object",
                            "properties": {"namespaceSelector": SELECTOR, "podSelector": SELECTOR},
                            "required": ["namespaceSelector", "podSelector"],
                            "additionalProperties": False,
                        },
                    },
                    "minProperties": 1,
                    "maxProperties": 1,
                    "additionalProperties": False,
                },
                "egress": {"type": "array", "items": RULE, "maxItems": 100},
                "ingress": {"type": "array", "maxItems": 100},
            },
            "required": ["priority", "subject"],
            "additionalProperties": False,
        },
    },
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
}


def cfg(tmp_path: Path, **kw: Any) -> Settings:
    return settings(gitops_dir=str(tmp_path / "gitops"), **kw)


def test_block_and_quarantine_match_the_documented_schema(tmp_path: Path) -> None:
    b = AdminNetworkPolicyBackend(cfg(tmp_path, anp_priority=7))
    targets = [f"10.244.{2 + i // 250}.{i % 250 + 1}" for i in range(60)]
    block = b.policy(decision(targets=[*targets, "fd00::1"]))
    quarantine = b.policy(decision(id="d-q", action="quarantine", targets=[]))
    for doc in (block, quarantine):
        jsonschema.validate(doc, SCHEMA)
    assert block["spec"]["priority"] == 7
    assert block["spec"]["subject"] == {
        "pods": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}},
            "podSelector": {"matchLabels": {"flowwarden.io/block-d-test1": "true"}},
        }
    }
    (rule,) = block["spec"]["egress"]
    assert rule["action"] == "Deny" and [len(p["networks"]) for p in rule["to"]] == [25, 25, 10]
    assert [r["action"] for r in quarantine["spec"]["egress"]] == ["Pass", "Deny"]
    assert quarantine["spec"]["egress"][0]["to"] == [{"networks": ["10.0.0.1/32", "10.96.0.10/32"]}]


def test_the_schema_check_can_fail(tmp_path: Path) -> None:
    doc = AdminNetworkPolicyBackend(cfg(tmp_path)).policy(decision())
    doc["spec"]["egress"][0]["action"] = "Drop"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SCHEMA)


def test_apply_revoke_reconcile(tmp_path: Path) -> None:
    b = AdminNetworkPolicyBackend(cfg(tmp_path))
    d = decision()
    assert b.apply(d)["calls"] == [
        "CustomObjectsApi.create_cluster_custom_object(flowwarden-d-test1)",
        "CoreV1Api.patch_namespaced_pod(web-1)",
    ]
    for call in b.calls(d) + b.calls(d, revoke=True):
        check_call(call)
    assert b.reconcile([d]) == {"removed": [], "restored": []}
    assert b.reconcile([]) == {"removed": [d.id], "restored": []}
    with pytest.raises(BackendError, match="namespace and pod"):
        b.apply(decision(namespace="", pod=""))
    with pytest.raises(BackendError, match="kube_namespaces"):
        AdminNetworkPolicyBackend(cfg(tmp_path, kube_namespaces=["prod"])).apply(d)
