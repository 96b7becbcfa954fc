"""A person's verdict on an alert, folded into the engine's memory of edges.

``flowwarden alerts resolve ID --benign`` says an alert was fine (the CronJob's first
upload to its bucket): the alert's edges, from its workload to its targets on its ports,
join what the workload is known to do, so the next pod doing the same (the next run) is no
news. ``--malicious`` pins them as new to every other pod of the workload for the taint
period, as an alerted lateral movement's are. Either way the open alert closes. Pure: the
runtime's :class:`~flowwarden.pipeline.runtime.verdicts.VerdictFollower` reads the verdicts
from the store and hands them to :meth:`~flowwarden.pipeline.detection.engine.DetectionEngine.resolve`.
"""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pandas as pd

from flowwarden.errors import RecordError
from flowwarden.pipeline.detection.features import NODE_PEER
from flowwarden.pipeline.detection.state import SeenEdges, mix
from flowwarden.records import Alert


def _h(values: list[str]) -> np.ndarray:
    """The hash :class:`~flowwarden.pipeline.detection.state.Vocab` gives these strings."""
    return pd.util.hash_array(np.array(values, dtype=object))


def alert_edges(alert: Alert, node_ips: set[str] | frozenset[str] = frozenset()) -> np.ndarray:
    """Edge keys of the alert: its source (workload, else pod or address) to each target
    address on each target port, as :func:`~flowwarden.pipeline.detection.features.edge_table`
    keys them. Targets are addresses: an external one, a node (nodes are one peer group), or
    an address no pod owns; a target pod's own workload edge needs the inventory and is not
    covered here.
    """
    e = alert.entity
    if not alert.targets:
        return np.zeros(0, dtype="uint64")
    ns, pod, wl, ip = _h([e.namespace, e.pod, e.workload, e.ip])
    if e.workload:
        source = mix(np.array([ns]), np.array([wl]), 1)[0]
    elif e.pod:
        source = mix(np.array([ns]), np.array([pod]), 2)[0]
    else:
        source = mix(np.array([ip]), 0, 3)[0]
    targets = list(alert.targets)
    peers = np.where(
        np.isin(np.array(targets, dtype=object), list(node_ips)),
        np.uint64(NODE_PEER),
        mix(_h(targets), 0, 3),
    )
    ports = np.array(alert.target_ports or [0], dtype="int64")
    pairs = mix(np.full(len(peers), source, dtype="uint64"), peers.astype("uint64"), 4)
    return np.unique(mix(np.repeat(pairs, len(ports)), np.tile(ports, len(pairs)), 5))


def apply_verdict(
    seen: SeenEdges, alert: Alert, *, benign: bool, now: float, taint_s: float, node_ips: set[str]
) -> int:
    """Fold a verdict into ``seen``; returns how many edges it touched.

    Benign: the edges are known (first seen at the alert's start when new) and untainted.
    Malicious: they stay new to every other entity until ``now + taint_s``.
    """
    hashes = alert_edges(alert, node_ips)
    if not len(hashes):
        return 0
    pos = seen.positions(hashes)
    start = alert.window_start.timestamp()
    rows = seen.update(
        hashes, pos, np.full(len(hashes), start), np.full(len(hashes), now), np.zeros(len(hashes))
    )
    if benign:
        seen.vouch(rows)
    else:
        seen.taint(
            rows,
            hashes,
            np.full(len(hashes), now + taint_s),
            np.zeros(len(hashes), dtype="uint64"),
            np.full(len(hashes), now),
        )
    return len(hashes)


# ---------------------------------------------------------------------- verdicts as records

RESOLUTIONS_KEY = "alert_resolutions"  # the store's state key holding every verdict (JSON list)
VERDICTS = ("benign", "malicious")


def add_resolution(
    stored: bytes | None, *, alert_id: str, verdict: str, by: str, reason: str, at: datetime
) -> bytes:
    """The verdicts document with one more (the latest verdict on an alert wins)."""
    if verdict not in VERDICTS:
        raise RecordError("verdict", f"must be one of {', '.join(VERDICTS)} (got {verdict!r})")
    items = [r for r in parse_resolutions(stored) if r["alert_id"] != alert_id]
    items.append({"alert_id": alert_id, "verdict": verdict, "by": by, "reason": reason, "at": at.isoformat()})
    return json.dumps(items).encode()


def parse_resolutions(stored: bytes | None) -> list[dict[str, str]]:
    """Every verdict recorded (``alert_id``, ``verdict``, ``by``, ``reason``, ``at``)."""
    if not stored:
        return []
    try:
        items = json.loads(stored)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecordError(RESOLUTIONS_KEY, f"not a JSON list of verdicts: {exc}") from exc
    if not isinstance(items, list):
        raise RecordError(RESOLUTIONS_KEY, "not a JSON list of verdicts")
    return [dict(i) for i in items]
