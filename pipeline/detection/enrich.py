"""Kubernetes metadata enrichment: who is behind an IP address at a given time.

The inventory is the JSON that ``kubectl get pods -A -o json`` prints (read from a file and
reloaded when it changes; a watch on the Kubernetes API can feed :meth:`Inventory.from_dict`
the same shape). Pod IPs are reused, so every pod carries its lifetime (creation to
deletion, plus a grace period for terminating pods) and a lookup at time ``t`` only matches
the pod that owned the address at ``t``. Host-network pods share their node's address: they
make the address a *node* address, never a pod.

Direction comes from the cluster CIDRs: ``internal`` (cluster to cluster), ``egress``
(cluster to outside), ``ingress`` (outside to cluster), ``external`` (neither end inside).
Every step is vectorised over distinct addresses, never per flow.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from flowwarden.errors import ConfigError
from flowwarden.records import Direction
from flowwarden.settings import Settings

log = logging.getLogger(__name__)

DELETION_GRACE_S = 30.0  # a terminating pod still sends packets for a little while
DELETED_AT = "flowwarden.io/deleted-at"  # a pod's end of life when it has no deletionTimestamp
_HASH_SUFFIX = re.compile(r"-[a-z0-9]{5,10}$")  # ReplicaSet pod-template-hash
_CRONJOB_SUFFIX = re.compile(r"-\d{6,}$")  # Job created by a CronJob: <cronjob>-<minutes>

INVENTORY_COLUMNS = ("ip", "start", "end", "namespace", "pod", "workload", "node")


def _ts(value: Any) -> float | None:
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise ConfigError(f"inventory: timestamp {value!r} is not ISO 8601") from exc


def workload_of(pod_name: str, owners: list[dict[str, Any]]) -> str:
    """The workload name a pod belongs to, from its owner references.

    A ReplicaSet's name is its Deployment's name plus the pod-template hash; a Job made by a
    CronJob carries the schedule time as a suffix. Both are stripped so every replica (and
    every run) shares one workload, and so one baseline.
    """
    for owner in owners:
        kind, name = str(owner.get("kind", "")), str(owner.get("name", ""))
        if not name:
            continue
        if kind == "ReplicaSet":
            return _HASH_SUFFIX.sub("", name)
        if kind == "Job":
            return _CRONJOB_SUFFIX.sub("", name)
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "CronJob", "ReplicationController"):
            return name
        return name
    return pod_name  # a bare pod is its own workload


@dataclass
class PodRecord:
    ip: str
    start: float
    end: float
    namespace: str
    pod: str
    workload: str
    node: str
    labels: dict[str, str] = field(default_factory=dict)


FINISHED_PHASES = ("Succeeded", "Failed")  # the pod ran to its end; its IP is free again


def finish_times(status: dict[str, Any]) -> list[Any]:
    """The ``finishedAt`` of every container (init ones too) that terminated, as reported."""
    return [
        t
        for key in ("containerStatuses", "initContainerStatuses")
        for c in status.get(key) or []
        if isinstance(c, dict)
        and (t := ((c.get("state") or {}).get("terminated") or {}).get("finishedAt")) is not None
    ]


def _finished_at(status: dict[str, Any]) -> float | None:
    """When a pod that ran to its end (a Job's, phase Succeeded or Failed) let go of its IP.

    Such a pod stays in the API, its IP still in its status, until something deletes it,
    while the network already gives the IP to new pods: it is the pod only until its last
    container finished. ``None`` while it runs, or when no finish time is reported.
    """
    if status.get("phase") not in FINISHED_PHASES:
        return None
    known = [t for t in (_ts(v) for v in finish_times(status)) if t is not None]
    return max(known) if known else None


def _parse_pod(item: dict[str, Any], index: int) -> tuple[list[PodRecord], str, str]:
    """Records for one pod (one per IP); also its (node name, host IP)."""
    meta = item.get("metadata") or {}
    spec = item.get("spec") or {}
    status = item.get("status") or {}
    if not isinstance(meta, dict) or not meta.get("name"):
        raise ConfigError(f"inventory: items[{index}].metadata.name is missing")
    name, ns = str(meta["name"]), str(meta.get("namespace", "default"))
    node = str(spec.get("nodeName", "") or "")
    host_ip = str(status.get("hostIP", "") or "")
    if spec.get("hostNetwork"):
        return [], node, host_ip or str(status.get("podIP", "") or "")
    ips = [str(p.get("ip")) for p in status.get("podIPs") or [] if p.get("ip")]
    if not ips and status.get("podIP"):
        ips = [str(status["podIP"])]
    annotations = meta.get("annotations") or {}
    start = _ts(meta.get("creationTimestamp")) or _ts(status.get("startTime")) or -np.inf
    end_ts = _ts(meta.get("deletionTimestamp")) or _ts(annotations.get(DELETED_AT))
    finished = _finished_at(status)
    if finished is not None and (end_ts is None or finished < end_ts):
        end_ts = finished
    end = end_ts + DELETION_GRACE_S if end_ts is not None else np.inf
    workload = workload_of(name, list(meta.get("ownerReferences") or []))
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError as exc:
            raise ConfigError(f"inventory: items[{index}].status.podIP {ip!r} is not an IP address") from exc
    return [PodRecord(ip, start, end, ns, name, workload, node, labels) for ip in ips], node, host_ip


class Inventory:
    """IP address to pod, namespace, workload and node, honouring pod lifetimes."""

    def __init__(self, pods: pd.DataFrame, node_ips: dict[str, str], *, path: Path | None = None) -> None:
        self.pods = pods.sort_values(["ip", "start"]).reset_index(drop=True)
        self.node_ips = node_ips  # address -> node name
        self.path = path
        self._mtime = path.stat().st_mtime_ns if path is not None and path.exists() else None
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
        self.namespaces = dict(zip(self.pods["pod"], self.pods["namespace"], strict=False))

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, path: Path | None = None) -> Inventory:
        if not isinstance(data, dict) or not isinstance(data.get("items", []), list):
            raise ConfigError(
                "inventory: expected the JSON of `kubectl get pods -A -o json` (an 'items' list)"
            )
        records: list[PodRecord] = []
        node_ips: dict[str, str] = {}
        for i, item in enumerate(data.get("items", [])):
            if not isinstance(item, dict):
                raise ConfigError(f"inventory: items[{i}] is not an object")
            recs, node, host_ip = _parse_pod(item, i)
            records.extend(recs)
            if host_ip:
                node_ips[host_ip] = node
        frame = pd.DataFrame(
            {c: [getattr(r, c) for r in records] for c in INVENTORY_COLUMNS},
        ).astype(
            {
                "ip": "str",
                "start": "float64",
                "end": "float64",
                "namespace": "str",
                "pod": "str",
                "workload": "str",
                "node": "str",
            }
        )
        # A host-network pod's address is a node's, never a pod's.
        frame = frame[~frame["ip"].isin(node_ips)]
        return cls(frame, node_ips, path=path)

    @classmethod
    def from_file(cls, path: str | Path) -> Inventory:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"{p}: no such inventory file") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{p}: inventory is not valid JSON: {exc}") from exc
        return cls.from_dict(data, path=p)

    @classmethod
    def from_pod_list(cls, pod_list: Any) -> Inventory:
        """From the Kubernetes API (a ``V1PodList`` of ``CoreV1Api.list_pod_for_all_namespaces``)."""
        from kubernetes.client import ApiClient

        return cls.from_dict(ApiClient().sanitize_for_serialization(pod_list))

    @classmethod
    def from_cluster(cls, *, in_cluster: bool = True) -> Inventory:
        """List every pod through the API (in-cluster service account, or the local kubeconfig).

        A long-running pipeline calls this again on a timer or on watch events; the
        result is the same :class:`Inventory` as from a file, so the rest is unchanged.
        """
        from kubernetes import client, config

        try:
            config.load_incluster_config() if in_cluster else config.load_kube_config()
        except config.ConfigException as exc:
            from flowwarden.errors import ServiceUnavailable

            raise ServiceUnavailable(f"kubernetes: no cluster credentials ({exc})") from exc
        return cls.from_pod_list(client.CoreV1Api().list_pod_for_all_namespaces(watch=False))

    @classmethod
    def empty(cls) -> Inventory:
        return cls.from_dict({"items": []})

    def reload_if_changed(self) -> Inventory:
        """A fresh inventory when the file changed on disk, else ``self``."""
        if self.path is None or not self.path.exists():
            return self
        if self.path.stat().st_mtime_ns == self._mtime:
            return self
        log.info("inventory changed, reloading path=%s", self.path)
        return Inventory.from_file(self.path)

    # ------------------------------------------------------------------ lookup
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


# ---------------------------------------------------------------------- direction


_DIRECTIONS = pa.array(
    [Direction.INTERNAL.value, Direction.EGRESS.value, Direction.INGRESS.value, Direction.EXTERNAL.value]
)


def directions(src_in: np.ndarray, dst_in: np.ndarray) -> np.ndarray:
    """Direction codes: 0 internal, 1 egress, 2 ingress, 3 external."""
    return np.where(src_in, np.where(dst_in, 0, 1), np.where(dst_in, 2, 3)).astype("int64")


def enrich_flows(
    flows: pd.DataFrame,
    inventory: Inventory | None,
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
