"""Features per entity-window, vectorised: integer ids and ``np.bincount``, no per-flow loop.

:func:`to_lean` turns an enriched flow batch into a *lean* frame of numbers: only flows
sourced inside the cluster (``internal`` and ``egress``) are kept, strings become
:class:`Vocab` ids, the control-plane and DNS facts are computed once per
distinct value. Every later step selects, groups and counts integers.

The entity is the source pod (``namespace/pod``), or the source address when no pod owns
it (a node, an unknown host). :func:`window_features` gives the stateless features; the ones
that need memory (never-seen edges, volume to addresses new to the cluster, recent targets,
the beacon score) come from :func:`novelty_features`, :func:`recent_features` and
:func:`beacon_features` over :mod:`pipeline.state`. Together they make the entity-window
record declared in :mod:`flowwarden.records` (:data:`~flowwarden.records.WINDOW_SCHEMA`):
its key columns come from :func:`prepare`, its features from the functions above.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from flowwarden.pipeline.detection.addresses import AddressFacts, BatchAddresses
from flowwarden.pipeline.detection.connections import COLUMNS as CONN_COLUMNS
from flowwarden.pipeline.detection.connections import ConnectionLog
from flowwarden.pipeline.detection.state import RecentActivity, SeenEdges, Vocab, mix
from flowwarden.records import Direction, FlowState, Proto
from flowwarden.settings import Settings

LONG_LIVED_S = 300.0
YOUNG_EDGE_S = 3600.0  # an address first seen by the cluster within this long is "young"
CLUSTER_DOMAINS = frozenset({"cluster.local"})  # never counted as tunnel subdomains

_NUMERIC = ("ts_start", "ts_end", "dst_port", "proto", "bytes_out", "bytes_in", "pkts_out", "final")
ID_COLUMNS = _IDS = (
    "src_ip",
    "dst_ip",
    "src_namespace",
    "src_pod",
    "src_workload",
    "dst_namespace",
    "dst_pod",
    "dst_workload",
    "node",
    "state",
)
NODE_PEER = 0x6E6F646573  # the peer key of every node address
_CP = ("cp_api", "cp_etcd", "cp_kubelet", "cp_scheduler", "cp_controller_manager", "metadata_api")


# ----------------------------------------------------------------------- lean frames


@lru_cache(maxsize=262144)
def _label_stats(name: str) -> tuple[float, float, str]:
    """(length, Shannon entropy of the labels left of the registered domain, registered domain)."""
    name = name.rstrip(".").lower()
    labels = name.split(".")
    reg = ".".join(labels[-2:]) if len(labels) >= 2 else name
    sub = ".".join(labels[:-2]) if len(labels) > 2 else labels[0]
    if not sub:
        return float(len(name)), 0.0, reg
    counts = Counter(sub)
    total = len(sub)
    ent = -sum(c / total * math.log2(c / total) for c in counts.values())
    return float(len(name)), ent, reg


def decode_lean(lean: pd.DataFrame, vocab: Vocab) -> pd.DataFrame:
    """A few lean rows back as readable flows (alert evidence, example flows)."""
    out = {c: lean[c].to_numpy() for c in _NUMERIC}
    for c in _IDS:
        out[c] = vocab.decode(lean[c].to_numpy())
    out["dns_qname"] = lean["dns_name"].to_numpy(dtype=object)
    out["dns_domain"] = vocab.decode(lean["dns_reg"].to_numpy())
    out["direction"] = np.where(lean["ext"].to_numpy(), Direction.EGRESS.value, Direction.INTERNAL.value)
    return pd.DataFrame(out)


def to_lean(
    flows: pd.DataFrame,
    vocab: Vocab,
    settings: Settings,
    node_ips: dict[str, str],
    *,
    addresses: BatchAddresses | None = None,
) -> pd.DataFrame:
    """Numbers only: the flows sourced inside the cluster, strings as vocabulary ids.

    ``addresses``: the batch's address ids and facts, when the caller already looked them up.
    """
    if addresses is None:
        addresses = AddressFacts(settings).batch(vocab, flows["src_ip"], flows["dst_ip"], node_ips)
    a = addresses
    d = flows["direction"]
    ext_all = (d == Direction.EGRESS.value).to_numpy()
    keep = ext_all | (d == Direction.INTERNAL.value).to_numpy()
    out: dict[str, np.ndarray] = {c: flows[c].to_numpy()[keep] for c in _NUMERIC}
    out["ext"] = ext_all[keep]
    out["src_ip"] = a.src_id[keep].astype("int32")
    out["dst_ip"] = a.dst_id[keep].astype("int32")
    for c in _IDS:
        if c not in out:  # the addresses came encoded with their facts
            out[c] = vocab.encode(flows[c])[keep].astype("int32")
    state = flows["state"]
    out["rejected"] = (state == FlowState.REJECTED.value).to_numpy()[keep]
    out["syn_only"] = (state == FlowState.SYN_ONLY.value).to_numpy()[keep]
    out["src_is_node"] = a.src_node[keep]
    out["dst_is_node"] = a.dst_node[keep]
    out.update({k: v[keep] for k, v in _control_plane(flows, settings, a).items()})
    out.update(_dns_columns(flows, keep, vocab))
    return pd.DataFrame(out)


def _control_plane(flows: pd.DataFrame, settings: Settings, a: BatchAddresses) -> dict[str, np.ndarray]:
    cp = settings.control_plane
    port = flows["dst_port"].to_numpy(dtype="int64")
    dst_node = a.dst_node | a.dst_api_server
    tcp = flows["proto"].to_numpy() == Proto.TCP
    to_api = (dst_node & (port == cp.api_server_port)) | (a.dst_api_service & (port == 443))
    return {
        "cp_api": to_api & tcp,
        "cp_etcd": dst_node & tcp & np.isin(port, cp.etcd_ports),
        "cp_kubelet": dst_node & tcp & (port == cp.kubelet_port),
        "cp_scheduler": dst_node & tcp & (port == cp.scheduler_port),
        "cp_controller_manager": dst_node & tcp & (port == cp.controller_manager_port),
        "metadata_api": a.dst_metadata,
    }


def _dns_columns(flows: pd.DataFrame, keep: np.ndarray, vocab: Vocab) -> dict[str, np.ndarray]:
    """Per flow: query-name hash (0: none), length, entropy, registered-domain id, the name itself."""
    n = int(keep.sum())
    out = {
        "dns_hash": np.zeros(n, dtype="uint64"),
        "dns_len": np.zeros(n),
        "dns_ent": np.zeros(n),
        "dns_reg": np.zeros(n, dtype="int32"),
        "dns_name": np.full(n, "", dtype=object),
    }
    q = flows["dns_qname"]
    has_all = (q != "").to_numpy() & keep
    if not has_all.any():
        return out
    names = q[has_all]
    codes, uniq = pd.factorize(names)
    stats = [_label_stats(str(u)) for u in uniq]  # once per distinct name, not per flow
    regs = [s[2] for s in stats]
    reg_ids = vocab.encode(np.array(regs, dtype=object))
    internal = np.array([r in CLUSTER_DOMAINS for r in regs], dtype=bool)
    reg_ids = np.where(internal, 0, reg_ids)
    has = has_all[keep]
    out["dns_hash"][has] = pd.util.hash_array(np.asarray(uniq, dtype=object))[codes]
    out["dns_len"][has] = np.array([s[0] for s in stats])[codes]
    out["dns_ent"][has] = np.array([s[1] for s in stats])[codes]
    out["dns_reg"][has] = reg_ids[codes]
    out["dns_name"][has] = np.asarray(uniq, dtype=object)[codes]
    return out


# ----------------------------------------------------------------------- entity-windows


@dataclass
class Prepared:
    """The lean flows of closed windows with their entity-window ids and per-row keys."""

    flows: pd.DataFrame
    gid: np.ndarray
    keys: pd.DataFrame  # one row per entity-window, index = gid
    entity_hash: np.ndarray  # per row
    source_hash: np.ndarray  # per row: the workload (or the entity when it has none)


def prepare(lean: pd.DataFrame, vocab: Vocab, window_s: float) -> Prepared | None:
    """Name each flow's entity and workload, and number the entity-windows."""
    if not len(lean):
        return None
    f = lean.reset_index(drop=True)
    ns = f["src_namespace"].to_numpy(dtype="int64")
    pod = f["src_pod"].to_numpy(dtype="int64")
    wl = f["src_workload"].to_numpy(dtype="int64")
    ip = f["src_ip"].to_numpy(dtype="int64")
    has_pod = pod != 0
    has_wl = wl != 0
    ent_code = np.where(has_pod, (ns << 32) | pod, -(ip + 1))
    ws = f["window_start"].to_numpy(dtype="float64")
    e_codes, e_uniq = pd.factorize(ent_code)
    w_codes, _ = pd.factorize(ws)
    gid, _ = pd.factorize(w_codes.astype("int64") * len(e_uniq) + e_codes)
    h_ns, h_pod, h_wl, h_ip = (vocab.hash_of(x) for x in (ns, pod, wl, ip))
    entity_hash = np.where(has_pod, mix(h_ns, h_pod, 2), mix(h_ip, 0, 3))
    source_hash = np.where(has_wl, mix(h_ns, h_wl, 1), entity_hash)
    first = np.unique(gid, return_index=True)[1]
    r = first
    ns_s, pod_s, wl_s, ip_s = (vocab.decode(x[r]) for x in (ns, pod, wl, ip))
    entity = np.where(has_pod[r], ns_s + "/" + pod_s, ip_s)
    keys = pd.DataFrame(
        {
            "window_start": ws[r],
            "window_end": ws[r] + window_s,
            "entity": entity,
            "src_ip": ip_s,
            "namespace": ns_s,
            "pod": pod_s,
            "workload": wl_s,
            "workload_key": np.where(has_wl[r], ns_s + "/" + wl_s, entity),
            "node": vocab.decode(f["node"].to_numpy()[r]),
            "is_node": f["src_is_node"].to_numpy()[r] & ~has_pod[r],
        }
    )
    return Prepared(f, gid, keys, entity_hash, source_hash)


def _nunique(gid: np.ndarray, ng: int, values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Distinct ``values`` per group (optionally among rows where ``mask``)."""
    if mask is not None:
        gid, values = gid[mask], values[mask]
    if not len(gid):
        return np.zeros(ng)
    if values.dtype.kind in "iu" and values.dtype.itemsize <= 4:
        codes, nv = values.astype("int64"), int(values.max()) + 1
    else:
        codes, uniq = pd.factorize(values)
        nv = len(uniq)
    pairs = pd.unique(gid.astype("int64") * (nv + 1) + codes)  # hash-based: no sort
    return np.bincount(pairs // (nv + 1), minlength=ng).astype("float64")


def _max_nunique(gid: np.ndarray, ng: int, by: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per group: the largest number of distinct ``values`` under one ``by`` (numpy, no groupby)."""
    out = np.zeros(ng)
    if not len(gid):
        return out
    bc, bu = pd.factorize(by)
    vc, vu = pd.factorize(values)
    gb = gid.astype("int64") * (len(bu) + 1) + bc
    pairs = pd.unique(gb * (len(vu) + 1) + vc)  # hash-based: no sort
    gb_codes, gb_u = pd.factorize(pairs // (len(vu) + 1))
    per = np.bincount(gb_codes)
    np.maximum.at(out, np.asarray(gb_u) // (len(bu) + 1), per.astype("float64"))
    return out


def _sum(gid: np.ndarray, ng: int, weights: np.ndarray | None = None) -> np.ndarray:
    return np.bincount(gid, weights=weights, minlength=ng).astype("float64")


def window_features(p: Prepared) -> pd.DataFrame:
    """The stateless features of every entity-window in ``p`` (index = gid)."""
    f, gid, ng = p.flows, p.gid, len(p.keys)
    ext = f["ext"].to_numpy()
    internal = ~ext
    bo = f["bytes_out"].to_numpy(dtype="float64")
    po = f["pkts_out"].to_numpy(dtype="float64")
    bi = f["bytes_in"].to_numpy(dtype="float64")
    dst = f["dst_ip"].to_numpy()
    port = f["dst_port"].to_numpy(dtype="int64")
    proto = f["proto"].to_numpy()
    out: dict[str, np.ndarray] = {}
    out["flows"] = _sum(gid, ng)
    out["bytes_out"] = _sum(gid, ng, bo)
    out["bytes_out_ext"] = _sum(gid, ng, np.where(ext, bo, 0.0))
    out["bytes_out_int"] = _sum(gid, ng, np.where(internal, bo, 0.0))
    out["pkts_out_ext"] = _sum(gid, ng, np.where(ext, po, 0.0))
    out["pkts_out_int"] = _sum(gid, ng, np.where(internal, po, 0.0))
    out["bytes_in_ext"] = _sum(gid, ng, np.where(ext, bi, 0.0))
    out["ext_dsts"] = _nunique(gid, ng, dst, ext)
    out["int_peers"] = _nunique(gid, ng, dst, internal)
    icmp = (proto == Proto.ICMP) | (proto == Proto.ICMPV6)
    out["dst_ports"] = _nunique(gid, ng, port.astype("int32"), ~icmp)
    out["max_ports_per_dst"] = _max_nunique(gid, ng, dst, port)
    out["icmp_dsts"] = _nunique(gid, ng, dst, icmp)
    rejected = f["rejected"].to_numpy()
    syn_only = f["syn_only"].to_numpy()
    failed = rejected | syn_only
    n = np.maximum(out["flows"], 1.0)
    out["failed_conns"] = _sum(gid, ng, failed.astype("float64"))
    out["failed_share"] = out["failed_conns"] / n
    out["rejected_share"] = _sum(gid, ng, rejected.astype("float64")) / n
    out["syn_only_share"] = _sum(gid, ng, syn_only.astype("float64")) / n
    out["failed_dsts"] = _nunique(gid, ng, dst, failed)
    out["failed_ports"] = _nunique(gid, ng, port.astype("int32"), failed)
    for c in _CP:
        out[c] = _sum(gid, ng, f[c].to_numpy().astype("float64"))
    out.update(_dns(f, gid, ng))
    dur = f["ts_end"].to_numpy() - f["ts_start"].to_numpy()
    long_lived = (dur >= LONG_LIVED_S) | ~f["final"].to_numpy(dtype=bool)
    out["long_lived"] = _sum(gid, ng, long_lived.astype("float64"))
    return pd.DataFrame(out)


def _dns(f: pd.DataFrame, gid: np.ndarray, ng: int) -> dict[str, np.ndarray]:
    h = f["dns_hash"].to_numpy()
    has = h != 0
    out = {
        k: np.zeros(ng)
        for k in ("dns_queries", "dns_names", "dns_max_subdomains", "dns_mean_len", "dns_mean_entropy")
    }
    if not has.any():
        return out
    g = gid[has]
    cnt = _sum(g, ng)
    safe = np.maximum(cnt, 1.0)
    out["dns_queries"] = cnt
    out["dns_names"] = _nunique(g, ng, h[has])
    out["dns_mean_len"] = _sum(g, ng, f["dns_len"].to_numpy()[has]) / safe
    out["dns_mean_entropy"] = _sum(g, ng, f["dns_ent"].to_numpy()[has]) / safe
    reg = f["dns_reg"].to_numpy()[has]
    ext = reg != 0  # cluster-internal names have registered domain 0
    out["dns_max_subdomains"] = _max_nunique(g[ext], ng, reg[ext], h[has][ext])
    return out


# ----------------------------------------------------------------------- with memory


def edge_table(p: Prepared, vocab: Vocab) -> pd.DataFrame:
    """One row per flow and edge: workload-level edges, plus a cluster-wide edge per external address."""
    f = p.flows
    dwl = f["dst_workload"].to_numpy()
    dst = f["dst_ip"].to_numpy()
    # A peer is a workload; nodes (host network) count as one peer group, like a DaemonSet.
    peer = np.where(
        dwl != 0,
        mix(vocab.hash_of(f["dst_namespace"].to_numpy()), vocab.hash_of(dwl), 1),
        np.where(f["dst_is_node"].to_numpy(), np.uint64(NODE_PEER), mix(vocab.hash_of(dst), 0, 3)),
    )
    port = f["dst_port"].to_numpy(dtype="int64")
    ext = f["ext"].to_numpy()
    local = pd.DataFrame(
        {
            "gid": p.gid,
            "hash": mix(mix(p.source_hash, peer, 4), port, 5),
            "ent": p.entity_hash,
            "ext": ext,
            "glob": False,
            "dst_ip": dst,
            "bytes": f["bytes_out"].to_numpy(dtype="float64"),
            "bytes_in": f["bytes_in"].to_numpy(dtype="float64"),
            "window_start": f["window_start"].to_numpy(),
        }
    )
    g = local[ext]
    glob = g.assign(hash=mix(vocab.hash_of(g["dst_ip"].to_numpy()), 0, 6), glob=True)
    return pd.concat([local, glob], ignore_index=True)


def novelty_features(
    p: Prepared, edges: pd.DataFrame, seen: SeenEdges
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Never-seen edges per entity-window (``seen`` is updated later by :func:`commit_edges`).

    Returns the features, the per-flow local edges, and every edge row (for the commit).
    """
    ng = len(p.keys)
    row, uniq = pd.factorize(edges["hash"].to_numpy())
    hashes = np.asarray(uniq, dtype="uint64")
    chunk_first = np.full(len(hashes), np.inf)
    np.minimum.at(chunk_first, row, edges["window_start"].to_numpy(dtype="float64"))
    pos = seen.positions(hashes)
    prior_first = seen.first_at(pos)
    prior_bytes = seen.bytes_at(pos)
    first = np.fmin(prior_first, chunk_first)
    taint_until, _ = seen.taint_at(pos)
    edges = edges.assign(first=first[row], prior=prior_bytes[row])
    # New: never seen before this window, or tainted by an alerted movement of another entity.
    ws_all = edges["window_start"].to_numpy()
    ent = edges["ent"].to_numpy()
    tainted = taint_until[row] > ws_all
    if tainted.any():  # ...unless this entity was itself alerted on for that edge, recently
        idx = np.flatnonzero(tainted)
        tainted[idx] = ~seen.alerted_before(edges["hash"].to_numpy()[idx], ent[idx], ws_all[idx])
    edges = edges.assign(new=(edges["first"].to_numpy() >= ws_all) | tainted)
    glob = edges["glob"].to_numpy()
    e = edges[~glob]
    gid = e["gid"].to_numpy()
    new = e["new"].to_numpy()
    ext = e["ext"].to_numpy()
    h = e["hash"].to_numpy()
    dst = e["dst_ip"].to_numpy()
    out = {
        "new_edges": _nunique(gid, ng, h, new),
        "new_int_peers": _nunique(gid, ng, dst, new & ~ext),
        "new_int_edges": _nunique(gid, ng, h, new & ~ext),
        "new_ext_dsts": _nunique(gid, ng, dst, new & ext),
        "new_ext_bytes": _sum(gid, ng, np.where(new & ext, e["bytes"].to_numpy(), 0.0)),
    }
    # Bytes sent to an address new to the whole cluster, over its young life.
    young = np.zeros(ng)
    young_age = np.zeros(ng)
    young_ratio = np.zeros(ng)
    gl = edges[glob]
    if len(gl):
        ws_now = float(p.keys["window_start"].max())
        gl = gl[(ws_now - gl["first"].to_numpy()) <= YOUNG_EDGE_S]
    if len(gl):
        ge = gl.groupby(["gid", "hash"], sort=False).agg(
            b=("bytes", "sum"), bi=("bytes_in", "sum"), prior=("prior", "first"), first=("first", "first")
        )
        ge = ge.assign(total=ge["b"] + ge["prior"]).sort_values("total")
        top = ge[~ge.index.get_level_values(0).duplicated(keep="last")]
        idx = top.index.get_level_values(0).to_numpy(dtype="int64")
        young[idx] = top["total"].to_numpy()
        young_age[idx] = p.keys["window_start"].to_numpy()[idx] - top["first"].to_numpy()
        young_ratio[idx] = top["b"].to_numpy() / np.maximum(top["bi"].to_numpy(), 1.0)
    out["young_ext_bytes"] = young
    out["young_ext_age"] = young_age
    out["young_ext_upload_ratio"] = young_ratio
    return pd.DataFrame(out), e, edges


def commit_edges(
    edges: pd.DataFrame,
    seen: SeenEdges,
    tainted: np.ndarray | None = None,
    taint_s: float = 0.0,
    own_s: float = 3600.0,
) -> None:
    """Remember the edges of these windows; taint those of the entity-windows in ``tainted``.

    An edge first used by an alerted lateral movement stays new for ``taint_s`` to every
    entity but the alerted one: the next pod of the same workload doing the same thing still
    stands out, and the alerted pod's own alert can close (a false alert is not pinned open);
    after ``own_s`` the same pod doing it again is news again.
    """
    if not len(edges):
        return
    row, uniq = pd.factorize(edges["hash"].to_numpy())
    hashes = np.asarray(uniq, dtype="uint64")
    ws = edges["window_start"].to_numpy(dtype="float64")
    first = np.full(len(hashes), np.inf)
    last = np.full(len(hashes), -np.inf)
    np.minimum.at(first, row, ws)
    np.maximum.at(last, row, ws)
    nbytes = np.bincount(row, weights=edges["bytes"].to_numpy(), minlength=len(hashes))
    rows = seen.update(hashes, seen.positions(hashes), first, last, nbytes)
    if tainted is not None and len(tainted) and taint_s > 0:
        t = np.isin(edges["gid"].to_numpy(), tainted) & edges["new"].to_numpy()
        if t.any():
            ent = edges["ent"].to_numpy()[t].astype("uint64")
            seen.taint(rows[row[t]], hashes[row[t]], ws[t] + taint_s, ent, ws[t] + own_s)


def recent_features(p: Prepared, e: pd.DataFrame, recent: RecentActivity) -> pd.DataFrame:
    """Distinct new internal peers and failed targets per entity over the recent horizon (incl. now)."""
    ng = len(p.keys)
    f = p.flows
    failed = f["rejected"].to_numpy() | f["syn_only"].to_numpy()
    newp = e[e["new"].to_numpy() & ~e["ext"].to_numpy()]
    ev = []
    if len(newp):
        rows = newp.index.to_numpy()  # local edge rows are flow rows
        ev.append(
            pd.DataFrame(
                {
                    "entity": p.entity_hash[rows],
                    "kind": RecentActivity.NEW_PEER,
                    "dst": newp["dst_ip"].to_numpy().astype("uint64"),
                    "port": 0,
                    "window_start": newp["window_start"].to_numpy(),
                }
            )
        )
    if failed.any():
        ff = f[failed]
        ev.append(
            pd.DataFrame(
                {
                    "entity": p.entity_hash[failed],
                    "kind": RecentActivity.FAILED,
                    "dst": ff["dst_ip"].to_numpy().astype("uint64"),
                    "port": ff["dst_port"].to_numpy(dtype="int64"),
                    "window_start": ff["window_start"].to_numpy(),
                }
            )
        )
    events = pd.concat(ev, ignore_index=True) if ev else recent.table.iloc[0:0]
    recent.add(events, float(p.keys["window_start"].max()))
    out = {k: np.zeros(ng) for k in ("recent_new_peers", "recent_failed_dsts", "recent_ports_per_dst")}
    t = recent.table
    if not len(t):
        return pd.DataFrame(out)
    # Each entity's rows, attributed to its entity-window in this batch (the latest one).
    ent_gid = pd.Series(p.gid, index=p.entity_hash)
    ent_gid = ent_gid[~ent_gid.index.duplicated(keep="last")]
    pos = pd.Index(ent_gid.index).get_indexer(t["entity"].to_numpy())
    mine = pos >= 0
    if not mine.any():
        return pd.DataFrame(out)
    g = ent_gid.to_numpy()[pos[mine]]
    kind = t["kind"].to_numpy()[mine]
    dst = t["dst"].to_numpy()[mine]
    out["recent_new_peers"] = _nunique(g, ng, dst, kind == RecentActivity.NEW_PEER)
    fail = kind == RecentActivity.FAILED
    out["recent_failed_dsts"] = _nunique(g, ng, dst, fail)
    out["recent_ports_per_dst"] = _max_nunique(g[fail], ng, dst[fail], t["port"].to_numpy()[mine][fail])
    return pd.DataFrame(out)


def beacon_features(
    p: Prepared, log: ConnectionLog, seen: SeenEdges, vocab: Vocab, min_conns: int
) -> pd.DataFrame:
    """RITA-style periodicity of each entity's connections to each external destination.

    Score ingredients (each in [0, 1], 1 = machine-like): ``1 - |Bowley skew|`` and
    ``1 - MAD/median`` of the intervals between connection starts (weight 2), the same of
    the connection sizes (MAD against 32 bytes, weight 1); scaled by persistence (connections
    seen against ``2 * min_conns``). The history is the pair's newest connections within
    the horizon (:class:`ConnectionLog`). Each window reports its best
    destination, how many pods of the workload talk to it (``beacon_peers``: a SaaS API is
    called by every replica) and how long the cluster has known that address
    (``beacon_edge_age``).
    """
    ng = len(p.keys)
    out = {k: np.zeros(ng) for k in ("beacon_score", "beacon_conns", "beacon_peers", "beacon_edge_age")}
    f = p.flows
    now = float(f["ts_end"].max())
    ext = f["ext"].to_numpy()
    if not ext.any():
        log.add(_NO_CONNS, now)
        return pd.DataFrame(out)
    hd = vocab.hash_of(f["dst_ip"].to_numpy()[ext])
    port = f["dst_port"].to_numpy(dtype="int64")[ext]
    conns = pd.DataFrame(
        {
            "pair": mix(mix(p.entity_hash[ext], hd, 7), port, 8),
            "wld": mix(mix(p.source_hash[ext], hd, 9), port, 10),
            "ts": f["ts_start"].to_numpy()[ext],
            "bytes": f["bytes_out"].to_numpy(dtype="float64")[ext],
            "gid": p.gid[ext],
            "glob": mix(hd, 0, 6),
        }
    )
    log.add(conns, now)
    c = conns.drop_duplicates("pair")
    ts, size, n = log.history(c["pair"].to_numpy(dtype="uint64"), now)
    ok = n >= max(min_conns, 2)  # at least one interval
    if not ok.any():
        return pd.DataFrame(out)
    c, ts, size, n = c[ok], ts[ok], size[ok], n[ok].astype("float64")
    intervals = np.diff(ts, axis=1)  # NaN past each row's count
    ts_score = _rita_rows(intervals, n - 1, mad_scale=None)
    size_score = _rita_rows(np.where(np.isnan(ts), np.nan, size), n, mad_scale=32.0)
    persistence = np.minimum(1.0, n / (2.0 * min_conns))
    score = ((ts_score * 2.0 + size_score) / 3.0) * (0.5 + 0.5 * persistence)
    first = seen.first_at(seen.positions(c["glob"].to_numpy(dtype="uint64")))
    gid = c["gid"].to_numpy(dtype="int64")
    ws = p.keys["window_start"].to_numpy()[gid]
    best = pd.DataFrame(
        {
            "gid": gid,
            "score": score,
            "n": n,
            "peers": log.peers(c["wld"].to_numpy(dtype="uint64"), now),
            "edge_age": np.where(np.isnan(first), 0.0, ws - first),
        }
    )
    best = best.sort_values("score", kind="stable").drop_duplicates("gid", keep="last")
    idx = best["gid"].to_numpy(dtype="int64")
    out["beacon_score"][idx] = best["score"].to_numpy()
    out["beacon_conns"][idx] = best["n"].to_numpy()
    out["beacon_peers"][idx] = best["peers"].to_numpy()
    out["beacon_edge_age"][idx] = best["edge_age"].to_numpy()
    return pd.DataFrame(out)


_NO_CONNS = pd.DataFrame(
    {c: pd.Series(dtype="uint64" if c in ("pair", "wld") else "float64") for c in CONN_COLUMNS}
)


def _row_quantiles(v: np.ndarray, n: np.ndarray, qs: tuple[float, ...]) -> list[np.ndarray]:
    """Per row, linear-interpolated quantiles of its first ``n`` values (rows sorted, NaN last)."""
    rows = np.arange(len(v))
    last = np.maximum(n.astype("int64") - 1, 0)
    res = []
    for q in qs:
        pos = q * last
        lo = np.floor(pos).astype("int64")
        hi = np.minimum(lo + 1, last)
        frac = pos - lo
        res.append(v[rows, lo] * (1 - frac) + v[rows, hi] * frac)
    return res


def _rita_rows(values: np.ndarray, n: np.ndarray, mad_scale: float | None) -> np.ndarray:
    """Per row: mean of (1 - |Bowley skew|) and (1 - MAD / scale) of its values, in [0, 1].

    ``values`` holds each row's ``n`` values first, NaN after (any order within the row).
    """
    v = np.sort(values, axis=1)  # NaN last
    q1, q2, q3 = _row_quantiles(v, n, (0.25, 0.5, 0.75))
    spread = q3 - q1
    skew = np.where(spread > 0, (q3 + q1 - 2 * q2) / np.where(spread > 0, spread, 1.0), 0.0)
    dev = np.sort(np.abs(v - q2[:, None]), axis=1)
    (mad,) = _row_quantiles(dev, n, (0.5,))
    scale = np.maximum(q2, 1.0) if mad_scale is None else mad_scale
    mad_score = np.clip(1.0 - mad / scale, 0.0, 1.0)
    return (1.0 - np.abs(skew)) * 0.5 + mad_score * 0.5
