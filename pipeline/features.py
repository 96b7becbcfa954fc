"""Features per entity-window, vectorised: one ``np.bincount`` per feature, no per-flow loop.

Input: enriched flows of closed windows (with ``ws``). Only flows whose source is inside the
cluster are scored (``internal`` and ``egress``); the entity is the source pod (its
``namespace/pod``), or the source address when no pod owns it (a node, an unknown host).

The stateless features come from the flows alone (:func:`window_features`); the ones that
need memory (never-seen edges, young-edge bytes, the beacon score) are added by
:func:`novelty_features` and :func:`beacon_features` from :mod:`pipeline.state`.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from flowwarden.records import Direction, FlowState, Proto
from flowwarden.settings import Settings
from pipeline.enrich import in_cidrs
from pipeline.state import ConnectionLog, RecentActivity, SeenEdges, edge_hashes

LONG_LIVED_S = 300.0
YOUNG_EDGE_S = 3600.0  # an external edge first seen within this long is "young"
CLUSTER_DOMAINS = frozenset({"cluster.local"})  # never counted as tunnel subdomains

# Every numeric feature, in a fixed order (the isolation forest's columns come from here).
FEATURES: tuple[str, ...] = (
    "flows",
    "bytes_out",
    "bytes_out_ext",
    "bytes_out_int",
    "pkts_out_ext",
    "pkts_out_int",
    "bytes_in_ext",
    "ext_dsts",
    "int_peers",
    "dst_ports",
    "max_ports_per_dst",
    "icmp_dsts",
    "failed_conns",
    "failed_share",
    "rejected_share",
    "syn_only_share",
    "failed_dsts",
    "failed_ports",
    "cp_api",
    "cp_etcd",
    "cp_kubelet",
    "cp_scheduler",
    "cp_controller_manager",
    "metadata_api",
    "dns_queries",
    "dns_names",
    "dns_max_subdomains",
    "dns_mean_len",
    "dns_mean_entropy",
    "long_lived",
    "new_edges",
    "new_int_peers",
    "new_int_edges",
    "new_ext_dsts",
    "new_ext_bytes",
    "young_ext_bytes",
    "young_ext_age",
    "recent_new_peers",
    "recent_failed_dsts",
    "recent_ports_per_dst",
    "beacon_score",
    "beacon_conns",
    "beacon_peers",
    "beacon_edge_age",
)
KEY_COLUMNS: tuple[str, ...] = (
    "ws",
    "we",
    "entity",
    "src_ip",
    "namespace",
    "pod",
    "workload",
    "wl_key",
    "node",
    "is_node",
)


@dataclass
class Prepared:
    """Scored flows with their group ids and helper columns, shared by every feature step."""

    flows: pd.DataFrame
    gid: np.ndarray
    keys: pd.DataFrame  # one row per entity-window, index = gid


@lru_cache(maxsize=8)
def _api_service_ip(service_cidr: str) -> str:
    return str(ipaddress.ip_network(service_cidr, strict=False)[1])


def node_mask(ips: pd.Series, settings: Settings, node_ips: dict[str, str]) -> np.ndarray:
    """Addresses that are nodes: the node CIDRs, configured node IPs, and hosts of host-network pods."""
    known = set(node_ips) | set(settings.cluster.node_ips)
    m = in_cidrs(ips, settings.cluster.node_cidrs)
    if known:
        m |= ips.isin(known).to_numpy()
    return m


def prepare(flows: pd.DataFrame, settings: Settings, node_ips: dict[str, str]) -> Prepared | None:
    """Keep flows sourced inside the cluster, name their entity, number their entity-windows."""
    d = flows["direction"].to_numpy(dtype=object)
    f = flows[(d == Direction.INTERNAL.value) | (d == Direction.EGRESS.value)]
    if not len(f):
        return None
    f = f.reset_index(drop=True)
    pod = f["src_pod"].to_numpy(dtype=object)
    ns = f["src_namespace"].to_numpy(dtype=object)
    wl = f["src_workload"].to_numpy(dtype=object)
    ip = f["src_ip"].to_numpy(dtype=object)
    has_pod = pod != ""
    entity = np.where(has_pod, ns + "/" + pod, ip)
    wl_key = np.where(wl != "", ns + "/" + wl, entity)
    is_node = node_mask(f["src_ip"], settings, node_ips) & ~has_pod
    ws = f["ws"].to_numpy(dtype="float64")
    e_codes, e_uniq = pd.factorize(entity)
    w_codes, _ = pd.factorize(ws)
    gid, _ = pd.factorize(w_codes.astype("int64") * len(e_uniq) + e_codes)
    f = f.assign(entity=entity, wl_key=wl_key, is_node=is_node)
    first = pd.DataFrame({"gid": gid, "row": np.arange(len(f))}).drop_duplicates("gid").sort_values("gid")
    r = first["row"].to_numpy()
    keys = pd.DataFrame(
        {
            "ws": ws[r],
            "we": ws[r] + settings.pipeline.window_s,
            "entity": entity[r],
            "src_ip": ip[r],
            "namespace": ns[r],
            "pod": pod[r],
            "workload": wl[r],
            "wl_key": wl_key[r],
            "node": f["node"].to_numpy(dtype=object)[r],
            "is_node": is_node[r],
        }
    )
    return Prepared(f, gid, keys)


def _nunique(gid: np.ndarray, ng: int, values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Distinct ``values`` per group (optionally among rows where ``mask``)."""
    if mask is not None:
        gid, values = gid[mask], values[mask]
    if not len(gid):
        return np.zeros(ng)
    codes, uniq = pd.factorize(values)
    pairs = np.unique(gid.astype("int64") * (len(uniq) + 1) + codes)
    return np.bincount(pairs // (len(uniq) + 1), minlength=ng).astype("float64")


def _sum(gid: np.ndarray, ng: int, weights: np.ndarray | None = None) -> np.ndarray:
    return np.bincount(gid, weights=weights, minlength=ng).astype("float64")


@lru_cache(maxsize=262144)
def _label_stats(name: str) -> tuple[float, float, str]:
    """(length, Shannon entropy of the leftmost labels, registered domain) of a DNS name."""
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


def window_features(p: Prepared, settings: Settings, node_ips: dict[str, str]) -> pd.DataFrame:
    """The stateless features of every entity-window in ``p`` (index = gid)."""
    f, gid, ng = p.flows, p.gid, len(p.keys)
    d = f["direction"].to_numpy(dtype=object)
    ext = d == Direction.EGRESS.value
    internal = d == Direction.INTERNAL.value
    bo = f["bytes_out"].to_numpy(dtype="float64")
    po = f["pkts_out"].to_numpy(dtype="float64")
    bi = f["bytes_in"].to_numpy(dtype="float64")
    dst = f["dst_ip"].to_numpy(dtype=object)
    port = f["dst_port"].to_numpy(dtype="int64")
    proto = f["proto"].to_numpy()
    state = f["state"].to_numpy(dtype=object)
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
    out["dst_ports"] = _nunique(gid, ng, port, proto != Proto.ICMP)
    # Ports per (entity-window, destination): a port scan hammers one host.
    dcodes, duniq = pd.factorize(dst)
    gd = gid.astype("int64") * (len(duniq) + 1) + dcodes
    gd_codes, gd_uniq = pd.factorize(gd)
    ports_per = _nunique(gd_codes, len(gd_uniq), port)
    best = np.zeros(ng)
    np.maximum.at(best, (gd_uniq // (len(duniq) + 1)).astype("int64"), ports_per)
    out["max_ports_per_dst"] = best
    out["icmp_dsts"] = _nunique(gid, ng, dst, (proto == Proto.ICMP) | (proto == Proto.ICMPV6))
    rejected = state == FlowState.REJECTED.value
    syn_only = state == FlowState.SYN_ONLY.value
    failed = rejected | syn_only
    n = np.maximum(out["flows"], 1.0)
    out["failed_conns"] = _sum(gid, ng, failed.astype("float64"))
    out["failed_share"] = out["failed_conns"] / n
    out["rejected_share"] = _sum(gid, ng, rejected.astype("float64")) / n
    out["syn_only_share"] = _sum(gid, ng, syn_only.astype("float64")) / n
    out["failed_dsts"] = _nunique(gid, ng, dst, failed)
    out["failed_ports"] = _nunique(gid, ng, port, failed)
    out.update(_control_plane(f, gid, ng, settings, node_ips))
    out.update(_dns(f, gid, ng))
    dur = f["ts_end"].to_numpy() - f["ts_start"].to_numpy()
    long_lived = (dur >= LONG_LIVED_S) | ~f["final"].to_numpy(dtype=bool)
    out["long_lived"] = _sum(gid, ng, long_lived.astype("float64"))
    return pd.DataFrame(out)


def _control_plane(
    f: pd.DataFrame, gid: np.ndarray, ng: int, settings: Settings, node_ips: dict[str, str]
) -> dict[str, np.ndarray]:
    cp = settings.control_plane
    port = f["dst_port"].to_numpy(dtype="int64")
    dst_node = node_mask(f["dst_ip"], settings, node_ips)
    if cp.api_server_ips:
        dst_node |= f["dst_ip"].isin(cp.api_server_ips).to_numpy()
    api_svc = [_api_service_ip(c) for c in settings.cluster.service_cidrs]
    to_api = (dst_node & (port == cp.api_server_port)) | (
        f["dst_ip"].isin(api_svc).to_numpy() & (port == 443)
    )
    tcp = f["proto"].to_numpy() == Proto.TCP
    meta = f["dst_ip"].isin(settings.cluster.metadata_api).to_numpy()
    return {
        "cp_api": _sum(gid, ng, (to_api & tcp).astype("float64")),
        "cp_etcd": _sum(gid, ng, (dst_node & tcp & np.isin(port, cp.etcd_ports)).astype("float64")),
        "cp_kubelet": _sum(gid, ng, (dst_node & tcp & (port == cp.kubelet_port)).astype("float64")),
        "cp_scheduler": _sum(gid, ng, (dst_node & tcp & (port == cp.scheduler_port)).astype("float64")),
        "cp_controller_manager": _sum(
            gid, ng, (dst_node & tcp & (port == cp.controller_manager_port)).astype("float64")
        ),
        "metadata_api": _sum(gid, ng, meta.astype("float64")),
    }


def _dns(f: pd.DataFrame, gid: np.ndarray, ng: int) -> dict[str, np.ndarray]:
    q = f["dns_qname"].to_numpy(dtype=object)
    has = q != ""
    out = {
        k: np.zeros(ng)
        for k in ("dns_queries", "dns_names", "dns_max_subdomains", "dns_mean_len", "dns_mean_entropy")
    }
    if not has.any():
        return out
    g, names = gid[has], q[has]
    codes, uniq = pd.factorize(names)
    stats = [_label_stats(str(u)) for u in uniq]  # once per distinct name, not per flow
    length = np.array([s[0] for s in stats])[codes]
    ent = np.array([s[1] for s in stats])[codes]
    reg = np.array([s[2] for s in stats], dtype=object)[codes]
    cnt = _sum(g, ng)
    out["dns_queries"] = cnt
    out["dns_names"] = _nunique(g, ng, names)
    safe = np.maximum(cnt, 1.0)
    out["dns_mean_len"] = _sum(g, ng, length) / safe
    out["dns_mean_entropy"] = _sum(g, ng, ent) / safe
    rcodes, runiq = pd.factorize(reg)
    gr = g.astype("int64") * (len(runiq) + 1) + rcodes
    gr_codes, gr_uniq = pd.factorize(gr)
    subs = _nunique(gr_codes, len(gr_uniq), names)
    internal_reg = np.isin(runiq[(gr_uniq % (len(runiq) + 1)).astype("int64")], list(CLUSTER_DOMAINS))
    subs = np.where(internal_reg, 0.0, subs)
    best = np.zeros(ng)
    np.maximum.at(best, (gr_uniq // (len(runiq) + 1)).astype("int64"), subs)
    out["dns_max_subdomains"] = best
    return out


# ----------------------------------------------------------------------- with memory


def global_hashes(dst_ip: pd.Series) -> np.ndarray:
    """The cluster-wide edge of an external address: has *anyone* in the cluster talked to it?"""
    return edge_hashes(pd.Series(["*"] * len(dst_ip)), dst_ip, pd.Series(np.zeros(len(dst_ip), dtype="int64")))


def edge_table(p: Prepared) -> pd.DataFrame:
    """One row per flow and edge: workload-level edges, plus a cluster-wide edge per external address."""
    f = p.flows
    dwl = f["dst_workload"].to_numpy(dtype=object)
    peer = np.where(
        dwl != "", f["dst_namespace"].to_numpy(dtype=object) + "/" + dwl, f["dst_ip"].to_numpy(dtype=object)
    )
    ext = (f["direction"] == Direction.EGRESS.value).to_numpy()
    local = pd.DataFrame(
        {
            "gid": p.gid,
            "hash": edge_hashes(f["wl_key"], pd.Series(peer), f["dst_port"]),
            "ext": ext,
            "glob": False,
            "dst_ip": f["dst_ip"].to_numpy(dtype=object),
            "bytes": f["bytes_out"].to_numpy(dtype="float64"),
            "ws": f["ws"].to_numpy(),
            "src": f["wl_key"].to_numpy(dtype=object),
        }
    )
    g = local[ext]
    glob = g.assign(hash=global_hashes(g["dst_ip"]), glob=True, src="*")
    return pd.concat([local, glob], ignore_index=True)


def novelty_features(p: Prepared, edges: pd.DataFrame, seen: SeenEdges) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Never-seen edges per entity-window; updates ``seen``. Returns (features, per-flow local edges)."""
    ng = len(p.keys)
    u = edges.groupby("hash", sort=False).agg(
        first=("ws", "min"), last=("ws", "max"), bytes=("bytes", "sum"), src=("src", "first")
    )
    hashes = u.index.to_numpy(dtype="uint64")
    prior_first = seen.first_seen(hashes)
    prior_bytes = seen.young_bytes(hashes)
    first = np.fmin(prior_first, u["first"].to_numpy())
    first_map = pd.Series(first, index=u.index)
    prior_map = pd.Series(np.nan_to_num(prior_bytes), index=u.index)
    edges = edges.assign(
        first=first_map.reindex(edges["hash"]).to_numpy(), prior=prior_map.reindex(edges["hash"]).to_numpy()
    )
    glob = edges["glob"].to_numpy()
    e = edges[~glob]
    e = e.assign(new=e["first"].to_numpy() >= e["ws"].to_numpy())
    gid = e["gid"].to_numpy()
    new = e["new"].to_numpy()
    ext = e["ext"].to_numpy()
    h = e["hash"].to_numpy()
    dst = e["dst_ip"].to_numpy(dtype=object)
    out = {
        "new_edges": _nunique(gid, ng, h, new),
        "new_int_peers": _nunique(gid, ng, dst, new & ~ext),
        "new_int_edges": _nunique(gid, ng, h, new & ~ext),
        "new_ext_dsts": _nunique(gid, ng, dst, new & ext),
        "new_ext_bytes": _sum(gid, ng, np.where(new & ext, e["bytes"].to_numpy(), 0.0)),
    }
    # Bytes sent to an address new to the whole cluster, over its young life.
    ge = edges[glob].groupby(["gid", "hash"], sort=False).agg(
        b=("bytes", "sum"), prior=("prior", "first"), first=("first", "first")
    )
    young = np.zeros(ng)
    young_age = np.zeros(ng)
    ws_now = float(p.keys["ws"].max())
    ge = ge[(ws_now - ge["first"]) <= YOUNG_EDGE_S]
    if len(ge):
        ge = ge.assign(total=ge["b"] + ge["prior"]).sort_values("total")
        top = ge[~ge.index.get_level_values(0).duplicated(keep="last")]
        idx = top.index.get_level_values(0).to_numpy(dtype="int64")
        young[idx] = top["total"].to_numpy()
        young_age[idx] = p.keys["ws"].to_numpy()[idx] - top["first"].to_numpy()
    out["young_ext_bytes"] = young
    out["young_ext_age"] = young_age
    seen.update(
        hashes, u["first"].to_numpy(), u["last"].to_numpy(), u["bytes"].to_numpy(), u["src"].to_numpy(dtype=object)
    )
    return pd.DataFrame(out), e


def recent_features(p: Prepared, e: pd.DataFrame, recent: RecentActivity) -> pd.DataFrame:
    """Distinct new internal peers and failed targets per entity over the recent horizon (incl. now)."""
    ng = len(p.keys)
    f = p.flows
    ent = pd.util.hash_array(p.keys["entity"].to_numpy(dtype=object))
    failed = f["state"].isin([FlowState.REJECTED.value, FlowState.SYN_ONLY.value]).to_numpy()
    newp = e[e["new"].to_numpy() & ~e["ext"].to_numpy()]
    ev = []
    if len(newp):
        ev.append(pd.DataFrame({"entity": ent[newp["gid"].to_numpy()], "kind": RecentActivity.NEW_PEER,
                                "dst": pd.util.hash_array(newp["dst_ip"].to_numpy(dtype=object)), "port": 0,
                                "ws": newp["ws"].to_numpy()}))
    if failed.any():
        ff = f[failed]
        ev.append(pd.DataFrame({"entity": ent[p.gid[failed]], "kind": RecentActivity.FAILED,
                                "dst": pd.util.hash_array(ff["dst_ip"].to_numpy(dtype=object)),
                                "port": ff["dst_port"].to_numpy(dtype="int64"), "ws": ff["ws"].to_numpy()}))
    events = pd.concat(ev, ignore_index=True) if ev else recent.table.iloc[0:0]
    recent.add(events, float(p.keys["ws"].max()))
    out = {k: np.zeros(ng) for k in ("recent_new_peers", "recent_failed_dsts", "recent_ports_per_dst")}
    t = recent.table
    if not len(t):
        return pd.DataFrame(out)
    pos = pd.Index(ent).get_indexer(t["entity"].to_numpy())
    mine = pos >= 0
    t, pos = t[mine], pos[mine]
    if not len(t):
        return pd.DataFrame(out)
    kind = t["kind"].to_numpy()
    dst = t["dst"].to_numpy()
    out["recent_new_peers"] = _nunique(pos, ng, dst, kind == RecentActivity.NEW_PEER)
    fail = kind == RecentActivity.FAILED
    out["recent_failed_dsts"] = _nunique(pos, ng, dst, fail)
    if fail.any():
        per = pd.DataFrame({"g": pos[fail], "d": dst[fail], "p": t["port"].to_numpy()[fail]})
        ports = per.drop_duplicates().groupby(["g", "d"]).size().groupby(level=0).max()
        out["recent_ports_per_dst"][ports.index.to_numpy(dtype="int64")] = ports.to_numpy(dtype="float64")
    return pd.DataFrame(out)


def beacon_features(
    p: Prepared, log: ConnectionLog, seen: SeenEdges, window_s: float, min_conns: int
) -> pd.DataFrame:
    """RITA-style periodicity of each entity's connections to each external destination.

    Score ingredients (each in [0, 1], 1 = machine-like): ``1 - |Bowley skew|`` and
    ``1 - MAD/median`` of the intervals between connection starts (weight 2), the same of
    the connection sizes (MAD against 32 bytes, weight 1); scaled by persistence (connections
    seen against ``2 * min_conns``). Each window reports its best destination, how many pods
    of the workload talk to it (``beacon_peers``: a SaaS API is called by every replica) and
    how long the cluster has known that address (``beacon_edge_age``).
    """
    ng = len(p.keys)
    out = {k: np.zeros(ng) for k in ("beacon_score", "beacon_conns", "beacon_peers", "beacon_edge_age")}
    f = p.flows
    now = float(f["ts_end"].max())
    ext = (f["direction"] == Direction.EGRESS.value).to_numpy()
    if not ext.any():
        log.add(log.table.iloc[0:0], now)
        return pd.DataFrame(out)
    g = f[ext]
    conns = pd.DataFrame(
        {
            "pair": edge_hashes(g["entity"], g["dst_ip"], g["dst_port"]),
            "wld": edge_hashes(g["wl_key"], g["dst_ip"], g["dst_port"]),
            "ts": g["ts_start"].to_numpy(),
            "bytes": g["bytes_out"].to_numpy(dtype="float64"),
            "gid": p.gid[ext],
            "dst": g["dst_ip"].to_numpy(dtype=object),
        }
    ).drop_duplicates(["pair", "ts"])
    log.add(conns, now)
    pairs = conns["pair"].unique()
    hist = log.history(pairs)
    counts = hist.groupby("pair").size()
    ok = counts[counts >= min_conns].index
    hist = hist[hist["pair"].isin(ok)].sort_values(["pair", "ts"])
    if not len(hist):
        return pd.DataFrame(out)
    pv = hist["pair"].to_numpy()
    same = pv[1:] == pv[:-1]
    iv = pd.DataFrame({"pair": pv[1:][same], "d": np.diff(hist["ts"].to_numpy())[same]})
    ts_score = _rita_score(iv, "d", mad_scale=None)
    size_score = _rita_score(hist[["pair", "bytes"]].rename(columns={"bytes": "d"}), "d", mad_scale=32.0)
    n = counts.reindex(ts_score.index).to_numpy(dtype="float64")
    persistence = np.minimum(1.0, n / (2.0 * min_conns))
    score = ((ts_score * 2.0 + size_score.reindex(ts_score.index).fillna(0.0)) / 3.0) * (0.5 + 0.5 * persistence)
    per_pair = pd.DataFrame({"score": score.to_numpy(), "n": n}, index=ts_score.index)
    c = conns.drop_duplicates("pair").set_index("pair")
    c = c[c.index.isin(per_pair.index)].join(per_pair)
    if not len(c):
        return pd.DataFrame(out)
    wl_hist = log.table[log.table["wld"].isin(c["wld"].unique())]
    peer_counts = wl_hist.groupby("wld")["pair"].nunique()
    c["peers"] = peer_counts.reindex(c["wld"]).fillna(1).to_numpy()
    first = seen.first_seen(global_hashes(pd.Series(c["dst"].to_numpy(dtype=object))))
    ws = p.keys["ws"].to_numpy()[c["gid"].to_numpy(dtype="int64")]
    c["edge_age"] = np.where(np.isnan(first), 0.0, ws - first)
    c = c.sort_values("score").drop_duplicates("gid", keep="last")
    idx = c["gid"].to_numpy(dtype="int64")
    out["beacon_score"][idx] = c["score"].to_numpy()
    out["beacon_conns"][idx] = c["n"].to_numpy()
    out["beacon_peers"][idx] = c["peers"].to_numpy()
    out["beacon_edge_age"][idx] = c["edge_age"].to_numpy()
    return pd.DataFrame(out)


def _rita_score(df: pd.DataFrame, col: str, mad_scale: float | None) -> pd.Series:
    """Per pair: mean of (1 - |Bowley skew|) and (1 - MAD / scale) of ``col``, in [0, 1]."""
    g = df.groupby("pair")[col]
    q = g.quantile([0.25, 0.5, 0.75]).unstack()  # type: ignore[arg-type]
    q1, q2, q3 = q[0.25], q[0.5], q[0.75]
    spread = q3 - q1
    skew = np.where(spread > 0, (q3 + q1 - 2 * q2) / spread.where(spread > 0, 1.0), 0.0)
    dev = (df[col] - df["pair"].map(q2)).abs()
    mad = dev.groupby(df["pair"]).median().reindex(q.index)
    scale = q2.clip(lower=1.0) if mad_scale is None else mad_scale
    mad_score = (1.0 - (mad / scale)).clip(lower=0.0, upper=1.0)
    return pd.Series((1.0 - np.abs(skew)) * 0.5 + mad_score.to_numpy() * 0.5, index=q.index)
