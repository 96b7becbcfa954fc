"""Namespaces as trust boundaries: what a never-seen edge across namespaces weighs.

A namespace is the unit a cluster's owners separate (``web`` facing the internet, ``prod-db``
holding the data), so a pod's first connection into another namespace says more than its
first call to a neighbour. Two facts per entity-window, over its never-seen internal edges:

- ``new_int_peers_weighted``: the distinct new internal peers, each weighing 1 inside the
  source's namespace and ``cluster.cross_namespace_weight`` (or the pair's own weight in
  ``cluster.namespace_pair_weights``) across; fan-out reads it instead of the plain count;
- ``trust_up_edges`` / ``trust_up_gap``: the new edges from a lower to a higher trust level
  (``cluster.namespace_trust``, levels ordered in ``cluster.trust_levels``) and the largest
  step, which the ``trust_boundary`` detector reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from flowwarden.settings import ClusterSettings

if TYPE_CHECKING:
    from flowwarden.pipeline.detection.features import Prepared
    from flowwarden.pipeline.detection.state import Vocab

BOUNDARY_COLUMNS = ("new_int_peers_weighted", "trust_up_edges", "trust_up_gap")
NO_LEVEL = -1


class TrustMap:
    """Trust levels and crossing weights of namespaces, read from the cluster settings."""

    def __init__(self, cluster: ClusterSettings) -> None:
        self.rank = {name: i for i, name in enumerate(cluster.trust_levels)}
        self.levels = {ns: self.rank[lv] for ns, lv in cluster.namespace_trust.items()}
        self.default = self.rank.get(cluster.namespace_trust_default, NO_LEVEL)
        self.cross = cluster.cross_namespace_weight
        self.pairs = {tuple(k.split("->", 1)): w for k, w in cluster.namespace_pair_weights.items()}

    @property
    def labelled(self) -> bool:
        return bool(self.levels) or self.default != NO_LEVEL

    def level(self, namespaces: np.ndarray) -> np.ndarray:
        """The level of each namespace name (``NO_LEVEL`` for none: not a pod, unlabelled)."""
        ns = pd.Series(namespaces, dtype=object)
        out = ns.map(self.levels).to_numpy(dtype="float64")
        pod = ns.fillna("").astype(str).to_numpy() != ""
        return np.where(np.isnan(out), np.where(pod, self.default, NO_LEVEL), out).astype("int64")

    def weight(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """What a new edge from namespace ``src`` to ``dst`` weighs (1 inside, or to no pod)."""
        s = pd.Series(src, dtype=object).fillna("").astype(str).to_numpy()
        d = pd.Series(dst, dtype=object).fillna("").astype(str).to_numpy()
        w = np.where((s != d) & (s != "") & (d != ""), self.cross, 1.0)
        for (ps, pd_), pw in self.pairs.items():
            w = np.where((s == ps) & (d == pd_), pw, w)
        return w

    def up(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """How many levels each edge climbs (0: same level, down, or a side unlabelled)."""
        ls, ld = self.level(src), self.level(dst)
        return np.where((ls != NO_LEVEL) & (ld != NO_LEVEL), np.maximum(ld - ls, 0), 0)


def boundary_features(p: Prepared, e: pd.DataFrame, vocab: Vocab, cluster: ClusterSettings) -> pd.DataFrame:
    """:data:`BOUNDARY_COLUMNS` per entity-window from its local edges ``e`` (rows of ``p.flows``)."""
    ng = len(p.keys)
    out = {c: np.zeros(ng) for c in BOUNDARY_COLUMNS}
    mask = e["new"].to_numpy(dtype=bool) & ~e["ext"].to_numpy(dtype=bool)
    if not mask.any():
        return pd.DataFrame(out)
    rows = e.index.to_numpy()[mask]
    f = p.flows
    tm = TrustMap(cluster)
    src = vocab.decode(f["src_namespace"].to_numpy()[rows])
    dst = vocab.decode(f["dst_namespace"].to_numpy()[rows])
    gid = e["gid"].to_numpy()[mask].astype("int64")
    # A peer weighs its heaviest new edge in the window (the same address on two ports is one peer).
    peers = pd.DataFrame({"gid": gid, "dst": e["dst_ip"].to_numpy()[mask], "w": tm.weight(src, dst)})
    per_peer = peers.groupby(["gid", "dst"], sort=False)["w"].max()
    peer_gid = per_peer.index.get_level_values(0).to_numpy()
    np.add.at(out["new_int_peers_weighted"], peer_gid, per_peer.to_numpy())
    if tm.labelled:
        step = tm.up(src, dst)
        climbs = step > 0
        if climbs.any():
            up = pd.DataFrame({"gid": gid[climbs], "hash": e["hash"].to_numpy()[mask][climbs]})
            np.add.at(out["trust_up_edges"], up.drop_duplicates()["gid"].to_numpy(), 1.0)
            np.maximum.at(out["trust_up_gap"], gid[climbs], step[climbs].astype("float64"))
    return pd.DataFrame(out)
