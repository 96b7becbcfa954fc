"""Kubernetes metadata enrichment: who is behind an IP address at a given time, and direction.

A view over the pod inventory (:class:`~flowwarden.kube.PodInventory`): the engine holds a
snapshot the runtime hands it, and every lookup honours pod lifetimes (a reused address
maps to the pod that owned it at the flow's time; a host-network pod's address is a node's).

Direction comes from the cluster CIDRs: ``internal`` (cluster to cluster), ``egress``
(cluster to outside), ``ingress`` (outside to cluster), ``external`` (neither end inside).
Every step is vectorised over distinct addresses, never per flow.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from flowwarden.kube import PodInventory
from flowwarden.records import Direction
from flowwarden.settings import Settings

_DIRECTIONS = pa.array(
    [Direction.INTERNAL.value, Direction.EGRESS.value, Direction.INGRESS.value, Direction.EXTERNAL.value]
)


def directions(src_in: np.ndarray, dst_in: np.ndarray) -> np.ndarray:
    """Direction codes: 0 internal, 1 egress, 2 ingress, 3 external."""
    return np.where(src_in, np.where(dst_in, 0, 1), np.where(dst_in, 2, 3)).astype("int64")


def enrich_flows(
    flows: pd.DataFrame,
    inventory: PodInventory | None,
    settings: Settings,
    *,
    inside: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """The batch with Kubernetes metadata on both ends and ``direction`` filled in.

    Values the collector already set are kept; missing ones are looked up, as categoricals
    over the inventory's strings (never a Python object per row). ``inside``: which
    sources and destinations are in the cluster (CIDRs and node addresses), when the caller
    already knows (the engine's :class:`~flowwarden.pipeline.detection.addresses.AddressFacts`).
    """
    df = flows.reset_index(drop=True)  # a copy; new columns align by position
    if not len(df):
        return df
    inv = inventory
    if inside is None:  # one definition of "inside the cluster": the engine's address facts
        from flowwarden.pipeline.detection.addresses import AddressFacts
        from flowwarden.pipeline.detection.state import Vocab

        nodes = inv.node_ips if inv is not None else {}
        a = AddressFacts(settings).batch(Vocab(), df["src_ip"], df["dst_ip"], nodes)
        inside = (a.src_in, a.dst_in)
    src_in, dst_in = inside
    need_dir = (df["direction"] == "").to_numpy()
    if need_dir.any():
        computed = pd.Series(_DIRECTIONS.take(pa.array(directions(src_in, dst_in))), dtype="str")
        df["direction"] = computed if need_dir.all() else df["direction"].where(~need_dir, computed)
    if inv is None:
        return df
    ts = df["ts_start"]
    for end in ("src", "dst"):
        have = (df[f"{end}_pod"] != "").to_numpy()
        if have.all():
            continue
        row = inv.lookup_rows(df[f"{end}_ip"], ts)
        for col in ("namespace", "pod", "workload"):
            found = inv.column(col, row)
            if have.any():  # the collector named some: keep those, as plain strings
                found = df[f"{end}_{col}"].where(have, found.astype("str"))
            df[f"{end}_{col}"] = found
    return df
