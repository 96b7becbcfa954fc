"""The pod inventory: every pod by address over time, with the views its two users need.

Enrichment asks who owned an address at a flow's time, for whole columns at once
(:meth:`PodInventory.lookup_rows`, :meth:`PodInventory.column`): every step is vectorised
over distinct addresses, never per flow, and a reused address is an as-of join on the pods'
creation times. The enforcer's guardrails ask who owns an address now and how many live
replicas a workload has (:attr:`PodInventory.pods_by_ip`, :meth:`PodInventory.pod_count`).
Both read the same parsed pods (:func:`~flowwarden.kube.pods.parse_pod`).

A snapshot never changes: a source (:mod:`flowwarden.kube.source`) builds a new one when the
pods change.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flowwarden.errors import ConfigError
from flowwarden.kube.pods import DELETION_GRACE_S, Pod, parse_pod

INVENTORY_COLUMNS = ("ip", "start", "end", "namespace", "pod", "workload", "node")
_DTYPES = {
    "ip": "str",
    "start": "float64",
    "end": "float64",
    "namespace": "str",
    "pod": "str",
    "workload": "str",
    "node": "str",
}


@dataclass(frozen=True)
class PodRef:
    """Who owns an address, for the guardrails (``workload`` "" for a pod without an owner)."""

    namespace: str
    pod: str
    workload: str


class PodInventory:
    """IP address to pod, namespace, workload and node, honouring pod lifetimes.

    ``pods``: one row per (pod, address), sorted by address and creation; ``node_ips``:
    node address to node name (every pod's host IP; a host-network pod's address).
    """

    def __init__(self, pods: Iterable[Pod] = ()) -> None:
        self.records: tuple[Pod, ...] = tuple(pods)
        node_ips: dict[str, str] = {}
        for p in self.records:
            if p.host_ip:
                node_ips[p.host_ip] = p.node
        self.node_ips = node_ips  # address -> node name
        rows = [(ip, p) for p in self.records for ip in p.ips]
        frame = pd.DataFrame(
            {
                "ip": [ip for ip, _ in rows],
                "start": [p.start for _, p in rows],
                "end": [p.end for _, p in rows],
                "namespace": [p.namespace for _, p in rows],
                "pod": [p.name for _, p in rows],
                "workload": [p.workload for _, p in rows],
                "node": [p.node for _, p in rows],
            },
            columns=list(INVENTORY_COLUMNS),
        ).astype(_DTYPES)
        # A node's address is never a pod's.
        frame = frame[~frame["ip"].isin(node_ips)]
        self.pods = frame.sort_values(["ip", "start"]).reset_index(drop=True)
        counts = self.pods["ip"].value_counts()
        self._reused = set(counts[counts > 1].index)
        single = self.pods[~self.pods["ip"].isin(self._reused)]
        self._single_index = pd.Index(single["ip"].to_numpy(dtype=object))
        self._single_rows = single.index.to_numpy()
        self._start = self.pods["start"].to_numpy()
        self._created: dict[str, float] | None = None
        self._end = self.pods["end"].to_numpy()
        # Per column: the distinct values with "" (no pod) last, and each pod row's code.
        # A looked-up column is a Categorical over them: no string is copied per flow, and
        # grouping or encoding it later reads the codes.
        self._dtypes: dict[str, pd.CategoricalDtype] = {}
        self._codes: dict[str, np.ndarray] = {}
        for c in ("namespace", "pod", "workload", "node"):
            codes, uniques = pd.factorize(self.pods[c].to_numpy(dtype=object))
            values = [str(u) for u in uniques]
            if "" in values:
                empty = values.index("")
            else:
                empty = len(values)
                values.append("")
            self._dtypes[c] = pd.CategoricalDtype(pd.Index(values, dtype="str"))
            self._codes[c] = np.append(codes, empty).astype("int32")

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PodInventory:
        """From the JSON of ``kubectl get pods -A -o json`` (or a watch's pods under 'items')."""
        if not isinstance(data, Mapping) or not isinstance(data.get("items", []), list):
            raise ConfigError(
                "inventory: expected the JSON of `kubectl get pods -A -o json` (an 'items' list)"
            )
        pods = []
        for i, item in enumerate(data.get("items", [])):
            if not isinstance(item, dict):
                raise ConfigError(f"inventory: items[{i}] is not an object")
            pods.append(parse_pod(item, i))
        return cls(pods)

    @classmethod
    def from_file(cls, path: str | Path) -> PodInventory:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"{p}: no such inventory file") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{p}: inventory is not valid JSON: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read the inventory: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def from_pod_list(cls, pod_list: Any) -> PodInventory:
        """From the Kubernetes API's typed objects (a ``V1PodList``), via their camelCase JSON."""
        from kubernetes.client import ApiClient

        return cls.from_dict(ApiClient().sanitize_for_serialization(pod_list))

    @classmethod
    def empty(cls) -> PodInventory:
        return cls()

    def __len__(self) -> int:
        """Pods known (ending ones and host-network ones included)."""
        return len(self.records)

    # ------------------------------------------------------------------ enrichment's view
    def created_by_key(self) -> dict[str, float]:
        """``namespace/pod`` to its creation time (the earliest, for a reused name)."""
        if self._created is None:
            keys = (self.pods["namespace"] + "/" + self.pods["pod"]).to_numpy(dtype=object)
            self._created = {}
            for k, t in zip(keys, self.pods["start"].to_numpy(), strict=True):
                self._created[k] = min(t, self._created.get(k, t))
        return self._created

    def lookup_rows(self, ips: pd.Series, ts: pd.Series) -> np.ndarray:
        """Per row: the row in :attr:`pods` of the pod owning ``ips`` at ``ts`` (-1 if none)."""
        n = len(ips)
        row = np.full(n, -1, dtype="int64")
        if not n or not len(self.pods):
            return row
        t = ts.to_numpy(dtype="float64")
        codes, uniques = pd.factorize(ips)
        pos = self._single_index.get_indexer(np.asarray(uniques, dtype=object))
        # ``pos`` indexes the single-owner IPs; map it to rows of ``self.pods``.
        if len(self._single_rows):
            rows_of = np.where(pos >= 0, self._single_rows[np.maximum(pos, 0)], -1)
        else:
            rows_of = np.full(len(pos), -1, dtype="int64")
        cand = np.where(codes >= 0, rows_of[codes], -1)
        hit = cand >= 0
        if hit.any():
            c = cand[hit]
            alive = (t[hit] >= self._start[c] - DELETION_GRACE_S) & (t[hit] < self._end[c])
            row[np.flatnonzero(hit)[alive]] = c[alive]
        if self._reused:
            self._lookup_reused(ips, t, row)
        return row

    def lookup(self, ips: pd.Series, ts: pd.Series) -> pd.DataFrame:
        """Per row: namespace, pod, workload, node of the pod owning ``ips`` at ``ts`` ("" if none)."""
        row = self.lookup_rows(ips, ts)
        return pd.DataFrame({c: self.column(c, row) for c in ("namespace", "pod", "workload", "node")})

    def column(self, name: str, row: np.ndarray) -> pd.Series:
        """``pods[name]`` at ``row`` ("" where -1), as a categorical column of strings."""
        codes = self._codes[name][np.where(row >= 0, row, len(self._codes[name]) - 1)]
        return pd.Series(pd.Categorical.from_codes(codes, dtype=self._dtypes[name]))

    def _lookup_reused(self, ips: pd.Series, t: np.ndarray, row: np.ndarray) -> None:
        """Addresses held by several pods over time: an as-of join on the creation time."""
        mask = ips.isin(self._reused).to_numpy()
        if not mask.any():
            return
        left = pd.DataFrame(
            {"ip": ips[mask].to_numpy(dtype=object), "t": t[mask], "row": np.flatnonzero(mask)}
        )
        left = left.sort_values("t")
        right = self.pods[self.pods["ip"].isin(self._reused)][["ip", "start", "end"]]
        right = right.assign(t=right["start"] - DELETION_GRACE_S, prow=right.index.to_numpy()).sort_values(
            "t"
        )
        left = left.astype({"ip": "str"})
        right = right.astype({"ip": "str"})
        merged = pd.merge_asof(left, right, on="t", by="ip", direction="backward")
        ok = merged["end"].notna().to_numpy() & (merged["t"].to_numpy() < merged["end"].to_numpy())
        row[merged["row"].to_numpy()[ok]] = merged["prow"].to_numpy()[ok].astype("int64")

    def node_of(self, ips: pd.Series) -> np.ndarray:
        """The node name where an address is a node's own address ("" otherwise)."""
        return ips.map(self.node_ips).fillna("").to_numpy(dtype=object)

    # ------------------------------------------------------------------ the guardrails' view
    @cached_property
    def pods_by_ip(self) -> dict[str, PodRef]:
        """Every listed pod by address, ending ones too (they own their address a while longer).

        A pod without an owner belongs to no workload here (``workload`` ""), unlike in
        enrichment where it is its own: a cap on the share of a workload blocked means
        nothing for one pod. Where pods shared an address over time, the last listed wins.
        """
        return {
            ip: PodRef(p.namespace, p.name, p.workload if p.owned else "")
            for p in self.records
            if not p.host_network
            for ip in p.ips
        }

    @cached_property
    def workload_pods(self) -> dict[str, int]:
        """Live replicas per ``namespace/workload``: pods with an owner that are not ending.

        A terminating, deleted or finished pod is no longer one of its workload's replicas:
        counting it would make the share of a workload blocked look smaller than it is
        during a rollout.
        """
        live = Counter(
            f"{p.namespace}/{p.workload}"
            for p in self.records
            if p.owned and not p.ending and not p.host_network
        )
        return dict(live)

    def pod_count(self, namespace: str, workload: str) -> int | None:
        """Live replicas of a workload; None when the inventory knows none."""
        return self.workload_pods.get(f"{namespace}/{workload}")
