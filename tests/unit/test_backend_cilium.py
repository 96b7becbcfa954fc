"""The Cilium backend: one CiliumClusterwideNetworkPolicy per decision, checked against the CRD's
documented fields, its client calls against the real kubernetes client, and its lifecycle.

Schema: no package reachable from this machine ships Cilium's CRD OpenAPI schema (looked for on
PyPI: ``littlejo-cilium`` and ``hubble-audit2policy`` carry none; ``kubernetes-validate`` has only
the core API), so :data:`SCHEMA` below encodes the fields this backend writes as the
CiliumClusterwideNetworkPolicy reference documents them (``cilium.io/v2``: ``spec.endpointSelector``
a label selector; ``spec.egressDeny[]`` with ``toCIDR`` (list of CIDR strings), ``toCIDRSet``
(``{cidr, except[]}``), ``toPorts`` (``ports[{port, protocol}]``), ``toEndpoints``,
``toEntities``…), with ``additionalProperties: false`` so that any other field fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from flowwarden.enforcement.backends import BACKENDS, make_backends
from flowwarden.enforcement.backends.base import BackendError
from flowwarden.enforcement.backends.cilium import CiliumBackend
from flowwarden.settings import Settings
from tests.unit.enforcement_support import decision, settings
from tests.unit.test_backends_manifests import check_call

CIDR = {"type": "string", "pattern": r"^[0-9a-f.:]+/\d{1,3}$"}
LABELS = {
    "type": "object",
    "propertyNames": {"pattern": r"^([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"},
    "additionalProperties": {
        "type": "string",
        "pattern": r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$",
    },
}
SELECTOR = {
    "type": "object",
    "properties": {"matchLabels": LABELS, "matchExpressions": {"type": "array"}},
    "additionalProperties": False,
}
PORT_PROTOCOL = {
    "type": "object",
    "properties": {
        "port": {"type": "string"},
        "endPort": {"type": "integer"},
        "protocol": {"enum": ["TCP", "UDP", "SCTP", "ICMP", "ICMPv6", "ANY"]},
    },
    "required": ["port"],
    "additionalProperties": False,
}
EGRESS_DENY_RULE = {
    "type": "object",
    "properties": {
        "toCIDR": {"type": "array", "items": CIDR},
        "toCIDRSet": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"cidr": CIDR, "except": {"type": "array", "items": CIDR}},
                "required": ["cidr"],
                "additionalProperties": False,
            },
        },
        "toEndpoints": {"type": "array", "items": SELECTOR},
        "toEntities": {"type": "array", "items": {"type": "string"}},
        "toPorts": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"ports": {"type": "array", "items": PORT_PROTOCOL}},
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "apiVersion": {"const": "cilium.io/v2"},
        "kind": {"const": "CiliumClusterwideNetworkPolicy"},
        "metadata": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253},
                "labels": LABELS,
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "required": ["name"],
            "additionalProperties": False,
        },
        "spec": {
            "type": "object",
            "properties": {
                "description": {"type": "string"},
                "endpointSelector": SELECTOR,
                "nodeSelector": SELECTOR,
                "egressDeny": {"type": "array", "items": EGRESS_DENY_RULE},
                "ingressDeny": {"type": "array"},
                "egress": {"type": "array"},
                "ingress": {"type": "array"},
            },
            "required": ["endpointSelector"],
            "additionalProperties": False,
        },
    },
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
}


def cfg(tmp_path: Path, **kw: Any) -> Settings:
    return settings(gitops_dir=str(tmp_path / "gitops"), **kw)


def test_block_and_quarantine_policies_match_the_documented_schema(tmp_path: Path) -> None:
    b = CiliumBackend(cfg(tmp_path))
    block = b.policy(decision(targets=["10.244.2.7", "fd00::/64", "192.0.2.0/24"]))
    quarantine = b.policy(decision(id="d-q", action="quarantine", targets=[]))
    for doc in (block, quarantine):
        jsonschema.validate(doc, SCHEMA)
    assert block["metadata"]["name"] == "flowwarden-d-test1"
    assert block["spec"]["endpointSelector"] == {
        "matchLabels": {"io.kubernetes.pod.namespace": "shop", "flowwarden.io/block-d-test1": "true"}
    }
    assert block["spec"]["egressDeny"] == [
        {"toCIDRSet": [{"cidr": "10.244.2.7/32"}, {"cidr": "192.0.2.0/24"}]}
    ]
    assert quarantine["spec"]["egressDeny"] == [
        {
            "toCIDRSet": [
                {"cidr": "0.0.0.0/0", "except": ["10.0.0.1/32", "10.96.0.10/32"]},
                {"cidr": "::/0"},
            ]
        }
    ]


def test_the_schema_check_can_fail(tmp_path: Path) -> None:
    doc = CiliumBackend(cfg(tmp_path)).policy(decision())
    doc["spec"]["egressDeny"][0]["toCIDRz"] = ["10.0.0.0/8"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SCHEMA)


def test_apply_writes_labels_and_revokes_and_reconciles(tmp_path: Path) -> None:
    b = CiliumBackend(cfg(tmp_path))
    d = decision()
    result = b.apply(d)
    assert result["calls"] == [
        "CustomObjectsApi.create_cluster_custom_object(flowwarden-d-test1)",
        "CoreV1Api.patch_namespaced_pod(web-1)",
    ]
    for call in b.calls(d) + b.calls(d, revoke=True):
        check_call(call)
    assert [x for x in yaml.safe_load_all(Path(result["manifest"]).read_text())] == [b.policy(d)]
    assert b.reconcile([d]) == {"removed": [], "restored": []}
    stale = d.model_copy(update={"targets": ["10.244.2.8"]})
    assert b.reconcile([stale]) == {"removed": [], "restored": [d.id]}
    assert b.revoke(d)["calls"] == [
        "CustomObjectsApi.delete_cluster_custom_object(flowwarden-d-test1)",
        "CoreV1Api.patch_namespaced_pod(web-1)",
    ]
    assert b.list_rules() == []
    b.apply(d)
    assert b.reconcile([]) == {"removed": [d.id], "restored": []}


def test_a_source_without_a_pod_or_a_target_of_its_family_cannot_be_expressed(tmp_path: Path) -> None:
    b = CiliumBackend(cfg(tmp_path))
    with pytest.raises(BackendError, match="namespace and pod"):
        b.apply(decision(namespace="", pod=""))
    with pytest.raises(BackendError, match="address family"):
        b.apply(decision(targets=["fd00::1"]))
    assert b.render([decision(namespace="", pod="")]) == ""


def test_registered_and_built_from_the_settings(tmp_path: Path) -> None:
    assert "cilium" in BACKENDS
    [b] = make_backends(cfg(tmp_path, backends=["cilium"], apply_to_cluster=False))
    assert isinstance(b, CiliumBackend) and b.dir == tmp_path / "gitops" / "cilium"
