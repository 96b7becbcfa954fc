"""What the rule detectors (``policy_violation``, ``threat_feed``) share: they judge flows, not windows.

Declared rules and feeds are about single flows (this pod, that address, that port), while
the detector interface scores entity-windows. A :class:`FlowRuleDetector` therefore
*observes* every enriched flow batch (the engine hands it over in
:meth:`~flowwarden.pipeline.detection.engine.DetectionEngine.process`, so the live pipeline,
``flowwarden detect`` and the evaluation judge alike), keeps the findings as pending rows
keyed by (entity, window), and scores the windows that have them when the engine closes
them. Judging waits until then because a pod's DNS answer can reach the pipeline after
the first record of the connection it allowed; the per-pod :class:`DnsCache` has until
the window closes to learn it.

Pure: no I/O. Snapshots (policy, feeds) are handed in by the runtime.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from flowwarden.kube import PodInventory
from flowwarden.pipeline.detection.detectors.base import Context, Detector
from flowwarden.pipeline.detection.enrich import enrich_flows
from flowwarden.pipeline.detection.windows import window_starts
from flowwarden.policy_match import BatchCodes
from flowwarden.records import Direction
from flowwarden.settings import Settings

SCORED = (Direction.EGRESS.value, Direction.INTERNAL.value)  # flows whose source has entity-windows
MAX_PENDING = 200_000  # pending finding rows; past it the oldest go first (counted)


_FEW = 1024


def _blank(n: int) -> np.ndarray:
    """``np.full(n, "", dtype=object)`` without its element-by-element copy (several times faster)."""
    out = np.empty(n, dtype=object)
    out.fill("")
    return out


def taken(col: pd.Series, rows: np.ndarray) -> np.ndarray:
    """``col.to_numpy()[rows]``, converting only the taken rows (text as Python objects)."""
    if isinstance(col.dtype, np.dtype):
        return col.to_numpy()[rows]
    return np.asarray(col.array.take(rows).to_numpy(dtype=object), dtype=object)


class Findings:
    """Finding rows as equal-length numpy arrays by column name.

    Findings are a few dozen rows per batch, selected, appended and read every batch and
    round: a pandas frame's per-call cost was most of what the rule detectors added."""

    __slots__ = ("cols", "n")

    def __init__(self, cols: dict[str, np.ndarray]) -> None:
        self.cols = cols
        self.n = len(next(iter(cols.values()))) if cols else 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, name: str) -> np.ndarray:
        return self.cols[name]

    def __contains__(self, name: object) -> bool:
        return name in self.cols

    def take(self, rows: np.ndarray | slice) -> Findings:
        """The rows at ``rows`` (positions, a mask or a slice), in that order."""
        return Findings({c: v[rows] for c, v in self.cols.items()})

    def with_columns(self, **cols: np.ndarray) -> Findings:
        """These rows with columns added or replaced (the arrays are shared, not copied)."""
        return Findings({**self.cols, **cols})

    def frame(self, columns: Sequence[str]) -> pd.DataFrame:
        """Some columns as a frame (to judge the rows again)."""
        return pd.DataFrame({c: self.cols[c] for c in columns})

    @staticmethod
    def concat(first: Findings, then: Findings) -> Findings:
        """``first``'s rows, then ``then``'s (the columns of ``first``)."""
        if not len(first):
            return then
        if not len(then):
            return first
        return Findings({c: np.concatenate([v, then.cols[c]]) for c, v in first.cols.items()})


_NO_ROWS = Findings({})


def entity_keys(flows: pd.DataFrame) -> np.ndarray:
    """The engine's entity of each flow: ``namespace/pod``, else the source address."""
    if len(flows) <= _FEW:  # findings, an alert's window: plain Python beats pandas' per-call cost
        return entity_keys_of(
            flows["src_pod"].to_numpy(dtype=object),
            flows["src_namespace"].to_numpy(dtype=object),
            flows["src_ip"].to_numpy(dtype=object),
        )
    return entity_keys_vectorised(flows)


def entity_keys_of(pods: np.ndarray, nss: np.ndarray, ips: np.ndarray) -> np.ndarray:
    """:func:`entity_keys` of columns already taken out as object arrays (a few rows)."""
    if all(isinstance(v, str) for v in pods) and all(isinstance(v, str) for v in nss):
        if not any(pods):
            return ips
        out = np.empty(len(pods), dtype=object)
        out[:] = [f"{n}/{p}" if p else i for p, n, i in zip(pods, nss, ips, strict=True)]
        return out
    cols = {"src_pod": pods, "src_namespace": nss, "src_ip": ips}
    return entity_keys_vectorised(pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in cols.items()}))


def entity_keys_vectorised(flows: pd.DataFrame) -> np.ndarray:
    """:func:`entity_keys` in pandas (frames above ``_FEW`` rows, or with missing values)."""
    pod = flows["src_pod"].astype(object)
    has = (pod != "").to_numpy()
    if not has.any():
        return flows["src_ip"].to_numpy(dtype=object)
    full = (flows["src_namespace"].astype(object) + "/" + pod).to_numpy(dtype=object)
    return np.where(has, full, flows["src_ip"].to_numpy(dtype=object))


def group_codes(frame: pd.DataFrame | Findings, columns: Sequence[str]) -> np.ndarray:
    """Per row, the code of its combination of ``columns``, numbered by first appearance
    (no NaN in them: keys of findings). Cheaper than a groupby on the few rows of findings."""
    codes = np.zeros(len(frame), dtype="int64")
    for c in columns:
        col, uniq = pd.factorize(frame[c], use_na_sentinel=False)
        codes = pd.factorize(codes * max(len(uniq), 1) + col)[0]
    return np.asarray(codes, dtype="int64")


def _missing(value: object) -> bool:
    """None or NaN (a missing text value)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _first_of_groups(columns: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The position of the first row of each combination of ``columns`` (in order of first
    appearance) and its number of rows: :func:`group_codes` for the few rows of findings, in
    plain Python (a missing value is its own combination, as there)."""
    index: dict[tuple[Any, ...], int] = {}
    first: list[int] = []
    counts: list[int] = []
    lists = [c.tolist() for c in columns]
    for i, key in enumerate(zip(*lists, strict=True)):
        if any(_missing(v) for v in key):
            key = tuple(None if _missing(v) else v for v in key)
        g = index.get(key)
        if g is None:
            index[key] = len(first)
            first.append(i)
            counts.append(1)
        else:
            counts[g] += 1
    return np.array(first, dtype="int64"), np.array(counts, dtype="int64")


def first_entity(flows: pd.DataFrame) -> str:
    """:func:`entity_keys` of the first flow, read as scalars (a one-row slice of a wide frame
    costs more than the rest of an alert's evidence)."""
    pod, ns = flows["src_pod"].iat[0], flows["src_namespace"].iat[0]
    if isinstance(pod, str) and isinstance(ns, str):
        return f"{ns}/{pod}" if pod else str(flows["src_ip"].iat[0])
    return str(entity_keys(flows.iloc[:1])[0])


class DnsCache:
    """Per pod: the addresses its own DNS answers gave, the name asked, and until when they hold.

    A connection from pod P to address A at time t is "to name N" when P resolved N to A no
    later than t and t is within the answer's TTL plus ``grace_s`` (an established
    connection outlives the TTL; a client may reuse an answer a little longer). Using the
    pod's own answers, not a cluster-wide table, is what stops one pod's lookup of an
    allowed name from whitelisting the same CDN address for every other pod.
    """

    COLUMNS = ("pod", "ip", "name", "seen", "expires")

    def __init__(self, *, grace_s: float = 300.0, max_rows: int = 500_000) -> None:
        self.grace_s = grace_s
        self.max_rows = max_rows
        self.table = pd.DataFrame(
            {c: pd.Series(dtype=object if c in ("pod", "ip", "name") else "float64") for c in self.COLUMNS}
        )
        self.evicted = 0
        self._ips: set[str] | None = None  # the table's addresses (see resolve_rows)
        self.generation = 0  # bumped by every learn that added answers (judgements older than it may change)

    def __len__(self) -> int:
        return len(self.table)

    def learn(self, flows: pd.DataFrame, named: np.ndarray | None = None) -> int:
        """Add the answers of the batch's DNS records; returns how many (pod, address) pairs came in.

        ``named``: the rows with a DNS name when the caller knows them (only those are looked at)."""
        ans = flows["dns_answers"]
        if named is None:
            has = ((ans != "") & (flows["dns_qname"] != "")).to_numpy()
        else:
            has = np.zeros(len(flows), dtype=bool)
            has[named] = np.asarray(ans.array.take(named) != "", dtype=bool)
        if not has.any():
            return 0
        sub = pd.DataFrame(
            {
                "pod": entity_keys(flows[has]),
                "ip": ans[has].astype(object).str.split(","),
                "name": flows["dns_qname"][has].astype(object).str.rstrip(".").str.lower(),
                "seen": flows["ts_start"][has].to_numpy(dtype="float64"),
                "expires": (
                    flows["ts_start"][has].to_numpy(dtype="float64")
                    + np.maximum(flows["dns_answer_ttl"][has].to_numpy(dtype="float64"), 0.0)
                ),
            }
        ).explode("ip")
        sub = sub[sub["ip"].astype(bool)]
        table = pd.concat([self.table, sub], ignore_index=True) if len(self.table) else sub
        # One row per (pod, address, name): the latest answer wins.
        table = table.sort_values("expires", kind="stable").drop_duplicates(
            ["pod", "ip", "name"], keep="last"
        )
        if len(table) > self.max_rows:
            self.evicted += len(table) - self.max_rows
            table = table.iloc[len(table) - self.max_rows :]
        self.table = table.reset_index(drop=True)
        self._ips = None
        self.generation += 1
        return len(sub)

    def resolve(self, flows: pd.DataFrame, pods: np.ndarray | None = None) -> pd.Series:
        """Per flow: a name its source pod resolved to its destination, valid then ("" if none).

        ``pods``: the flows' entities when the caller has them; else they are worked out
        only for the flows to an address some pod resolved (most flows are not).
        """
        out = pd.Series(_blank(len(flows)))
        if not len(self.table) or not len(flows):
            return out
        rows = np.flatnonzero(flows["dst_ip"].isin(self.table["ip"].unique()).to_numpy())
        if not len(rows):
            return out
        sub = flows.iloc[rows]
        out.iloc[rows] = self._names_at(
            pods[rows] if pods is not None else entity_keys(sub),
            sub["dst_ip"].to_numpy(dtype=object),
            sub["ts_start"].to_numpy(dtype="float64"),
            sub["ts_end"].to_numpy(dtype="float64"),
        )
        return out

    def resolve_rows(self, pods: np.ndarray, ips: np.ndarray, t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
        """:meth:`resolve` of a few rows given as arrays (entity, destination, start, end)."""
        out = _blank(len(pods))
        if not len(self.table) or not len(pods):
            return out
        known = self._ips
        if known is None:  # the table's addresses, once per change of the table
            known = self._ips = set(self.table["ip"].tolist())
        rows = np.flatnonzero([ip in known for ip in ips.tolist()])
        if len(rows):
            out[rows] = self._names_at(pods[rows], ips[rows], t0[rows], t1[rows])
        return out

    def _names_at(self, pods: np.ndarray, ips: np.ndarray, t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
        """Per row: the name of the first answer that held for it ("" if none)."""
        out = _blank(len(pods))
        q = pd.DataFrame({"row": np.arange(len(pods)), "pod": pods, "ip": ips, "t0": t0, "t1": t1})
        m = q.merge(self.table, on=["pod", "ip"], how="inner")
        ok = (m["seen"] <= m["t1"] + 1.0) & (m["t0"] <= m["expires"] + self.grace_s)
        m = m[ok]
        if len(m):
            first = m.drop_duplicates("row")
            out[first["row"].to_numpy()] = first["name"].to_numpy(dtype=object)
        return out

    def names_for(self, pods: np.ndarray, ips: np.ndarray) -> np.ndarray:
        """A name each (pod, address) pair was resolved from while still held ("" if none)."""
        out = _blank(len(pods))
        if not len(self.table) or not len(pods):
            return out
        q = pd.DataFrame({"row": np.arange(len(pods)), "pod": pods, "ip": ips})
        m = q.merge(self.table[["pod", "ip", "name"]], on=["pod", "ip"], how="inner").drop_duplicates("row")
        out[m["row"].to_numpy()] = m["name"].to_numpy(dtype=object)
        return out

    def expire(self, now: float) -> int:
        """Forget answers past their TTL and grace at event time ``now``."""
        if not len(self.table):
            return 0
        keep = (self.table["expires"] + self.grace_s >= now).to_numpy()
        n = int((~keep).sum())
        if n:
            self.table = self.table[keep].reset_index(drop=True)
            self._ips = None
        return n


class FlowRuleDetector(Detector):
    """A detector that judges flows as they arrive and scores the windows holding its findings.

    Subclasses implement :meth:`find` (the finding rows of one observed batch, with the
    columns they need for evidence) and may override :meth:`confirm` (a last look at the
    findings of closing windows, e.g. with DNS answers that arrived since).
    """

    base_score: ClassVar[float] = 0.9
    learns: ClassVar[bool] = False  # a declared rule: never "learning"
    # Columns every finding row carries (besides the subclass's own).
    FINDING_COLUMNS: ClassVar[tuple[str, ...]] = ("entity", "ws", "dst_ip", "dst_port", "proto", "egress")
    # What makes two findings the same piece of evidence.
    evidence_key: ClassVar[tuple[str, ...]] = ("dst_ip", "dst_port", "proto")
    # The only columns :meth:`target_mask` and :meth:`describe` read from an alert's flows (the
    # alert builder then cuts just these out of the wide window frame for each alert).
    alert_flow_columns: ClassVar[tuple[str, ...]] = (
        "src_pod",
        "src_namespace",
        "src_ip",
        "dst_ip",
        "dst_port",
    )

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.window_s = 10.0
        self.pending = _NO_ROWS
        self.closed_until = -math.inf  # windows starting before this were scored already
        self.dropped = 0
        self._round = _NO_ROWS  # the confirmed findings of the windows being scored
        self._pairs: dict[bool, set[tuple[str, str, int]]] = {}
        self._lists: dict[str, list[Any]] = {}  # columns of the round's findings (see round_values)
        self._rows: dict[str, np.ndarray] | None = None  # per entity: its distinct findings' rows
        # Running totals of confirmed finding flows by :attr:`tally_column` (the metrics export
        # their growth): hits per feed, violations per rule kind.
        self.tally: Counter[str] = Counter()

    tally_column: ClassVar[str] = ""

    def tally_key(self, values: np.ndarray) -> list[Any]:
        """What a finding counts under in :attr:`tally` (the column's text by default; a missing
        value counts nowhere)."""
        return [None if _missing(v) else str(v) for v in values.tolist()]

    # ------------------------------------------------------------------ runtime side
    @property
    def wants_flows(self) -> bool:
        """Whether :func:`observe_flows` should enrich and hand batches to this detector."""
        return True

    def observe(
        self,
        enriched: pd.DataFrame,
        inventory: PodInventory | None,
        settings: Settings,
        codes: BatchCodes | None = None,
    ) -> None:
        """Judge an enriched batch; keep the findings until their windows close.

        ``codes``: the batch's columns already factorised (the rule detectors share them)."""
        self.window_s = settings.pipeline.window_s
        if not len(enriched):
            return
        found = self.find(enriched, inventory, settings, codes=codes)
        if found is None or not len(found):
            return
        # Only flows sourced in the cluster have an entity-window to alert on.
        scored = np.fromiter((d in SCORED for d in found["direction"].tolist()), dtype=bool, count=len(found))
        if not scored.all():
            found = found.take(scored)
        if not len(found):
            return
        ws = window_starts(np.asarray(found["ts_end"], dtype="float64"), self.window_s)
        if math.isfinite(self.closed_until):
            ws = np.maximum(ws, self.closed_until)  # the engine folds late flows the same way
        # One row per (entity, window, destination, port, protocol) with its flow count: a
        # scan's thousands of records are judged and shown as what they are, few findings.
        first, counts = _first_of_groups(
            (found["entity"], ws, found["dst_ip"], found["dst_port"], found["proto"])
        )
        found = found.with_columns(ws=ws)
        if len(first) < len(found):
            found = found.take(first)
        found = found.with_columns(n=counts)
        pending = Findings.concat(self.pending, found)
        if len(pending) > MAX_PENDING:
            self.dropped += len(pending) - MAX_PENDING
            pending = pending.take(slice(len(pending) - MAX_PENDING, None))
        self.pending = pending

    def find(
        self,
        flows: pd.DataFrame,
        inventory: PodInventory | None,
        settings: Settings,
        codes: BatchCodes | None = None,
    ) -> Findings | None:
        """One enriched batch's findings: :attr:`FINDING_COLUMNS` but ``ws``, plus ``direction``."""
        raise NotImplementedError

    def confirm(self, findings: Findings) -> Findings:
        return findings

    # ------------------------------------------------------------------ engine side
    def score(self, ctx: Context) -> np.ndarray:
        w = ctx.windows
        out = np.zeros(len(w), dtype="float64")
        self._set_round(_NO_ROWS)
        if not len(w):
            return out
        ws = w["window_start"].to_numpy(dtype="float64")
        top = float(ws.max())
        # Windows close in time order: findings of windows before this round's latest are done.
        # Kept even while nothing is pending: a late flow's finding must fold into an open
        # window (as the engine folds the flow), not into a closed one that is never scored.
        self.closed_until = max(self.closed_until, top + self.window_s)
        if not len(self.pending):
            return out
        # Pending findings are few (one row per entity, window, destination, port): plain
        # Python sets and dicts cost less here than pandas' per-call overhead.
        p = self.pending
        p_ws = np.asarray(p["ws"], dtype="float64")
        p_ent = p["entity"].tolist()
        key_p = [f"{e}|{s!r}" for e, s in zip(p_ent, p_ws.tolist(), strict=True)]
        # Only the windows of entities with findings need a key (a round has thousands of windows).
        w_ent = w["entity"]  # one selection of the wide window frame, not two
        cand = np.flatnonzero(w_ent.isin(list(dict.fromkeys(p_ent))).to_numpy())
        key_w = [f"{e}|{s!r}" for e, s in zip(taken(w_ent, cand).tolist(), ws[cand].tolist(), strict=True)]
        scored = set(key_w)
        here = np.fromiter((k in scored for k in key_p), dtype=bool, count=len(key_p))
        if here.any():
            found = self.confirm(p if here.all() else p.take(here))
            if len(found):
                self._set_round(found)
                if self.tally_column in found:
                    # A few rows: summed in Python (a groupby costs more than the whole round).
                    per: dict[str, int] = {}
                    keys = self.tally_key(found[self.tally_column])
                    for k, v in zip(keys, found["n"].tolist(), strict=True):
                        if isinstance(k, str):  # a missing key counts nowhere (as in a groupby)
                            per[k] = per.get(k, 0) + int(v)
                    self.tally.update(per)
                counts: dict[str, float] = {}
                for e, s, n in zip(
                    found["entity"].tolist(), found["ws"].tolist(), found["n"].tolist(), strict=True
                ):
                    k = f"{e}|{float(s)!r}"
                    counts[k] = counts.get(k, 0.0) + float(n)
                n_w = np.zeros(len(w), dtype="float64")
                n_w[cand] = np.fromiter(
                    (counts.get(k, 0.0) for k in key_w), dtype="float64", count=len(key_w)
                )
                hit = n_w >= self.params.get("min_flows", 1.0)
                out = np.where(hit, self.base_score + 0.09 * np.minimum(n_w / 10.0, 1.0), 0.0)
        keep = p_ws >= top
        if not keep.all():
            self.pending = p.take(keep)
        return out

    def kinds(self, ctx: Context, hit: np.ndarray) -> np.ndarray:
        """Exfiltration when a finding of the window left the cluster, else lateral movement."""
        w = ctx.windows
        rows = np.flatnonzero(hit)
        if not len(self._round):
            return np.full(len(rows), self.kind, dtype=object)
        f = self._round
        egress_keys = set(
            (np.asarray(f["entity"], dtype=object) + "|" + np.asarray(f["ws"], dtype="float64").astype(str))[
                np.asarray(f["egress"], dtype=bool)
            ]
        )
        keys = taken(w["entity"], rows) + "|" + w["window_start"].to_numpy(dtype="float64")[rows].astype(str)
        return np.array(
            ["exfiltration" if k in egress_keys else "lateral_movement" for k in keys], dtype=object
        )

    def technique_for(self, kind: str) -> str:
        return self.technique

    def _set_round(self, found: Findings) -> None:
        """The findings of the windows being scored; per-entity evidence is cut out when asked."""
        self._round = found
        self._pairs = {}
        self._lists = {}
        self._rows = None

    def round_rows(self, flows: pd.DataFrame) -> np.ndarray:
        """Positions in this round's findings of the entity whose window's flows these are (an
        alert's evidence), one per distinct finding (a scan repeats thousands), in round order."""
        f = self._round
        if not len(flows) or not len(f):
            return np.zeros(0, dtype="int64")
        if self._rows is None:
            # Once per round, not per alert: the distinct findings (per entity and evidence key,
            # the first of each in round order) and the rows of each entity among them.
            # Positions in ``f`` of the first row of each (entity, evidence key), in round order:
            # what ``drop_duplicates`` keeps, without building (and re-indexing) that frame.
            codes = group_codes(f, ("entity", *self.evidence_key))
            first = np.sort(np.unique(codes, return_index=True)[1])
            ent = np.asarray(f["entity"], dtype=object)[first]
            order = np.argsort(ent, kind="stable")
            cut = (
                np.flatnonzero(np.r_[True, ent[order][1:] != ent[order][:-1]])
                if len(ent)
                else np.zeros(0, int)
            )
            bounds = np.r_[cut, len(ent)]
            self._rows = {
                str(ent[order[a]]): first[order[a:b]]
                for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)
            }
        rows = self._rows.get(first_entity(flows))
        return rows if rows is not None else np.zeros(0, dtype="int64")

    def round_values(self, column: str) -> list[Any]:
        """A column of this round's findings as a list, made once per round (an alert's evidence
        reads a few of its values: cheaper than cutting a frame out for every alert)."""
        values = self._lists.get(column)
        if values is None:
            values = self._lists[column] = self._round[column].tolist()
        return values

    def _round_pairs(self, *, targets_only: bool) -> set[tuple[str, str, int]]:
        if targets_only in self._pairs:
            return self._pairs[targets_only]
        f = self._round
        if targets_only and "target" in f:  # findings that name no blockable destination
            f = f.take(np.asarray(f["target"], dtype=bool))
        pairs = (
            set(
                zip(
                    f["entity"].tolist(),
                    f["dst_ip"].tolist(),
                    np.asarray(f["dst_port"], dtype="int64").tolist(),
                    strict=True,
                )
            )
            if len(f)
            else set()
        )
        self._pairs[targets_only] = pairs
        return pairs

    def target_mask(self, flows: pd.DataFrame, ctx: Context) -> np.ndarray:
        """The window's flows that are findings (by entity, destination and port).

        Findings that name a destination to block come first; a window with only the
        others (a DNS query for a listed name: its destination is the resolver) shows
        those, so the alert still carries its evidence (the guardrails never block the
        cluster DNS).
        """
        if not len(self._round) or not len(flows):
            return np.zeros(len(flows), dtype=bool)
        ent = entity_keys(flows)
        dst = flows["dst_ip"].to_numpy(dtype=object)
        port = flows["dst_port"].to_numpy(dtype="int64")
        keys = list(zip(ent.tolist(), dst.tolist(), port.tolist(), strict=True))
        mask = np.zeros(len(flows), dtype=bool)
        for targets_only in (True, False):
            pairs = self._round_pairs(targets_only=targets_only)
            mask = np.array([k in pairs for k in keys], dtype=bool)
            if mask.any():
                break
        return mask


def observe_flows(
    detectors: list[Detector], flows: pd.DataFrame, inventory: PodInventory | None, settings: Settings
) -> int:
    """Hand a raw flow batch, enriched, to every rule detector that wants it; returns how many took it.

    Call before ``engine.process`` on the same batch (the stage does; so may any driver).
    Enrichment is done once here only when a rule detector has something declared.
    """
    takers = [d for d in detectors if isinstance(d, FlowRuleDetector) and d.wants_flows]
    if not takers or not len(flows):
        return 0
    return observe_enriched(takers, enrich_flows(flows, inventory, settings), inventory, settings)


def observe_enriched(
    detectors: Sequence[Detector],
    enriched: pd.DataFrame,
    inventory: PodInventory | None,
    settings: Settings,
    *,
    ids: Mapping[str, tuple[np.ndarray, Sequence[str]]] | None = None,
) -> int:
    """The same with a batch the caller already enriched (the engine: no second enrichment).

    ``ids``: per column, the rows' ids into a list of strings (the engine's vocabulary ids of
    the destination): the rule detectors then need not factorise that column's text."""
    takers = [d for d in detectors if isinstance(d, FlowRuleDetector) and d.wants_flows]
    if not len(enriched) or not takers:
        return 0
    codes = BatchCodes(enriched, ids)  # the destination and names, factorised once for every taker
    for d in takers:
        d.observe(enriched, inventory, settings, codes=codes)
    return len(takers)


def rule_tallies(detectors: Sequence[Detector]) -> dict[str, dict[str, int]]:
    """Per rule detector: a copy of its running totals (the stage exports their growth)."""
    return {d.name: dict(d.tally) for d in detectors if isinstance(d, FlowRuleDetector)}


def set_rules(
    detectors: Sequence[Detector], policy: Any, policy_version: str, feeds: Any, feeds_version: str
) -> None:
    """Give the rule detectors a declared policy and feed set (snapshots; they do no I/O)."""
    for det in detectors:
        set_policy = getattr(det, "set_policy", None)
        if callable(set_policy):
            set_policy(policy, policy_version)
        set_feeds = getattr(det, "set_feeds", None)
        if callable(set_feeds):
            set_feeds(feeds, feeds_version)
