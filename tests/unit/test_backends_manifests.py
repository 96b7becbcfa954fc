"""Kubernetes manifests: NetworkPolicies against the Kubernetes OpenAPI schema (kubernetes-validate,
offline, strict); Calico objects against their documented structure (their CRDs are not in that
schema, so the checks below are ours); client calls against the real kubernetes client's signatures.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes_validate
import pytest
import yaml

from flowwarden.enforcement.backends.base import BackendError
from flowwarden.enforcement.backends.calico import CalicoBackend
from flowwarden.enforcement.backends.kube import KubeCall, KubeClient
from flowwarden.enforcement.backends.networkpolicy import NetworkPolicyBackend
from flowwarden.settings import Settings
from tests.unit.enforcement_support import decision, settings

K8S_VERSION = "1.30.0"
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
CALICO_RULE_KEYS = {"action", "protocol", "source", "destination", "ipVersion", "metadata"}
CALICO_ENTITY_KEYS = {"nets", "notNets", "selector", "notSelector", "ports", "notPorts", "namespaceSelector"}


def cfg(tmp_path: Path, **kw: Any) -> Settings:
    return settings(gitops_dir=str(tmp_path / "gitops"), **kw)


def validate_k8s(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def validate_calico(doc: dict[str, Any]) -> None:
    """Structure of projectcalico.org/v3 Tier, GlobalNetworkSet and GlobalNetworkPolicy."""
    assert doc["apiVersion"] == "projectcalico.org/v3"
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    name = doc["metadata"]["name"]
    assert DNS_SUBDOMAIN.match(name) and len(name) <= 253, name
    for k, v in doc["metadata"].get("labels", {}).items():
        assert re.match(r"^([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$", k), k
        assert re.match(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$", v), v
    spec = doc["spec"]
    if doc["kind"] == "GlobalNetworkSet":
        assert set(spec) == {"nets"} and spec["nets"]
        for net in spec["nets"]:
            assert re.match(r"^[0-9a-f.:]+/\d+$", net), net
    elif doc["kind"] == "Tier":
        assert isinstance(spec["order"], int | float) and spec["defaultAction"] in ("Deny", "Pass")
    elif doc["kind"] == "GlobalNetworkPolicy":
        assert name.startswith(spec["tier"] + "."), "a tiered policy's name starts with its tier"
        assert set(spec) <= {"tier", "order", "selector", "types", "ingress", "egress"}
        assert set(spec["types"]) <= {"Ingress", "Egress"}
        for direction in ("ingress", "egress"):
            for rule in spec.get(direction, []):
                assert set(rule) <= CALICO_RULE_KEYS and rule["action"] in ("Allow", "Deny", "Pass", "Log")
                for side in ("source", "destination"):
                    assert set(rule.get(side, {})) <= CALICO_ENTITY_KEYS
    else:
        raise AssertionError(f"unexpected kind {doc['kind']}")


def check_call(call: KubeCall) -> None:
    """The method exists on the real client class and takes these keyword arguments."""
    method = getattr(getattr(kubernetes.client, call.api), call.method)
    params = inspect.signature(method).parameters
    assert all(k in params or "kwargs" in params for k in call.kwargs), (call.method, list(params))
    required = [
        p
        for p, v in params.items()
        if p != "self"
        and v.default is inspect.Parameter.empty
        and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)
    ]
    assert set(required) <= set(call.kwargs), (call.method, required)


def test_block_policy_is_valid_and_excepts_the_targets(tmp_path: Path) -> None:
    b = NetworkPolicyBackend(cfg(tmp_path))
    d = decision(targets=["10.244.2.7", "203.0.113.0/24", "fd00::7"])
    docs = b.manifests(d)
    for doc in docs:
        validate_k8s(doc)
    egress = docs[0]["spec"]["egress"][0]["to"]
    assert egress[0]["ipBlock"] == {"cidr": "0.0.0.0/0", "except": ["10.244.2.7/32", "203.0.113.0/24"]}
    assert egress[1]["ipBlock"] == {"cidr": "::/0", "except": ["fd00::7/128"]}
    assert docs[0]["spec"]["podSelector"]["matchLabels"] == {f"flowwarden.io/block-{d.id}": "true"}


def test_quarantine_policy_is_valid_and_keeps_dns_and_api_server(tmp_path: Path) -> None:
    b = NetworkPolicyBackend(cfg(tmp_path))
    doc = b.manifests(decision(action="quarantine", targets=[]))[0]
    validate_k8s(doc)
    assert doc["spec"]["policyTypes"] == ["Ingress", "Egress"] and doc["spec"]["ingress"] == []
    allowed = [blk["ipBlock"]["cidr"] for rule in doc["spec"]["egress"] for blk in rule["to"]]
    assert allowed == ["10.96.0.10/32", "10.0.0.1/32"]


def test_invalid_manifest_is_caught_by_the_validator(tmp_path: Path) -> None:
    doc = NetworkPolicyBackend(cfg(tmp_path)).manifests(decision())[0]
    doc["spec"]["policyTypes"] = "Egress"  # must be a list
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(doc)


def test_apply_writes_gitops_files_idempotently_and_builds_valid_calls(tmp_path: Path) -> None:
    b = NetworkPolicyBackend(cfg(tmp_path))
    d = decision()
    first = b.apply(d)
    again = b.apply(d)
    path = Path(first["manifest"])
    assert first == again and path.exists()
    assert [doc["kind"] for doc in yaml.safe_load_all(path.read_text())] == ["NetworkPolicy"]
    assert first["calls"] == [
        f"NetworkingV1Api.create_namespaced_network_policy(flowwarden-{d.id})",
        "CoreV1Api.patch_namespaced_pod(web-1)",
    ]
    for call in b.calls(d) + b.calls(d, revoke=True):
        check_call(call)
    assert b.list_rules() == [{"namespace": "shop", "file": path.name}]
    b.revoke(d)
    b.revoke(d)
    assert not path.exists() and b.list_rules() == []


def test_networkpolicy_reconcile(tmp_path: Path) -> None:
    b = NetworkPolicyBackend(cfg(tmp_path))
    keep, stray = decision(id="d-keep"), decision(id="d-stray", pod="web-2")
    b.apply(stray)
    assert b.reconcile([keep]) == {"removed": ["flowwarden-d-stray.yaml"], "restored": ["d-keep"]}
    assert [r["file"] for r in b.list_rules()] == ["flowwarden-d-keep.yaml"]


def test_networkpolicy_needs_namespace_and_pod_and_respects_kube_namespaces(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="namespace and pod"):
        NetworkPolicyBackend(cfg(tmp_path)).apply(decision(namespace="", pod=""))
    with pytest.raises(BackendError, match="kube_namespaces"):
        NetworkPolicyBackend(cfg(tmp_path, kube_namespaces=["prod"])).apply(decision())


def test_calico_objects_are_well_formed(tmp_path: Path) -> None:
    b = CalicoBackend(cfg(tmp_path))
    block = b.decision_policy(decision(targets=["10.244.2.7", "fd00::/64", "10.244.3.0/24"]))
    quarantine = b.decision_policy(decision(id="d-q", action="quarantine", targets=[]))
    docs = [*b.policy(), block, quarantine]
    assert [d["kind"] for d in docs] == ["Tier", *["GlobalNetworkPolicy"] * 3]
    for doc in docs:
        validate_calico(doc)
    # One policy per decision, naming its own addresses: the source's family only.
    assert block["metadata"]["name"] == "flowwarden.d-test1"
    assert block["metadata"]["labels"]["flowwarden.io/decision"] == "d-test1"
    assert block["spec"]["egress"] == [
        {
            "action": "Deny",
            "source": {"nets": ["10.244.1.2/32"]},
            "destination": {"nets": ["10.244.2.7/32", "10.244.3.0/24"]},
        }
    ]
    assert "ingress" not in block["spec"]
    keep = {"notNets": ["10.0.0.1/32", "10.96.0.10/32"]}
    rule = {"action": "Deny", "source": {"nets": ["10.244.1.2/32"]}, "destination": keep}
    assert quarantine["spec"]["egress"] == [rule] and quarantine["spec"]["ingress"] == [rule]
    # The tier ends with one fixed policy passing everything on; decisions have Deny rules only.
    assert docs[1]["metadata"]["name"] == "flowwarden.pass"
    assert docs[1]["spec"]["order"] > block["spec"]["order"]
    for doc in (block, quarantine):
        assert {r["action"] for r in doc["spec"]["egress"] + doc["spec"].get("ingress", [])} == {"Deny"}


def test_calico_structure_check_can_fail(tmp_path: Path) -> None:
    doc = CalicoBackend(cfg(tmp_path)).decision_policy(decision())
    doc["spec"]["egress"][0]["action"] = "Drop"
    with pytest.raises(AssertionError):
        validate_calico(doc)


def test_calico_block_adds_one_policy_and_leaves_the_fixed_ones(tmp_path: Path) -> None:
    b = CalicoBackend(cfg(tmp_path))
    b.start()
    policy_before = (b.dir / "policy.yaml").read_text()
    d = decision()
    result = b.apply(d)
    assert (b.dir / "policy.yaml").read_text() == policy_before
    assert result["calls"] == [f"CustomObjectsApi.create_cluster_custom_object(flowwarden.{d.id})"]
    for call in b.calls(d) + b.calls(d, revoke=True):
        check_call(call)
    assert b.list_rules() == [{"decision": d.id, "file": str(b.dir / "policies" / f"{d.id}.yaml")}]
    assert b.reconcile([d]) == {"removed": [], "restored": []}
    assert b.reconcile([]) == {"removed": [d.id], "restored": []}
    assert b.list_rules() == []


def test_calico_reconcile_removes_the_former_network_sets(tmp_path: Path) -> None:
    b = CalicoBackend(cfg(tmp_path))
    (b.dir / "sets").mkdir(parents=True)
    (b.dir / "sets" / "d-old.yaml").write_text("kind: GlobalNetworkSet\n")
    assert b.reconcile([]) == {"removed": ["sets/d-old"], "restored": []}
    assert not (b.dir / "sets" / "d-old.yaml").exists()


def test_client_runs_nothing_when_not_applying_to_a_cluster(tmp_path: Path) -> None:
    def no_cluster() -> None:
        raise AssertionError("must not load a kube config")

    client = KubeClient(enabled=False, loader=no_cluster)
    assert client.run(
        [KubeCall("CoreV1Api", "patch_namespaced_pod", {"name": "p", "namespace": "n", "body": {}})]
    ) == ["CoreV1Api.patch_namespaced_pod(p)"]


def test_cluster_listing_calls_are_valid_and_per_namespace(tmp_path: Path) -> None:
    b = NetworkPolicyBackend(cfg(tmp_path, kube_namespaces=["shop", "prod"]))
    calls = b.list_calls()
    assert [c.kwargs["namespace"] for c in calls] == ["shop", "prod"]
    for call in calls:
        check_call(call)
    assert b.cluster_policies() == []  # apply_to_cluster is off: nothing is asked of a cluster


def excepted(path: Path) -> list[str]:
    (doc,) = yaml.safe_load_all(path.read_text())
    validate_k8s(doc)
    egress = doc["spec"]["egress"]
    return egress[0]["to"][0]["ipBlock"].get("except", []) if egress else ["(no egress)"]


def test_block_policies_of_one_pod_each_except_every_active_block(tmp_path: Path) -> None:
    """NetworkPolicies are additive: "all but X" and "all but Y" on one pod would allow everything."""
    b = NetworkPolicyBackend(cfg(tmp_path))
    first, second = decision(id="d-first"), decision(id="d-second", targets=["10.244.2.8"])
    other_pod = decision(id="d-other", pod="web-2", targets=["10.244.2.9"])
    p1, p3 = Path(b.apply(first)["manifest"]), Path(b.apply(other_pod)["manifest"])
    result = b.apply(second)
    p2 = Path(result["manifest"])
    assert result["updated"] == ["d-first"]
    assert excepted(p1) == excepted(p2) == ["10.244.2.7/32", "10.244.2.8/32"]
    assert excepted(p3) == ["10.244.2.9/32"], "another pod's block is its own"
    # A quarantine of the pod: its block policies allow nothing more than the quarantine does.
    q = decision(id="d-q", action="quarantine", targets=[])
    assert sorted(b.apply(q)["updated"]) == ["d-first", "d-second"]
    assert excepted(p1) == excepted(p2) == ["(no egress)"]
    b.revoke(q)
    assert excepted(p1) == ["10.244.2.7/32", "10.244.2.8/32"]
    assert b.revoke(second)["updated"] == ["d-first"]
    assert excepted(p1) == ["10.244.2.7/32"] and not p2.exists()
    rendered = [doc for doc in yaml.safe_load_all(b.render([first, second])) if doc]
    assert [doc["spec"]["egress"][0]["to"][0]["ipBlock"]["except"] for doc in rendered] == [
        ["10.244.2.7/32", "10.244.2.8/32"],
        ["10.244.2.7/32", "10.244.2.8/32"],
    ]


def test_reconcile_rewrites_a_block_policy_that_misses_a_sibling(tmp_path: Path) -> None:
    first, second = decision(id="d-first"), decision(id="d-second", targets=["10.244.2.8"])
    elsewhere = NetworkPolicyBackend(cfg(tmp_path))  # e.g. `blocks add` in another process
    p1 = Path(elsewhere.apply(first)["manifest"])
    b = NetworkPolicyBackend(cfg(tmp_path))
    assert b.reconcile([first]) == {"removed": [], "restored": []}
    NetworkPolicyBackend(cfg(tmp_path)).apply(second)  # knew nothing of d-first
    assert excepted(p1) == ["10.244.2.7/32"]
    assert b.reconcile([first, second]) == {"removed": [], "restored": ["d-first", "d-second"]}
    assert excepted(p1) == ["10.244.2.7/32", "10.244.2.8/32"]
    assert b.reconcile([first, second]) == {"removed": [], "restored": []}
