"""An isolated namespace "cluster" for the enforcement tests.

attacker (10.10.1.2) ─┐
target   (10.10.2.2) ─┼─ router (forwards; flowwarden's nft table lives here)
control  (10.10.3.2) ─┘   control-plane host with a listener on 6443

No namespace is linked to the host's; listeners are small Python accept loops.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from flowwarden.settings import Settings
from tests.support.netns import Host, Lab, netns_available, wait_for

ATTACKER, TARGET, CONTROL = "10.10.1.2", "10.10.2.2", "10.10.3.2"
ATTACKER6, TARGET6 = "fd10:1::2", "fd10:2::2"
ETCD, NODE = "10.10.3.5", "10.10.3.9"
TARGET_PORT, API_PORT = 8080, 6443


@dataclass
class EnforceLab:
    lab: Lab
    attacker: Host
    target: Host
    control: Host
    router: Host

    def can_connect(self, ip: str, port: int) -> bool:
        """One TCP connection from the attacker (a reject answers at once; 1 s cap otherwise)."""
        code = (
            "import socket,sys\n"
            "try:\n"
            f"    socket.create_connection(({ip!r}, {port}), timeout=1).close()\n"
            "except OSError:\n"
            "    sys.exit(1)\n"
        )
        return self.attacker.run(sys.executable, "-c", code, check=False, timeout=10).returncode == 0

    def nft(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.router.run("nft", *args, check=check)

    def elements(self, set_name: str, table: str = "flowwarden") -> list[Any]:
        out = self.nft("-j", "list", "set", "inet", table, set_name, check=False)
        if out.returncode != 0:
            return []
        for item in json.loads(out.stdout)["nftables"]:
            if "set" in item:
                return list(item["set"].get("elem", []))
        return []

    def tables(self) -> list[str]:
        out = json.loads(self.nft("-j", "list", "tables").stdout)["nftables"]
        return [i["table"]["name"] for i in out if "table" in i]

    def settings(self, **enforcement: Any) -> Settings:
        return Settings.model_validate(
            {
                "cluster": {
                    "pod_cidrs": ["10.10.0.0/16"],
                    "node_cidrs": ["10.10.3.0/24"],
                    "node_ips": [NODE],
                },
                "control_plane": {"api_server_ips": [CONTROL, ETCD]},
                "enforcement": {"backends": ["nftables"], "nft_netns": self.router.name, **enforcement},
            }
        )


# Accepts and closes connections; bounded: 100k connections or 5 idle minutes, then exits.
# (Not http.server: it resolves its own address, which stalls for seconds without DNS.)
LISTENER = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
server = socket.create_server((host, port), family=family)
server.settimeout(300)
for _ in range(100_000):
    conn, _ = server.accept()
    conn.close()
"""


def listen(h: Host, addr: str, port: int) -> None:
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    h.popen(sys.executable, "-c", LISTENER, addr, str(port), **quiet)


def no_dad(h: Host) -> None:
    """IPv6 addresses (link-local ones too) usable at once: no duplicate-address-detection wait."""
    for scope in ("all", "default"):
        h.run("sysctl", "-qw", f"net.ipv6.conf.{scope}.accept_dad=0")


def build_lab() -> EnforceLab:
    assert netns_available(), "these tests need root and iproute2 to create network namespaces"
    lab = Lab()
    try:
        router = lab.host("router")
        no_dad(router)
        hosts = {}
        for i, name in enumerate(("attacker", "target", "control"), start=1):
            h = lab.host(name)
            no_dad(h)
            ih, ir = lab.link(h, f"10.10.{i}.2/24", router, f"10.10.{i}.1/24")
            h.run("ip", "route", "add", "default", "via", f"10.10.{i}.1")
            # IPv6 too (nodad: usable at once, no duplicate-address-detection wait).
            h.run("ip", "-6", "addr", "add", f"fd10:{i}::2/64", "dev", ih, "nodad")
            router.run("ip", "-6", "addr", "add", f"fd10:{i}::1/64", "dev", ir, "nodad")
            h.run("ip", "-6", "route", "add", "default", "via", f"fd10:{i}::1")
            hosts[name] = h
        router.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        router.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        listen(hosts["target"], TARGET, TARGET_PORT)
        listen(hosts["target"], TARGET6, TARGET_PORT)
        listen(hosts["control"], CONTROL, API_PORT)
        env = EnforceLab(lab, hosts["attacker"], hosts["target"], hosts["control"], router)
        wait_for(lambda: env.can_connect(TARGET, TARGET_PORT), timeout=15, what="the target's listener")
        wait_for(lambda: env.can_connect(CONTROL, API_PORT), timeout=15, what="the control plane's listener")
        wait_for(lambda: env.can_connect(TARGET6, TARGET_PORT), timeout=15, what="the target's IPv6 listener")
        return env
    except BaseException:
        lab.close()
        raise


@pytest.fixture
def enforce_lab() -> Iterator[EnforceLab]:
    env = build_lab()
    try:
        yield env
    finally:
        env.lab.close()
