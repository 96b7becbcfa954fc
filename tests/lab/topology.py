"""The lab's address plan, its namespaces and what the pipeline is told about them.

::

    pods (shop, data, monitoring)          ┌─ control plane 10.0.0.10: 6443 2379 2380 10250 10257 10259 (TLS)
      10.244.1.0/24 on node-a ─┐           ├─ node-a 10.0.0.11, node-b 10.0.0.12: kubelet 10250 (TLS), sshd 22
      10.244.2.0/24 on node-b ─┼─ fabric ──┼─ cluster DNS 10.96.0.10 (dnsmasq, forwards)
                               │ (router,  ├─ metadata API 169.254.169.254:80
                               │  capture) └─ "internet": SaaS 203.0.113.10:443, storage 203.0.113.20:443,
                               │               resolver 192.0.2.53 (dnsmasq), attacker 198.51.100.66
                               │               (iodined, C2 :80), exfil drop 198.51.100.77:443

Every host is its own network namespace with a /32 address on one veth to the "fabric"
namespace, which routes between them (as Calico does: no bridge). The capture runs in the
fabric on every interface, inbound only, so each packet is recorded exactly once, where it
enters the fabric from its sender. Nothing is linked to the host's namespace.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CONTROL_PLANE = "10.0.0.10"
NODE_A, NODE_B = "10.0.0.11", "10.0.0.12"
NODE_IPS = {"node-a": NODE_A, "node-b": NODE_B}
CLUSTER_DNS = "10.96.0.10"
METADATA = "169.254.169.254"
SAAS, STORAGE = "203.0.113.10", "203.0.113.20"
UPSTREAM_DNS = "192.0.2.53"
ATTACKER, EXFIL = "198.51.100.66", "198.51.100.77"
INTERNET_IPS = (ATTACKER, EXFIL, SAAS, STORAGE, UPSTREAM_DNS)
SAAS_NAME, STORAGE_NAME = "api.payments.example", "backups.objects.example"
TUNNEL_DOMAIN = "t.attacker.example"
TUNNEL_NET, TUNNEL_SERVER = "172.30.0.1/27", "172.30.0.1"

API_PORT, ETCD_PORT, ETCD_PEER_PORT = 6443, 2379, 2380
KUBELET_PORT, CONTROLLER_PORT, SCHEDULER_PORT = 10250, 10257, 10259
CP_PORTS = (API_PORT, ETCD_PORT, ETCD_PEER_PORT, KUBELET_PORT, CONTROLLER_PORT, SCHEDULER_PORT)
APP_PORT, METRICS_PORT, DB_PORT = 8080, 9100, 5432
BACKUP_BYTES = 4_000_000

GATEWAYS = {"10.244.1": "10.244.1.1", "10.244.2": "10.244.2.1", "10.0.0": "10.0.0.1", "10.96.0": "10.96.0.1"}
NODE_NAME = "node-a"  # the collector's node: the lab captures at the fabric, as one meter


@dataclass(frozen=True)
class LabPod:
    role: str
    namespace: str
    name: str
    owner_kind: str
    owner: str
    ip: str
    node: str


PODS: tuple[LabPod, ...] = (
    LabPod(
        "frontend",
        "shop",
        "frontend-6b9f8d7c5-x2k8q",
        "ReplicaSet",
        "frontend-6b9f8d7c5",
        "10.244.1.10",
        "node-a",
    ),
    LabPod(
        "checkout",
        "shop",
        "checkout-7f6d5c4b3-pq9rs",
        "ReplicaSet",
        "checkout-7f6d5c4b3",
        "10.244.1.11",
        "node-a",
    ),
    LabPod("cart", "shop", "cart-5d4c3b2a1-m4n5p", "ReplicaSet", "cart-5d4c3b2a1", "10.244.1.12", "node-a"),
    # The compromised pod: one of the frontend's replicas, doing the frontend's work as well.
    LabPod(
        "attacker",
        "shop",
        "frontend-6b9f8d7c5-abcde",
        "ReplicaSet",
        "frontend-6b9f8d7c5",
        "10.244.1.13",
        "node-a",
    ),
    LabPod("prometheus", "monitoring", "prometheus-0", "StatefulSet", "prometheus", "10.244.1.20", "node-a"),
    LabPod(
        "frontend-b",
        "shop",
        "frontend-6b9f8d7c5-fghij",
        "ReplicaSet",
        "frontend-6b9f8d7c5",
        "10.244.2.21",
        "node-b",
    ),
    LabPod("db", "data", "postgres-0", "StatefulSet", "postgres", "10.244.2.30", "node-b"),
)
POD_BY_ROLE = {p.role: p for p in PODS} | {
    "backup": LabPod("backup", "data", "backup", "Job", "backup", "10.244.2.40", "node-b")
}
ATTACKER_POD = POD_BY_ROLE["attacker"]
BACKUP_IPS = tuple(f"10.244.2.{40 + i}" for i in range(8))  # each run of the CronJob a new pod and IP

SVC = {
    "checkout": "checkout.shop.svc.cluster.local",
    "cart": "cart.shop.svc.cluster.local",
    "db": "postgres.data.svc.cluster.local",
}
# The cluster DNS answers for the services (to the pod's address: no kube-proxy here).
CLUSTER_RECORDS = {
    SVC["checkout"]: POD_BY_ROLE["checkout"].ip,
    SVC["cart"]: POD_BY_ROLE["cart"].ip,
    SVC["db"]: POD_BY_ROLE["db"].ip,
}
UPSTREAM_RECORDS = {SAAS_NAME: SAAS, STORAGE_NAME: STORAGE, "c2.attacker.example": ATTACKER}


def gateway(ip: str) -> str:
    prefix = ip.rsplit(".", 1)[0]
    return GATEWAYS.get(prefix, prefix + ".1")


def ipv4_only(host: Any) -> None:
    """No IPv6 (an IPv4 cluster): no router solicitations or link-local chatter in the capture."""
    for scope in ("all", "default"):
        host.run("sysctl", "-q", "-w", f"net.ipv6.conf.{scope}.disable_ipv6=1")


def attach(lab: Any, host: Any, ip: str, *extra: str) -> None:
    """``host`` gets ``ip``/32 on a veth to the fabric, a default route, and the fabric a route back."""
    fabric = lab.hosts["fabric"]
    ipv4_only(host)
    gw = gateway(ip)
    here, there = lab.link(host, f"{ip}/32", fabric, "")
    host.run("ip", "route", "add", gw, "dev", here)
    host.run("ip", "route", "add", "default", "via", gw, "dev", here)
    fabric.run("ip", "addr", "add", f"{gw}/32", "dev", there)
    fabric.run("ip", "route", "add", f"{ip}/32", "dev", there)
    for addr in extra:
        host.run("ip", "addr", "add", f"{addr}/32", "dev", "lo")
        fabric.run("ip", "route", "add", f"{addr}/32", "via", ip, "dev", there, "onlink")


def write_resolv(host: Any, nameserver: str) -> Path:
    """``/etc/netns/<ns>/resolv.conf``: what ``ip netns exec`` shows the namespace as its resolver."""
    d = Path("/etc/netns") / host.name
    d.mkdir(parents=True, exist_ok=True)
    (d / "resolv.conf").write_text(
        f"nameserver {nameserver}\nsearch svc.cluster.local cluster.local\n"
        "options ndots:2 timeout:2 attempts:2\n"
    )
    (d / "hosts").write_text("127.0.0.1 localhost\n")
    return d


def make_certs(d: Path) -> None:
    """A self-signed certificate every lab TLS server presents (clients do not verify)."""
    d.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=lab.cluster.local",
            "-keyout",
            str(d / "server.key"),
            "-out",
            str(d / "server.crt"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


def inventory(start: float, backup_runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The pods as ``kubectl get pods -A -o json`` prints them: long-lived pods, and one per backup run."""

    def item(
        p: LabPod, name: str, owner: str, ip: str, created: float, finished: float | None
    ) -> dict[str, Any]:
        status: dict[str, Any] = {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "hostIP": NODE_IPS[p.node],
            "startTime": _iso(created),
        }
        if finished is not None:
            status["phase"] = "Succeeded"
            status["containerStatuses"] = [
                {"name": p.role, "state": {"terminated": {"exitCode": 0, "finishedAt": _iso(finished)}}}
            ]
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": p.namespace,
                "creationTimestamp": _iso(created),
                "labels": {"app": p.owner.split("-")[0]},
                "ownerReferences": [
                    {"apiVersion": "apps/v1", "kind": p.owner_kind, "name": owner, "controller": True}
                ],
            },
            "spec": {"nodeName": p.node},
            "status": status,
        }

    items = [item(p, p.name, p.owner, p.ip, start - 86400, None) for p in PODS]
    b = POD_BY_ROLE["backup"]
    for run in backup_runs:
        items.append(item(b, run["pod"], run["job"], run["ip"], run["created"], run["finished"]))
    return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items}


def flowwarden_config() -> dict[str, Any]:
    """The lab's settings for ``flowwarden detect``: its address plan; every detector at its defaults."""
    return {
        "cluster": {
            "name": "lab",
            "pod_cidrs": ["10.244.0.0/16"],
            "service_cidrs": ["10.96.0.0/12"],
            "node_cidrs": ["10.0.0.0/24"],
            "node_ips": [CONTROL_PLANE, NODE_A, NODE_B],
            "cluster_dns": [CLUSTER_DNS],
            "metadata_api": [METADATA],
        },
        "control_plane": {"api_server_ips": [CONTROL_PLANE]},
        "collector": {"node": NODE_NAME, "snaplen": 128},
    }


def now() -> float:
    return time.time()
