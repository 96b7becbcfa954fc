"""Real nftables in isolated namespaces: blocks bite, guardrails hold, the kernel expires, the store wins.

The enforcer runs in this process with the in-memory bus and a SQLite store (the Kafka path is
``test_enforce_kafka.py``); its nft commands run inside the lab's router namespace.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowwarden.bus_memory import MemoryBus
from flowwarden.enforcement.backends.nftables import NftablesBackend
from flowwarden.enforcement.enforcer import Enforcer
from flowwarden.records import Alert, Decision, Entity
from flowwarden.settings import Settings
from flowwarden.store import Store
from tests.integration.enforce_lab import (
    API_PORT,
    ATTACKER,
    ATTACKER6,
    CONTROL,
    ETCD,
    NODE,
    TARGET,
    TARGET6,
    TARGET_PORT,
    EnforceLab,
    enforce_lab,
)
from tests.support.netns import run, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.netns]
__all__ = ["enforce_lab"]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'fw.db'}").start()
    yield s
    s.stop()


def attack_alert(targets: list[str] | None = None, **entity: Any) -> Alert:
    now = datetime.now(UTC)
    return Alert(
        kind="lateral_movement",
        detector="port_scan",
        score=0.97,
        severity="critical",
        entity=Entity(ip=ATTACKER, **({"namespace": "shop", "pod": "web-1", "workload": "web"} | entity)),
        window_start=now - timedelta(seconds=10),
        window_end=now,
        targets=targets or [TARGET],
    )


def start_enforcer(settings: Settings, store: Store, bus: MemoryBus) -> Enforcer:
    e = Enforcer(settings, store=store, bus=bus)
    e.start()
    return e


def publish(bus: MemoryBus, settings: Settings, alert: Alert) -> None:
    p = bus.producer()
    p.send(settings.kafka.topics.alerts, alert.to_json().encode())
    p.flush()


def test_enforce_blocks_keeps_the_control_plane_and_lifts_at_ttl(
    enforce_lab: EnforceLab, store: Store
) -> None:
    lab = enforce_lab
    settings = lab.settings(mode="enforce", ttl_s=3)
    bus = MemoryBus(default_partitions=1)
    enforcer = start_enforcer(settings, store, bus)
    assert lab.can_connect(TARGET, TARGET_PORT)

    publish(bus, settings, attack_alert())
    (d,) = enforcer.poll_once(0.2)
    assert d.status == "applied", d
    assert not lab.can_connect(TARGET, TARGET_PORT), "the block must cut attacker -> target"
    assert lab.can_connect(CONTROL, API_PORT), "the control plane must stay reachable"
    assert [e["elem"]["val"]["concat"] for e in lab.elements("blocked_v4")] == [[ATTACKER, TARGET]]

    wait_for(lambda: lab.can_connect(TARGET, TARGET_PORT), timeout=15, what="the TTL to lift the block")
    assert lab.elements("blocked_v4") == []
    wait_for(
        lambda: bool(enforcer.expire()) or store.get_decision(d.id).status == "expired",  # type: ignore[union-attr]
        timeout=5,
        what="the decision to be marked expired",
    )
    enforcer.stop()


def test_the_kernel_expires_the_block_with_no_flowwarden_process(
    enforce_lab: EnforceLab, tmp_path: Path
) -> None:
    """A separate ``flowwarden blocks add`` process applies a 3 s block and exits; the kernel lifts it."""
    lab = enforce_lab
    config = tmp_path / "fw.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "store": {"url": f"sqlite:///{tmp_path / 'fw.db'}"},
                "cluster": {"node_cidrs": ["10.10.3.0/24"]},
                "control_plane": {"api_server_ips": [CONTROL]},
                "enforcement": {"mode": "enforce", "backends": ["nftables"], "nft_netns": lab.router.name},
            }
        )
    )
    flowwarden = str(Path(sys.executable).with_name("flowwarden"))
    proc = subprocess.run(
        [
            flowwarden,
            "blocks",
            "add",
            "--config",
            str(config),
            "--source",
            ATTACKER,
            "--target",
            TARGET,
            "--ttl",
            "3",
            "--by",
            "test",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " applied " in proc.stdout
    assert not lab.can_connect(TARGET, TARGET_PORT)
    assert run(["ip", "netns", "pids", lab.router.name]).stdout.split() == [], "nothing runs in the router"
    wait_for(lambda: lab.can_connect(TARGET, TARGET_PORT), timeout=15, what="the kernel to expire the block")


def test_dry_run_changes_no_rule_and_records_the_decision(enforce_lab: EnforceLab, store: Store) -> None:
    lab = enforce_lab
    settings = lab.settings(mode="dry_run", ttl_s=3)
    bus = MemoryBus(default_partitions=1)
    enforcer = start_enforcer(settings, store, bus)
    publish(bus, settings, attack_alert())
    (d,) = enforcer.poll_once(0.2)
    assert d.status == "simulated" and d.mode == "dry_run"
    assert d.backend_result["would_apply"]["nftables"] == [
        f"add element inet flowwarden blocked_v4 {{ {ATTACKER} . {TARGET}/32 timeout 3s }}"
    ]
    assert store.get_decision(d.id) == d
    assert lab.tables() == [], "dry-run must not even create flowwarden's table"
    assert lab.can_connect(TARGET, TARGET_PORT)


def refused_manual(enforcer: Enforcer, **kw: Any) -> Decision:
    base: dict[str, Any] = {
        "id": "",
        "action": "block",
        "source": {"ip": ATTACKER},
        "targets": [TARGET],
        "ttl_s": 60,
        "mode": "enforce",
        "status": "pending",
        "decided_by": "test",
    }
    raw = base | kw
    raw["id"] = raw["id"] or f"m-adv{abs(hash(repr(sorted(kw.items())))) % 10**12}"
    return enforcer.decide(Decision.model_validate(raw))


def test_adversarial_decisions_are_refused_and_nothing_is_applied(
    enforce_lab: EnforceLab, store: Store
) -> None:
    lab = enforce_lab
    settings = lab.settings(mode="enforce", max_new_blocks_per_minute=2, ttl_s=60)
    enforcer = start_enforcer(settings, store, MemoryBus(default_partitions=1))
    cases: list[tuple[dict[str, Any], str]] = [
        ({"targets": [CONTROL]}, "control_plane"),  # the API server
        ({"targets": [ETCD]}, "control_plane"),  # etcd
        ({"targets": [NODE]}, "node_address"),
        ({"targets": ["10.10.3.0/24"]}, "control_plane"),  # a CIDR covering the API server
        ({"targets": ["0.0.0.0/0"]}, "target_too_wide"),
        ({"targets": ["::/0"]}, "target_too_wide"),
        ({"source": {"ip": ATTACKER, "namespace": "kube-system", "pod": "coredns-1"}}, "allow_namespace"),
        ({"targets": ["10.10.2.256"]}, "malformed"),
        ({"targets": ["10.10.2.2 } ; flush ruleset"]}, "malformed"),
        ({"targets": ["10.10.2.2\n"]}, "malformed"),
        ({"source": {"ip": ATTACKER, "namespace": "shop;reboot", "pod": "web-1"}}, "malformed"),
        ({"source": {"ip": ATTACKER, "namespace": "shop", "pod": "$(id)"}}, "malformed"),
        ({"id": "m-1; delete table inet flowwarden"}, "malformed"),
    ]
    for kw, guardrail in cases:
        d = refused_manual(enforcer, **kw)
        assert (d.status, d.guardrail) == ("refused", guardrail), (kw, d.reason)
        assert store.get_decision(d.id) == d
        assert lab.elements("blocked_v4") == [] and lab.elements("blocked_v6") == []
    # The rate limit: two blocks per minute go through, the third is refused.
    ok = [refused_manual(enforcer, targets=[f"10.10.2.{i}"], id=f"m-rate{i}") for i in (2, 3, 4)]
    assert [(d.status, d.guardrail) for d in ok] == [
        ("applied", ""),
        ("applied", ""),
        ("refused", "max_new_blocks_per_minute"),
    ]
    assert sorted(e["elem"]["val"]["concat"][1] for e in lab.elements("blocked_v4")) == [
        "10.10.2.2",
        "10.10.2.3",
    ]
    assert lab.can_connect(CONTROL, API_PORT)
    assert enforcer.metrics.refusals.labels("control_plane")._value.get() == 3


def test_restart_reconciles_kernel_with_the_store(enforce_lab: EnforceLab, store: Store) -> None:
    lab = enforce_lab
    settings = lab.settings(mode="enforce", ttl_s=120)
    bus = MemoryBus(default_partitions=1)
    enforcer = start_enforcer(settings, store, bus)
    publish(bus, settings, attack_alert())
    (d,) = enforcer.poll_once(0.2)
    assert d.status == "applied" and not lab.can_connect(TARGET, TARGET_PORT)
    enforcer.stop()

    # Behind its back: the block removed, a stray element, a stray rule and a stray chain added by hand.
    lab.nft("delete", "element", "inet", "flowwarden", "blocked_v4", f"{{ {ATTACKER} . {TARGET} }}")
    lab.nft("add", "element", "inet", "flowwarden", "blocked_v4", f"{{ {ATTACKER} . 10.10.2.99 timeout 1h }}")
    lab.nft("insert", "rule", "inet", "flowwarden", "forward", "tcp", "dport", str(API_PORT), "drop")
    lab.nft("add", "chain", "inet", "flowwarden", "sneaky")
    assert lab.can_connect(TARGET, TARGET_PORT) and not lab.can_connect(CONTROL, API_PORT)
    assert len(lab.elements("blocked_v4")) == 1

    restarted = start_enforcer(settings, store, bus)
    assert [e["elem"]["val"]["concat"] for e in lab.elements("blocked_v4")] == [[ATTACKER, TARGET]]
    assert not lab.can_connect(TARGET, TARGET_PORT), "reconciliation must restore the block"
    assert lab.can_connect(CONTROL, API_PORT), "the hand-made rule and element must be gone"
    ruleset = lab.nft("list", "table", "inet", "flowwarden").stdout
    assert "sneaky" not in ruleset and f"dport {API_PORT}" not in ruleset
    remaining = 120 - lab.elements("blocked_v4")[0]["elem"]["expires"]
    assert 0 <= remaining < 30, "the restored element keeps the decision's own expiry"

    restarted.revoke(d.id, by="test")
    assert lab.elements("blocked_v4") == [] and lab.can_connect(TARGET, TARGET_PORT)
    restarted.stop()


def test_dry_run_script_is_valid_nft(enforce_lab: EnforceLab, tmp_path: Path) -> None:
    """The rules.nft a dry-run writes loads as it is (checked with ``nft -c`` in the lab)."""
    backend = NftablesBackend(table="fwcheck", protected=[f"{CONTROL}/32", "fd00::1"])
    decisions = [
        Decision(
            id="d-a",
            action="block",
            source=Entity(ip=ATTACKER),
            targets=[TARGET, "10.20.0.0/24"],
            ttl_s=30,
            mode="dry_run",
            status="simulated",
        ),
        Decision(
            id="d-b",
            action="quarantine",
            source=Entity(ip="fd00::9"),
            ttl_s=30,
            mode="dry_run",
            status="simulated",
        ),
    ]
    script = tmp_path / "rules.nft"
    script.write_text(backend.render(decisions))
    check = enforce_lab.nft("-c", "-f", str(script), check=False)
    assert check.returncode == 0, check.stderr
    enforce_lab.nft("-f", str(script))
    assert len(enforce_lab.elements("blocked_v4", table="fwcheck")) == 2
    assert len(enforce_lab.elements("quarantine_v6", table="fwcheck")) == 1


def test_quarantine_cuts_everything_but_the_control_plane(enforce_lab: EnforceLab, store: Store) -> None:
    lab = enforce_lab
    settings = lab.settings(mode="enforce", action="quarantine", ttl_s=60)
    bus = MemoryBus(default_partitions=1)
    enforcer = start_enforcer(settings, store, bus)
    publish(bus, settings, attack_alert())
    (d,) = enforcer.poll_once(0.2)
    assert (d.status, d.action, d.targets) == ("applied", "quarantine", [])
    assert not lab.can_connect(TARGET, TARGET_PORT)
    assert lab.can_connect(CONTROL, API_PORT), "quarantine still lets the pod reach the API server"
    enforcer.revoke(d.id, by="test")
    assert lab.elements("quarantine_v4") == [] and lab.can_connect(TARGET, TARGET_PORT)
    enforcer.stop()


def test_a_table_deleted_by_hand_comes_back_with_the_next_block(
    enforce_lab: EnforceLab, store: Store
) -> None:
    lab = enforce_lab
    settings = lab.settings(mode="enforce", ttl_s=60)
    bus = MemoryBus(default_partitions=1)
    enforcer = start_enforcer(settings, store, bus)
    lab.nft("delete", "table", "inet", "flowwarden")
    assert lab.tables() == []
    publish(bus, settings, attack_alert())
    (d,) = enforcer.poll_once(0.2)
    assert d.status == "applied" and lab.tables() == ["flowwarden"]
    assert not lab.can_connect(TARGET, TARGET_PORT) and lab.can_connect(CONTROL, API_PORT)
    enforcer.stop()


def test_ipv6_block(enforce_lab: EnforceLab, store: Store) -> None:
    lab = enforce_lab
    settings = lab.settings(mode="enforce", ttl_s=60)
    bus = MemoryBus(default_partitions=1)
    enforcer = start_enforcer(settings, store, bus)
    alert = attack_alert(targets=[TARGET6]).model_copy(update={"entity": Entity(ip=ATTACKER6)})
    publish(bus, settings, alert)
    (d,) = enforcer.poll_once(0.2)
    assert d.status == "applied", d
    assert [e["elem"]["val"]["concat"] for e in lab.elements("blocked_v6")] == [[ATTACKER6, TARGET6]]
    assert not lab.can_connect(TARGET6, TARGET_PORT)
    assert lab.can_connect(TARGET, TARGET_PORT), "the IPv4 path is a different source: not blocked"
    enforcer.stop()


def test_a_scan_touching_protected_addresses_is_blocked_and_grows_with_the_open_alert(
    enforce_lab: EnforceLab, store: Store
) -> None:
    """A scan over the lab's addresses: the API server, etcd and the node are dropped from the
    block (and stay reachable), the target is blocked; the same alert re-emitted with one more
    target blocks that one too, and a re-delivery changes nothing."""
    lab = enforce_lab
    settings = lab.settings(mode="enforce", ttl_s=120)
    bus = MemoryBus(default_partitions=1)
    enforcer = start_enforcer(settings, store, bus)
    scan = attack_alert(targets=[CONTROL, TARGET, ETCD, NODE])
    publish(bus, settings, scan)
    (d,) = enforcer.poll_once(0.2)
    assert (d.status, d.targets) == ("applied", [TARGET]), d
    assert [x["guardrail"] for x in d.backend_result["dropped_targets"]] == [
        "control_plane",
        "control_plane",
        "node_address",
    ]
    assert enforcer.metrics.refusals.labels("control_plane")._value.get() == 2
    assert [e["elem"]["val"]["concat"] for e in lab.elements("blocked_v4")] == [[ATTACKER, TARGET]]
    assert not lab.can_connect(TARGET, TARGET_PORT) and lab.can_connect(CONTROL, API_PORT)

    more = scan.model_copy(update={"targets": [*scan.targets, "10.10.2.3"]})
    publish(bus, settings, more)
    publish(bus, settings, more)
    (later,) = enforcer.poll_once(0.2)
    assert (later.status, later.alert_id, later.targets) == ("applied", scan.id, ["10.10.2.3"]), later
    assert sorted(e["elem"]["val"]["concat"][1] for e in lab.elements("blocked_v4")) == [TARGET, "10.10.2.3"]
    publish(bus, settings, scan)
    assert enforcer.poll_once(0.2) == []
    assert lab.can_connect(CONTROL, API_PORT)

    enforcer.revoke(later.id, by="test")
    assert [e["elem"]["val"]["concat"] for e in lab.elements("blocked_v4")] == [[ATTACKER, TARGET]]
    enforcer.stop()
