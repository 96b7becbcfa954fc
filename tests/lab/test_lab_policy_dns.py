"""Domain policy end to end in namespaces: a pod resolves an allowed and a forbidden name
through a real dnsmasq and connects to both; the capture is metered by the collector's own
code, the engine judges it with the declared policy, and the enforcer blocks the forbidden
destination with nftables in the router namespace while the allowed one keeps flowing.

::

    pod 10.88.1.2 ── router (capture, nft) ── net: dnsmasq 10.88.2.53,
                                                 allowed 10.88.2.10:443, forbidden 10.88.2.20:443
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flowwarden.bus_memory import MemoryBus
from flowwarden.enforcement.enforcer import Enforcer
from flowwarden.kube import PodInventory
from flowwarden.pipeline.detection.detectors.policy_violation import PolicyViolation
from flowwarden.pipeline.detection.engine import DetectionEngine
from flowwarden.policy import parse_policy
from flowwarden.settings import Settings
from flowwarden.store import Store
from tests.integration.enforce_lab import LISTENER
from tests.support.netns import Host, Lab, netns_available, wait_for
from tests.unit.flowkit import pod

pytestmark = [pytest.mark.integration, pytest.mark.netns]

POD, RESOLVER, ALLOWED, FORBIDDEN = "10.88.1.2", "10.88.2.53", "10.88.2.10", "10.88.2.20"
ALLOWED_NAME, FORBIDDEN_NAME = "api.allowed.example", "drop.forbidden.example"
POLICY = {
    "namespaces": {
        "shop": {"egress": [{"name": "saas", "to": {"domains": ["*.allowed.example"]}, "ports": ["443/tcp"]}]}
    }
}


def _connects(h: Host, ip: str, port: int = 443) -> bool:
    code = (
        "import socket,sys\n"
        "try:\n"
        f"    s = socket.create_connection(({ip!r}, {port}), timeout=1); s.sendall(b'x' * 100); s.close()\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    return h.run(sys.executable, "-c", code, check=False, timeout=10).returncode == 0


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Lab, Host, Host, Host]]:
    assert netns_available(), "this test creates network namespaces: run it as root"
    with Lab() as lab:
        client, router, net = lab.host("pod"), lab.host("router"), lab.host("net")
        _, r_in = lab.link(client, f"{POD}/24", router, "10.88.1.1/24")
        lab.link(router, "10.88.2.1/24", net, f"{RESOLVER}/24")
        client.run("ip", "route", "add", "default", "via", "10.88.1.1")
        net.run("ip", "route", "add", "default", "via", "10.88.2.1")
        for ip in (ALLOWED, FORBIDDEN):
            net.run("ip", "addr", "add", f"{ip}/32", "dev", "lo")
        router.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        for ip in (ALLOWED, FORBIDDEN):
            net.popen(sys.executable, "-c", LISTENER, ip, "443", **quiet)
        net.popen("dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", f"--listen-address={RESOLVER}",
                  "--bind-interfaces", f"--address=/{ALLOWED_NAME}/{ALLOWED}",
                  f"--address=/{FORBIDDEN_NAME}/{FORBIDDEN}", "--local-ttl=300",
                  f"--pid-file={tmp_path / 'dns.pid'}", **quiet)  # fmt: skip
        wait_for(
            lambda: RESOLVER in net.run("ss", "-lun", "sport = :53", check=False).stdout,
            timeout=10,
            what="dnsmasq",
        )
        wait_for(
            lambda: _connects(client, ALLOWED) and _connects(client, FORBIDDEN), timeout=15, what="listeners"
        )
        router.r_in = r_in  # type: ignore[attr-defined]
        yield lab, client, router, net


def _settings(router: Host) -> Settings:
    return Settings.model_validate(
        {
            "cluster": {
                "pod_cidrs": ["10.88.1.0/24"],
                "node_cidrs": ["10.88.9.0/24"],
                "cluster_dns": [RESOLVER],
            },
            "enforcement": {
                "mode": "dry_run",
                "mode_by_detector": {"policy_violation": "enforce"},
                "backends": ["nftables"],
                "nft_netns": router.name,
                "min_severity": "high",
            },
        }
    )


def test_allowed_name_flows_the_forbidden_one_alerts_and_is_blocked(
    lab: tuple[Lab, Host, Host, Host], tmp_path: Path
) -> None:
    from flowwarden.collectors.offline import meter_capture

    _, client, router, _ = lab
    pcap = tmp_path / "capture.pcap"
    iface = router.r_in  # type: ignore[attr-defined]
    cap = router.popen("tcpdump", "--immediate-mode", "-U", "-n", "-Z", "root", "-i", iface, "-w", str(pcap),
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert cap.stderr is not None
        started = cap.stderr.readline().decode()  # "listening on ...": the capture is live
        assert "listening on" in started, started
        for name, ip in ((ALLOWED_NAME, ALLOWED), (FORBIDDEN_NAME, FORBIDDEN)):
            answer = client.run(
                "dig", "+short", "+tries=1", "+time=2", f"@{RESOLVER}", name, "A"
            ).stdout.split()
            assert answer == [ip]
            assert _connects(client, ip)
    finally:
        cap.terminate()
        cap.wait(timeout=10)
    settings = _settings(router)
    flows, _ = meter_capture(pcap, settings)
    dns = flows[flows["dns_qname"] != ""]
    assert set(dns["dns_answers"]) >= {ALLOWED, FORBIDDEN}, "the collector fills dns_answers"

    inventory = PodInventory.from_dict(
        {"items": [pod("client-1", POD, ns="shop", owner=("ReplicaSet", "client-5f6d"))]}
    )
    engine = DetectionEngine(settings, inventory=inventory)
    next(d for d in engine.detectors if isinstance(d, PolicyViolation)).set_policy(parse_policy(POLICY))
    alerts = [*engine.process(flows).alerts, *engine.flush().alerts]
    found = [a for a in alerts if a.detector == "policy_violation"]
    assert len(found) == 1
    alert = found[0]
    assert alert.targets == [FORBIDDEN] and alert.entity.pod == "client-1"
    assert alert.evidence["violations"][0]["name"] == FORBIDDEN_NAME

    # The enforcer applies it (policy_violation is in enforce mode): the forbidden one is cut,
    # the allowed one flows.
    store = Store(f"sqlite:///{tmp_path / 'fw.db'}").start()
    bus = MemoryBus(default_partitions=1)
    enforcer = Enforcer(settings, store=store, bus=bus)
    try:
        enforcer.start()
        producer = bus.producer()
        fresh = alert.model_copy(update={"window_start": datetime.now(UTC), "window_end": datetime.now(UTC)})
        producer.send(settings.kafka.topics.alerts, fresh.to_json().encode())
        producer.flush()
        (decision,) = enforcer.poll_once(1.0)
        assert (decision.status, decision.mode, decision.targets) == ("applied", "enforce", [FORBIDDEN])
        assert not _connects(client, FORBIDDEN)
        assert _connects(client, ALLOWED)
    finally:
        enforcer.stop()
        store.stop()
