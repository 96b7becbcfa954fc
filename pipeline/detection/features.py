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

from dataclasses import dataclass

import numpy as np
import pandas as pd

from flowwarden.dnsnames import CLUSTER_DOMAIN, REVERSE_ZONES, label_stats
from flowwarden.pipeline.detection.addresses import AddressFacts, BatchAddresses
from flowwarden.pipeline.detection.connections import COLUMNS as CONN_COLUMNS
from flowwarden.pipeline.detection.connections import ConnectionLog
from flowwarden.pipeline.detection.state import RecentActivity, SeenEdges, Vocab, mix
from flowwarden.pipeline.detection.trust import BOUNDARY_COLUMNS, boundary_features
from flowwarden.records import Direction, FlowState, Proto
from flowwarden.settings import Settings

LONG_LIVED_S = 300.0
YOUNG_EDGE_S = 3600.0  # an address first seen by the cluster within this long is "young"
# Never counted as tunnel subdomains: the cluster's own names, and reverse lookups (their
# labels are address digits, and an IPv6 PTR name is 72 characters long).
CLUSTER_DOMAINS = frozenset({CLUSTER_DOMAIN, *REVERSE_ZONES})
# The cluster DNS's own pods (they forward every pod's queries upstream): never the entity
# of a DNS or exfiltration finding. Besides these, any source in ``cluster.cluster_dns``.
RESOLVER_WORKLOADS = frozenset({"kube-system/coredns", "kube-system/kube-dns"})

_NUMERIC = (
    "ts_start",
    "ts_end",
    "src_port",
    "dst_port",
    "proto",
    "bytes_out",
    "bytes_in",
    "pkts_out",
    "final",
    "first",
)
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


def decode_lean(lean: pd.DataFrame, vocab: Vocab) -> pd.DataFrame:
    """A few lean rows back as readable flows (alert evidence, example flows)."""
    out = {c: lean[c].to_numpy() for c in _NUMERIC}
    for c in _IDS:
        out[c] = vocab.decode(lean[c].to_numpy())
    out["dns_qname"] = lean["dns_name"].to_numpy(dtype=object)
    out["dns_domain"] = vocab.decode(lean["dns_reg"].to_numpy())
    out["dns_domain_names"] = lean["dns_reg_names"].to_numpy()
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
    out["src_resolver"] = _resolver(flows, settings, vocab, a.src_id)[keep]
    out.update(_dns_columns(flows, keep, vocab))
    return pd.DataFrame(out)


def _resolver(flows: pd.DataFrame, settings: Settings, vocab: Vocab, src_id: np.ndarray) -> np.ndarray:
    """Sources that are the cluster DNS: its service addresses, or its own pods.

    The resolver forwards every pod's queries upstream; a tunnel through it is the querying
    pod's, whose own flow to the resolver carries the queries. The addresses are compared as
    the vocabulary ids of the sources (``src_id``), not as strings.
    """
    dns_ids = [i for i in (vocab.id_of(ip) for ip in settings.cluster.cluster_dns) if i >= 0]
    out = np.isin(src_id, np.asarray(dns_ids, dtype="int64"))
    # Workload names first, namespaces only for the few candidates.
    names = [k.split("/")[1] for k in RESOLVER_WORKLOADS]
    col = flows["src_workload"]
    if isinstance(col.dtype, pd.CategoricalDtype):  # enrichment's: test the categories only
        codes = col.cat.codes.to_numpy()
        hit = np.isin(np.asarray(col.cat.categories, dtype=object), names)
        cand = np.flatnonzero((codes >= 0) & hit[codes])
    else:
        cand = np.flatnonzero(col.isin(names).to_numpy())
    if len(cand):
        ns = flows["src_namespace"].iloc[cand].to_numpy(dtype=object)
        wl = col.iloc[cand].to_numpy(dtype=object)
        keys = np.array([f"{a}/{b}" for a, b in zip(ns, wl, strict=True)], dtype=object)
        out[cand] |= np.isin(keys, list(RESOLVER_WORKLOADS))
    return out


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
    """Per flow: the DNS it carried, from the record's aggregates when it has them.

    A record with ``dns_queries > 0`` stands for that many queries (a pod's one socket to the
    resolver can carry hundreds: iodine's tunnel); one with only ``dns_qname`` (producers that
    do not aggregate, the simulator before it did) is one query. Columns: queries, names,
    mean name length and label entropy (per query), the registered domain with the most names
    and how many (``dns_reg``, ``dns_reg_names``; 0 for cluster-internal and reverse names),
    the first name and its hash (0: no DNS; the hash is 0 too for aggregated records, whose
    names are counted by the collector, not here).
    """
    n = int(keep.sum())
    out = {
        "dns_n": np.zeros(n),
        "dns_names_n": np.zeros(n),
        "dns_hash": np.zeros(n, dtype="uint64"),
        "dns_len": np.zeros(n),
        "dns_ent": np.zeros(n),
        "dns_reg": np.zeros(n, dtype="int32"),
        "dns_reg_names": np.zeros(n),
        "dns_name": np.full(n, "", dtype=object),
    }
    q = flows["dns_qname"]
    agg_all = (flows["dns_queries"].to_numpy() > 0) & keep
    has_all = ((q != "").to_numpy() & keep) | agg_all
    if not has_all.any():
        return out
    has = has_all[keep]
    agg = agg_all[has_all]
    # The registered domain: the collector's top domain when it aggregated, else the name's.
    top = flows["dns_top_domain"].to_numpy(dtype=object)[has_all]
    names = q.to_numpy(dtype=object)[has_all]
    codes, uniq = pd.factorize(names)
    stats = [label_stats(str(u)) for u in uniq]  # once per distinct name, not per flow
    name_reg = np.array([st[2] for st in stats], dtype=object)[codes] if len(uniq) else top
    reg = np.where(agg & (top != ""), top, name_reg)
    reg_ids = vocab.encode(pd.Series(reg, dtype=object))
    internal = pd.Series(reg, dtype=object).isin(CLUSTER_DOMAINS).to_numpy() | (reg == "")
    reg_ids = np.where(internal, 0, reg_ids)
    one = ~agg
    n_len = np.array([st[0] for st in stats], dtype="float64")[codes] if len(uniq) else np.zeros(len(names))
    n_ent = np.array([st[1] for st in stats], dtype="float64")[codes] if len(uniq) else np.zeros(len(names))
    name_hash = pd.util.hash_array(np.asarray(uniq, dtype=object))[codes] if len(uniq) else np.zeros(0)
    out["dns_n"][has] = np.where(one, 1.0, flows["dns_queries"].to_numpy(dtype="float64")[has_all])
    # Names: every record's first name is counted as a distinct value (by its hash), so that a
    # client resolving one name through many sockets counts one name, not one per socket;
    # an aggregated record adds only the names beyond its first (``dns_names_n``).
    named = names != ""
    extra = np.maximum(flows["dns_names"].to_numpy(dtype="float64")[has_all] - named, 0.0)
    out["dns_names_n"][has] = np.where(one, 0.0, extra)
    out["dns_hash"][has] = np.where(named, name_hash, np.uint64(0)).astype("uint64")
    out["dns_len"][has] = np.where(one, n_len, flows["dns_name_mean_len"].to_numpy()[has_all])
    out["dns_ent"][has] = np.where(one, n_ent, flows["dns_label_entropy"].to_numpy()[has_all])
    out["dns_reg"][has] = reg_ids
    top_names = flows["dns_top_domain_names"].to_numpy(dtype="float64")[has_all]
    top_extra = np.maximum(top_names - (named & (name_reg == top)), 0.0)
    out["dns_reg_names"][has] = np.where(one | (top == ""), 0.0, top_extra)
    out["dns_name"][has] = names
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
    r = first_rows(gid)
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


def first_rows(codes: np.ndarray) -> np.ndarray:
    """The first row of each code, in code order, for codes numbered in order of first
    appearance (``pd.factorize``): where a new running maximum appears. ``np.unique(...,
    return_index=True)`` gives the same rows with a sort."""
    if not len(codes):
        return np.zeros(0, dtype="int64")
    top = np.maximum.accumulate(codes)
    return np.flatnonzero(np.r_[True, top[1:] > top[:-1]])


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
    # Connections are counted by their first record: since the collector reports a flow
    # within a second of its start, a connection that spans a tick has two records (first
    # sight, then its end), and counting records would double it.
    opens = f["first"].to_numpy(dtype=bool)
    out: dict[str, np.ndarray] = {}
    out["flows"] = _sum(gid, ng, opens.astype("float64"))
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
    rejected = f["rejected"].to_numpy() & opens
    syn_only = f["syn_only"].to_numpy() & opens
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
    # Long-lived: a record that spans LONG_LIVED_S, or an interim record past the first sight
    # (the flow outlived the collector's active timeout).
    long_lived = (dur >= LONG_LIVED_S) | (~f["final"].to_numpy(dtype=bool) & ~opens)
    out["long_lived"] = _sum(gid, ng, long_lived.astype("float64"))
    return pd.DataFrame(out)


def _dns(f: pd.DataFrame, gid: np.ndarray, ng: int) -> dict[str, np.ndarray]:
    """DNS per entity-window, weighted by queries (a record of 300 queries counts 300).

    Names: distinct first names of non-aggregated records plus the aggregated records' own
    distinct counts. The cluster DNS's own forwarding is left out (see :func:`_resolver`).
    """
    q = f["dns_n"].to_numpy()
    has = (q > 0) & ~f["src_resolver"].to_numpy(dtype=bool)
    out = {
        k: np.zeros(ng)
        for k in ("dns_queries", "dns_names", "dns_max_subdomains", "dns_mean_len", "dns_mean_entropy")
    }
    if not has.any():
        return out
    g = gid[has]
    q = q[has]
    h = f["dns_hash"].to_numpy()[has]
    one = h != 0  # the record has a first name (counted once per window, by its hash)
    cnt = _sum(g, ng, q)
    safe = np.maximum(cnt, 1.0)
    out["dns_queries"] = cnt
    out["dns_names"] = _nunique(g, ng, h, one) + _sum(g, ng, f["dns_names_n"].to_numpy()[has])
    out["dns_mean_len"] = _sum(g, ng, f["dns_len"].to_numpy()[has] * q) / safe
    out["dns_mean_entropy"] = _sum(g, ng, f["dns_ent"].to_numpy()[has] * q) / safe
    reg = f["dns_reg"].to_numpy()[has]
    ext = reg != 0  # cluster-internal and reverse names have registered domain 0
    if ext.any():
        # Per (window, domain): distinct first names of plain records + aggregated names.
        g_e, h_e, one_e = g[ext], h[ext], one[ext]
        pair, _ = pd.factorize(g_e.astype("int64") * (int(reg.max()) + 1) + reg[ext])
        npair = int(pair.max()) + 1
        total = np.bincount(pair, weights=f["dns_reg_names"].to_numpy()[has][ext], minlength=npair)
        if one_e.any():
            plain_pair = pair[one_e]
            _, idx = np.unique(mix(h_e[one_e], plain_pair.astype("uint64"), 14), return_index=True)
            total += np.bincount(plain_pair[idx], minlength=npair)
        pair_g = np.zeros(npair, dtype="int64")
        pair_g[pair] = g_e
        np.maximum.at(out["dns_max_subdomains"], pair_g, total)
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
            "own": False,
            "dst_ip": dst,
            "bytes": f["bytes_out"].to_numpy(dtype="float64"),
            "bytes_in": f["bytes_in"].to_numpy(dtype="float64"),
            "window_start": f["window_start"].to_numpy(),
        }
    )
    g = local[ext]
    hd = vocab.hash_of(g["dst_ip"].to_numpy())
    glob = g.assign(hash=mix(hd, 0, 6), glob=True)
    # The entity's own edge to each external address: whether its workload knew the address
    # from another pod (a CronJob's previous run) before this one used it.
    own = g.assign(hash=mix(mix(p.entity_hash[ext], hd, 12), 0, 13), own=True)
    return pd.concat([local, glob, own], ignore_index=True)


def novelty_features(
    p: Prepared, edges: pd.DataFrame, seen: SeenEdges
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Never-seen edges per entity-window (``seen`` is updated later by :func:`commit_edges`).

    Returns the features, the per-flow local edges, and every edge row (for the commit).
    Numpy over the edge columns, one frame built at the end: early firing calls this on a
    few hundred rows many times a minute, where each pandas step cost more than its work.
    """
    ng = len(p.keys)
    h_all = edges["hash"].to_numpy()
    row, uniq = pd.factorize(h_all)
    hashes = np.asarray(uniq, dtype="uint64")
    ws_all = edges["window_start"].to_numpy()
    chunk_first = np.full(len(hashes), np.inf)
    np.minimum.at(chunk_first, row, ws_all.astype("float64", copy=False))
    pos = seen.positions(hashes)
    first = np.fmin(seen.first_at(pos), chunk_first)[row]
    prior = seen.bytes_at(pos)[row]
    taint_until, _ = seen.taint_at(pos)
    # New: never seen before this window, or tainted by an alerted movement of another entity.
    tainted = taint_until[row] > ws_all
    if tainted.any():  # ...unless this entity was itself alerted on for that edge, recently
        idx = np.flatnonzero(tainted)
        tainted[idx] = ~seen.alerted_before(h_all[idx], edges["ent"].to_numpy()[idx], ws_all[idx])
    new = (first >= ws_all) | tainted
    glob = edges["glob"].to_numpy()
    own = edges["own"].to_numpy()
    local = ~glob & ~own
    edges = edges.assign(first=first, prior=prior, new=new)
    e = _rows(edges, local)
    # Repeat: the workload used this external address (edge not new, not tainted) before
    # this entity first did. Glob and own rows are in the order of the local external rows.
    ext_all = edges["ext"].to_numpy()
    e_ext = ext_all[local]
    repeat = np.zeros(len(edges), dtype=bool)
    repeat[glob] = ~new[local][e_ext] & (first[local][e_ext] < first[own])
    edges = edges.assign(repeat=repeat)
    gid = e["gid"].to_numpy()
    new_l, ext, h, dst = new[local], e_ext, h_all[local], e["dst_ip"].to_numpy()
    out = {
        "new_edges": _nunique(gid, ng, h, new_l),
        "new_int_peers": _nunique(gid, ng, dst, new_l & ~ext),
        "new_int_edges": _nunique(gid, ng, h, new_l & ~ext),
        "new_ext_dsts": _nunique(gid, ng, dst, new_l & ext),
        "new_ext_bytes": _sum(gid, ng, np.where(new_l & ext, e["bytes"].to_numpy(), 0.0)),
    }
    out.update(_young(p, edges, glob, row, first, prior, repeat))
    return pd.DataFrame(out), e, edges


def _rows(frame: pd.DataFrame, mask: np.ndarray) -> pd.DataFrame:
    """``frame[mask]``; a slice when the rows are a prefix (the local edges of :func:`edge_table`)."""
    n = int(mask.sum())
    if mask[:n].all():
        return frame.iloc[:n]
    return frame[mask]


def _young(
    p: Prepared,
    edges: pd.DataFrame,
    glob: np.ndarray,
    row: np.ndarray,
    first: np.ndarray,
    prior: np.ndarray,
    repeat: np.ndarray,
) -> dict[str, np.ndarray]:
    """Bytes sent to an address new to the whole cluster, over its young life: per
    entity-window, its top young address (most bytes, this window's and before).

    Per (entity-window, address) in the order the rows first name them (a groupby's
    ``sort=False``), then the same quicksort on the totals that picked the top before: ties
    break as they did."""
    ng = len(p.keys)
    young = (
        "young_ext_bytes",
        "young_ext_age",
        "young_ext_upload_ratio",
        "young_ext_repeat",
        "young_ext_prior",
    )
    out = {k: np.zeros(ng) for k in young}
    sel = np.flatnonzero(glob)
    if not len(sel):
        return out
    ws_now = float(p.keys["window_start"].max())
    sel = sel[(ws_now - first[sel]) <= YOUNG_EDGE_S]
    if not len(sel):
        return out
    gid = edges["gid"].to_numpy()[sel].astype("int64")
    codes, uniq = pd.factorize(gid * (int(row.max()) + 1) + row[sel])
    npair = len(uniq)
    head = np.full(npair, len(sel), dtype="int64")
    np.minimum.at(head, codes, np.arange(len(sel)))  # each pair's first row
    b = np.bincount(codes, weights=edges["bytes"].to_numpy(dtype="float64")[sel], minlength=npair)
    bi = np.bincount(codes, weights=edges["bytes_in"].to_numpy(dtype="float64")[sel], minlength=npair)
    not_repeat = np.bincount(codes, weights=(~repeat[sel]).astype("float64"), minlength=npair)
    g_pair = gid[head]
    total = b + prior[sel][head]
    order = total.argsort(kind="quicksort")
    # Each entity-window's last pair in that order (the groupby's ``duplicated(keep="last")``).
    last = np.full(ng, -1, dtype="int64")
    np.maximum.at(last, g_pair[order], np.arange(npair))
    top = order[last[last >= 0]]
    idx = g_pair[top]
    out["young_ext_bytes"][idx] = total[top]
    out["young_ext_age"][idx] = p.keys["window_start"].to_numpy()[idx] - first[sel][head][top]
    out["young_ext_upload_ratio"][idx] = b[top] / np.maximum(bi[top], 1.0)
    # Detail columns (see DETAIL_COLUMNS): whether the top young address is a repeat of the
    # workload's, and the bytes the cluster had sent it before this window.
    out["young_ext_repeat"][idx] = (not_repeat[top] == 0).astype("float64")
    out["young_ext_prior"][idx] = prior[sel][head][top]
    return out


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
    p: Prepared,
    log: ConnectionLog,
    seen: SeenEdges,
    vocab: Vocab,
    min_conns: int,
    max_jitter: float = 0.5,
) -> pd.DataFrame:
    """Periodicity of each entity's connections to each external destination, jitter-tolerant.

    C2 frameworks jitter their sleep by 0-50 %, which RITA's skew and MAD-of-intervals (tuned
    for day-long series) read as noise. Here the intervals' dispersion is the mean of
    ``IQR / median`` and ``2 * MAD / median`` (both equal ``j`` for a sleep jittered
    uniformly by ±``j``, and about 1.5 for random, Poisson-like traffic); up to
    ``max_jitter`` counts as fully regular, falling to 0 at ``max_jitter + 0.7``. The sizes
    score the same way on ``MAD / median`` (0.1 free, 0 at 0.5). Score: ``(2 * intervals +
    sizes) / 3``, scaled by persistence (connections against ``2 * min_conns``). Only a
    flow's first record is a connection (``first``; an interim record repeats its start).
    The history is the pair's newest connections within the horizon
    (:class:`ConnectionLog`). Each window reports its best destination, how many pods of
    the workload talk to it (``beacon_peers``: a SaaS API is called by every replica), how
    long the cluster has known that address (``beacon_edge_age``) and the median interval
    (``beacon_interval``, a detail column: not part of the window record).
    """
    ng = len(p.keys)
    cols = ("beacon_score", "beacon_conns", "beacon_peers", "beacon_edge_age", "beacon_interval")
    out = {k: np.zeros(ng) for k in cols}
    f = p.flows
    now = float(f["ts_end"].max())
    ext = f["ext"].to_numpy() & f["first"].to_numpy(dtype=bool)
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
    disp, median = _dispersion_rows(intervals, n - 1)
    ts_score = np.clip(1.0 - (disp - max_jitter) / 0.7, 0.0, 1.0)
    sdisp, _ = _dispersion_rows(np.where(np.isnan(ts), np.nan, size), n, floor=64.0, iqr=False)
    size_score = np.clip(1.0 - (sdisp - 0.1) / 0.4, 0.0, 1.0)
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
            "interval": median,
        }
    )
    best = best.sort_values("score", kind="stable").drop_duplicates("gid", keep="last")
    idx = best["gid"].to_numpy(dtype="int64")
    out["beacon_score"][idx] = best["score"].to_numpy()
    out["beacon_conns"][idx] = best["n"].to_numpy()
    out["beacon_peers"][idx] = best["peers"].to_numpy()
    out["beacon_edge_age"][idx] = best["edge_age"].to_numpy()
    out["beacon_interval"][idx] = best["interval"].to_numpy()
    return pd.DataFrame(out)


AUTH_COLUMNS = ("auth_sessions", "auth_hosts", "auth_port", "auth_edge_age", "auth_session_bytes")
SHORT_SESSION_S = 30.0  # an authentication attempt: a session that ended within this long


def auth_features(p: Prepared, e: pd.DataFrame, ports: list[int]) -> pd.DataFrame:
    """Short sessions to authentication ports per entity-window, on its busiest edge.

    A session is a TCP connection to one of ``ports`` that exchanged data and ended within
    :data:`SHORT_SESSION_S` (its final record; distinct (destination, source port), so a
    flow's interim records do not count twice). Grouped by edge (the workload to a peer
    workload, node group or address, and port: see :func:`edge_table`); the edge with the
    most sessions gives ``auth_sessions``, its distinct hosts ``auth_hosts``, the port,
    how long ago the edge was first seen (``auth_edge_age``) and the bytes sent per
    session. ``e``: the local edges of :func:`novelty_features` (one row per flow).
    Detail columns (not part of the window record): what :mod:`.detectors.brute_force` reads.
    """
    ng = len(p.keys)
    out = {k: np.zeros(ng) for k in AUTH_COLUMNS}
    f = p.flows
    port = f["dst_port"].to_numpy(dtype="int64")
    auth = np.isin(port, np.asarray(ports, dtype="int64")) & (f["proto"].to_numpy() == Proto.TCP)
    auth &= ~(f["rejected"].to_numpy() | f["syn_only"].to_numpy())
    dur = f["ts_end"].to_numpy() - f["ts_start"].to_numpy()
    ended_all = auth & f["final"].to_numpy(dtype=bool) & (dur <= SHORT_SESSION_S)
    if not ended_all.any():
        return pd.DataFrame(out)
    rows = np.flatnonzero(auth)
    ended = ended_all[rows]
    gid = p.gid[rows]
    # One key per (entity-window, edge); numpy only (this runs on every window).
    key, _ = pd.factorize(mix(e["hash"].to_numpy()[rows], gid.astype("uint64"), 15))
    nk = int(key.max()) + 1
    dst = f["dst_ip"].to_numpy(dtype="int64")[rows]
    session = (dst << 16) | f["src_port"].to_numpy(dtype="int64")[rows]

    def distinct(values: np.ndarray) -> np.ndarray:
        k = key[ended]
        _, idx = np.unique(mix(values[ended].astype("uint64"), k.astype("uint64"), 16), return_index=True)
        return np.bincount(k[idx], minlength=nk).astype("float64")

    sessions = distinct(session)
    hosts = distinct(dst)
    first_seen = np.full(nk, np.inf)
    np.minimum.at(first_seen, key, e["first"].to_numpy()[rows])
    nbytes = np.bincount(key, weights=f["bytes_out"].to_numpy(dtype="float64")[rows], minlength=nk)
    key_gid = np.zeros(nk, dtype="int64")
    key_gid[key] = gid
    key_port = np.zeros(nk)
    key_port[key] = port[rows]
    # The busiest edge of each entity-window: sort by sessions, keep each gid's last.
    order = np.lexsort((sessions, key_gid))
    g_sorted = key_gid[order]
    best = order[np.r_[g_sorted[1:] != g_sorted[:-1], True]]
    best = best[sessions[best] > 0]
    idx = key_gid[best]
    ws = p.keys["window_start"].to_numpy()[idx]
    out["auth_sessions"][idx] = sessions[best]
    out["auth_hosts"][idx] = hosts[best]
    out["auth_port"][idx] = key_port[best]
    out["auth_edge_age"][idx] = ws - first_seen[best]
    out["auth_session_bytes"][idx] = nbytes[best] / sessions[best]
    return pd.DataFrame(out)
    dur = f["ts_end"].to_numpy() - f["ts_start"].to_numpy()
    rows = np.flatnonzero(auth)
    dst = f["dst_ip"].to_numpy(dtype="int64")[rows]
    d = pd.DataFrame(
        {
            "gid": p.gid[rows],
            "edge": e["hash"].to_numpy()[rows],
            "first_seen": e["first"].to_numpy()[rows],
            "dst": dst,
            "session": (dst << 16) | f["src_port"].to_numpy(dtype="int64")[rows],
            "ended": f["final"].to_numpy(dtype=bool)[rows] & (dur[rows] <= SHORT_SESSION_S),
            "bytes": f["bytes_out"].to_numpy(dtype="float64")[rows],
            "port": port[rows].astype("float64"),
        }
    )
    keys = ["gid", "edge"]
    ended = d[d["ended"].to_numpy()].drop_duplicates(["gid", "edge", "session"])
    if not len(ended):
        return pd.DataFrame(out)
    per = ended.groupby(keys).agg(
        sessions=("session", "size"), hosts=("dst", "nunique"), port=("port", "first")
    )
    per = per.join(d.groupby(keys).agg(first_seen=("first_seen", "min"), nbytes=("bytes", "sum")))
    per = per.sort_values("sessions", kind="stable")
    per = per[~per.index.get_level_values(0).duplicated(keep="last")]
    idx = per.index.get_level_values(0).to_numpy(dtype="int64")
    ws = p.keys["window_start"].to_numpy()[idx]
    out["auth_sessions"][idx] = per["sessions"].to_numpy(dtype="float64")
    out["auth_hosts"][idx] = per["hosts"].to_numpy(dtype="float64")
    out["auth_port"][idx] = per["port"].to_numpy()
    out["auth_edge_age"][idx] = ws - per["first_seen"].to_numpy()
    out["auth_session_bytes"][idx] = per["nbytes"].to_numpy() / per["sessions"].to_numpy()
    return pd.DataFrame(out)


def detail_features(
    p: Prepared,
    e: pd.DataFrame | None,
    novelty: pd.DataFrame | None,
    beacon: pd.DataFrame | None,
    settings: Settings,
    vocab: Vocab | None = None,
) -> pd.DataFrame:
    """What detectors read beyond the window record (:data:`DETAIL_COLUMNS`), index = gid.

    Kept out of :data:`~flowwarden.records.WINDOW_FEATURES` (the anomaly model's columns and
    the stored window record): these are rule detectors' evidence. An open window scored
    early has no local edges or beacon history yet (``e``, ``beacon`` None), and no novelty
    when no early detector that reads it had rows (``novelty`` None): those read 0.
    """
    ng = len(p.keys)
    zeros = np.zeros(ng)
    cols: dict[str, np.ndarray] = {}
    # One frame of columns (not a concat of five frames: early firing builds this per pass).
    if e is not None:
        auth = auth_features(p, e, list(settings.pipeline.auth_ports))
        cols.update({c: auth[c].to_numpy() for c in AUTH_COLUMNS})
    else:
        cols.update({c: zeros for c in AUTH_COLUMNS})
    for c in ("young_ext_repeat", "young_ext_prior"):
        cols[c] = novelty[c].to_numpy() if novelty is not None else zeros
    cols["beacon_interval"] = beacon["beacon_interval"].to_numpy() if beacon is not None else zeros
    resolver = np.zeros(ng, dtype=bool)
    np.logical_or.at(resolver, p.gid, p.flows["src_resolver"].to_numpy(dtype=bool))
    cols["is_resolver"] = resolver
    # Namespaces as trust boundaries (needs the closed window's local edges and the vocabulary).
    if e is not None and vocab is not None:
        boundary = boundary_features(p, e, vocab, settings.cluster)
        cols.update({c: boundary[c].to_numpy() for c in boundary.columns})
    else:
        cols.update({c: zeros for c in BOUNDARY_COLUMNS})
    return pd.DataFrame(cols)


DETAIL_COLUMNS: tuple[str, ...] = (
    *AUTH_COLUMNS,
    "young_ext_repeat",
    "young_ext_prior",
    "beacon_interval",
    "is_resolver",
    *BOUNDARY_COLUMNS,
)


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


def _dispersion_rows(
    values: np.ndarray, n: np.ndarray, *, floor: float = 1e-3, iqr: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: robust relative dispersion of its first ``n`` values, and their median.

    ``2 * MAD / median``, averaged with ``IQR / median`` when ``iqr`` (the median is held
    at least ``floor``). ``values`` holds each row's ``n`` values first, NaN after (any order).
    """
    v = np.sort(values, axis=1)  # NaN last
    q1, q2, q3 = _row_quantiles(v, n, (0.25, 0.5, 0.75))
    dev = np.sort(np.abs(v - q2[:, None]), axis=1)
    (mad,) = _row_quantiles(dev, n, (0.5,))
    scale = np.maximum(q2, floor)
    disp = 2.0 * mad / scale
    if iqr:
        disp = (disp + (q3 - q1) / scale) / 2.0
    return disp, q2
