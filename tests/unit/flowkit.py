"""Small literal flow frames and inventories for the detection unit tests."""

from __future__ import annotations

from typing import Any

import pandas as pd

from flowwarden.records import conform_flows

T0 = 1_800_000_000.0  # a window boundary for 10 s windows


def pod(
    name: str,
    ip: str,
    *,
    ns: str = "shop",
    owner: tuple[str, str] | None = ("ReplicaSet", "web-5d9c8f7b6"),
    created: str = "2020-01-01T00:00:00Z",
    deleted: str | None = None,
    host_network: bool = False,
    node: str = "node-1",
    host_ip: str = "10.0.0.11",
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "creationTimestamp": created}
    if owner:
        meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1]}]
    if deleted:
        meta["deletionTimestamp"] = deleted
    return {
        "metadata": meta,
        "spec": {"nodeName": node, "hostNetwork": host_network},
        "status": {"podIP": ip, "hostIP": host_ip},
    }


def flows(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows with sensible defaults (a closed TCP call of 1 kB)."""
    base = {
        "src_port": 40000,
        "dst_port": 8080,
        "proto": 6,
        "bytes_out": 1000,
        "bytes_in": 2000,
        "pkts_out": 5,
        "pkts_in": 5,
        "state": "closed",
        "final": True,
    }
    full = []
    for r in rows:
        row = {**base, **r}
        row.setdefault("ts_end", row["ts_start"] + 0.1)
        full.append(row)
    return conform_flows(pd.DataFrame(full))


def windows_frame(rows: list[dict[str, Any]], columns: list[str], **defaults: Any) -> pd.DataFrame:
    """Entity-windows at t=5000, one pod of shop/web each (``p0``, ``p1``, ...): every column
    in ``columns`` 0 unless ``defaults`` or the row sets it (detector tests build contexts)."""
    data = []
    for i, r in enumerate(rows):
        row: dict[str, Any] = dict.fromkeys(columns, 0.0)
        row.update(
            window_start=5000.0,
            window_end=5010.0,
            entity=f"shop/p{i}",
            src_ip=f"10.244.1.{i + 1}",
            namespace="shop",
            pod=f"p{i}",
            workload="web",
            workload_key="shop/web",
            node="n1",
            is_node=False,
        )
        row.update(defaults)
        row.update(r)
        data.append(row)
    return pd.DataFrame(data)[columns]
