"""A namespace lab that models Kubernetes nodes the way CNIs wire them.

Each "node" is a network namespace with an ``eth0`` uplink on a shared underlay; each "pod"
is a namespace whose ``eth0`` is one end of a veth pair, the other end (``caliN``) on its
node, routed Calico-style (a /32 route per pod, proxy ARP on the host side, the pod's
default route via 169.254.1.1). Nodes reach each other's pod CIDR through a real overlay
device (``vxlan``, ``geneve``, ``ipip``, ``sit``, ``gre``, ``gretap``) over the underlay, or
natively; the kernel's VXLAN, and a user-space endpoint (``tunneld.py``) for the
encapsulations this kernel was built without. Nothing is linked to the host namespace.
Commands are argument lists.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tests.support.netns import Host, Lab, run, wait_for

UNDERLAY = "192.168.50.0/24"
TUNNELD = Path(__file__).resolve().parent / "tunneld.py"
TUNNEL_LIFETIME_S = 300
OVERLAYS = ("vxlan", "vxlan8472", "geneve", "ipip", "gre", "gretap", "native")


@dataclass
class Pod:
    host: Host
    ip: str
    node: str
    veth: str  # the host-side interface on its node


@dataclass
class Node:
    host: Host
    ip: str  # underlay address of eth0
    cidr: str  # its pods' /24
    pods: list[Pod] = field(default_factory=list)


class PodLab:
    """Nodes, pods and an overlay between the nodes; close() removes every namespace."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.nodes: dict[str, Node] = {}
        self.daemons: list[subprocess.Popen[bytes]] = []  # killed by Lab.close (they run in the nodes)

    def node(self, short: str, n: int) -> Node:
        h = self.lab.host(short)
        h.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        node = Node(h, f"192.168.50.{n}", f"10.244.{n}.0/24")
        self.nodes[short] = node
        return node

    def underlay(self, a: Node, b: Node) -> None:
        """The nodes' ``eth0``: one veth pair (the physical network)."""
        ta, tb = f"u{uuid.uuid4().hex[:10]}", f"u{uuid.uuid4().hex[:10]}"
        run(["ip", "link", "add", ta, "netns", a.host.name, "type", "veth", "peer", "name", tb,
             "netns", b.host.name])  # fmt: skip
        for node, tmp, other in ((a, ta, b), (b, tb, a)):
            node.host.run("ip", "link", "set", tmp, "name", "eth0")
            node.host.run("ip", "addr", "add", f"{node.ip}/24", "dev", "eth0")
            node.host.run("ip", "link", "set", "eth0", "up")
            # A default route, as every node has: proxy ARP for the pods' 169.254.1.1 needs one.
            node.host.run("ip", "route", "add", "default", "via", other.ip, "dev", "eth0")

    def pod(self, node: Node, short: str, n: int) -> Pod:
        h = self.lab.host(short)
        ip = node.cidr.replace(".0/24", f".{n}")
        veth = f"cali{uuid.uuid4().hex[:8]}"
        tmp = f"p{uuid.uuid4().hex[:10]}"
        run(["ip", "link", "add", tmp, "netns", h.name, "type", "veth", "peer", "name", veth,
             "netns", node.host.name])  # fmt: skip
        h.run("ip", "link", "set", tmp, "name", "eth0")
        h.run("ip", "addr", "add", f"{ip}/32", "dev", "eth0")
        h.run("ip", "link", "set", "eth0", "up")
        h.run("ip", "route", "add", "169.254.1.1", "dev", "eth0")
        h.run("ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
        node.host.run("ip", "link", "set", veth, "up")
        node.host.run("sysctl", "-q", "-w", f"net.ipv4.conf.{veth}.proxy_arp=1")
        node.host.run("ip", "route", "add", f"{ip}/32", "dev", veth)
        pod = Pod(h, ip, node.host.short, veth)
        node.pods.append(pod)
        return pod

    def overlay(self, kind: str, a: Node, b: Node) -> str:
        """Route each node's pod CIDR to the other through a real tunnel device; its name."""
        if kind not in OVERLAYS:
            raise ValueError(f"unknown overlay {kind!r}")
        for here, there, addr in ((a, b, "172.30.0.1"), (b, a, "172.30.0.2")):
            h = here.host
            if kind == "native":
                h.run("ip", "route", "add", there.cidr, "via", there.ip, "dev", "eth0")
                continue
            dev = "fwtun0"
            if kind in ("vxlan", "vxlan8472"):
                port = "4789" if kind == "vxlan" else "8472"
                h.run("ip", "link", "add", dev, "type", "vxlan", "id", "42", "local", here.ip,
                      "remote", there.ip, "dstport", port, "dev", "eth0")  # fmt: skip
            else:
                # This kernel has no ipip/gre/geneve modules: a user-space endpoint, same wire format.
                args = [sys.executable, str(TUNNELD), kind, here.ip, there.ip, dev, str(TUNNEL_LIFETIME_S)]
                proc = h.popen(*args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != b"ready":
                    raise RuntimeError(f"the {kind} tunnel endpoint did not start")
                self.daemons.append(proc)
            h.run("ip", "addr", "add", f"{addr}/24", "dev", dev)
            h.run("ip", "link", "set", dev, "mtu", "1400", "up")
            peer = "172.30.0.2" if addr == "172.30.0.1" else "172.30.0.1"
            if kind in ("ipip", "gre"):
                h.run("ip", "route", "add", there.cidr, "dev", dev)
            else:
                h.run("ip", "route", "add", there.cidr, "via", peer, "dev", dev)
        if kind != "native":
            # Both endpoints forward (and, on Ethernet overlays, the peer's address is resolved)
            # before any test traffic: a pod's first SYN must not race the tunnel's start.
            for here, peer in ((a, "172.30.0.2"), (b, "172.30.0.1")):
                wait_for(
                    partial(_answers_ping, here.host, peer),
                    timeout=20,
                    what=f"the {kind} tunnel to carry traffic to {peer}",
                )
        return "fwtun0"


def _answers_ping(host: Host, address: str) -> bool:
    return host.run("ping", "-c1", "-W1", address, check=False).returncode == 0


def tcp_exchange(client: Pod, server: Pod, port: int, *, rounds: int = 5, size: int = 700) -> str:
    """A real TCP conversation (``rounds`` request/response pairs); the client's source port."""
    srv = server.host.popen(
        "python3", "-c", _SERVER, server.ip, str(port), str(rounds), str(size),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(
            lambda: f"{server.ip}:{port}" in server.host.run("ss", "-ltn", check=False).stdout,
            timeout=10,
            what="the pod's server",
        )
        out = client.host.run(
            "python3", "-c", _CLIENT, server.ip, str(port), str(rounds), str(size), timeout=30
        )
        return out.stdout.strip()
    finally:
        _end(srv)


def udp_exchange(client: Pod, server: Pod, port: int, *, count: int = 5) -> str:
    """``count`` UDP datagrams and their echoes; the client's source port."""
    srv = server.host.popen(
        "python3", "-c", _UDP_SERVER, server.ip, str(port), str(count),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(
            lambda: f"{server.ip}:{port}" in server.host.run("ss", "-lun", check=False).stdout,
            timeout=10,
            what="the pod's UDP server",
        )
        out = client.host.run("python3", "-c", _UDP_CLIENT, server.ip, str(port), str(count), timeout=30)
        return out.stdout.strip()
    finally:
        _end(srv)


_SERVER = """
import socket, sys
ip, port, rounds, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((ip, port)); s.listen(1)
s.settimeout(20)
c, _ = s.accept(); c.settimeout(20)
for _ in range(rounds):
    got = 0
    while got < size:
        d = c.recv(65536)
        if not d:
            break
        got += len(d)
    c.sendall(b"r" * size)
c.close(); s.close()
"""
_CLIENT = """
import socket, sys
ip, port, rounds, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
c = socket.create_connection((ip, port), timeout=20)
print(c.getsockname()[1])
for _ in range(rounds):
    c.sendall(b"q" * size)
    got = 0
    while got < size:
        d = c.recv(65536)
        if not d:
            break
        got += len(d)
c.close()
"""
_UDP_SERVER = """
import socket, sys
ip, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((ip, port)); s.settimeout(20)
for _ in range(count):
    d, a = s.recvfrom(2048); s.sendto(d, a)
"""
_UDP_CLIENT = """
import socket, sys
ip, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(20); s.connect((ip, port))
print(s.getsockname()[1])
for i in range(count):
    s.send(b"u%03d" % i * 50); s.recv(2048)
"""


def _end(proc: subprocess.Popen[bytes]) -> None:
    """Wait for a server that should be done; kill it when the exchange failed half-way."""
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
