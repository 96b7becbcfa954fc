"""Benign cluster traffic: the service graph, pooled connections, DNS, control-plane chatter.

Calls go straight to pod IPs (as a CNI without kube-proxy DNAT in the capture path shows
them), so enrichment by pod IP is meaningful; only pods that talk to the Kubernetes API
use its ClusterIP (``10.96.0.1:443``) and only DNS uses the cluster DNS service IP.
Request rates follow a daily cycle with per-pod, per-10-second gamma noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowwarden.records import FlowState, Proto
from flowwarden.simulator.context import EXTERNALS, SimContext
from flowwarden.simulator.flows import (
    dns_aggregates,
    ephemeral_ports,
    event_times,
    lognormal,
    long_lived,
    tcp_conversation,
)


@dataclass(frozen=True)
class Edge:
    """Short request/response calls from each pod of ``client`` to a replica of ``server``."""

    client: str
    server: str  # "namespace/workload" or "ext:<name>"
    rate: float  # calls per second per client pod at the daily mean
    req: float = 600.0  # median bytes client -> server
    resp: float = 4000.0  # median bytes server -> client
    dur: float = 0.04  # median seconds


@dataclass(frozen=True)
class Pool:
    """Long-lived connections from each pod of ``client`` (``conns`` each)."""

    client: str
    server: str  # "namespace/workload" or "ip:<address>:<port>"
    conns: int
    out_per_s: float
    in_per_s: float


EDGES: tuple[Edge, ...] = (
    Edge("ingress/ingress-nginx", "shop/frontend", 5.0, 900, 12000, 0.08),
    Edge("shop/frontend", "shop/api", 1.5, 700, 6000),
    Edge("shop/frontend", "auth/auth-api", 0.5, 500, 800, 0.02),
    Edge("shop/api", "shop/catalog", 1.0, 400, 9000),
    Edge("shop/api", "shop/cart", 0.5, 600, 1500),
    Edge("shop/api", "shop/checkout", 0.2, 900, 1200, 0.1),
    Edge("shop/api", "shop/search", 0.4, 500, 20000, 0.06),
    Edge("shop/catalog", "shop/search", 0.3, 500, 15000, 0.05),
    Edge("shop/checkout", "payments/gateway", 0.3, 1200, 900, 0.2),
    Edge("shop/checkout", "shop/cart", 0.3, 500, 1500),
    Edge("payments/gateway", "payments/ledger", 0.3, 800, 500),
    Edge("monitoring/grafana", "monitoring/prometheus", 0.2, 700, 40000, 0.15),
    Edge("monitoring/alertmanager", "monitoring/alert-relay", 0.02, 2000, 300),
    Edge("shop/frontend", "ext:geo", 0.05, 700, 3000, 0.12),
    Edge("payments/gateway", "ext:paygate", 0.2, 1500, 1200, 0.25),
    Edge("data/ingest", "ext:objects", 0.1, 900, 2_000_000, 0.8),
    Edge("data/etl-worker", "ext:objects", 0.05, 1_000_000, 2000, 0.6),
    Edge("shop/catalog", "ext:objects", 0.05, 600, 200_000, 0.2),
)

POOLS: tuple[Pool, ...] = (
    Pool("shop/api", "shop/redis", 2, 2000, 8000),
    Pool("shop/api", "shop/postgres", 2, 1000, 6000),
    Pool("shop/cart", "shop/redis", 1, 800, 2000),
    Pool("payments/gateway", "payments/payments-db", 2, 600, 1500),
    Pool("payments/ledger", "payments/payments-db", 2, 900, 1200),
    Pool("auth/auth-api", "auth/session-cache", 2, 700, 1500),
    Pool("auth/auth-api", "auth/users-db", 1, 300, 900),
    Pool("data/ingest", "data/kafka", 1, 50_000, 800),
    Pool("data/etl-worker", "data/kafka", 1, 600, 40_000),
    Pool("data/etl-worker", "shop/postgres", 1, 400, 20_000),
    Pool("flowwarden/pipeline", "data/kafka", 1, 1500, 100_000),
    Pool("monitoring/prometheus", "monitoring/alertmanager", 1, 300, 200),
    Pool("kube-system/coredns", "k8s-api", 1, 200, 1500),
    Pool("kube-system/metrics-server", "k8s-api", 1, 300, 800),
    Pool("monitoring/prometheus", "k8s-api", 1, 150, 1200),
    Pool("flowwarden/pipeline", "k8s-api", 1, 100, 600),
    Pool("flowwarden/enforcer", "k8s-api", 1, 100, 400),
)


def pod_spans(ctx: SimContext, pods: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """When each pod can send inside the run: [created, deleted or finished) clipped to it."""
    cl = ctx.cluster
    a = np.array([max(cl.pods[p].created + 2.0, ctx.t0) for p in pods])
    b = np.array(
        [min(x, ctx.t1) for x in ((cl.pods[p].deleted or cl.pods[p].finished or np.inf) for p in pods)]
    )
    return a, b


def emit_calls(
    ctx: SimContext,
    rng: np.random.Generator,
    *,
    times: np.ndarray,
    src_ip: np.ndarray,
    node: np.ndarray,
    dst_ip: np.ndarray | str,
    dst_port: int | np.ndarray,
    req: float,
    resp: float,
    dur: float,
    reject_share: float = 0.002,
    server_name: str | np.ndarray = "",
    episode: int = -1,
) -> None:
    """Append short TCP calls (one flow each) starting at ``times``."""
    n = len(times)
    conv = tcp_conversation(
        rng, n, req_median=req, resp_median=resp, dur_median=dur, reject_share=reject_share
    )
    ctx.parts.add(
        ts_start=times,
        ts_end=times + conv["duration"],
        node=node,
        src_ip=src_ip,
        src_port=ephemeral_ports(rng, n),
        dst_ip=dst_ip,
        dst_port=dst_port,
        proto=Proto.TCP,
        bytes_out=conv["bytes_out"],
        bytes_in=conv["bytes_in"],
        pkts_out=conv["pkts_out"],
        pkts_in=conv["pkts_in"],
        tcp_flags=conv["tcp_flags"],
        state=conv["state"],
        server_name=np.where(
            conv["state"] == FlowState.REJECTED.value,
            "",
            np.broadcast_to(np.asarray(server_name, dtype=object), (n,)),
        ),
        episode=episode,
    )


def service_calls(ctx: SimContext) -> None:
    """The service graph, plus the internet's clients reaching the ingress controller."""
    cl = ctx.cluster
    ips, nodes = cl.pod_ips(), cl.pod_nodes()
    for i, edge in enumerate(EDGES):
        rng = ctx.rng(f"edge:{i}")
        clients = np.array(cl.all_pod_indices(edge.client))
        a, b = pod_spans(ctx, clients)
        # Some replicas are busier than others (sticky clients, uneven balancing).
        rates = edge.rate * lognormal(rng, 1.0, 0.3, len(clients))
        times, src = event_times(rng, rates, ctx.t0, ctx.t1)
        keep = (times >= a[src]) & (times < b[src])
        times, src_pod = times[keep], clients[src[keep]]
        if edge.server.startswith("ext:"):
            ext = EXTERNALS[edge.server[4:]]
            dst, port, sni = np.asarray(ext.ip, dtype=object), ext.port, ext.name
        else:
            srv = cl.pick_pods(edge.server, times, rng)
            dst, port, sni = ips[srv], cl.workloads[edge.server].spec.port, ""
        emit_calls(
            ctx,
            rng,
            times=times,
            src_ip=ips[src_pod],
            node=nodes[src_pod],
            dst_ip=dst,
            dst_port=port,
            req=edge.req,
            resp=edge.resp,
            dur=edge.dur,
            server_name=sni,
        )
    _ingress_clients(ctx)


def _ingress_clients(ctx: SimContext) -> None:
    cl = ctx.cluster
    rng = ctx.rng("ingress-clients")
    ips, nodes = cl.pod_ips(), cl.pod_nodes()
    key = "ingress/ingress-nginx"
    rate = 5.0 * cl.workloads[key].replicas
    times, _ = event_times(rng, np.array([rate]), ctx.t0, ctx.t1)
    pool = np.array(
        [f"198.51.100.{h}" for h in range(1, 255)] + [f"203.0.113.{h}" for h in range(128, 255)], dtype=object
    )
    # A few heavy clients (offices, crawlers) and a long tail.
    weights = rng.pareto(1.2, len(pool)) + 0.05
    clients = rng.choice(len(pool), size=len(times), p=weights / weights.sum())
    srv = cl.pick_pods(key, times, rng)
    conv = tcp_conversation(
        rng, len(times), req_median=800, resp_median=25000, dur_median=0.3, reject_share=0
    )
    ctx.parts.add(
        ts_start=times,
        ts_end=times + conv["duration"],
        node=nodes[srv],
        src_ip=pool[clients],
        src_port=ephemeral_ports(rng, len(times)),
        dst_ip=ips[srv],
        dst_port=443,
        proto=Proto.TCP,
        bytes_out=conv["bytes_out"],
        bytes_in=conv["bytes_in"],
        pkts_out=conv["pkts_out"],
        pkts_in=conv["pkts_in"],
        tcp_flags=conv["tcp_flags"],
        state=conv["state"],
    )


def _pool_server(ctx: SimContext, server: str, rng: np.random.Generator, n: int) -> tuple[np.ndarray, int]:
    cl = ctx.cluster
    if server == "k8s-api":
        return np.full(n, cl.kubernetes_service_ip, dtype=object), 443
    wl = cl.workloads[server]
    slots = rng.integers(0, wl.replicas, size=n)
    # Pooled servers are StatefulSets or never rolled: the slot's first pod serves.
    return cl.pod_ips()[np.array([wl.slot_pods[s][0] for s in slots], dtype=int)], wl.spec.port


def emit_long_lived(
    ctx: SimContext,
    rng: np.random.Generator,
    *,
    src_ip: np.ndarray,
    node: np.ndarray,
    dst_ip: np.ndarray,
    dst_port: int | np.ndarray,
    out_per_s: float | np.ndarray,
    in_per_s: float | np.ndarray,
    opened: np.ndarray | None = None,
    closed: np.ndarray | None = None,
    daily: bool = True,
    server_name: str = "",
    episode: int = -1,
) -> None:
    """Append the interim and final records of long-lived TCP connections (one per row)."""
    n = len(src_ip)
    rec = long_lived(
        rng,
        t0=ctx.t0,
        t1=ctx.t1,
        n=n,
        interval_s=ctx.interval_s,
        bytes_out_per_s=out_per_s,
        bytes_in_per_s=in_per_s,
        opened=opened,
        closed=closed,
        daily=daily,
    )
    c = rec["conn"]
    sport = ephemeral_ports(rng, n)
    port = np.broadcast_to(np.asarray(dst_port), (n,))
    ctx.parts.add(
        ts_start=rec["ts_start"],
        ts_end=rec["ts_end"],
        node=np.asarray(node, dtype=object)[c],
        src_ip=np.asarray(src_ip, dtype=object)[c],
        src_port=sport[c],
        dst_ip=np.asarray(dst_ip, dtype=object)[c],
        dst_port=port[c],
        proto=Proto.TCP,
        bytes_out=rec["bytes_out"],
        bytes_in=rec["bytes_in"],
        pkts_out=rec["pkts_out"],
        pkts_in=rec["pkts_in"],
        tcp_flags=rec["tcp_flags"],
        state=rec["state"],
        final=rec["final"],
        server_name=server_name,
        episode=episode,
    )


def pooled_connections(ctx: SimContext) -> None:
    """Connection pools to databases, caches, Kafka and the Kubernetes API."""
    cl = ctx.cluster
    ips, nodes = cl.pod_ips(), cl.pod_nodes()
    for i, pool in enumerate(POOLS):
        rng = ctx.rng(f"pool:{i}")
        clients = np.repeat(np.array(cl.all_pod_indices(pool.client)), pool.conns)
        if len(clients) == 0:
            continue
        dst, port = _pool_server(ctx, pool.server, rng, len(clients))
        opened = np.array([cl.pods[p].created + 3.0 for p in clients])
        opened = np.where(opened < ctx.t0, ctx.t0 - rng.uniform(60, 6 * 3600, len(clients)), opened)
        closed = np.array([cl.pods[p].deleted or cl.pods[p].finished or np.inf for p in clients])
        emit_long_lived(
            ctx,
            rng,
            src_ip=ips[clients],
            node=nodes[clients],
            dst_ip=dst,
            dst_port=port,
            out_per_s=pool.out_per_s,
            in_per_s=pool.in_per_s,
            opened=opened,
            closed=closed,
        )


def control_plane_chatter(ctx: SimContext) -> None:
    """Nodes and control plane: kubelet/kube-proxy/CNI/collector watches, API server <-> etcd."""
    cl = ctx.cluster
    rng = ctx.rng("control-plane")
    cp = ctx.settings.control_plane
    cps = cl.control_plane
    conns: list[tuple[str, str, str, int, float, float]] = []  # src, node, dst, port, out/s, in/s
    kafka = cl.pod_ips()[np.array(cl.all_pod_indices("data/kafka"))]
    for i, n in enumerate(cl.nodes):
        # A control-plane node's own components reach the API server of the next one (its
        # local one would be on loopback, unseen by the collector).
        api = cps[(i + 1) % len(cps)].ip if n.control_plane else cps[i % len(cps)].ip
        for o, i_ in ((900, 3000), (200, 1500), (150, 900)):  # kubelet, kube-proxy, CNI agent
            conns.append((n.ip, n.name, api, cp.api_server_port, o, i_))
        conns.append((n.ip, n.name, str(kafka[i % len(kafka)]), 9092, 30_000, 400))  # the flow collector
    # Every API server to the other etcd members (its local one is on loopback, unseen);
    # etcd peers among themselves.
    for a in cps:
        for b in cps:
            if a.index == b.index:
                continue
            conns.append((a.ip, a.name, b.ip, cp.etcd_ports[0], 15_000, 25_000))
            if a.index < b.index and len(cp.etcd_ports) > 1:
                conns.append((a.ip, a.name, b.ip, cp.etcd_ports[1], 5_000, 5_000))
    src, node, dst, port, out, inn = (list(col) for col in zip(*conns, strict=True))
    emit_long_lived(
        ctx,
        rng,
        src_ip=np.array(src, dtype=object),
        node=np.array(node, dtype=object),
        dst_ip=np.array(dst, dtype=object),
        dst_port=np.array(port),
        out_per_s=np.array(out, dtype=float),
        in_per_s=np.array(inn, dtype=float),
        daily=False,
    )
    # metrics-server reads every kubelet's resource metrics every 15 s (a kube-system pod).
    ms = np.array(cl.all_pod_indices("kube-system/metrics-server"))
    if len(ms):
        pair_src = np.repeat(ms, len(cl.nodes))
        pair_dst = np.tile(np.array([n.ip for n in cl.nodes], dtype=object), len(ms))
        emit_long_lived(
            ctx,
            rng,
            src_ip=cl.pod_ips()[pair_src],
            node=cl.pod_nodes()[pair_src],
            dst_ip=pair_dst,
            dst_port=cp.kubelet_port,
            out_per_s=40,
            in_per_s=600,
            daily=False,
        )
    # The API server reaching kubelets (logs, exec, port-forward) now and then.
    times, which = event_times(rng, np.full(len(cl.nodes), 0.01), ctx.t0, ctx.t1)
    k = rng.integers(0, len(cps), len(times))
    k = np.where(k == which, (k + 1) % len(cps), k)  # never its own node's kubelet (loopback)
    node_ips = np.array([n.ip for n in cl.nodes], dtype=object)
    emit_calls(
        ctx,
        rng,
        times=times,
        src_ip=np.array([c.ip for c in cps], dtype=object)[k],
        node=np.array([c.name for c in cps], dtype=object)[k],
        dst_ip=node_ips[which],
        dst_port=cp.kubelet_port,
        req=800,
        resp=30_000,
        dur=1.5,
        reject_share=0,
    )


def _names_per_pod(ctx: SimContext) -> tuple[list[int], list[str], list[float]]:
    """For every pod with its own IP, the names it resolves and how often."""
    cl = ctx.cluster
    pods: list[int] = []
    names: list[str] = []
    rates: list[float] = []
    deps: dict[str, list[tuple[str, float]]] = {}
    for e in EDGES:
        name = EXTERNALS[e.server[4:]].name if e.server.startswith("ext:") else cl.service_dns(e.server)
        deps.setdefault(e.client, []).append((name, 1 / 30))
    for p in POOLS:
        name = "kubernetes.default.svc.cluster.local" if p.server == "k8s-api" else cl.service_dns(p.server)
        deps.setdefault(p.client, []).append((name, 1 / 300))
    for key, lst in deps.items():
        if key not in cl.workloads:
            continue
        for pod in cl.all_pod_indices(key):
            for name, rate in dict(lst).items():
                pods.append(pod)
                names.append(name)
                rates.append(rate)
    return pods, names, rates


def dns_lookups(ctx: SimContext) -> None:
    """Lookups through the cluster DNS; external names walk the search list first (ndots:5)."""
    cl = ctx.cluster
    rng = ctx.rng("dns")
    pods, names, rates = _names_per_pod(ctx)
    if not pods:
        return
    pod_arr = np.array(pods)
    times, pair = event_times(rng, np.array(rates), ctx.t0, ctx.t1, burstiness=2.0)
    a, b = pod_spans(ctx, pod_arr)
    keep = (times >= a[pair]) & (times < b[pair])
    times, pair = times[keep], pair[keep]
    # Expand each lookup into its search-list attempts (NXDOMAIN) and the real answer.
    variants: list[list[tuple[str, int]]] = []
    for p, name in zip(pods, names, strict=True):
        if name.endswith(".cluster.local"):
            variants.append([(name, 0)])
        else:
            ns = cl.pods[p].namespace
            search = (f"{ns}.svc.cluster.local", "svc.cluster.local", "cluster.local")
            variants.append([(f"{name}.{s}", 3) for s in search] + [(name, 0)])
    nvar = np.array([len(v) for v in variants])
    flat_q = np.array([q for v in variants for q, _ in v], dtype=object)
    flat_rc = np.array([rc for v in variants for _, rc in v], dtype=np.int16)
    offset = np.cumsum(nvar) - nvar
    reps = nvar[pair]
    ev = np.repeat(np.arange(len(pair)), reps)
    k = np.arange(len(ev)) - np.repeat(np.cumsum(reps) - reps, reps)
    idx = offset[pair[ev]] + k
    qname, rcode = flat_q[idx], flat_rc[idx]
    ts = times[ev] + k * 0.002
    qlen = np.array([len(q) for q in qname]) if len(qname) else np.zeros(0, dtype=int)
    out = 2 * (qlen + 46)
    inn = np.where(rcode == 3, 2 * (qlen + 120), 2 * (qlen + 62))
    n = len(ts)
    src_pod = pod_arr[pair[ev]]
    ctx.parts.add(
        ts_start=ts,
        ts_end=ts + rng.uniform(0.0004, 0.004, n),
        node=cl.pod_nodes()[src_pod],
        src_ip=cl.pod_ips()[src_pod],
        src_port=ephemeral_ports(rng, n),
        dst_ip=cl.dns_ip,
        dst_port=ctx.settings.control_plane.dns_port,
        proto=Proto.UDP,
        bytes_out=out,
        bytes_in=inn,
        pkts_out=2,
        pkts_in=2,
        tcp_flags=0,
        state=FlowState.UDP.value,
        dns_qname=qname,
        dns_rcode=rcode,
        dns=dns_aggregates(qname, rcode),
    )


def generate_benign(ctx: SimContext) -> None:
    service_calls(ctx)
    pooled_connections(ctx)
    control_plane_chatter(ctx)
    dns_lookups(ctx)
