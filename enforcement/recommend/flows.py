"""Observed edges from a Parquet file of flows and a pod inventory: who talked to whom on which port."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pandas as pd

from flowwarden.enforcement.recommend.evaluate import Endpoint
from flowwarden.kube.inventory import PodInventory

# Labels that differ between a workload's revisions: never part of a recommended selector.
VOLATILE_LABELS = frozenset({"pod-template-hash", "controller-revision-hash", "pod-template-generation"})


@dataclass(frozen=True)
class Edge:
    """Connections from one endpoint to another on one port, with their evidence."""

    src: Endpoint
    dst: Endpoint
    proto: int
    port: int
    flows: int
    first_seen: float
    last_seen: float
    name: str  # SNI or DNS name the flows carried ("" when none)


def workload_labels(inventory: PodInventory) -> dict[tuple[str, str], dict[str, str]]:
    """The labels every pod of a workload shares (minus revision hashes): its pod selector."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    for p in inventory.records:
        key = (p.namespace, p.workload)
        mine = {k: v for k, v in p.labels.items() if k not in VOLATILE_LABELS}
        out[key] = mine if key not in out else {k: v for k, v in out[key].items() if mine.get(k) == v}
    return out


def read_edges(path: str | Path, inventory: PodInventory) -> list[Edge]:
    """Edges of the flows in ``path``: each flow's first record counts one connection."""
    df = pd.read_parquet(path)
    if df.empty:
        return []
    for side in ("src", "dst"):
        if f"{side}_namespace" not in df or (df[f"{side}_namespace"].fillna("") == "").all():
            found = inventory.lookup(df[f"{side}_ip"], df["ts_start"])
            df[f"{side}_namespace"] = found["namespace"].fillna("").to_numpy()
            df[f"{side}_workload"] = found["workload"].fillna("").to_numpy()
    df["name"] = df.get("server_name", pd.Series("", index=df.index)).fillna("")
    if "dns_qname" in df:
        df["name"] = df["name"].where(df["name"] != "", df["dns_qname"].fillna(""))
    if "first" in df:
        df = df[df["first"].astype(bool)]
    labels = workload_labels(inventory)
    keys = [
        "src_namespace",
        "src_workload",
        "src_ip",
        "dst_namespace",
        "dst_workload",
        "dst_ip",
        "proto",
        "dst_port",
    ]
    df = df.fillna({k: "" for k in keys if df[k].dtype == object})
    groups = df.groupby(keys, sort=True, dropna=False).agg(
        flows=("ts_start", "size"), first=("ts_start", "min"), last=("ts_end", "max"), name=("name", "max")
    )
    edges = []
    for key, row in groups.iterrows():
        sns, swl, sip, dns, dwl, dip, proto, port = cast(tuple[Any, ...], key)
        edges.append(
            Edge(
                _endpoint(sip, sns, swl, labels),
                _endpoint(dip, dns, dwl, labels),
                int(proto),
                int(port),
                int(row["flows"]),
                float(row["first"]),
                float(row["last"]),
                str(row["name"]),
            )
        )
    return edges


def _endpoint(ip: str, ns: str, workload: str, labels: Mapping[tuple[str, str], dict[str, str]]) -> Endpoint:
    if not ns:
        return Endpoint(str(ip))
    return Endpoint(str(ip), str(ns), str(workload), labels.get((ns, workload), {}))
