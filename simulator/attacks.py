"""Labelled attacks, each from a compromised workload pod, each an :class:`Episode`.

The run is cut into cycles of 10 minutes; every cycle holds one episode of every requested
technique, at random offsets, each from a different source pod (so episodes never overlap
on one source), and sources are not reused across cycles while fresh ones remain.
``intensity`` scales each attack's volume or rate: 0.3 is subtle, 1 the default, 3 loud.
"""

from __future__ import annotations

import ipaddress
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from flowwarden.dnsnames import label_stats
from flowwarden.labels import TECHNIQUE_KIND, TECHNIQUE_MITRE, TECHNIQUES, Episode
from flowwarden.records import Entity, FlowState, Proto
from flowwarden.simulator.benign import EDGES, POOLS, emit_calls, emit_long_lived
from flowwarden.simulator.context import ATTACKER_NET, SimContext
from flowwarden.simulator.flows import FLAGS_REJECTED, FLAGS_SYN_ONLY, ephemeral_ports, lognormal, packets

CYCLE_S = 600.0
WARMUP_S = 90.0  # the first attack starts after some benign history
DURATION_S: dict[str, tuple[float, float]] = {
    "port_scan": (40, 90),
    "ip_sweep": (40, 90),
    "fan_out": (20, 50),
    "control_plane_access": (30, 60),
    "metadata_api": (20, 60),
    "bulk_exfiltration": (30, 60),
    "slow_exfiltration": (300, 420),
    "dns_tunnel": (60, 150),
    "brute_force": (40, 120),
}
# What a scanner tries first, before random ports.
# fmt: off
COMMON_PORTS = np.array([
    21, 22, 23, 25, 53, 80, 110, 135, 139, 143, 443, 445, 993, 995, 1433, 1521, 2375, 2379, 3000, 3306,
    3389, 5000, 5432, 5900, 6379, 6443, 8000, 8080, 8443, 9000, 9090, 9200, 10250, 11211, 27017,
])
# fmt: on


@dataclass
class Attack:
    """One planned episode: who, what, when."""

    technique: str
    source: int  # pod index
    start: float
    end: float
    intensity: float
    remote_ip: str  # the attacker's server for exfiltration
    index: int = -1


def plan_attacks(
    ctx: SimContext, techniques: list[str], intensity: dict[str, float], rng: np.random.Generator
) -> list[Attack]:
    """Place every technique in every 10-minute cycle, from distinct sources."""
    if not techniques:
        return []
    span = ctx.t1 - ctx.t0
    ncycles = max(1, int(span // CYCLE_S))
    candidates = ctx.cluster.attackable_pods()
    uses = dict.fromkeys(candidates, 0)
    remotes = [f"{ATTACKER_NET}{h}" for h in rng.permutation(np.arange(10, 250))]
    attacks: list[Attack] = []
    for c in range(ncycles):
        lo = ctx.t0 + c * CYCLE_S + (min(WARMUP_S, 0.2 * span) if c == 0 else 0.0)
        hi = ctx.t1 if c == ncycles - 1 else ctx.t0 + (c + 1) * CYCLE_S
        avail = max(1.0, hi - lo - min(5.0, 0.05 * span))
        in_cycle: set[int] = set()
        for tech in techniques:
            # A pod not yet used in this cycle, among the least used so far.
            pool = [p for p in candidates if p not in in_cycle] or candidates
            least = min(uses[p] for p in pool)
            options = [p for p in pool if uses[p] == least]
            src = options[int(rng.integers(len(options)))]
            uses[src] += 1
            in_cycle.add(src)
            dmin, dmax = DURATION_S[tech]
            dur = min(float(rng.uniform(dmin, dmax)), 0.85 * avail)
            start = lo + float(rng.uniform(0, avail - dur))
            remote = remotes[len(attacks) % len(remotes)]
            attacks.append(Attack(tech, src, start, start + dur, intensity[tech], remote))
    attacks.sort(key=lambda a: (a.start, a.technique))
    for i, a in enumerate(attacks):
        a.index = i
    return attacks


def _times(rng: np.random.Generator, a: Attack, n: int) -> np.ndarray:
    return np.sort(a.start + rng.random(n) * (a.end - a.start))


def _other_pods(ctx: SimContext, a: Attack) -> list[int]:
    """Pods alive all run long, other than the source's own workload."""
    cl = ctx.cluster
    me = cl.pods[a.source]
    return [p for p in cl.attackable_pods() if cl.pods[p].workload != me.workload]


def _probe(
    ctx: SimContext,
    rng: np.random.Generator,
    a: Attack,
    times: np.ndarray,
    dst: np.ndarray,
    ports: np.ndarray,
    open_: np.ndarray,
    unreachable: np.ndarray,
) -> None:
    """Connection attempts: open ports answer, closed ones reset, unreachable ones stay silent."""
    n = len(times)
    state = np.where(open_, FlowState.CLOSED.value, FlowState.REJECTED.value).astype(object)
    silent = unreachable | (~open_ & (rng.random(n) < 0.15))  # filtered ports drop the SYN
    state[silent] = FlowState.SYN_ONLY.value
    flags = np.where(open_, 0x1B, FLAGS_REJECTED)
    flags = np.where(silent, FLAGS_SYN_ONLY, flags)
    pkts_out = np.where(open_, 4, np.where(silent, 2, 1))
    pkts_in = np.where(open_, 3, np.where(silent, 0, 1))
    bytes_out = np.where(open_, 240, pkts_out * 60)
    bytes_in = np.where(open_, 180 + rng.integers(0, 400, n), pkts_in * 54)
    dur = np.where(silent, 1.0 + rng.random(n), np.where(open_, 0.01, 0.0005))
    p = ctx.cluster.pods[a.source]
    ctx.parts.add(
        ts_start=times,
        ts_end=times + dur,
        node=p.node,
        src_ip=p.ip,
        src_port=ephemeral_ports(rng, n),
        dst_ip=dst,
        dst_port=ports,
        proto=Proto.TCP,
        bytes_out=bytes_out,
        bytes_in=bytes_in,
        pkts_out=pkts_out,
        pkts_in=pkts_in,
        tcp_flags=flags,
        state=state,
        episode=a.index,
    )


def _open_port(ctx: SimContext, pods: list[int]) -> np.ndarray:
    """The port each pod serves on (its workload's service port)."""
    cl = ctx.cluster
    spec = {(w.spec.namespace, w.spec.name): w.spec for w in cl.workloads.values()}
    ports = [spec.get((cl.pods[p].namespace, cl.pods[p].workload)) for p in pods]
    return np.array([w.port if w else 0 for w in ports], dtype=int)  # a Job listens on nothing


def _scan_ports(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` distinct ports: the common ones first, then random others, in a shuffled order."""
    common = rng.permutation(COMMON_PORTS)[:n]
    rest = np.setdiff1d(np.arange(1, 65536), COMMON_PORTS)
    extra = rng.choice(rest, size=max(0, n - len(common)), replace=False)
    return rng.permutation(np.concatenate([common, extra]))


def port_scan(ctx: SimContext, rng: np.random.Generator, a: Attack) -> list[str]:
    """Many ports on a few internal hosts, mostly refused or unanswered."""
    cl = ctx.cluster
    others = _other_pods(ctx, a)
    nhosts = min(len(others), int(rng.integers(1, 4)))
    hosts = [int(h) for h in rng.choice(others, size=nhosts, replace=False)]
    nports = max(15, int(100 * a.intensity))
    ports = [_scan_ports(rng, nports) for _ in hosts]
    dst = np.concatenate([np.full(nports, cl.pods[h].ip, dtype=object) for h in hosts])
    port = np.concatenate(ports)
    open_ = np.concatenate(
        [pp == open_port for pp, open_port in zip(ports, _open_port(ctx, hosts), strict=True)]
    )
    # Host after host, as scanners do (nmap scans one target's ports, then the next).
    _probe(ctx, rng, a, _times(rng, a, len(dst)), dst, port, open_, np.zeros(len(dst), dtype=bool))
    return sorted({cl.pods[h].ip for h in hosts})


def ip_sweep(ctx: SimContext, rng: np.random.Generator, a: Attack) -> list[str]:
    """One or two ports across consecutive addresses of the pod network, live or not.

    The sweep walks node pod ranges address by address; live pods answer (open or reset),
    addresses without a pod stay silent (``syn_only``).
    """
    cl = ctx.cluster
    nhosts = max(12, int(60 * a.intensity))
    live = {
        cl.pods[p].ip: p
        for p in range(len(cl.pods))
        if not cl.pods[p].host_network
        and cl.pods[p].created <= a.start
        and (cl.pods[p].deleted or np.inf) > a.end
        and (cl.pods[p].finished or np.inf) > a.end
        and p != a.source
    }
    addrs: list[str] = []
    for node in rng.permutation(np.array(cl.workers, dtype=object)):
        net = ipaddress.ip_network(node.pod_cidr)
        first = int(rng.integers(1, 4))
        hosts = range(first, min(net.num_addresses - 1, first + nhosts - len(addrs)))
        addrs.extend(str(net.network_address + h) for h in hosts)
        if len(addrs) >= nhosts:
            break
    sweep_ports = rng.choice(np.array([22, 80, 443, 6379, 8080]), size=int(rng.integers(1, 3)), replace=False)
    pods = [live.get(ip, -1) for ip in addrs]
    live_port = np.array([_open_port(ctx, [p])[0] if p >= 0 else 0 for p in pods])
    dst = np.repeat(np.array(addrs, dtype=object), len(sweep_ports))
    port = np.tile(sweep_ports, len(addrs))
    open_ = np.repeat(live_port, len(sweep_ports)) == port
    unreachable = np.repeat(np.array(pods) < 0, len(sweep_ports))
    _probe(ctx, rng, a, _times(rng, a, len(dst)), dst, port, open_, unreachable)
    return addrs


def fan_out(ctx: SimContext, rng: np.random.Generator, a: Attack) -> list[str]:
    """Successful SSH / HTTP sessions to many internal peers the source never talks to."""
    cl = ctx.cluster
    me = cl.pods[a.source]
    key = f"{me.namespace}/{me.workload}"
    usual = {e.server for e in EDGES if e.client == key} | {p.server for p in POOLS if p.client == key}
    peers = [p for p in _other_pods(ctx, a) if f"{cl.pods[p].namespace}/{cl.pods[p].workload}" not in usual]
    npeers = min(len(peers), max(6, int(25 * a.intensity)))
    chosen = [int(p) for p in rng.choice(peers, size=npeers, replace=False)]
    sessions = rng.integers(1, 4, npeers)
    tgt = np.repeat(np.array(chosen), sessions)
    svc_port = _open_port(ctx, list(tgt))
    port = np.where(
        svc_port == 8080,
        np.where(rng.random(len(tgt)) < 0.5, 8080, 22),
        np.where(rng.random(len(tgt)) < 0.5, 80, 22),
    )
    times = _times(rng, a, len(tgt))
    emit_calls(
        ctx,
        rng,
        times=times,
        src_ip=np.full(len(tgt), me.ip, dtype=object),
        node=np.full(len(tgt), me.node, dtype=object),
        dst_ip=cl.pod_ips()[tgt],
        dst_port=port,
        req=6000,
        resp=20000,
        dur=3.0,
        reject_share=0.0,
        episode=a.index,
    )
    return sorted({cl.pods[p].ip for p in chosen})


def control_plane_access(ctx: SimContext, rng: np.random.Generator, a: Attack) -> list[str]:
    """A workload pod reaching the API server, etcd and kubelets directly (not via the Service)."""
    cl = ctx.cluster
    cp = ctx.settings.control_plane
    me = cl.pods[a.source]
    cps = [n.ip for n in cl.control_plane]
    kubelets = [n.ip for n in rng.permutation(np.array(cl.nodes, dtype=object))[: int(rng.integers(2, 5))]]
    k = a.intensity
    plan = (
        [(ip, cp.api_server_port) for ip in rng.choice(cps, size=max(3, int(8 * k)))]
        + [(ip, cp.etcd_ports[0]) for ip in rng.choice(cps, size=max(2, int(4 * k)))]
        + [(ip, cp.kubelet_port) for ip in rng.choice(kubelets, size=max(2, int(6 * k)))]
    )
    perm = rng.permutation(len(plan))
    dst = np.array([plan[i][0] for i in perm], dtype=object)
    port = np.array([plan[i][1] for i in perm])
    emit_calls(
        ctx,
        rng,
        times=_times(rng, a, len(dst)),
        src_ip=np.full(len(dst), me.ip, dtype=object),
        node=np.full(len(dst), me.node, dtype=object),
        dst_ip=dst,
        dst_port=port,
        req=900,
        resp=1500,
        dur=0.05,
        reject_share=0.1,
        episode=a.index,
    )
    return sorted(set(dst.tolist()))


def metadata_api(ctx: SimContext, rng: np.random.Generator, a: Attack) -> list[str]:
    """A pod asking the cloud metadata API for a token and the node's credentials."""
    me = ctx.cluster.pods[a.source]
    n = max(2, int(6 * a.intensity))
    emit_calls(
        ctx,
        rng,
        times=_times(rng, a, n),
        src_ip=np.full(n, me.ip, dtype=object),
        node=np.full(n, me.node, dtype=object),
        dst_ip=ctx.cluster.metadata_ip,
        dst_port=80,
        req=380,
        resp=1400,
        dur=0.004,
        reject_share=0.0,
        episode=a.index,
    )
    return [ctx.cluster.metadata_ip]


def bulk_exfiltration(ctx: SimContext, rng: np.random.Generator, a: Attack) -> list[str]:
    """Hundreds of MB up to a never-seen external address within a few windows."""
    me = ctx.cluster.pods[a.source]
    total = max(60e6, 400e6 * a.intensity) * float(rng.uniform(0.8, 1.25))
    conns = int(rng.integers(1, 4))
    opened = a.start + rng.uniform(0, 2, conns)
    emit_long_lived(
        ctx,
        rng,
        src_ip=np.full(conns, me.ip, dtype=object),
        node=np.full(conns, me.node, dtype=object),
        dst_ip=np.full(conns, a.remote_ip, dtype=object),
        dst_port=443,
        out_per_s=total / conns / (a.end - a.start),
        in_per_s=total / conns / (a.end - a.start) / 60,
        opened=opened,
        closed=np.full(conns, a.end),
        daily=False,
        server_name=_sni(rng, "files"),
        episode=a.index,
    )
    return [a.remote_ip]


def slow_exfiltration(ctx: SimContext, rng: np.random.Generator, a: Attack) -> list[str]:
    """Small uploads at a period with the jitter of C2 frameworks (0-50 % of the sleep), for
    many minutes (the lab's beacon: every ~10 s ± 20-40 %)."""
    me = ctx.cluster.pods[a.source]
    period = float(rng.uniform(15, 30))
    jitter = float(rng.uniform(0.0, 0.5))
    sleeps = period * (1.0 + rng.uniform(-jitter, jitter, int((a.end - a.start) / (period * 0.5)) + 1))
    ticks = a.start + np.r_[0.0, np.cumsum(sleeps)]
    ticks = np.clip(ticks[ticks < a.end - 1.0], a.start, a.end - 1.0)
    n = len(ticks)
    size = 40_000 * a.intensity * rng.normal(1, 0.04, n)
    out = size.astype(np.int64) + 1500
    inn = rng.integers(3800, 4200, n)
    ctx.parts.add(
        ts_start=ticks,
        ts_end=ticks + lognormal(rng, 0.3, 0.2, n),
        node=me.node,
        src_ip=me.ip,
        src_port=ephemeral_ports(rng, n),
        dst_ip=a.remote_ip,
        dst_port=443,
        proto=Proto.TCP,
        bytes_out=out,
        bytes_in=inn,
        pkts_out=packets(out, 4),
        pkts_in=packets(inn, 4),
        tcp_flags=0x1B,
        state=FlowState.CLOSED.value,
        server_name=_sni(rng, "api"),
        episode=a.index,
    )
    return [a.remote_ip]


_B32 = np.array(list(string.ascii_lowercase + "234567"))
_WORDS = ("cdn", "sync", "update", "telemetry", "static", "img", "metrics", "edge")


def _sni(rng: np.random.Generator, prefix: str) -> str:
    """A plausible TLS server name on the attacker's side (they do not go without one)."""
    return f"{prefix}.{rng.choice(_WORDS)}-{''.join(rng.choice(_B32, 6))}.example"


TUNNEL_RECORD_S = 10.0  # the collector's interim records of a long UDP flow


def dns_tunnel(ctx: SimContext, rng: np.random.Generator, a: Attack) -> list[str]:
    """Many long, high-entropy names under one registered domain, through the cluster DNS,
    from one socket (its records carry the queries as aggregates, as the collector's do)."""
    me = ctx.cluster.pods[a.source]
    domain = f"{rng.choice(_WORDS)}-{rng.choice(_WORDS)}{int(rng.integers(10, 99))}.example"
    n = max(20, int(4.0 * a.intensity * (a.end - a.start)))
    l1 = rng.integers(30, 64, n)
    chars = rng.choice(_B32, size=(n, 63))
    labels = ["".join(row[:k]) for row, k in zip(chars, l1, strict=True)]
    l2 = rng.integers(8, 30, n)
    chars2 = rng.choice(_B32, size=(n, 30))
    qnames = np.array(
        [
            f"{x}.{''.join(r[:k])}.{i % 4096:03x}.{domain}"
            for i, (x, r, k) in enumerate(zip(labels, chars2, l2, strict=True))
        ],
        dtype=object,
    )
    times = _times(rng, a, n)
    # One socket for the whole tunnel (iodine, dnscat2): the collector's records of it carry
    # the queries as aggregates, a first record within a second, then one every 10 s.
    first = times[0]
    chunk = np.where(times < first + 1.0, 0, 1 + ((times - first - 1.0) // TUNNEL_RECORD_S).astype(int))
    starts = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1]])
    ends = np.r_[starts[1:], n]
    stats = [label_stats(str(q)) for q in qnames]
    qlen = np.array([st[0] for st in stats], dtype="float64")
    ent = np.array([st[1] for st in stats], dtype="float64")
    k = (ends - starts).astype(np.int64)
    sums = np.add.reduceat
    nrec = len(starts)
    ctx.parts.add(
        ts_start=np.full(nrec, first),
        ts_end=times[ends - 1] + rng.uniform(0.01, 0.08, nrec),
        node=me.node,
        src_ip=me.ip,
        src_port=ephemeral_ports(rng, 1)[0],
        dst_ip=ctx.cluster.dns_ip,
        dst_port=ctx.settings.control_plane.dns_port,
        proto=Proto.UDP,
        bytes_out=sums(qlen + 46, starts),
        bytes_in=sums(qlen + 46 + rng.integers(60, 220, n), starts),
        pkts_out=k,
        pkts_in=k,
        tcp_flags=0,
        state=FlowState.UDP.value,
        dns_qname=qnames[starts],
        dns_rcode=0,
        final=np.arange(nrec) == nrec - 1,
        first=np.arange(nrec) == 0,
        dns={
            "dns_queries": k,
            "dns_names": k,
            "dns_name_max_len": np.maximum.reduceat(qlen, starts),
            "dns_name_mean_len": sums(qlen, starts) / k,
            "dns_label_entropy": sums(ent, starts) / k,
            "dns_top_domain": domain,
            "dns_top_domain_names": k,
            "dns_qtypes": "TXT",
            "dns_nxdomain": 0,
        },
        episode=a.index,
    )
    return [domain]


AUTH_SERVICE_PORTS = (5432, 6379, 3306)  # databases and caches a guesser tries logins on


def brute_force(ctx: SimContext, rng: np.random.Generator, a: Attack) -> list[str]:
    """Password guessing (hydra, sshpass in a loop): many short, small, accepted-then-closed
    sessions to one authentication port on one or two hosts its workload never talks to:
    another workload's database or cache, else SSH on the nodes (the lab's episode)."""
    cl = ctx.cluster
    me = cl.pods[a.source]
    key = f"{me.namespace}/{me.workload}"
    usual = {e.server for e in EDGES if e.client == key} | {p.server for p in POOLS if p.client == key}
    others = [p for p in _other_pods(ctx, a) if f"{cl.pods[p].namespace}/{cl.pods[p].workload}" not in usual]
    services = [
        p for p, port in zip(others, _open_port(ctx, others), strict=True) if port in AUTH_SERVICE_PORTS
    ]
    if services and rng.random() < 0.7:
        hosts = [
            int(h)
            for h in rng.choice(services, size=min(len(services), int(rng.integers(1, 3))), replace=False)
        ]
        dst_ips = [cl.pods[h].ip for h in hosts]
        port = int(_open_port(ctx, hosts[:1])[0])
    else:
        nodes = rng.permutation(np.array([n.ip for n in cl.nodes], dtype=object))
        dst_ips = [str(ip) for ip in nodes[: int(rng.integers(1, 3))]]
        port = 22
    n = max(12, int(60 * a.intensity * (a.end - a.start) / 60.0))
    times = _times(rng, a, n)
    dst = np.array(dst_ips, dtype=object)[rng.integers(0, len(dst_ips), n)]
    # A login exchange and a refusal: a few KB each way, closed within a second or two.
    out = rng.integers(1500, 3500, n)
    inn = rng.integers(1800, 4000, n)
    ctx.parts.add(
        ts_start=times,
        ts_end=times + rng.uniform(0.3, 2.0, n),
        node=me.node,
        src_ip=me.ip,
        src_port=ephemeral_ports(rng, n),
        dst_ip=dst,
        dst_port=port,
        proto=Proto.TCP,
        bytes_out=out,
        bytes_in=inn,
        pkts_out=packets(out, 8),
        pkts_in=packets(inn, 8),
        tcp_flags=0x1B,
        state=FlowState.CLOSED.value,
        episode=a.index,
    )
    return sorted(set(dst_ips))


TECHNIQUE_FUNCS: dict[str, Callable[[SimContext, np.random.Generator, Attack], list[str]]] = {
    "port_scan": port_scan,
    "ip_sweep": ip_sweep,
    "fan_out": fan_out,
    "control_plane_access": control_plane_access,
    "metadata_api": metadata_api,
    "bulk_exfiltration": bulk_exfiltration,
    "slow_exfiltration": slow_exfiltration,
    "dns_tunnel": dns_tunnel,
    "brute_force": brute_force,
}
assert set(TECHNIQUE_FUNCS) == set(TECHNIQUES)


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def generate_attacks(ctx: SimContext, attacks: list[Attack]) -> list[Episode]:
    """Emit every planned attack's flows; return their labelled episodes."""
    cl = ctx.cluster
    episodes = []
    for a in attacks:
        rng = ctx.rng(f"attack:{a.index}:{a.technique}")
        targets = TECHNIQUE_FUNCS[a.technique](ctx, rng, a)
        # The label covers every flow it made inside the run.
        a.end = min(max(a.end, ctx.parts.last_end(a.index)), ctx.t1)
        p = cl.pods[a.source]
        episodes.append(
            Episode(
                id=f"ep-{a.index + 1:03d}",
                technique=a.technique,
                mitre=TECHNIQUE_MITRE[a.technique],
                kind=TECHNIQUE_KIND[a.technique],
                source=Entity(ip=p.ip, namespace=p.namespace, pod=p.name, workload=p.workload, node=p.node),
                targets=targets,
                start=_dt(a.start),
                end=_dt(a.end),
                intensity=a.intensity,
            )
        )
    return episodes
