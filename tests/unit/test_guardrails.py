"""Every guardrail refuses what it should, names itself, and lets ordinary blocks through."""

from __future__ import annotations

import pytest

from flowwarden.enforcement.guardrails import Context, Guardrails, kafka_addresses
from flowwarden.kube import PodInventory, PodRef
from flowwarden.records import Decision, Entity
from tests.unit.enforcement_support import decision, settings
from tests.unit.flowkit import pod


def refused(d: Decision, g: Guardrails | None = None, ctx: Context | None = None) -> str:
    r = (g or Guardrails(settings())).check(d, ctx)
    return r.guardrail if r else ""


def test_an_ordinary_block_passes() -> None:
    assert refused(decision()) == ""


@pytest.mark.parametrize(
    ("target", "guardrail"),
    [
        ("10.0.0.1", "control_plane"),  # API server / etcd host
        ("10.96.0.1", "control_plane"),  # the `kubernetes` Service
        ("10.0.0.7", "node_address"),  # inside node_cidrs
        ("192.168.50.10", "node_address"),
        ("10.96.0.10", "cluster_dns"),
        ("10.244.9.9", "protected_ip"),
        ("10.50.0.9", "protected_ip"),  # Kafka, derived from bootstrap_servers
        ("0.0.0.0/0", "target_too_wide"),
        ("::/0", "target_too_wide"),
        ("10.244.0.0/16", "target_too_wide"),
        ("127.0.0.1", "reserved_address"),
        ("224.0.0.1", "reserved_address"),
    ],
)
def test_protected_and_wide_targets_are_refused(target: str, guardrail: str) -> None:
    assert refused(decision(targets=[target])) == guardrail


def test_a_cidr_covering_a_protected_address_is_refused() -> None:
    assert refused(decision(targets=["10.96.0.0/24"])) == "control_plane"


@pytest.mark.parametrize(
    "target",
    [
        "10.244.2.7; rm -rf /",
        "10.244.2.7 }",
        "$(reboot)",
        "10.244.2.7\n",
        " 10.244.2.7",
        "999.1.1.1",
        "10.244.2.7/33",
        "10.244.2.0/23x",
        "10.244.2.1/24",  # host bits set: ambiguous
        "::ffff:10.0.0.1",  # IPv4-mapped: would dodge the IPv4 checks
        "fe80::1%eth0",
        "",
    ],
)
def test_malformed_targets_are_refused(target: str) -> None:
    assert refused(decision(targets=[target])) == "malformed"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("namespace", "shop;ls"),
        ("pod", "web-1 }"),
        ("workload", "web`id`"),
        ("pod", "Web_1"),
        ("pod", "web-1\n"),
        ("namespace", "shop\n"),
        ("namespace", "a" * 64),
    ],
)
def test_names_with_metacharacters_are_refused(field: str, value: str) -> None:
    d = decision()
    d = d.model_copy(update={"source": Entity(ip="10.244.1.2", **{field: value})})
    assert refused(d) == "malformed"


def test_a_decision_id_with_metacharacters_is_refused() -> None:
    assert refused(decision(id="d-1; flush ruleset")) == "malformed"


def test_allowlisted_namespace_workload_and_cidr_win() -> None:
    g = Guardrails(settings(allow_workloads=["shop/web"], allow_cidrs=["203.0.113.0/24"]))
    assert refused(decision(namespace="kube-system"), g) == "allow_namespace"
    assert refused(decision(), g) == "allow_workload"
    assert refused(decision(workload="api", targets=["203.0.113.9"]), g) == "allow_cidr"


def test_an_allowlisted_target_namespace_is_refused_via_the_inventory() -> None:
    inv = PodInventory.from_dict(
        {"items": [pod("coredns-1", "10.244.2.7", ns="kube-system", owner=("Deployment", "coredns"))]}
    )
    assert inv.pods_by_ip["10.244.2.7"] == PodRef("kube-system", "coredns-1", "coredns")
    assert refused(decision(), Guardrails(settings(), inv)) == "allow_namespace"


def test_force_overrides_only_the_allowlist() -> None:
    g = Guardrails(settings())
    forced = Context(force=True)
    assert refused(decision(namespace="kube-system"), g, forced) == ""
    assert refused(decision(namespace="kube-system", targets=["10.0.0.1"]), g, forced) == "control_plane"
    assert refused(decision(targets=["0.0.0.0/0"]), g, forced) == "target_too_wide"


def test_protected_source_is_refused() -> None:
    assert refused(decision(ip="10.0.0.5", namespace="", pod="", workload="")) == "node_address"


def test_block_without_targets_is_refused_but_quarantine_is_not() -> None:
    assert refused(decision(targets=[])) == "no_targets"
    assert refused(decision(targets=[], action="quarantine")) == ""


def test_blast_radius_limits() -> None:
    g = Guardrails(settings(max_active_blocks=2, max_new_blocks_per_minute=3))
    active = [decision(id=f"d-a{i}", pod=f"p{i}") for i in range(2)]
    assert refused(decision(), g, Context(active=active)) == "max_active_blocks"
    assert refused(decision(), g, Context(active=active[:1])) == ""
    assert refused(decision(), g, Context(new_last_minute=3)) == "max_new_blocks_per_minute"
    assert refused(decision(), g, Context(new_last_minute=2)) == ""


def test_workload_share() -> None:
    inv = PodInventory.from_dict({"items": [pod(f"web-5d9c8f7b6-{i}", f"10.244.9.{i}") for i in range(4)]})
    assert inv.pod_count("shop", "web") == 4
    g = Guardrails(settings(max_workload_share=0.5), inv)
    one = [decision(id="d-a1", pod="web-2")]
    two = [*one, decision(id="d-a2", pod="web-3")]
    assert refused(decision(), g, Context(active=one)) == ""  # 2 of 4
    assert refused(decision(), g, Context(active=two)) == "max_workload_share"  # 3 of 4


def test_unblock_is_never_refused() -> None:
    assert refused(decision(action="unblock", targets=["0.0.0.0/0"])) == ""


def test_kafka_addresses() -> None:
    assert kafka_addresses(["10.1.2.3:9092", "[fd00::5]:9093", "kafka:9092"]) == ["10.1.2.3", "fd00::5"]


def test_inventory_from_kubectl_json() -> None:
    inv = PodInventory.from_dict(
        {
            "items": [
                {
                    "metadata": {
                        "namespace": "shop",
                        "name": "web-7d4b9c8f6d-abcde",
                        "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d4b9c8f6d"}],
                    },
                    "status": {"podIP": "10.244.1.2", "podIPs": [{"ip": "10.244.1.2"}, {"ip": "fd00::2"}]},
                }
            ]
        }
    )
    assert inv.pods_by_ip["fd00::2"] == PodRef("shop", "web-7d4b9c8f6d-abcde", "web")
    assert inv.pod_count("shop", "web") == 1


# ---------------------------------------------------------------- automatic decisions: drop, do not refuse

SCAN = ["10.244.2.7", "10.0.0.7", "10.244.2.8", "10.96.0.10", "10.0.0.1"]  # pods, node, DNS, API server


def test_automatic_review_drops_protected_targets_and_keeps_the_rest() -> None:
    r = Guardrails(settings()).review(decision(targets=SCAN), drop_protected_targets=True)
    assert r.refusal is None
    assert r.decision.targets == ["10.244.2.7", "10.244.2.8"]
    assert [(x.target, x.guardrail) for x in r.dropped] == [
        ("10.0.0.7", "node_address"),
        ("10.96.0.10", "cluster_dns"),
        ("10.0.0.1", "control_plane"),
    ]
    assert "overlaps protected 10.0.0.0/24 (node_address)" in r.dropped[0].reason


def test_a_person_s_decision_with_one_protected_target_is_still_refused_whole() -> None:
    g = Guardrails(settings())
    assert refused(decision(targets=SCAN), g) == "node_address"
    r = g.review(decision(targets=SCAN))
    assert r.refusal is not None and r.decision.targets == SCAN and r.dropped == ()


def test_a_protected_cidr_target_is_dropped_whole() -> None:
    r = Guardrails(settings()).review(
        decision(targets=["10.96.0.0/24", "10.244.2.7"]), drop_protected_targets=True
    )
    assert r.refusal is None and r.decision.targets == ["10.244.2.7"]
    assert [x.guardrail for x in r.dropped] == ["control_plane"]


def test_automatic_review_refuses_when_no_target_is_left() -> None:
    g = Guardrails(settings())
    one = g.review(decision(targets=["10.0.0.7"]), drop_protected_targets=True)
    assert one.refusal is not None and one.refusal.guardrail == "node_address"
    assert one.decision.targets == ["10.0.0.7"] and one.dropped == ()
    assert one.refusal.reason == g.review(decision(targets=["10.0.0.7"])).refusal.reason  # type: ignore[union-attr]
    every = g.review(decision(targets=["10.96.0.10", "10.0.0.7"]), drop_protected_targets=True)
    assert every.refusal is not None and every.refusal.guardrail == "cluster_dns"
    assert (
        every.refusal.reason.startswith("every target is protected:")
        and "node_address" in every.refusal.reason
    )


def test_automatic_review_still_refuses_a_protected_source_and_garbage_whole() -> None:
    g = Guardrails(settings())
    src = g.review(decision(ip="10.0.0.5", targets=["10.244.2.7"]), drop_protected_targets=True)
    assert src.refusal is not None and src.refusal.guardrail == "node_address"
    bad = g.review(decision(targets=["10.244.2.7", "10.0.0.7", "10.244.2.8;ls"]), drop_protected_targets=True)
    assert bad.refusal is not None and bad.refusal.guardrail == "malformed" and bad.dropped == ()


def test_the_allowlist_and_blast_radius_still_judge_the_whole_automatic_decision() -> None:
    # An allowlisted target refuses the whole decision, even when it is also protected.
    g = Guardrails(settings(allow_cidrs=["10.0.0.0/28"]))
    r = g.review(decision(targets=["10.244.2.7", "10.0.0.7"]), drop_protected_targets=True)
    assert r.refusal is not None and r.refusal.guardrail == "allow_cidr"
    inv = PodInventory.from_dict(
        {"items": [pod("coredns-1", "10.244.2.8", ns="kube-system", owner=("Deployment", "coredns"))]}
    )
    r = Guardrails(settings(), inv).review(decision(targets=SCAN), drop_protected_targets=True)
    assert r.refusal is not None and r.refusal.guardrail == "allow_namespace"
    # The blast radius judges what is left; the dropped targets stay on record.
    g = Guardrails(settings(max_new_blocks_per_minute=1))
    r = g.review(decision(targets=SCAN), Context(new_last_minute=1), drop_protected_targets=True)
    assert r.refusal is not None and r.refusal.guardrail == "max_new_blocks_per_minute"
    assert r.decision.targets == ["10.244.2.7", "10.244.2.8"] and len(r.dropped) == 3


def test_inventory_from_kubectl_json_names_workloads_as_the_pipeline_does() -> None:
    finished = pod("backup-29383920-abcde", "10.244.1.9", owner=("Job", "backup-29383920"))
    finished["status"]["phase"] = "Succeeded"
    items = [
        pod("web-5d9c8f7b6-x2k4p", "10.244.1.5"),
        pod("web-5d9c8f7b6-b7x9q", "10.244.1.6", deleted="2027-01-15T08:01:00Z"),  # terminating
        pod("report-29383920-fghij", "10.244.1.7", owner=("Job", "report-29383920")),  # a CronJob's
        pod("bare", "10.244.1.8", owner=None),
        pod(
            "kube-proxy-abc",
            "10.0.0.11",
            ns="kube-system",
            owner=("DaemonSet", "kube-proxy"),
            host_network=True,
        ),
        finished,
    ]
    inv = PodInventory.from_dict({"items": items})
    assert inv.workload_pods == {"shop/web": 1, "shop/report": 1}
    assert inv.pods_by_ip["10.244.1.6"] == PodRef("shop", "web-5d9c8f7b6-b7x9q", "web")
    assert inv.pods_by_ip["10.244.1.8"].workload == "", "a bare pod belongs to no workload"
    assert inv.pods_by_ip["10.244.1.9"].workload == "backup"
    assert "10.0.0.11" not in inv.pods_by_ip, "a host-network pod's address is its node's"
