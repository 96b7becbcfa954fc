"""Benign traffic that looks like an attack; detectors must not flag any of it.

* the Prometheus scraper: every pod, node exporter and kubelet every 15 s (huge fan-out);
* the nightly backup CronJob: gigabytes read from the database and uploaded to object
  storage (it also runs at a seed-chosen minute so that short runs include it);
* SaaS calls at a fixed period with stable sizes (beacon-like);
* a rolling deployment: new pods, new names, new IPs, new edges, image pulls by the nodes;
* nodes (host network) reading the cloud metadata API, normal for a node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flowwarden.records import FlowState, Proto
from flowwarden.simulator.benign import emit_calls, emit_long_lived, pod_spans
from flowwarden.simulator.cluster import Cluster, iso
from flowwarden.simulator.context import EXTERNALS, SimContext
from flowwarden.simulator.flows import (
    FLAGS_CLOSED,
    FLAGS_REJECTED,
    FLAGS_SYN_ONLY,
    dns_aggregates,
    ephemeral_ports,
    lognormal,
    packets,
)

SCRAPE_INTERVAL_S = 15.0
ROLLED_WORKLOAD = "shop/catalog"
ROLL_NEW_DEPENDENCY = "shop/redis"  # the new version adds a cache: a new edge
BACKUP_CRONJOB = ("data", "backup")
BACKUP_HOUR_UTC = 2
EXPORT_CRONJOB = ("data", "report-export")  # every few minutes, like the lab's backup job
EXPORT_EVERY_S = 240.0
CHURN_CLIENT = ("payments/ledger", "payments/payments-db", 5432)  # no pool: a connection per query


@dataclass
class Backup:
    pod: int
    start: float
    duration: float
    dump_bytes: int
    upload_bytes: int


@dataclass
class HardNegativePlan:
    """What changes the cluster itself (pods created and deleted), decided before traffic."""

    roll_at: float
    new_pods: list[int]
    backups: list[Backup] = field(default_factory=list)
    exports: list[Backup] = field(default_factory=list)


def plan(cluster: Cluster, rng: np.random.Generator, t0: float, t1: float) -> HardNegativePlan:
    """Schedule the rolling deployment and the backup Job pods (mutates ``cluster``)."""
    span = t1 - t0
    roll_at = t0 + span * float(rng.uniform(0.3, 0.6))
    step = min(20.0, 0.1 * span / max(1, cluster.workloads[ROLLED_WORKLOAD].replicas))
    new_pods = cluster.roll(ROLLED_WORKLOAD, roll_at, step)
    duration = float(rng.uniform(240, 420)) if span >= 600 else max(60.0, 0.4 * span)
    starts = []
    first_night = np.ceil((t0 - BACKUP_HOUR_UTC * 3600) / 86400) * 86400 + BACKUP_HOUR_UTC * 3600
    t = first_night
    while t + duration + 30 <= t1:
        starts.append(float(t) + float(rng.uniform(0, 30)))
        t += 86400
    if not starts:  # a run without 02:00 UTC still gets one, at a seed-chosen minute
        lo, hi = t0 + 60, max(t0 + 60, t1 - duration - 30)
        starts.append(float(rng.uniform(lo, hi)) if hi > lo else t0 + 0.1 * span)
    backups = []
    for s in starts:
        pod = cluster.add_job_pod(
            namespace=BACKUP_CRONJOB[0], cronjob=BACKUP_CRONJOB[1], created=s - 5.0, finished=s + duration + 5
        )
        gb = float(rng.uniform(2.0, 4.0))
        backups.append(Backup(pod, s, duration, int(gb * 1.6e9), int(gb * 1e9)))
    # A CronJob every few minutes, a new pod each run, uploading where its previous run did;
    # its first run falls in the engine's first minute (a cold start learning).
    exports = []
    t = t0 + float(rng.uniform(15, 45))
    while t + 60 <= t1:
        pod = cluster.add_job_pod(
            namespace=EXPORT_CRONJOB[0], cronjob=EXPORT_CRONJOB[1], created=t - 5.0, finished=t + 40.0
        )
        exports.append(Backup(pod, t, float(rng.uniform(8, 20)), 0, int(rng.uniform(3e6, 9e6))))
        t += EXPORT_EVERY_S + float(rng.uniform(-20, 20))
    return HardNegativePlan(roll_at, new_pods, backups, exports)


def prometheus_scrapes(ctx: SimContext) -> None:
    """Every Prometheus replica scrapes every pod, node exporter and kubelet every 15 s."""
    cl = ctx.cluster
    rng = ctx.rng("scrape")
    targets = [i for i, p in enumerate(cl.pods) if not p.host_network and p.owner_kind != "Job"]
    t_ip = [cl.pods[i].ip for i in targets]
    spec_of = {(w.spec.namespace, w.spec.name): w.spec for w in cl.workloads.values()}
    t_port = [spec_of[(cl.pods[i].namespace, cl.pods[i].workload)].metrics_port for i in targets]
    a, b = pod_spans(ctx, np.array(targets))
    for node in cl.nodes:  # node exporter and the kubelet's cAdvisor
        for port in (9100, ctx.settings.control_plane.kubelet_port):
            t_ip.append(node.ip)
            t_port.append(port)
            a, b = np.append(a, ctx.t0), np.append(b, ctx.t1)
    ip_arr, port_arr = np.array(t_ip, dtype=object), np.array(t_port)
    ntick = int(np.ceil((ctx.t1 - ctx.t0) / SCRAPE_INTERVAL_S)) + 1
    size = lognormal(rng, 20_000, 0.9, len(ip_arr))  # each target's page has its own size
    for prom in cl.all_pod_indices("monitoring/prometheus"):
        phase = rng.uniform(0, SCRAPE_INTERVAL_S, len(ip_arr))
        tick = ctx.t0 + phase[:, None] + SCRAPE_INTERVAL_S * np.arange(ntick)[None, :]
        tick = tick + rng.normal(0, 0.02, tick.shape)
        tgt = np.broadcast_to(np.arange(len(ip_arr))[:, None], tick.shape)
        ok = (tick >= a[:, None]) & (tick < b[:, None]) & (tick < ctx.t1)
        ok &= (tick >= max(ctx.t0, cl.pods[prom].created)) & (tick < (cl.pods[prom].deleted or np.inf))
        ok &= (ip_arr != cl.pods[prom].ip)[:, None]  # it scrapes itself on localhost
        times, tg = tick[ok], tgt[ok]
        n = len(times)
        inn = (size[tg] * rng.normal(1.0, 0.03, n)).astype(np.int64)
        ctx.parts.add(
            ts_start=times,
            ts_end=times + lognormal(rng, 0.015, 0.6, n),
            node=cl.pods[prom].node,
            src_ip=cl.pods[prom].ip,
            src_port=ephemeral_ports(rng, n),
            dst_ip=ip_arr[tg],
            dst_port=port_arr[tg],
            proto=Proto.TCP,
            bytes_out=rng.integers(280, 340, n),
            bytes_in=inn,
            pkts_out=packets(np.full(n, 300), 3),
            pkts_in=packets(inn, 2),
            tcp_flags=FLAGS_CLOSED,
            state=FlowState.CLOSED.value,
        )


def backups(ctx: SimContext, backups: list[Backup]) -> None:
    """The backup Job: dump the shop database, then upload it in 4 parallel parts."""
    cl = ctx.cluster
    rng = ctx.rng("backup")
    db = cl.pods[cl.workloads["shop/postgres"].slot_pods[0][0]]
    obj = EXTERNALS["objects"]
    for bk in backups:
        pod = cl.pods[bk.pod]
        dump_s = 0.4 * bk.duration
        _lookup(ctx, rng, bk.pod, [cl.service_dns("shop/postgres")], bk.start - 0.5)
        emit_long_lived(
            ctx,
            rng,
            src_ip=np.array([pod.ip], dtype=object),
            node=np.array([pod.node], dtype=object),
            dst_ip=np.array([db.ip], dtype=object),
            dst_port=5432,
            out_per_s=2_000,
            in_per_s=bk.dump_bytes / dump_s,
            opened=np.array([bk.start]),
            closed=np.array([bk.start + dump_s]),
            daily=False,
        )
        up0 = bk.start + dump_s + 1.0
        _lookup(ctx, rng, bk.pod, [obj.name], up0 - 0.5)
        parts = 4
        emit_long_lived(
            ctx,
            rng,
            src_ip=np.full(parts, pod.ip, dtype=object),
            node=np.full(parts, pod.node, dtype=object),
            dst_ip=np.full(parts, obj.ip, dtype=object),
            dst_port=obj.port,
            out_per_s=bk.upload_bytes / parts / (bk.duration - dump_s),
            in_per_s=3_000,
            opened=up0 + rng.uniform(0, 0.5, parts),
            closed=np.full(parts, bk.start + bk.duration),
            daily=False,
            server_name=obj.name,
        )


def _lookup(ctx: SimContext, rng: np.random.Generator, pod: int, names: list[str], at: float) -> None:
    """One DNS answer per name for a pod at a moment (the search list is skipped: FQDNs)."""
    p = ctx.cluster.pods[pod]
    n = len(names)
    qlen = np.array([len(q) for q in names])
    ts = np.full(n, at) + 0.001 * np.arange(n)
    ctx.parts.add(
        ts_start=ts,
        ts_end=ts + 0.001,
        node=p.node,
        src_ip=p.ip,
        src_port=ephemeral_ports(rng, n),
        dst_ip=ctx.cluster.dns_ip,
        dst_port=53,
        proto=Proto.UDP,
        bytes_out=2 * (qlen + 46),
        bytes_in=2 * (qlen + 62),
        pkts_out=2,
        pkts_in=2,
        tcp_flags=0,
        state=FlowState.UDP.value,
        dns_qname=np.array(names, dtype=object),
        dns_rcode=0,
        dns=dns_aggregates(np.array(names, dtype=object)),
    )


# (client workload, external, period seconds, request bytes, response bytes)
BEACONS: tuple[tuple[str, str, float, int, int], ...] = (
    ("payments/billing-sync", "crm", 60.0, 1200, 3000),
    ("monitoring/alert-relay", "hooks", 30.0, 700, 250),
    ("payments/ledger", "license", 300.0, 900, 1800),
)


def saas_beacons(ctx: SimContext) -> None:
    """Periodic SaaS calls: a fixed period, sub-second jitter, near-constant sizes."""
    cl = ctx.cluster
    rng = ctx.rng("saas")
    for key, ext_name, period, req, resp in BEACONS:
        ext = EXTERNALS[ext_name]
        for pod in cl.all_pod_indices(key):
            (a,), (b,) = pod_spans(ctx, np.array([pod]))
            ticks = a + rng.uniform(0, period) + period * np.arange(int((b - a) / period) + 1)
            ticks = ticks[ticks < b] + rng.normal(0, 0.15, 1)[0]
            ticks = ticks + rng.normal(0, 0.2, len(ticks))
            n = len(ticks)
            out = (req * rng.normal(1, 0.02, n)).astype(np.int64)
            inn = (resp * rng.normal(1, 0.03, n)).astype(np.int64)
            p = cl.pods[pod]
            ctx.parts.add(
                ts_start=ticks,
                ts_end=ticks + lognormal(rng, 0.12, 0.3, n),
                node=p.node,
                src_ip=p.ip,
                src_port=ephemeral_ports(rng, n),
                dst_ip=ext.ip,
                dst_port=ext.port,
                proto=Proto.TCP,
                bytes_out=out + 600,
                bytes_in=inn + 3500,
                pkts_out=packets(out, 5),
                pkts_in=packets(inn, 5),
                tcp_flags=FLAGS_CLOSED,
                state=FlowState.CLOSED.value,
                server_name=ext.name,
            )


def rolling_deployment(ctx: SimContext, hn: HardNegativePlan) -> None:
    """Nodes pull the new image; the new version opens a pool to its new cache."""
    cl = ctx.cluster
    rng = ctx.rng("rollout")
    reg = EXTERNALS["registry"]
    first_on_node: dict[str, float] = {}
    for idx in hn.new_pods:
        p = cl.pods[idx]
        first_on_node[p.node] = min(first_on_node.get(p.node, np.inf), p.created)
    nodes = sorted(first_on_node)
    if nodes:
        opened = np.array([first_on_node[n] - 20.0 for n in nodes])
        dur = rng.uniform(6, 18, len(nodes))
        emit_long_lived(
            ctx,
            rng,
            src_ip=np.array([cl.node_of(n).ip for n in nodes], dtype=object),
            node=np.array(nodes, dtype=object),
            dst_ip=np.full(len(nodes), reg.ip, dtype=object),
            dst_port=reg.port,
            out_per_s=20_000,
            in_per_s=rng.uniform(80e6, 200e6, len(nodes)) / dur,
            opened=opened,
            closed=opened + dur,
            daily=False,
            server_name=reg.name,
        )
    _stale_endpoints(ctx, rng, hn)
    new = np.array(hn.new_pods)
    if len(new):
        wl = cl.workloads[ROLL_NEW_DEPENDENCY]
        srv = np.array([wl.slot_pods[int(s)][0] for s in rng.integers(0, wl.replicas, len(new))])
        created = np.array([cl.pods[i].created for i in new])
        for i, t in zip(new, created, strict=True):
            _lookup(ctx, rng, int(i), [cl.service_dns(ROLL_NEW_DEPENDENCY)], t + 2.5)
        emit_long_lived(
            ctx,
            rng,
            src_ip=cl.pod_ips()[new],
            node=cl.pod_nodes()[new],
            dst_ip=cl.pod_ips()[srv],
            dst_port=wl.spec.port,
            out_per_s=900,
            in_per_s=6000,
            opened=created + 3.0,
        )


def _stale_endpoints(ctx: SimContext, rng: np.random.Generator, hn: HardNegativePlan) -> None:
    """Clients that cached an old pod's address keep trying it a few seconds after it is gone."""
    cl = ctx.cluster
    wl = cl.workloads[ROLLED_WORKLOAD]
    old = [slot[0] for slot in wl.slot_pods if len(slot) > 1]
    clients = np.array(cl.all_pod_indices("shop/api"))
    ips, nodes = cl.pod_ips(), cl.pod_nodes()
    for idx in old:
        gone = cl.pods[idx].deleted
        if gone is None or gone >= ctx.t1:
            continue
        n = int(rng.integers(1, 5))
        src = clients[rng.integers(0, len(clients), n)]
        times = np.sort(gone + rng.uniform(0.1, 8.0, n))
        silent = rng.random(n) < 0.5
        ctx.parts.add(
            ts_start=times,
            ts_end=times + np.where(silent, 3.0, 0.0005),
            node=nodes[src],
            src_ip=ips[src],
            src_port=ephemeral_ports(rng, n),
            dst_ip=cl.pods[idx].ip,
            dst_port=wl.spec.port,
            proto=Proto.TCP,
            bytes_out=np.where(silent, 180, 60),
            bytes_in=np.where(silent, 0, 54),
            pkts_out=np.where(silent, 3, 1),
            pkts_in=np.where(silent, 0, 1),
            tcp_flags=np.where(silent, FLAGS_SYN_ONLY, FLAGS_REJECTED),
            state=np.where(silent, FlowState.SYN_ONLY.value, FlowState.REJECTED.value).astype(object),
        )


def node_metadata_reads(ctx: SimContext) -> None:
    """Each node's cloud agent and kubelet read the metadata API (IMDSv2: token, then get)."""
    cl = ctx.cluster
    rng = ctx.rng("node-metadata")
    for n in cl.nodes:
        period = 60.0
        ticks = ctx.t0 + rng.uniform(0, period) + period * np.arange(int((ctx.t1 - ctx.t0) / period) + 1)
        ticks = ticks + rng.normal(0, 3.0, len(ticks))
        ticks = ticks[(ticks >= ctx.t0) & (ticks < ctx.t1 - 1)]
        both = np.concatenate([ticks, ticks + 0.01])
        emit_calls(
            ctx,
            rng,
            times=np.sort(both),
            src_ip=np.full(len(both), n.ip, dtype=object),
            node=np.full(len(both), n.name, dtype=object),
            dst_ip=cl.metadata_ip,
            dst_port=80,
            req=350,
            resp=900,
            dur=0.003,
            reject_share=0,
        )


def report_exports(ctx: SimContext, runs: list[Backup]) -> None:
    """The export CronJob: each run's new pod resolves the partner's bucket and uploads a report."""
    rng = ctx.rng("exports")
    ext = EXTERNALS["exports"]
    for run in runs:
        pod = ctx.cluster.pods[run.pod]
        _lookup(ctx, rng, run.pod, [ext.name], run.start - 0.5)
        ctx.parts.add(
            ts_start=np.array([run.start]),
            ts_end=np.array([run.start + run.duration]),
            node=pod.node,
            src_ip=pod.ip,
            src_port=ephemeral_ports(rng, 1),
            dst_ip=ext.ip,
            dst_port=ext.port,
            proto=Proto.TCP,
            bytes_out=run.upload_bytes,
            bytes_in=6_000,
            pkts_out=packets(np.array([run.upload_bytes]), 4),
            pkts_in=12,
            tcp_flags=FLAGS_CLOSED,
            state=FlowState.CLOSED.value,
            server_name=ext.name,
        )


def db_session_churn(ctx: SimContext) -> None:
    """A client without a connection pool: a short session to its database per query, all day
    (many short sessions to an authentication port over a known edge: no brute force)."""
    client, server, port = CHURN_CLIENT
    cl = ctx.cluster
    if client not in cl.workloads or server not in cl.workloads:
        return
    rng = ctx.rng("churn")
    db = cl.pods[cl.all_pod_indices(server)[0]]
    for pod in cl.all_pod_indices(client):
        (a,), (b,) = pod_spans(ctx, np.array([pod]))
        ts = np.sort(rng.uniform(a, b, int((b - a) * 1.5)))
        n = len(ts)
        p = cl.pods[pod]
        out = rng.integers(400, 900, n)
        inn = rng.integers(600, 4000, n)
        ctx.parts.add(
            ts_start=ts,
            ts_end=ts + lognormal(rng, 0.02, 0.4, n),
            node=p.node,
            src_ip=p.ip,
            src_port=ephemeral_ports(rng, n),
            dst_ip=db.ip,
            dst_port=port,
            proto=Proto.TCP,
            bytes_out=out,
            bytes_in=inn,
            pkts_out=packets(out, 4),
            pkts_in=packets(inn, 4),
            tcp_flags=FLAGS_CLOSED,
            state=FlowState.CLOSED.value,
        )


def generate_hard_negatives(ctx: SimContext, hn: HardNegativePlan) -> list[dict[str, Any]]:
    """Emit every hard negative's flows; return what they are (for false-alert reports)."""
    prometheus_scrapes(ctx)
    backups(ctx, hn.backups)
    report_exports(ctx, hn.exports)
    db_session_churn(ctx)
    saas_beacons(ctx)
    rolling_deployment(ctx, hn)
    node_metadata_reads(ctx)
    return describe(ctx, hn)


def _entity(ctx: SimContext, pod: int) -> dict[str, str]:
    p = ctx.cluster.pods[pod]
    return {"ip": p.ip, "namespace": p.namespace, "pod": p.name, "workload": p.workload, "node": p.node}


def describe(ctx: SimContext, hn: HardNegativePlan) -> list[dict[str, Any]]:
    """The hard negatives as records: kind, source, targets, start, end (benign ground truth)."""
    cl, t0, t1 = ctx.cluster, ctx.t0, ctx.t1
    out: list[dict[str, Any]] = []

    def add(
        kind: str, source: dict[str, str], targets: list[str], start: float, end: float, note: str
    ) -> None:
        out.append(
            {
                "kind": kind,
                "source": source,
                "targets": targets,
                "start": iso(max(start, t0)),
                "end": iso(min(end, t1)),
                "note": note,
            }
        )

    everything = [*ctx.settings.cluster.pod_cidrs, *ctx.settings.cluster.node_cidrs]
    for prom in cl.all_pod_indices("monitoring/prometheus"):
        add("scraper_fan_out", _entity(ctx, prom), everything, t0, t1, "every pod and node every 15 s")
    for bk in hn.backups:
        db = cl.pods[cl.workloads["shop/postgres"].slot_pods[0][0]].ip
        note = f"{bk.dump_bytes / 1e9:.1f} GB dumped, {bk.upload_bytes / 1e9:.1f} GB uploaded"
        add(
            "backup_egress",
            _entity(ctx, bk.pod),
            [EXTERNALS["objects"].ip, db],
            bk.start,
            bk.start + bk.duration,
            note,
        )
    for run in hn.exports:
        add(
            "cronjob_repeat",
            _entity(ctx, run.pod),
            [EXTERNALS["exports"].ip],
            run.start,
            run.start + run.duration,
            f"{'/'.join(EXPORT_CRONJOB)}: {run.upload_bytes / 1e6:.1f} MB where its previous run sent",
        )
    client, server, port = CHURN_CLIENT
    if client in cl.workloads and server in cl.workloads:
        db_ip = cl.pods[cl.all_pod_indices(server)[0]].ip
        for pod in cl.all_pod_indices(client):
            add(
                "db_session_churn",
                _entity(ctx, pod),
                [db_ip],
                t0,
                t1,
                f"a short session to :{port} per query",
            )
    for key, ext_name, period, _, _ in BEACONS:
        for pod in cl.all_pod_indices(key):
            add("saas_beacon", _entity(ctx, pod), [EXTERNALS[ext_name].ip], t0, t1, f"every {period:g} s")
    if hn.new_pods:
        ns, name = ROLLED_WORKLOAD.split("/")
        source = {"ip": "", "namespace": ns, "pod": "", "workload": name, "node": ""}
        last = max(cl.pods[i].created for i in hn.new_pods) + 10.0
        new_ips = [cl.pods[i].ip for i in hn.new_pods]
        add(
            "rolling_deployment",
            source,
            new_ips,
            hn.roll_at - 10.0,
            last,
            f"new pods; new edge to {ROLL_NEW_DEPENDENCY}",
        )
    for n in cl.nodes:
        source = {"ip": n.ip, "namespace": "", "pod": "", "workload": "", "node": n.name}
        add("node_metadata_api", source, [cl.metadata_ip], t0, t1, "host network, every 60 s")
    return out
