"""Detector findings become :class:`~flowwarden.records.Alert` records a person can act on.

One open alert per (entity, detector): while the behaviour lasts (a new finding within
``reopen_gap_s`` of the alert's last window), the same alert (same id) is updated: its
window end, last seen, score, targets and evidence move forward, so a long attack is one
alert, not a flood. A finding after a longer quiet spell opens a new alert. Sources on the
allowlist (``settings.pipeline.allowlist_sources``: CIDRs, ``namespace/`` or
``namespace/workload``) are suppressed and counted, never silently.

Learning: a finding in a window while the engine's memory or the entity's workload is younger
than ``pipeline.learning_s`` (:meth:`Context.learning`: the engine's first minutes without
imported history, a workload first seen moments ago) may be the cluster's normal not yet
learned. Its alert says so (``learning: true``) and its severity is capped at
:data:`LEARNING_MAX_SEVERITY`; an alert stays ``learning`` only while every window it covers
is, so a behaviour that goes on past the learning period gets its full severity.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from flowwarden.pipeline.detection.detectors.base import Context, Detector
from flowwarden.records import Alert, Entity
from flowwarden.settings import Settings

MAX_TARGETS = 20
LEARNING_MAX_SEVERITY = "medium"
MAX_EXAMPLES = 5
_ALERT_KEYS = ("src_ip", "namespace", "pod", "workload", "node", "window_start", "window_end")
EXAMPLE_COLUMNS = (
    "ts_start",
    "ts_end",
    "src_ip",
    "dst_ip",
    "dst_port",
    "proto",
    "bytes_out",
    "bytes_in",
    "state",
    "dns_qname",
    "direction",
    "dst_namespace",
    "dst_pod",
    "dst_workload",
)


def severity_of(score: float) -> str:
    if score >= 0.9:
        return "critical"
    if score >= 0.75:
        return "high"
    if score >= 0.5:
        return "medium"
    return "low"


def capped_severity(score: float, learning: bool) -> str:
    """The severity of ``score``, at most :data:`LEARNING_MAX_SEVERITY` while learning."""
    if learning and score >= 0.75:
        return LEARNING_MAX_SEVERITY
    return severity_of(score)


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


class Allowlist:
    """Known-benign sources: CIDRs, whole namespaces (``ns/``) or workloads (``ns/workload``)."""

    def __init__(self, entries: list[str]) -> None:
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.namespaces: set[str] = set()
        self.workloads: set[str] = set()
        for e in entries:
            if "/" in e and e.endswith("/"):
                self.namespaces.add(e[:-1])
                continue
            try:
                self.networks.append(ipaddress.ip_network(e, strict=False))
            except ValueError:
                self.workloads.add(e)

    def mask(self, windows: pd.DataFrame) -> np.ndarray:
        m = windows["namespace"].isin(self.namespaces).to_numpy().copy()
        if self.workloads:
            wl = (windows["namespace"] + "/" + windows["workload"]).to_numpy(dtype=object)
            m |= pd.Series(wl).isin(self.workloads).to_numpy()
        if self.networks:
            ips = windows["src_ip"].to_numpy(dtype=object)
            m |= np.array(
                [any(ipaddress.ip_address(ip) in n for n in self.networks) for ip in ips], dtype=bool
            )
        return m


class AlertBuilder:
    """Keeps the open alerts and turns per-window detector scores into alerts."""

    def __init__(self, settings: Settings, *, reopen_gap_s: float | None = None) -> None:
        self.settings = settings
        self.window_s = settings.pipeline.window_s
        self.reopen_gap_s = reopen_gap_s if reopen_gap_s is not None else 6 * self.window_s
        self.allowlist = Allowlist(settings.pipeline.allowlist_sources)
        self.open: dict[tuple[str, str], Alert] = {}
        self.suppressed: Counter[str] = Counter()
        self.model_version = ""
        # The engine's event-time clock when it builds alerts: an alert's evidence keeps when
        # it was first raised (``detected_at``, epoch seconds), which early firing makes sooner
        # than its window's close; the evaluation measures time to detect with it.
        self.clock = -math.inf
        self._columns: dict[tuple[int, str], pd.Series] = {}
        self._narrowed: dict[tuple[int, tuple[str, ...]], pd.DataFrame] = {}

    def build(
        self,
        ctx: Context,
        flows: pd.DataFrame,
        gid: np.ndarray,
        scores: dict[str, np.ndarray],
        detectors: dict[str, Detector],
        decode: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
        *,
        provisional: bool = False,
    ) -> list[Alert]:
        """Alerts (new or updated) for every window a detector scored above zero.

        ``provisional``: the windows are still open (early firing); what they suppress is
        counted when they close, not twice."""
        w = ctx.windows
        allowed = self.allowlist.mask(w) if len(w) else np.zeros(0, dtype=bool)
        hits: list[tuple[str, int, float, str]] = []
        for name, s in scores.items():
            hit = s > 0
            if not hit.any():
                continue
            n_allowed = int((hit & allowed).sum())
            if n_allowed and not provisional:
                self.suppressed["allowlist"] += n_allowed
            hit &= ~allowed
            kinds = detectors[name].kinds(ctx, hit)
            for r, kind in zip(np.flatnonzero(hit).tolist(), kinds, strict=True):
                hits.append((name, int(r), float(s[r]), str(kind)))
        if not hits:
            return []
        rows = sorted({h[1] for h in hits})
        in_hit = np.isin(gid, rows)
        sub = flows[in_hit]
        if decode is not None:
            sub = decode(sub)
        groups: dict[int, Any] = {
            int(k): v  # type: ignore[call-overload]
            for k, v in sub.groupby(gid[in_hit], sort=False).indices.items()
        }
        learning = ctx.learning(self.settings.pipeline.learning_s)
        out: dict[str, Alert] = {}
        try:
            for name, row, score, kind in hits:
                det = detectors[name]
                idx = groups.get(row, np.empty(0, dtype="int64"))
                wflows = self._narrow(sub, det).iloc[idx]
                learns = det.learns and bool(learning[row])
                alert = self._alert(ctx, row, det, kind, score, wflows, learns, (sub, idx))
                out[alert.id] = alert
        finally:
            self._columns.clear()  # the frames are this round's: not kept past it
            self._narrowed.clear()
        return list(out.values())

    def _narrow(self, frame: pd.DataFrame, det: Detector) -> pd.DataFrame:
        """``frame`` cut to the columns the detector reads from an alert's flows, when it says
        which (``alert_flow_columns``): cutting each alert's rows out of every column of the
        wide window frame costs more than the rest of the alert. Once per build and column set."""
        cols: tuple[str, ...] | None = getattr(det, "alert_flow_columns", None)
        if not cols:
            return frame
        key = (id(frame), cols)
        out = self._narrowed.get(key)
        if out is None:
            need = list(dict.fromkeys((*cols, "dst_ip", "dst_port")))  # the targets are read here
            out = frame[need] if all(c in frame.columns for c in need) else frame
            self._narrowed[key] = out
        return out

    def _col(self, frame: pd.DataFrame, name: str) -> pd.Series:
        """``frame[name]``, taken once per :meth:`build` (selecting a column of the wide window
        frame costs more than reading a value of it; every alert reads the same few)."""
        key = (id(frame), name)
        col = self._columns.get(key)
        if col is None:
            col = self._columns[key] = frame[name]
        return col

    def _alert(
        self,
        ctx: Context,
        row: int,
        det: Detector,
        kind: str,
        score: float,
        wflows: pd.DataFrame,
        learning: bool,
        within: tuple[pd.DataFrame, np.ndarray] | None = None,
    ) -> Alert:
        """The alert of one window; ``within``: the frame ``wflows`` was taken from and its
        rows there (the examples are then read from that frame's columns, taken once a build)."""
        # Only the columns needed: a whole row of the wide window frame is a costly object.
        w: dict[str, Any] = {c: self._col(ctx.windows, c).iat[row] for c in _ALERT_KEYS}
        entity = Entity(
            ip=str(w["src_ip"]),
            namespace=str(w["namespace"]),
            pod=str(w["pod"]),
            workload=str(w["workload"]),
            node=str(w["node"]),
        )
        # Only the detector's evidence flows name targets: a window without them adds none
        # (the enforcer must never block a destination the finding is not about).
        mask = det.target_mask(wflows, ctx) if len(wflows) else np.zeros(0, dtype=bool)
        tflows = wflows[mask]
        targets = tflows["dst_ip"].value_counts().index[:MAX_TARGETS].tolist()
        ports = [int(p) for p in tflows["dst_port"].value_counts().index[:MAX_TARGETS]]
        evidence = {**self._evidence(ctx, row, det), **(det.describe(tflows) if mask.any() else {})}
        if within is not None:
            frame, idx = within
            examples = self._examples_at(frame, idx[mask] if len(tflows) else idx)
        else:
            examples = _examples(tflows if len(tflows) else wflows)
        ws, we = float(w["window_start"]), float(w["window_end"])
        key = (entity.key(), det.name)
        prev = self.open.get(key)
        if (
            prev is not None
            and prev.last_seen is not None
            and ws - prev.last_seen.timestamp() <= self.reopen_gap_s
        ):
            merged_targets = list(dict.fromkeys([*prev.targets, *targets]))[:MAX_TARGETS]
            merged_ports = list(dict.fromkeys([*prev.target_ports, *ports]))[:MAX_TARGETS]
            new_score = round(max(prev.score, score), 4)  # as a new alert's, whichever path raised it
            still_learning = prev.learning and learning
            alert = prev.model_copy(
                update={
                    "window_end": _dt(max(we, prev.window_end.timestamp())),
                    "last_seen": _dt(max(we, prev.last_seen.timestamp())),
                    "score": new_score,
                    "severity": capped_severity(new_score, still_learning),
                    "learning": still_learning,
                    "targets": merged_targets,
                    "target_ports": merged_ports,
                    # An early alert updated when its own window closes stays one window.
                    "evidence": {
                        **evidence,
                        "detected_at": prev.evidence.get("detected_at", self._detected_at()),
                        "windows": int(prev.evidence.get("windows", 1))
                        + int(ws >= prev.last_seen.timestamp()),
                    },
                    # The early alert's examples come again when its window closes: once each.
                    "example_flows": _distinct(prev.example_flows + examples)[:MAX_EXAMPLES],
                }
            )
        else:
            alert = Alert(
                kind=kind,
                detector=det.name,
                technique=det.technique_for(kind),
                score=round(score, 4),
                severity=capped_severity(score, learning),
                learning=learning,
                entity=entity,
                window_start=_dt(ws),
                window_end=_dt(we),
                targets=targets,
                target_ports=ports,
                summary=_summary(det, entity, targets, ports),
                evidence={**evidence, "windows": 1, "detected_at": self._detected_at()},
                example_flows=examples,
                model_version=self.model_version if det.needs_model else "",
                cluster=self.settings.cluster.name,
            )
        self.open[key] = alert
        return alert

    def _examples_at(self, frame: pd.DataFrame, pos: np.ndarray) -> list[dict[str, Any]]:
        """:func:`_examples` of ``frame.iloc[pos]``, without building that frame."""
        if not len(pos):
            return []
        bytes_out = self._col(frame, "bytes_out").to_numpy(dtype="float64")[pos]
        take = pos[np.argsort(-bytes_out, kind="stable")[:MAX_EXAMPLES]]
        cols = {c: _taken(self._col(frame, c), take).tolist() for c in EXAMPLE_COLUMNS}
        return [{c: _plain(cols[c][i]) for c in EXAMPLE_COLUMNS} for i in range(len(take))]

    def _detected_at(self) -> float | None:
        return round(self.clock, 3) if math.isfinite(self.clock) else None

    def _evidence(self, ctx: Context, row: int, det: Detector) -> dict[str, Any]:
        ev: dict[str, Any] = {"detector_score": None}
        for f in det.evidence:
            item: dict[str, Any] = {"value": _num(self._col(ctx.windows, f).iloc[row])}
            for label, base in (
                ("entity_baseline", ctx.entity_base),
                ("workload_baseline", ctx.workload_base),
            ):
                col = f"m_{f}"
                if col in base.columns:
                    m = self._col(base, col).iloc[row]
                    if not (isinstance(m, float) and math.isnan(m)):
                        item[label] = _num(float(np.expm1(m)))
            ev[f] = item
        ev.pop("detector_score")
        return ev

    def expire(self, before: float) -> int:
        """Forget open alerts whose last window ended before ``before`` (the behaviour stopped)."""
        stale = [
            k
            for k, a in self.open.items()
            if a.last_seen is not None and a.last_seen.timestamp() + self.reopen_gap_s < before
        ]
        for k in stale:
            del self.open[k]
        return len(stale)

    def close(self, alert_id: str) -> bool:
        """Close the open alert ``alert_id`` (a person resolved it): the next finding about its
        entity and detector opens a new alert instead of extending this one."""
        for k, a in self.open.items():
            if a.id == alert_id:
                del self.open[k]
                return True
        return False

    def export(self) -> list[str]:
        return [a.to_json() for a in self.open.values()]

    def load(self, items: list[str]) -> None:
        self.open = {}
        for raw in items:
            a = Alert.from_json(raw)
            self.open[(a.entity.key(), a.detector)] = a


def _num(v: Any) -> float | int:
    f = float(v)
    return int(f) if f.is_integer() and abs(f) < 2**53 else round(f, 4)


def _examples(flows: pd.DataFrame) -> list[dict[str, Any]]:
    if not len(flows):
        return []
    # The largest uploads first (ties in flow order), as plain JSON values: no frame is
    # built per alert, and times keep their sub-second digits.
    idx = np.argsort(-flows["bytes_out"].to_numpy(dtype="float64"), kind="stable")[:MAX_EXAMPLES]
    cols = {c: _taken(flows[c], idx).tolist() for c in EXAMPLE_COLUMNS}
    return [{c: _plain(cols[c][i]) for c in EXAMPLE_COLUMNS} for i in range(len(idx))]


def _taken(col: pd.Series, idx: np.ndarray) -> np.ndarray:
    """``col.to_numpy()[idx]``; an Arrow or categorical column converts only the taken rows
    (a scan's window has thousands of flows; an example shows five)."""
    if isinstance(col.dtype, np.dtype):
        return col.to_numpy()[idx]
    return np.asarray(col.array.take(idx).to_numpy())


def _plain(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _summary(det: Detector, entity: Entity, targets: list[str], ports: list[int]) -> str:
    who = entity.key()
    tgt = ", ".join(targets[:3]) + (" …" if len(targets) > 3 else "")
    return f"{det.name.replace('_', ' ')} by {who}" + (f" to {tgt}" if tgt else "")


def _distinct(examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The example flows without repeats, in their order."""
    seen: set[str] = set()
    out = []
    for e in examples:
        key = json.dumps(e, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out
