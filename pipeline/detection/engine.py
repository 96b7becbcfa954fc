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

Early firing: detectors whose evidence is conclusive before the window ends
(:attr:`~flowwarden.pipeline.detection.detectors.base.Detector.early`) also score the open
window, for the entities whose new rows could complete that evidence, as each batch
arrives. Their alert has the id the window's close will give it (one open alert per
entity and detector), so the close updates it instead of raising another; the open window
teaches the memory nothing until it closes.
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
from flowwarden.pipeline.detection.detectors import Context, Detector, build_detectors
from flowwarden.pipeline.detection.detectors.flow_rules import observe_enriched, set_rules
from flowwarden.pipeline.detection.enrich import enrich_flows
from flowwarden.pipeline.detection.features import (
    ID_COLUMNS,
    Prepared,
    beacon_features,
    commit_edges,
    decode_lean,
    detail_features,
    edge_table,
    first_rows,
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
    mix,
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
# An open window whose early alert is out already is scored again only once the rows of one
# of its ready detectors grew by this factor since (its next findings there are more of the
# same; the window's close has the final word): see DetectionEngine._rescore.
EARLY_GROWTH = 1.5


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
        self.early_alerts = 0  # alerts (new or updated) raised from open windows
        self._early_rows: dict[tuple[float, int], np.ndarray] = {}  # (window, entity) -> rows per detector
        self._early_scored: dict[tuple[float, int], float] = {}  # (window, entity) -> when last scored
        # (window, entity, novelty pass) -> its rows per detector when that pass last found something
        self._early_fired: dict[tuple[float, int, bool], np.ndarray] = {}
        self.flows_in = 0
        self.flows_scored = 0
        self.flows_unscored = 0
        self.evicted: dict[str, int] = {"entities": 0, "workloads": 0, "edges": 0, "connections": 0}
        self._last_expire = -math.inf
        # Cluster-wide first sightings (external addresses) to share with other workers:
        # None until a runtime asks for them (:meth:`take_global_memory`), so one worker pays nothing.
        self._global_new: dict[int, float] | None = None
        self._created: tuple[dict[str, float], pd.Index, np.ndarray] | None = None  # see _pod_age
        self.set_model(model)

    # ------------------------------------------------------------------ API
    def set_inventory(self, inventory: PodInventory | None) -> None:
        """Enrich from this pod inventory snapshot from now on (the runtime's source made it)."""
        self.inventory = inventory

    def resolve(self, alert: Alert, *, benign: bool) -> int:
        """A person's verdict on an alert (:mod:`~flowwarden.pipeline.detection.feedback`):
        benign, its edges become the workload's normal; malicious, they stay new to the
        workload's other pods. Either way the open alert closes: what follows is a new alert
        (or none). Returns how many edges it touched."""
        from flowwarden.pipeline.detection.feedback import apply_verdict

        self.alerts.close(alert.id)
        now = max(self.buffer.watermark, alert.window_end.timestamp())
        nodes = set(self._node_ips()) | set(self.settings.cluster.node_ips)
        return apply_verdict(self.edges, alert, benign=benign, now=now, taint_s=self.taint_s, node_ips=nodes)

    def set_rules(self, policy: Any, policy_version: str, feeds: Any, feeds_version: str) -> None:
        """Judge flows with this declared policy and feed set from now on (the runtime loads them)."""
        set_rules(self.detectors, policy, policy_version, feeds, feeds_version)

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

    def take_global_memory(self) -> dict[int, float]:
        """Cluster-wide edges (one per external address) this engine saw before anyone it
        knows of, since the last call: edge hash -> first-seen window start.

        For a runtime that runs several engines over one cluster: it shares these with the
        others and hands theirs to :meth:`merge_global_memory`, so an address one worker has
        known for days is not "new to the cluster" for another. The first call starts the
        bookkeeping (one engine alone never pays for it)."""
        out = self._global_new or {}
        self._global_new = {}
        return out

    def merge_global_memory(self, entries: dict[int, float]) -> None:
        """First sightings other workers shared (:meth:`take_global_memory`): the earliest wins."""
        if not entries:
            return
        hashes = np.fromiter(entries.keys(), dtype="uint64", count=len(entries))
        first = np.fromiter(entries.values(), dtype="float64", count=len(entries))
        self.edges.merge_first(hashes, first)

    def _note_global(self, edges: pd.DataFrame) -> None:
        """Remember the cluster-wide edges these windows saw first (see :meth:`take_global_memory`)."""
        if self._global_new is None or not len(edges):
            return
        g = edges[edges["glob"].to_numpy(dtype=bool)]
        if not len(g):
            return
        row, uniq = pd.factorize(g["hash"].to_numpy())
        hashes = np.asarray(uniq, dtype="uint64")
        first = np.full(len(hashes), np.inf)
        np.minimum.at(first, row, g["window_start"].to_numpy(dtype="float64"))
        known = self.edges.first_seen(hashes)
        fresh = ~(known <= first)  # never seen (NaN), or seen earlier here than known so far
        out = self._global_new
        for h, f in zip(hashes[fresh].tolist(), first[fresh].tolist(), strict=True):
            out[h] = min(f, out.get(h, f))

    def process(
        self, flows: pd.DataFrame, *, now: float | None = None, enriched: bool = False
    ) -> EngineResult:
        """Score a flow batch; returns the alerts of every window that closed.

        ``enriched``: the enrich stage already looked the batch up in the pod inventory
        (:mod:`~flowwarden.pipeline.runtime.repartition`), so it is taken as it is. Looking
        up again what that stage found nothing for (every external address) cost the engine
        a fifth of its time on already enriched input, and could only disagree with the
        workload key the batch was routed by."""
        if list(flows.columns) != list(FLOW_SCHEMA) or any(
            str(flows[c].dtype) != t for c, t in FLOW_SCHEMA.items() if t != "str"
        ):
            flows = conform_flows(flows)
        addresses = self.facts.batch(self.vocab, flows["src_ip"], flows["dst_ip"], self._node_ips())
        batch = (
            flows.reset_index(drop=True)
            if enriched
            else enrich_flows(
                flows, self.inventory, self.settings, inside=(addresses.src_in, addresses.dst_in)
            )
        )
        self.flows_in += len(batch)
        if len(flows):  # the engine's memory starts with the first flow it is given
            self.note_stream_start(float(flows["ts_end"].min()))
        # Rule detectors (declared policy, threat feeds) judge each flow, not window features.
        observe_enriched(self.detectors, batch, self.inventory, self.settings)
        lean = pd.DataFrame()
        if len(batch):
            lean = to_lean(batch, self.vocab, self.settings, self._node_ips(), addresses=addresses)
            # Ingress and transit flows have no in-cluster source to score (still enriched, still counted).
            self.flows_unscored += len(batch) - len(lean)
            self.buffer.add(lean)
        closed = self.buffer.close(now)
        self.alerts.clock = max(self.buffer.watermark, now if now is not None else -math.inf)
        alerts, windows = self._score(closed)
        if len(batch) and len(lean):
            seen = {a.id for a in alerts}
            alerts += [a for a in self._score_early(lean) if a.id not in seen]
        if len(self.vocab) > self.vocab_max:
            self._compact_vocab()
        return EngineResult(alerts, batch, windows)

    def flush(self) -> EngineResult:
        """Close every open window (end of a file, shutdown)."""
        closed = self.buffer.close(everything=True)
        self.alerts.clock = self.buffer.watermark
        alerts, windows = self._score(closed)
        return EngineResult(alerts, pd.DataFrame(columns=list(FLOW_SCHEMA)), windows)

    def open_window_floor(self) -> float | None:
        return self.buffer.open_floor()

    def note_stream_start(self, ts: float) -> None:
        """The stream this engine sees part of holds flows since ``ts``: its memory starts there.

        An engine given every flow learns it from them; an engine behind the enrich stage
        sees only its partition's workloads, and is told by the runtime where the stream
        starts (every partition hears of every source batch), so "learning" and "new after
        learning" mean the same time on every worker."""
        if math.isfinite(ts):
            self.first_ws = min(self.first_ws, math.floor(ts / self.window_s) * self.window_s)

    def watermark(self) -> float:
        """The event time the windows close by: the newest ``ts_end`` of a scored flow."""
        return self.buffer.watermark

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
            early_alerts=self.early_alerts,
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
        if self._created is None or self._created[0] is not created:
            # Indexed once per inventory snapshot: a dict ``map`` made a Series of every pod per call.
            self._created = (created, pd.Index(list(created)), np.fromiter(created.values(), "float64"))
        _, index, times = self._created
        at = index.get_indexer(pd.Index(keys["entity"].to_numpy(dtype=object)))
        start = np.full(len(at), np.nan)
        start[at >= 0] = times[at[at >= 0]]
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
        jitter = self.settings.pipeline.beacon_max_jitter
        beacon = beacon_features(p, self.connections, self.edges, self.vocab, min_conns, jitter)
        windows = pd.concat([p.keys, feats, novelty, recent, beacon], axis=1)
        windows = windows[list(WINDOW_COLUMNS)]
        # Detectors also read detail columns that are not part of the window record.
        detail = detail_features(p, local_edges, novelty, beacon, self.settings, self.vocab)
        ent = self.entity_base.lookup(windows["entity"])
        wl = self.workload_base.lookup(windows["workload_key"])
        ctx = Context(
            pd.concat([windows, detail], axis=1),
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
        exfil = np.zeros(len(windows), dtype=bool)
        for det in self.detectors:
            hit = scores[det.name] > 0
            flagged |= hit
            if det.kind == "lateral_movement":
                lateral |= hit
            else:
                exfil |= hit
        # An exfiltration alert pins its edges as new too (the next pod of the workload sending
        # there still stands out), unless it was raised while learning.
        exfil &= ~ctx.learning(self.settings.pipeline.learning_s)
        self._note_global(edges_all)
        commit_edges(edges_all, self.edges, np.flatnonzero(lateral | exfil), taint_s=self.taint_s)
        calm = windows[~flagged]
        ws = calm["window_start"].to_numpy()
        self.entity_base.update(calm["entity"], ws, self.window_s, calm)
        self.workload_base.update(calm["workload_key"], ws, self.window_s, calm)
        self.windows_scored += len(windows)
        self.flows_scored += len(p.flows)
        return alerts, windows

    def _to_young_address(self, batch: pd.DataFrame, rows: np.ndarray, young_s: float) -> np.ndarray:
        """The ``rows`` whose destination the cluster-wide edge memory has not known for
        ``young_s`` (or at all): the only ones a new-destination finding can be about."""
        idx = np.flatnonzero(rows)
        dst = batch["dst_ip"].to_numpy()[idx]
        hashes = mix(self.vocab.hash_of(dst), 0, 6)  # the cluster-wide edge of an address (edge_table)
        first = self.edges.first_at(self.edges.positions(hashes))
        clock = max(self.alerts.clock, float(batch["ts_end"].max()))
        out = np.zeros(len(rows), dtype=bool)
        out[idx] = ~(first <= clock - young_s)  # unknown (NaN) counts as young
        return out

    def _early_candidates(
        self, batch: pd.DataFrame, dets: list[Detector], rows: dict[str, np.ndarray], wanted: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The entities worth scoring early now: for the detectors that read no novelty, and
        for those that do (their evidence is about external destinations).

        Each open (window, entity) counts its early rows per detector across batches; it is
        scored once some detector's count reaches :meth:`Detector.early_min_rows` (five
        refused connections cannot be a scan of eight ports yet), then again at most every
        ``pipeline.early_interval_s`` of event time to add the targets found since, and
        once its pass found something, only when its rows grew by half (:meth:`_rescore`;
        the window's close has the final word). This keeps early firing's cost to the
        entities that may fire, not every pod with a failed connection."""
        sel = np.flatnonzero(wanted)
        ws = np.floor(batch["ts_end"].to_numpy(dtype="float64")[sel] / self.window_s) * self.window_s
        ws = np.maximum(ws, self.buffer.closed_until)  # late rows count in the oldest open window
        ent = _entity_codes(batch)[sel]
        counts = np.stack([rows[d.name][sel] for d in dets], axis=1).astype(np.int64)
        keys = pd.MultiIndex.from_arrays([ws, ent])
        codes, uniq = pd.factorize(keys)
        per = np.zeros((len(uniq), len(dets)), dtype=np.int64)
        np.add.at(per, codes, counts)
        need = np.array([d.early_min_rows() for d in dets], dtype=np.int64)
        clock, every = self.alerts.clock, self.settings.pipeline.early_interval_s
        novelty_reader = np.array([d.reads_novelty for d in dets], dtype=bool)
        picked: list[int] = []
        picked_novel: list[int] = []
        for (w, e), add in zip(uniq.tolist(), per, strict=True):
            acc = self._early_rows.get((w, e))
            acc = add if acc is None else acc + add
            self._early_rows[(w, e)] = acc
            ready = acc >= need
            if not ready.any() or clock - self._early_scored.get((w, e), -math.inf) < every:
                continue
            plain = self._rescore(w, e, False, acc, ready & ~novelty_reader)
            novel = self._rescore(w, e, True, acc, ready & novelty_reader)
            if plain or novel:
                self._early_scored[(w, e)] = clock
            if plain:
                picked.append(int(e))
            if novel:
                picked_novel.append(int(e))
        floor = self.buffer.closed_until
        if len(self._early_rows) > 4 * len(uniq) + 10_000:  # forget closed windows
            self._early_rows = {k: v for k, v in self._early_rows.items() if k[0] >= floor}
            self._early_scored = {k: v for k, v in self._early_scored.items() if k[0] >= floor}
            self._early_fired = {k: v for k, v in self._early_fired.items() if k[0] >= floor}
        return (
            np.unique(np.asarray(picked, dtype=np.int64)),
            np.unique(np.asarray(picked_novel, dtype=np.int64)),
        )

    def _rescore(self, w: float, e: int, novelty: bool, acc: np.ndarray, ready: np.ndarray) -> bool:
        """Whether to score this open (window, entity) again in one pass (``novelty``: the
        novelty readers'), given its rows per detector and which detectors are ``ready``.

        Until the pass finds something, every time (the first finding is what early firing
        is for: it is raised as soon as it would be); after, once a ready detector's rows
        grew by :data:`EARLY_GROWTH`: scoring the same attack again each batch cost most of
        early firing in a cold start and only re-sent the same alert."""
        if not ready.any():
            return False
        fired = self._early_fired.get((w, e, novelty))
        return fired is None or bool((acc[ready] >= EARLY_GROWTH * np.maximum(fired[ready], 1)).any())

    def _note_fired(self, p: Prepared, scores: dict[str, np.ndarray], novelty: bool) -> None:
        """Remember the rows of the open (window, entity) pairs this pass found something in."""
        hit = np.logical_or.reduce([s > 0 for s in scores.values()]) if scores else None
        if hit is None or not hit.any():
            return
        codes = _entity_codes(p.flows)[first_rows(p.gid)]  # per entity-window (gid order)
        ws = p.keys["window_start"].to_numpy(dtype="float64")
        for w, e in zip(ws[hit].tolist(), codes[hit].tolist(), strict=True):
            acc = self._early_rows.get((w, e))
            if acc is not None:
                self._early_fired[(w, e, novelty)] = acc.copy()

    def _novelty_quiet(self, dets: list[Detector]) -> bool:
        """Whether no novelty reader can score any open window (:meth:`Detector.quiet_before`):
        in an engine's first minute, "new to the cluster" cannot be told from "first seen"."""
        floor = self.buffer.open_floor()
        if not math.isfinite(self.buffer.watermark):
            return False
        since = min(self.first_ws, floor if floor is not None else math.inf)  # at most the pass's
        newest = math.floor(self.buffer.watermark / self.window_s) * self.window_s
        return all(d.quiet_before(since) > newest for d in dets if d.reads_novelty)

    def _score_early(self, batch: pd.DataFrame) -> list[Alert]:
        """Alerts of early detectors from the open windows of the entities ``batch`` concerns."""
        dets = [d for d in self.detectors if d.early and d.active]
        if not dets or not self.settings.pipeline.early_alerts:
            return []
        rows = {d.name: d.early_rows(batch) for d in dets}
        for d in dets:  # novelty readers: only rows to an address young to the whole cluster
            if d.reads_novelty and rows[d.name].any():
                rows[d.name] = self._to_young_address(
                    batch, rows[d.name], float(d.params.get("young_s", math.inf))
                )
        wanted = np.logical_or.reduce(list(rows.values()))
        parts = self.buffer.open_parts()
        if not wanted.any() or not parts:
            return []
        entities, novel = self._early_candidates(batch, dets, rows, wanted)
        if len(novel) and self._novelty_quiet(dets):
            novel = novel[:0]  # the pass would score 0 (and find nothing) for every entity
        if not len(entities) and not len(novel):
            return []
        plain_rows, novel_rows = _open_rows(parts, entities, novel)
        alerts: list[Alert] = []
        if len(entities):
            plain = [d for d in dets if not d.reads_novelty]
            alerts += self._early_pass(plain_rows, plain, novelty=False)
        if len(novel):
            # A lookup of every edge in the seen-edges memory: only for the entities a novelty
            # reader may fire on, and over their external flows only (what those detectors read).
            readers = [d for d in dets if d.reads_novelty]
            alerts += self._early_pass(novel_rows, readers, novelty=True)
        self.early_alerts += len(alerts)
        return alerts

    def _early_pass(self, flows: pd.DataFrame, dets: list[Detector], *, novelty: bool) -> list[Alert]:
        """Score ``dets`` on these open-window flows (one pass of :meth:`_score_early`)."""
        p = prepare(flows, self.vocab, self.window_s) if len(flows) and dets else None
        if p is None:
            return []
        feats = window_features(p)
        novel = novelty_features(p, edge_table(p, self.vocab), self.edges)[0] if novelty else None
        windows = pd.concat([p.keys, feats] if novel is None else [p.keys, feats, novel], axis=1)
        # Recent-horizon and beaconing features need the closed window's bookkeeping: zero here.
        windows = windows.reindex(columns=list(WINDOW_COLUMNS), fill_value=0.0)
        # The detail columns too: a CronJob's next run, the cluster DNS (see features).
        detail = detail_features(p, None, novel, None, self.settings)
        ctx = Context(
            pd.concat([windows, detail], axis=1),
            self.entity_base.lookup(windows["entity"]).reset_index(drop=True),
            self.workload_base.lookup(windows["workload_key"]).reset_index(drop=True),
            self.settings,
            self.model,
            memory_since=min(self.first_ws, float(p.keys["window_start"].min())),
            extra={"pod_age": self._pod_age(p.keys)},
        )
        scores = {d.name: np.clip(np.asarray(d.score(ctx), dtype="float64"), 0.0, 1.0) for d in dets}
        self._note_fired(p, scores, novelty)
        return self.alerts.build(
            ctx,
            p.flows,
            p.gid,
            scores,
            {d.name: d for d in dets},
            decode=lambda rows: decode_lean(rows, self.vocab),
            provisional=True,
        )

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


def _open_rows(
    parts: list[pd.DataFrame], entities: np.ndarray, novel: np.ndarray
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The open-window flows of ``entities``, and the external ones of ``novel``, in buffer
    order: taken part by part (the open windows hold seconds of flows; a few hundred rows
    are wanted, and concatenating every part first cost more than scoring them)."""
    plain: list[pd.DataFrame] = []
    ext: list[pd.DataFrame] = []
    for part in parts:
        codes = _entity_codes(part)
        if len(entities):
            plain += _taken(part, np.isin(codes, entities))
        if len(novel):
            ext += _taken(part, np.isin(codes, novel) & part["ext"].to_numpy(dtype=bool))
    return _joined(plain, parts[0]), _joined(ext, parts[0])


def _taken(part: pd.DataFrame, mask: np.ndarray) -> list[pd.DataFrame]:
    """``[part[mask]]`` by position (cheaper than a boolean take), none when no row is."""
    rows = np.flatnonzero(mask)
    return [part.iloc[rows]] if len(rows) else []


def _joined(frames: list[pd.DataFrame], like: pd.DataFrame) -> pd.DataFrame:
    """The frames one after another (no rows: ``like``'s columns, empty)."""
    if not frames:
        return like.iloc[:0]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _entity_codes(lean: pd.DataFrame) -> np.ndarray:
    """The entity of each lean flow as one integer: its pod, else its source address."""
    ns = lean["src_namespace"].to_numpy(dtype="int64")
    pod = lean["src_pod"].to_numpy(dtype="int64")
    return np.where(pod != 0, (ns << 32) | pod, -(lean["src_ip"].to_numpy(dtype="int64") + 1))


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
