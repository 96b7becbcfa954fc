"""The simulated cluster: nodes, namespaces, workloads, pods, the IP plan, and the inventory.

The traffic generators never invent addresses: they ask the :class:`Cluster` which pod
serves a workload at a given time, so every pod IP in the flows is in the inventory and
the pod that owned it at that moment is the one the inventory says (honouring the pod's
lifetime across a rolling deployment).
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from flowwarden.errors import ConfigError
from flowwarden.settings import Settings

_NAME_CHARS = np.array(list("bcdfghjklmnpqrstvwxz2456789"))
_INF = float("inf")


@dataclass(frozen=True)
class WorkloadSpec:
    """A workload template: who it is, what it serves, how much of the cluster it takes."""

    namespace: str
    name: str
    kind: str  # Deployment | StatefulSet
    port: int
    weight: float  # share of the pod budget
    metrics_port: int = 9090
    image: str = ""
    attackable: bool = True  # a plausible foothold for an attacker


# The application catalogue; replicas are the pod budget split by weight (at least 1 each).
CATALOGUE: tuple[WorkloadSpec, ...] = (
    WorkloadSpec("ingress", "ingress-nginx", "Deployment", 443, 2, 10254, attackable=False),
    WorkloadSpec("shop", "frontend", "Deployment", 8080, 8, 9090),
    WorkloadSpec("shop", "api", "Deployment", 8080, 8, 9090),
    WorkloadSpec("shop", "catalog", "Deployment", 8080, 4, 9090),
    WorkloadSpec("shop", "cart", "Deployment", 8080, 4, 9090),
    WorkloadSpec("shop", "checkout", "Deployment", 8080, 3, 9090),
    WorkloadSpec("shop", "search", "Deployment", 9200, 3, 9114),
    WorkloadSpec("shop", "redis", "StatefulSet", 6379, 2, 9121),
    WorkloadSpec("shop", "postgres", "StatefulSet", 5432, 2, 9187),
    WorkloadSpec("payments", "gateway", "Deployment", 8443, 3, 9090),
    WorkloadSpec("payments", "ledger", "Deployment", 8080, 3, 9090),
    WorkloadSpec("payments", "billing-sync", "Deployment", 8080, 1, 9090),
    WorkloadSpec("payments", "payments-db", "StatefulSet", 5432, 2, 9187),
    WorkloadSpec("auth", "auth-api", "Deployment", 8080, 4, 9090),
    WorkloadSpec("auth", "session-cache", "StatefulSet", 6379, 2, 9121),
    WorkloadSpec("auth", "users-db", "StatefulSet", 5432, 1, 9187),
    WorkloadSpec("data", "kafka", "StatefulSet", 9092, 3, 9308),
    WorkloadSpec("data", "ingest", "Deployment", 8080, 3, 9090),
    WorkloadSpec("data", "etl-worker", "Deployment", 8080, 3, 9090),
    WorkloadSpec("monitoring", "prometheus", "StatefulSet", 9090, 1, 9090, attackable=False),
    WorkloadSpec("monitoring", "alertmanager", "StatefulSet", 9093, 1, 9093, attackable=False),
    WorkloadSpec("monitoring", "grafana", "Deployment", 3000, 1, 3000, attackable=False),
    WorkloadSpec("monitoring", "alert-relay", "Deployment", 8080, 1, 9090, attackable=False),
    WorkloadSpec("kube-system", "coredns", "Deployment", 53, 2, 9153, attackable=False),
    WorkloadSpec("kube-system", "metrics-server", "Deployment", 10250, 1, 10250, attackable=False),
    WorkloadSpec("flowwarden", "pipeline", "Deployment", 9102, 1, 9102, attackable=False),
    WorkloadSpec("flowwarden", "enforcer", "Deployment", 9103, 1, 9103, attackable=False),
)

# Host-network DaemonSets on every node (their pod IP is the node IP) and static pods on
# the control-plane nodes.
HOST_DAEMONSETS: tuple[tuple[str, str, int], ...] = (
    ("kube-system", "kube-proxy", 10249),
    ("kube-system", "cni-agent", 9962),
    ("monitoring", "node-exporter", 9100),
    ("flowwarden", "collector", 9101),
)
STATIC_PODS: tuple[tuple[str, int], ...] = (
    ("kube-apiserver", 6443),
    ("etcd", 2379),
    ("kube-scheduler", 10259),
    ("kube-controller-manager", 10257),
)
CONTROL_PLANE_NODES = 3
REUSE_AFTER_S = 90.0  # a released pod address goes back to the node's pool after this long


@dataclass
class Node:
    name: str
    ip: str
    pod_cidr: str
    control_plane: bool
    index: int
    next_host: int = 10  # next free host number in the node's pod /24


@dataclass
class Pod:
    name: str
    namespace: str
    workload: str
    owner_kind: str  # ReplicaSet | StatefulSet | DaemonSet | Job | Node
    owner_name: str
    ip: str
    node: str
    host_network: bool
    created: float
    deleted: float | None = None
    finished: float | None = None  # a Job pod that ran to completion
    labels: dict[str, str] = field(default_factory=dict)
    ports: tuple[int, ...] = ()
    uid: str = ""
    image: str = ""


@dataclass
class Workload:
    """A workload and its replica slots; a slot's pod changes at most once (rolling update)."""

    spec: WorkloadSpec
    slot_pods: list[list[int]]  # per slot: [old pod index] or [old, new]
    slot_switch: np.ndarray  # per slot: time the new pod takes over (inf: never)

    @property
    def replicas(self) -> int:
        return len(self.slot_pods)


def _random_name(rng: np.random.Generator, n: int) -> str:
    return "".join(rng.choice(_NAME_CHARS, size=n))


def iso(ts: float) -> str:
    """Kubernetes' timestamp format (seconds, UTC, Z)."""
    return datetime.fromtimestamp(round(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Cluster:
    """Nodes, workloads and pods over the simulated interval, and who owned which IP when."""

    def __init__(self, *, pods: int, rng: np.random.Generator, start: float, settings: Settings) -> None:
        self.rng = rng
        self.start = start
        self.settings = settings
        cl = settings.cluster
        self.pod_net = ipaddress.ip_network(cl.pod_cidrs[0])
        self.service_net = ipaddress.ip_network(cl.service_cidrs[0])
        self.node_net = ipaddress.ip_network(cl.node_cidrs[0])
        self.dns_ip = cl.cluster_dns[0]
        self.metadata_ip = cl.metadata_api[0]
        self.kubernetes_service_ip = str(self.service_net.network_address + 1)
        self.nodes: list[Node] = []
        self.pods: list[Pod] = []
        self.workloads: dict[str, Workload] = {}
        self.freed: dict[str, list[tuple[float, str]]] = {}  # node -> (time released, address)
        self._build_nodes(pods)
        self._build_host_pods()
        self._build_workloads(pods)

    # ------------------------------------------------------------------ building

    def _build_nodes(self, pods: int) -> None:
        workers = max(2, round(pods / 25))
        count = CONTROL_PLANE_NODES + workers
        # One /24 (IPv4) or /120 (IPv6) of the pod network per node, as the node IPAM hands out.
        per_node = 24 if self.pod_net.version == 4 else 120
        if self.pod_net.prefixlen > per_node or 2 ** (per_node - self.pod_net.prefixlen) < count:
            raise ConfigError(
                f"cluster.pod_cidrs: {self.pod_net} has no room for {count} per-node /{per_node} ranges"
            )
        subnets = self.pod_net.subnets(new_prefix=per_node)
        base = int(self.node_net.network_address)
        explicit = list(self.settings.cluster.node_ips)  # the operator's node list wins
        for i in range(count):
            cp = i < CONTROL_PLANE_NODES
            name = f"cp-{i + 1}" if cp else f"worker-{i - CONTROL_PLANE_NODES + 1}"
            ip = explicit[i] if i < len(explicit) else str(ipaddress.ip_address(base + 10 + i))
            self.nodes.append(Node(name, ip, str(next(subnets)), cp, i))

    @property
    def control_plane(self) -> list[Node]:
        return [n for n in self.nodes if n.control_plane]

    @property
    def workers(self) -> list[Node]:
        return [n for n in self.nodes if not n.control_plane]

    def _uid(self) -> str:
        return str(uuid.UUID(bytes=self.rng.bytes(16), version=4))

    def _age(self) -> float:
        """When a pre-existing pod was created: before any connection it has open (6 h at most)."""
        return self.start - float(self.rng.uniform(7 * 3600, 30 * 86400))

    def _add(self, pod: Pod) -> int:
        pod.uid = self._uid()
        self.pods.append(pod)
        return len(self.pods) - 1

    def _build_host_pods(self) -> None:
        for node in self.nodes:
            for ns, name, port in HOST_DAEMONSETS:
                self._add(
                    Pod(
                        f"{name}-{_random_name(self.rng, 5)}",
                        ns,
                        name,
                        "DaemonSet",
                        name,
                        node.ip,
                        node.name,
                        True,
                        self._age(),
                        labels={"app": name},
                        ports=(port,),
                    )
                )
            if node.control_plane:
                for name, port in STATIC_PODS:
                    self._add(
                        Pod(
                            f"{name}-{node.name}",
                            "kube-system",
                            name,
                            "Node",
                            node.name,
                            node.ip,
                            node.name,
                            True,
                            self._age(),
                            labels={"component": name, "tier": "control-plane"},
                            ports=(port,),
                        )
                    )

    def new_pod_ip(self, node: Node) -> str:
        """The next never-used address in the node's pod range."""
        net = ipaddress.ip_network(node.pod_cidr)
        if node.next_host >= net.num_addresses - 1:
            raise ValueError(f"pods: node {node.name} ran out of pod addresses in {net}")
        ip = str(net.network_address + node.next_host)
        node.next_host += 1
        return ip

    def _replicas(self, budget: int) -> list[int]:
        weights = np.array([w.weight for w in CATALOGUE])
        ideal = weights / weights.sum() * budget
        reps = np.maximum(1, np.floor(ideal)).astype(int)
        order = np.argsort(-(ideal - np.floor(ideal)), kind="stable")
        i = 0
        while reps.sum() < budget and i < 10 * len(order):
            reps[order[i % len(order)]] += 1
            i += 1
        return [int(r) for r in reps]

    def make_pod(self, spec: WorkloadSpec, *, slot: int, created: float, rs_hash: str) -> int:
        """Create one pod of ``spec`` on a worker node (a StatefulSet keeps its ordinal name)."""
        node = self.workers[int(self.rng.integers(len(self.workers)))]
        labels = {"app": spec.name, "app.kubernetes.io/name": spec.name}
        if spec.kind == "StatefulSet":
            name, owner_kind, owner = f"{spec.name}-{slot}", "StatefulSet", spec.name
            labels["statefulset.kubernetes.io/pod-name"] = name
        else:
            owner_kind, owner = "ReplicaSet", f"{spec.name}-{rs_hash}"
            name = f"{owner}-{_random_name(self.rng, 5)}"
            labels["pod-template-hash"] = rs_hash
        ports = tuple(sorted({spec.port, spec.metrics_port}))
        image = spec.image or f"registry.example.com/{spec.namespace}/{spec.name}:{rs_hash[:6]}"
        pod = Pod(
            name,
            spec.namespace,
            spec.name,
            owner_kind,
            owner,
            self.new_pod_ip(node),
            node.name,
            False,
            created,
            labels=labels,
            ports=ports,
            image=image,
        )
        return self._add(pod)

    def _build_workloads(self, pods: int) -> None:
        for spec, reps in zip(CATALOGUE, self._replicas(pods), strict=True):
            rs_hash = _random_name(self.rng, 10)
            slots = [[self.make_pod(spec, slot=s, created=self._age(), rs_hash=rs_hash)] for s in range(reps)]
            self.workloads[f"{spec.namespace}/{spec.name}"] = Workload(spec, slots, np.full(reps, _INF))

    def roll(self, key: str, at: float, step_s: float) -> list[int]:
        """A rolling update of a Deployment: slot by slot, a new pod takes over.

        New pods get a new ReplicaSet hash, new names, new IPs and a fresh creation
        time; each old pod gets a deletion time a few seconds after its successor is up.
        Returns the new pods' indices.
        """
        wl = self.workloads[key]
        if wl.spec.kind != "Deployment":
            raise ValueError(f"roll: {key} is a {wl.spec.kind}, not a Deployment")
        rs_hash = _random_name(self.rng, 10)
        new = []
        for s, slot in enumerate(wl.slot_pods):
            t = at + s * step_s
            idx = self.make_pod(wl.spec, slot=s, created=t - 8.0, rs_hash=rs_hash)
            old = self.pods[slot[0]]
            old.deleted = t + 5.0
            self.freed.setdefault(old.node, []).append((old.deleted + REUSE_AFTER_S, old.ip))
            slot.append(idx)
            wl.slot_switch[s] = t
            new.append(idx)
        return new

    def add_job_pod(self, *, namespace: str, cronjob: str, created: float, finished: float) -> int:
        """A CronJob's Job pod (name ``<cronjob>-<minutes since epoch>-<random>``)."""
        # Pod IPs are reused: a node whose IPAM has a released address hands it out again.
        reusable = sorted(n for n, lst in self.freed.items() if any(t <= created for t, _ in lst))
        if reusable:
            node = self.node_of(reusable[int(self.rng.integers(len(reusable)))])
            entry = min(e for e in self.freed[node.name] if e[0] <= created)
            self.freed[node.name].remove(entry)
            ip = entry[1]
        else:
            node = self.workers[int(self.rng.integers(len(self.workers)))]
            ip = self.new_pod_ip(node)
        job = f"{cronjob}-{int(created // 60)}"
        pod = Pod(
            f"{job}-{_random_name(self.rng, 5)}",
            namespace,
            cronjob,
            "Job",
            job,
            ip,
            node.name,
            False,
            created,
            finished=finished,
            labels={"job-name": job, "batch.kubernetes.io/job-name": job, "app": cronjob},
            image=f"registry.example.com/{namespace}/{cronjob}:1.4",
        )
        return self._add(pod)

    # ------------------------------------------------------------------ queries

    def node_of(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def replica_pods(self, key: str, slots: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Pod indices serving ``key`` in replica ``slots`` at ``times`` (vectorised)."""
        wl = self.workloads[key]
        old = np.array([s[0] for s in wl.slot_pods])
        new = np.array([s[-1] for s in wl.slot_pods])
        return np.where(times >= wl.slot_switch[slots], new[slots], old[slots])

    def pick_pods(self, key: str, times: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random live replica of ``key`` for each time (load balancing)."""
        slots = rng.integers(0, self.workloads[key].replicas, size=len(times))
        return self.replica_pods(key, slots, times)

    def all_pod_indices(self, key: str) -> list[int]:
        return [p for slot in self.workloads[key].slot_pods for p in slot]

    def pod_ips(self) -> np.ndarray:
        return np.array([p.ip for p in self.pods], dtype=object)

    def pod_nodes(self) -> np.ndarray:
        return np.array([p.node for p in self.pods], dtype=object)

    def service_dns(self, key: str) -> str:
        """The Service name a client resolves for a workload."""
        ns, name = key.split("/")
        return f"{name}.{ns}.svc.cluster.local"

    def attackable_pods(self) -> list[int]:
        """Original (never rolled) pods of workloads an attacker could plausibly land on."""
        out: list[int] = []
        for wl in self.workloads.values():
            if wl.spec.attackable and np.isinf(wl.slot_switch).all():
                out.extend(s[0] for s in wl.slot_pods)
        return out

    # ------------------------------------------------------------------ inventory

    def inventory(self, end: float) -> dict[str, Any]:
        """The pods as ``kubectl get pods -A -o json`` prints them at ``end``."""
        items = [self._pod_json(p, end) for p in sorted(self.pods, key=lambda p: (p.namespace, p.name))]
        return {"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}}

    def _pod_json(self, p: Pod, end: float) -> dict[str, Any]:
        owner_api = {"ReplicaSet": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1"}
        owner_api.update({"Job": "batch/v1", "Node": "v1"})
        meta: dict[str, Any] = {
            "name": p.name,
            "namespace": p.namespace,
            "uid": p.uid,
            "labels": dict(sorted(p.labels.items())),
            "creationTimestamp": iso(p.created),
            "ownerReferences": [
                {
                    "apiVersion": owner_api[p.owner_kind],
                    "kind": p.owner_kind,
                    "name": p.owner_name,
                    "uid": str(
                        uuid.uuid5(uuid.NAMESPACE_URL, f"{p.namespace}/{p.owner_kind}/{p.owner_name}")
                    ),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        }
        if p.deleted is not None and p.deleted <= end:
            meta["deletionTimestamp"] = iso(p.deleted)
            meta["deletionGracePeriodSeconds"] = 30
        if p.finished is not None and p.finished <= end:
            phase = "Succeeded"
        elif p.created > end:
            phase = "Pending"
        else:
            phase = "Running"
        node = self.node_of(p.node)
        container = {
            "name": p.workload,
            "image": p.image or f"registry.k8s.io/{p.workload}:v1.31.2",
            "ports": [
                {"containerPort": port, "protocol": "UDP" if port == 53 else "TCP"} for port in p.ports
            ],
        }
        status: dict[str, Any] = {
            "phase": phase,
            "hostIP": node.ip,
            "hostIPs": [{"ip": node.ip}],
            "podIP": p.ip,
            "podIPs": [{"ip": p.ip}],
            "startTime": iso(p.created + 1),
        }
        if phase == "Succeeded" and p.finished is not None:
            terminated = {"exitCode": 0, "reason": "Completed", "finishedAt": iso(p.finished)}
            status["containerStatuses"] = [
                {"name": p.workload, "ready": False, "restartCount": 0, "state": {"terminated": terminated}}
            ]
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": {
                "nodeName": p.node,
                "hostNetwork": p.host_network,
                "containers": [container],
                "restartPolicy": "Never" if p.owner_kind == "Job" else "Always",
            },
            "status": status,
        }
