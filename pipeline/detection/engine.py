"""The detection engine: raw flow batches in, alerts out. Pure logic, no I/O.

``process`` enriches a batch, buffers it in tumbling windows, and for every window the
watermark closes: featurises its entity-windows, scores them with every detector against
the baselines and seen edges *as they were before the window*, builds alerts, then folds
the window into the memory: only windows no detector flagged update the baselines, and the
edges of an alerted lateral movement stay new to every other pod for a day (an attack must
not become normal just by happening). A fresh engine learns for a minute before its novelty
detectors speak; ``import_state(model.state, clocks=False)`` ships benign history instead.

The streaming runtime (consume, commit, sinks) and the offline ``detect`` command both
drive this one class, so what is tuned offline is what runs live.

State (baselines, seen edges, recent connections, open alerts, clocks) exports as JSON with
Arrow tables (never pickle). Flows still buffered in open windows are *not* part of the
state: a runtime must not commit past :meth:`DetectionEngine.open_window_floor`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from flowwarden.errors import RecordError
from flowwarden.kube import PodInventory
from flowwarden.pipeline.detection.addresses import AddressFacts
from flowwarden.pipeline.detection.alerts import AlertBuilder
from flowwarden.pipeline.detection.connections import ConnectionLog
from flowwarden.pipeline.detection.detectors import Context, build_detectors
from flowwarden.pipeline.detection.enrich import enrich_flows
from flowwarden.pipeline.detection.features import (
    ID_COLUMNS,
    beacon_features,
    commit_edges,
    decode_lean,
    edge_table,
    novelty_features,
    prepare,
    recent_features,
    to_lean,
    window_features,
)
from flowwarden.pipeline.detection.state import (
    Baselines,
    RecentActivity,
    SeenEdges,
    Vocab,
    pack_state,
    unpack_state,
)
from flowwarden.pipeline.detection.stats import EngineStats
from flowwarden.pipeline.detection.windows import WindowBuffer
from flowwarden.records import FLOW_SCHEMA, WINDOW_COLUMNS, Alert, conform_flows
from flowwarden.settings import Settings

if TYPE_CHECKING:
    from flowwarden.models.registry import LoadedModel

log = logging.getLogger(__name__)

# Features with a baseline per entity and per workload (log scale, robust).
BASELINE_FEATURES: tuple[str, ...] = (
    "flows",
    "bytes_out_ext",
    "bytes_out_int",
    "ext_dsts",
    "int_peers",
    "dst_ports",
    "dns_names",
    "failed_dsts",
    "new_edges",
)
# How often (event time) expired baselines, edges and open alerts are swept: a cost, not a
# behaviour (each memory forgets by its own TTL, whatever the sweep's cadence). The tuning
# knobs (lateness, TTLs, horizons, memory bounds) are settings in ``settings.pipeline``.
EXPIRE_EVERY_S = 60.0


@dataclass
class EngineResult:
    alerts: list[Alert] = field(default_factory=list)
    enriched: pd.DataFrame = field(default_factory=pd.DataFrame)
    windows: pd.DataFrame = field(default_factory=pd.DataFrame)


class DetectionEngine:
    """Windows, features, detectors and alerts over a stream of flow batches."""

    def __init__(
        self, settings: Settings, *, inventory: PodInventory | None = None, model: LoadedModel | None = None
    ) -> None:
        self.settings = settings
        p = settings.pipeline
        self.inventory = inventory
        self.window_s = p.window_s
        self.buffer = WindowBuffer(p.window_s, p.allowed_lateness_s)
        half_life = p.baseline_half_life_h * 3600.0
        ttl = p.baseline_ttl_h * 3600.0
        self.entity_base = Baselines(
            list(BASELINE_FEATURES), half_life_s=half_life, ttl_s=ttl, max_keys=p.max_entities
        )
        self.workload_base = Baselines(
            list(BASELINE_FEATURES), half_life_s=half_life, ttl_s=ttl, max_keys=p.max_entities
        )
        self.edges = SeenEdges(ttl_s=p.seen_edges_ttl_days * 86400.0, max_edges=p.max_edges)
        self.connections = ConnectionLog(horizon_s=p.beacon_horizon_s, max_pairs=p.beacon_max_pairs)
        self.recent = RecentActivity(horizon_s=p.recent_horizon_s, max_rows=p.recent_max_rows)
        self.taint_s = p.alerted_edges_taint_h * 3600.0
        self.vocab_max = p.max_vocabulary
        self.first_ws = math.inf  # when this engine's memory starts (-inf: history was imported)
        self.vocab = Vocab()
        self.facts = AddressFacts(settings)
        self.alerts = AlertBuilder(settings)
        self.detectors = build_detectors(settings, model)
        self.model: LoadedModel | None = None
        self.windows_scored = 0
        self.flows_in = 0
        self.flows_scored = 0
        self.flows_unscored = 0
        self.evicted: dict[str, int] = {"entities": 0, "workloads": 0, "edges": 0, "connections": 0}
        self._last_expire = -math.inf
        self.set_model(model)

    # ------------------------------------------------------------------ API
    def set_inventory(self, inventory: PodInventory | None) -> None:
        """Enrich from this pod inventory snapshot from now on (the runtime's source made it)."""
        self.inventory = inventory

    def set_model(self, model: LoadedModel | None) -> None:
        """Swap the anomaly model (after a promote); warm-start from its shipped state if any."""
        self.model = model
        for det in self.detectors:
            if det.needs_model:
                det.set_model(model)
        self.alerts.model_version = getattr(model, "version", "") if model is not None else ""
        state = getattr(model, "state", None) if model is not None else None
        if state and not len(self.workload_base):
            try:
                self.import_state(state, clocks=False)
            except RecordError as exc:
                log.warning(
                    "model %s: warm-start state not usable (%s); starting cold",
                    getattr(model, "version", "?"),
                    exc,
                )

    def process(self, flows: pd.DataFrame, *, now: float | None = None) -> EngineResult:
        """Score a raw flow batch; returns the alerts of every window that closed."""
        if list(flows.columns) != list(FLOW_SCHEMA) or any(
            str(flows[c].dtype) != t for c, t in FLOW_SCHEMA.items() if t != "str"
        ):
            flows = conform_flows(flows)
        addresses = self.facts.batch(self.vocab, flows["src_ip"], flows["dst_ip"], self._node_ips())
        enriched = enrich_flows(
            flows, self.inventory, self.settings, inside=(addresses.src_in, addresses.dst_in)
        )
        self.flows_in += len(enriched)
        if len(enriched):
            lean = to_lean(enriched, self.vocab, self.settings, self._node_ips(), addresses=addresses)
            # Ingress and transit flows have no in-cluster source to score (still enriched, still counted).
            self.flows_unscored += len(enriched) - len(lean)
            self.buffer.add(lean)
        closed = self.buffer.close(now)
        alerts, windows = self._score(closed)
        if len(self.vocab) > self.vocab_max:
            self._compact_vocab()
        return EngineResult(alerts, enriched, windows)

    def flush(self) -> EngineResult:
        """Close every open window (end of a file, shutdown)."""
        closed = self.buffer.close(everything=True)
        alerts, windows = self._score(closed)
        return EngineResult(alerts, pd.DataFrame(columns=list(FLOW_SCHEMA)), windows)

    def open_window_floor(self) -> float | None:
        return self.buffer.open_floor()

    @property
    def late_flows(self) -> int:
        return self.buffer.late_flows

    @property
    def state_entities(self) -> int:
        return len(self.entity_base)

    def stats(self) -> EngineStats:
        """What the engine counted so far, in one snapshot (for metrics, logs and tests)."""
        return EngineStats(
            flows_in=self.flows_in,
            flows_scored=self.flows_scored,
            flows_unscored=self.flows_unscored,
            late_flows=self.late_flows,
            windows_scored=self.windows_scored,
            state_entities=self.state_entities,
            evicted=dict(self.evicted),
            suppressed=dict(self.alerts.suppressed),
        )

    # ------------------------------------------------------------------ scoring
    def _score(self, closed: pd.DataFrame) -> tuple[list[Alert], pd.DataFrame]:
        if not len(closed):
            return [], pd.DataFrame()
        alerts: dict[str, Alert] = {}
        frames: list[pd.DataFrame] = []
        ws_all = closed["window_start"].to_numpy()
        if len(ws_all) > 1 and not bool((ws_all[1:] >= ws_all[:-1]).all()):
            closed = closed.iloc[np.argsort(ws_all, kind="stable")]  # one take; then slices
            ws_all = closed["window_start"].to_numpy()
        starts = np.flatnonzero(np.r_[True, ws_all[1:] != ws_all[:-1]])
        for lo, hi in zip(starts, [*starts[1:], len(ws_all)], strict=True):
            ws = ws_all[lo]
            part = closed.iloc[lo:hi]  # a view: no copy per window
            step_alerts, windows = self._score_window(part)
            for a in step_alerts:
                alerts[a.id] = a
            if len(windows):
                frames.append(windows)
            self._maybe_expire(float(ws))
        windows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        return list(alerts.values()), windows

    def _pod_age(self, keys: pd.DataFrame) -> np.ndarray:
        """Seconds each entity's pod has existed (inventory creation time; 0 when unknown)."""
        if self.inventory is None or not len(keys):
            return np.zeros(len(keys))
        created = self.inventory.created_by_key()
        start = keys["entity"].map(created).to_numpy(dtype="float64")
        return np.nan_to_num(keys["window_start"].to_numpy() - start, nan=0.0, posinf=0.0, neginf=0.0)

    def _compact_vocab(self) -> None:
        """Start a fresh vocabulary holding only the strings of still-buffered flows (bounded memory)."""
        old, new = self.vocab, Vocab()
        parts = []
        for part in self.buffer.take_parts():
            part = part.copy()
            for col in (*ID_COLUMNS, "dns_reg"):
                part[col] = new.encode(old.decode(part[col].to_numpy())).astype("int32")
            parts.append(part)
        self.buffer.put_parts(parts)
        self.evicted["vocabulary"] = self.evicted.get("vocabulary", 0) + len(old) - len(new)
        self.vocab = new

    def _node_ips(self) -> dict[str, str]:
        return self.inventory.node_ips if self.inventory is not None else {}

    def _score_window(self, flows: pd.DataFrame) -> tuple[list[Alert], pd.DataFrame]:
        p = prepare(flows, self.vocab, self.window_s)
        if p is None:
            return [], pd.DataFrame()
        feats = window_features(p)
        self.first_ws = min(self.first_ws, float(p.keys["window_start"].min()))
        edges = edge_table(p, self.vocab)
        novelty, local_edges, edges_all = novelty_features(p, edges, self.edges)
        recent = recent_features(p, local_edges, self.recent)
        min_conns = self.settings.pipeline.beacon_min_conns
        beacon = beacon_features(p, self.connections, self.edges, self.vocab, min_conns)
        windows = pd.concat([p.keys, feats, novelty, recent, beacon], axis=1)
        windows = windows[list(WINDOW_COLUMNS)]
        ent = self.entity_base.lookup(windows["entity"])
        wl = self.workload_base.lookup(windows["workload_key"])
        ctx = Context(
            windows,
            ent.reset_index(drop=True),
            wl.reset_index(drop=True),
            self.settings,
            self.model,
            memory_since=self.first_ws,
            extra={"pod_age": self._pod_age(p.keys)},
        )
        scores: dict[str, np.ndarray] = {}
        for det in self.detectors:
            s = np.clip(np.asarray(det.score(ctx), dtype="float64"), 0.0, 1.0)
            scores[det.name] = s
            windows[f"score_{det.name}"] = s
        by_name = {d.name: d for d in self.detectors}
        alerts = self.alerts.build(
            ctx, p.flows, p.gid, scores, by_name, decode=lambda rows: decode_lean(rows, self.vocab)
        )
        # Learn only from windows nobody flagged: an attack must not become the baseline.
        flagged = np.zeros(len(windows), dtype=bool)
        lateral = np.zeros(len(windows), dtype=bool)
        for det in self.detectors:
            hit = scores[det.name] > 0
            flagged |= hit
            if det.kind == "lateral_movement":
                lateral |= hit
        commit_edges(edges_all, self.edges, np.flatnonzero(lateral), taint_s=self.taint_s)
        calm = windows[~flagged]
        ws = calm["window_start"].to_numpy()
        self.entity_base.update(calm["entity"], ws, self.window_s, calm)
        self.workload_base.update(calm["workload_key"], ws, self.window_s, calm)
        self.windows_scored += len(windows)
        self.flows_scored += len(p.flows)
        return alerts, windows

    def _maybe_expire(self, ws: float) -> None:
        if ws - self._last_expire < EXPIRE_EVERY_S:
            return
        self._last_expire = ws
        self.evicted["entities"] += self.entity_base.expire(ws)
        self.evicted["workloads"] += self.workload_base.expire(ws)
        self.evicted["edges"] += self.edges.expire(ws)  # also forgets expired alerted pairs
        self.evicted["connections"] = self.connections.evicted
        self.alerts.expire(ws)

    # ------------------------------------------------------------------ state
    def export_state(self) -> bytes:
        """Baselines, seen edges, recent connections, open alerts and clocks (JSON + Arrow)."""
        tables = {
            "entity_base": self.entity_base.export(),
            "workload_base": self.workload_base.export(),
            "edges": self.edges.export(),
            "alerted_edges": self.edges.export_alerted(),
            "connections": self.connections.export(),
            "recent": self.recent.table,
        }
        meta: dict[str, Any] = {
            "window_s": self.window_s,
            "watermark": _finite(self.buffer.watermark),
            "closed_until": _finite(self.buffer.closed_until),
            "open_alerts": self.alerts.export(),
            "windows_scored": self.windows_scored,
            "first_ws": _finite(self.first_ws),
        }
        return pack_state(tables, meta)

    def import_state(self, data: bytes, *, clocks: bool = True) -> None:
        """Restore memory from :meth:`export_state` (``clocks=False``: history only, a warm start)."""
        tables, meta = unpack_state(data)
        if not clocks:
            tables = _as_history(tables)
        if "entity_base" in tables:
            self.entity_base.load(tables["entity_base"])
        if "workload_base" in tables:
            self.workload_base.load(tables["workload_base"])
        if "edges" in tables:
            self.edges.load(tables["edges"])
        if "alerted_edges" in tables and clocks:
            self.edges.load_alerted(tables["alerted_edges"])
        if "recent" in tables and clocks:
            # Recent activity (new peers, failed connections over a sliding horizon) keeps an
            # ongoing slow scan on its open alert across a restart instead of starting afresh.
            self.recent.load(tables["recent"])
        if "connections" in tables and clocks:
            self.connections.load(tables["connections"])
        if clocks:
            if meta.get("watermark") is not None:
                self.buffer.watermark = max(self.buffer.watermark, float(meta["watermark"]))
            if meta.get("closed_until") is not None:
                self.buffer.closed_until = max(self.buffer.closed_until, float(meta["closed_until"]))
            self.alerts.load(list(meta.get("open_alerts", [])))
            self.windows_scored = int(meta.get("windows_scored", self.windows_scored))
            if meta.get("first_ws") is not None:
                self.first_ws = min(self.first_ws, float(meta["first_ws"]))

    def describe(self) -> str:
        return json.dumps(
            {
                "entities": len(self.entity_base),
                "workloads": len(self.workload_base),
                "edges": len(self.edges),
                "connections": len(self.connections),
                "open_alerts": len(self.alerts.open),
            }
        )


def _as_history(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Shipped history from another timeline: established long ago, never expired by age."""
    out = dict(tables)
    for name in ("entity_base", "workload_base", "edges"):
        if name in out:
            out[name] = out[name].assign(first=0.0, last=math.inf)
    if "edges" in out:
        out["edges"] = out["edges"].assign(bytes=0.0, taint_until=-math.inf, taint_ent=np.uint64(0))
    return out


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
