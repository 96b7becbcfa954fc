"""The records every stage exchanges: one definition each.

* ``Flow``: a batch of flows is a :class:`pandas.DataFrame` whose columns and dtypes are
  exactly :data:`FLOW_SCHEMA`. :func:`empty_flows` and :func:`conform_flows` build such a
  frame; :func:`validate_flows` checks one (raising :class:`RecordError` naming the field);
  :func:`split_invalid_flows` separates the bad rows of a batch with their reason so that
  they can go to the dead-letter topic while the good rows go on.
* Entity-window: one row per source entity (a pod, or an address no pod owns) and tumbling
  time window, the pipeline's features of what it did then; a table of them has exactly the
  columns and dtypes of :data:`WINDOW_SCHEMA` (the keys :data:`WINDOW_KEY_COLUMNS`, then the
  anomaly model's :data:`WINDOW_FEATURES`). :func:`empty_windows` and
  :func:`conform_windows` build one.
* ``Alert`` and ``Decision``: pydantic models, validated on construction and serialised
  as JSON on the bus and in the store.

Counters of an interim flow record (``final=False``) are *deltas* since the previous
record of the same flow, so summing any field over records gives the conversation's total.
Timestamps in flow batches are float seconds since the epoch (UTC).
"""

from __future__ import annotations

import hashlib
import ipaddress
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from flowwarden.attack import tactic_name
from flowwarden.errors import RecordError

# --------------------------------------------------------------------------- flows

STR = "str"  # pandas' string dtype; missing text is "" (never NaN), so groupby keeps it

FLOW_SCHEMA: dict[str, str] = {
    "ts_start": "float64",
    "ts_end": "float64",
    "node": STR,
    "src_ip": STR,
    "src_port": "int32",
    "dst_ip": STR,
    "dst_port": "int32",
    "proto": "int16",
    "bytes_out": "int64",
    "bytes_in": "int64",
    "pkts_out": "int64",
    "pkts_in": "int64",
    "tcp_flags": "int16",
    "state": STR,
    "dns_qname": STR,
    "dns_rcode": "int16",
    "server_name": STR,
    "final": "bool",
    # The flow's first record: count these to count connections (a flow may have interim
    # records and, when it ends with nothing new since its last one, no final record).
    "first": "bool",
    # Why this record was emitted (IPFIX flowEndReason, RFC 5102 / 7011): see FlowEnd.
    "end_reason": STR,
    # DNS seen query by query, aggregated over the record's period (see DNS_AGGREGATES).
    "dns_queries": "int32",
    "dns_names": "int32",
    "dns_name_max_len": "int16",
    "dns_name_mean_len": "float64",
    "dns_label_entropy": "float64",
    "dns_top_domain": STR,
    "dns_top_domain_names": "int32",
    "dns_qtypes": STR,
    "dns_nxdomain": "int32",
    # The addresses the record's DNS answers gave (A/AAAA, distinct, comma-separated, at
    # most 16) and their smallest TTL (-1: no answer): what a pod resolved, for domain policy.
    "dns_answers": STR,
    "dns_answer_ttl": "int32",
    # Resolution time: responses paired with their queries by DNS ID within the record's
    # period, how many, their mean and slowest (ms; 0 when none was paired).
    "dns_rtt_n": "int32",
    "dns_rtt_mean_ms": "float64",
    "dns_rtt_max_ms": "float64",
    # An overlay's outer header, when the collector decapsulated the packet (#20).
    "tunnel": STR,
    "outer_src_ip": STR,
    "outer_dst_ip": STR,
    # Community ID v1 of the 5-tuple (ICMP: of the first packet's type and code), the name
    # Zeek, Suricata and other tools log the same flow by (collectors/community_id.py, #20).
    "community_id": STR,
    "direction": STR,
    "src_namespace": STR,
    "src_pod": STR,
    "src_workload": STR,
    "dst_namespace": STR,
    "dst_pod": STR,
    "dst_workload": STR,
}
"""Column name to pandas dtype for a flow batch, in wire order."""

FLOW_COLUMNS: tuple[str, ...] = tuple(FLOW_SCHEMA)
STRING_COLUMNS: tuple[str, ...] = tuple(c for c, t in FLOW_SCHEMA.items() if t == STR)
COUNTER_COLUMNS: tuple[str, ...] = ("bytes_out", "bytes_in", "pkts_out", "pkts_in")

# Defaults for columns a producer may leave out (the collector knows nothing of pods).
FLOW_DEFAULTS: dict[str, Any] = {
    "node": "",
    "src_port": 0,
    "dst_port": 0,
    "bytes_in": 0,
    "pkts_in": 0,
    "tcp_flags": 0,
    "state": "",
    "dns_qname": "",
    "dns_rcode": -1,
    "server_name": "",
    "final": True,
    "first": True,
    "end_reason": "",
    "dns_queries": 0,
    "dns_names": 0,
    "dns_name_max_len": 0,
    "dns_name_mean_len": 0.0,
    "dns_label_entropy": 0.0,
    "dns_top_domain": "",
    "dns_top_domain_names": 0,
    "dns_qtypes": "",
    "dns_nxdomain": 0,
    "dns_answers": "",
    "dns_answer_ttl": -1,
    "dns_rtt_n": 0,
    "dns_rtt_mean_ms": 0.0,
    "dns_rtt_max_ms": 0.0,
    "tunnel": "",
    "outer_src_ip": "",
    "outer_dst_ip": "",
    "community_id": "",
    "direction": "",
    "src_namespace": "",
    "src_pod": "",
    "src_workload": "",
    "dst_namespace": "",
    "dst_pod": "",
    "dst_workload": "",
}
REQUIRED_COLUMNS: tuple[str, ...] = tuple(c for c in FLOW_COLUMNS if c not in FLOW_DEFAULTS)


class Proto:
    """IANA protocol numbers used in ``proto``."""

    ICMP = 1
    TCP = 6
    UDP = 17
    ICMPV6 = 58


class FlowState(StrEnum):
    """How a conversation went, as the collector's flow table saw it."""

    ESTABLISHED = "established"  # TCP handshake completed, still open at record time
    CLOSED = "closed"  # TCP handshake completed, then FIN or RST
    REJECTED = "rejected"  # SYN answered by RST
    SYN_ONLY = "syn_only"  # SYN with no answer
    TCP_OTHER = "tcp_other"  # TCP seen mid-stream (no SYN observed)
    UDP = "udp"
    ICMP = "icmp"
    OTHER = "other"


class FlowEnd(StrEnum):
    """Why a flow record was emitted: IPFIX ``flowEndReason`` (RFC 5102), as nfstream reports it.

    Only ``active`` records are interim (``final=False``); every other reason ends the flow.
    """

    IDLE = "idle"  # no packet for idle_timeout_s (UDP, ICMP, or a TCP flow that never closed)
    ACTIVE = "active"  # interim: the flow is still open (first sight, or every active_timeout_s)
    FIN = "fin"  # TCP: both sides sent FIN (after a short grace for the last ACK)
    RST = "rst"  # TCP: a reset
    EVICTED = "evicted"  # the table was full; the least recently seen flow was ended early
    END_OF_CAPTURE = "end_of_capture"  # the file ended or the collector stopped


FLOW_END_REASONS: frozenset[str] = frozenset(r.value for r in FlowEnd) | {""}

# DNS aggregates of a record (all over the record's period, like the counters): queries
# seen, distinct query names, the longest and mean name length, mean Shannon entropy of
# the leftmost labels (bits per character), the registered domain (Public Suffix List)
# with the most distinct names and how many, query types seen (comma-separated, sorted),
# responses with NXDOMAIN. ``dns_qname`` stays the record's first name.
DNS_AGGREGATES: tuple[str, ...] = (
    "dns_queries",
    "dns_names",
    "dns_name_max_len",
    "dns_name_mean_len",
    "dns_label_entropy",
    "dns_top_domain",
    "dns_top_domain_names",
    "dns_qtypes",
    "dns_nxdomain",
)

FLOW_STATES: frozenset[str] = frozenset(s.value for s in FlowState) | {""}


class Direction(StrEnum):
    """Where a flow goes relative to the cluster's CIDRs (filled in by the pipeline)."""

    EGRESS = "egress"  # cluster -> outside
    INGRESS = "ingress"  # outside -> cluster
    INTERNAL = "internal"  # cluster -> cluster
    EXTERNAL = "external"  # neither end in the cluster (transit)


FLOW_DIRECTIONS: frozenset[str] = frozenset(d.value for d in Direction) | {""}


def empty_flows(n: int = 0) -> pd.DataFrame:
    """An empty (or default-filled) flow batch with the exact schema."""
    data: dict[str, Any] = {}
    for col, dtype in FLOW_SCHEMA.items():
        default = FLOW_DEFAULTS.get(col, "" if dtype == STR else 0)
        data[col] = pd.Series([default] * n, dtype=dtype)
    return pd.DataFrame(data)


def conform_flows(df: pd.DataFrame | dict[str, Any]) -> pd.DataFrame:
    """Fill optional columns with their defaults, order and cast to :data:`FLOW_SCHEMA`.

    Raises :class:`RecordError` naming the first required column that is missing or
    whose values cannot be cast. Extra columns are dropped.
    """
    if isinstance(df, dict):
        df = pd.DataFrame(df)
    n = len(df)
    out: dict[str, pd.Series] = {}
    for col, dtype in FLOW_SCHEMA.items():
        if col in df.columns:
            series = df[col]
        elif col in FLOW_DEFAULTS:
            series = pd.Series([FLOW_DEFAULTS[col]] * n, index=df.index)
        else:
            raise RecordError(col, "required column is missing")
        try:
            if dtype == STR:
                series = (
                    series.fillna("").astype(cast(Any, STR)) if series.dtype != STR else series.fillna("")
                )
            elif dtype == "bool":
                if series.dtype != bool:
                    if series.isna().any():
                        raise ValueError("missing values")
                    series = series.astype(bool)
            elif series.dtype != dtype:
                if series.isna().any():
                    raise ValueError("missing values")
                series = series.astype(cast(Any, dtype))
        except (ValueError, TypeError, OverflowError) as exc:
            raise RecordError(col, f"cannot be read as {dtype}: {exc}") from exc
        out[col] = series
    return pd.DataFrame(out).reset_index(drop=True)


@lru_cache(maxsize=65536)
def _ip_ok(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def valid_ip_mask(series: pd.Series) -> np.ndarray:
    """True where the value is a valid IPv4 or IPv6 address (checked once per distinct value)."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    # A plain list: iterating an Arrow-backed index boxes one scalar at a time.
    ok = np.array(
        [isinstance(u, str) and _ip_ok(u) for u in np.asarray(uniques, dtype=object).tolist()], dtype=bool
    )
    result = np.zeros(len(series), dtype=bool)
    present = codes >= 0
    result[present] = ok[codes[present]]
    return result


# The columns :func:`_row_problems` reads: a reader may check only these (and convert only
# these to pandas) before it converts the rest. Keep in step with the checks below.
CHECKED_COLUMNS: tuple[str, ...] = (
    "src_ip",
    "dst_ip",
    *COUNTER_COLUMNS,
    "src_port",
    "dst_port",
    "proto",
    "ts_start",
    "ts_end",
    "state",
    "direction",
    "end_reason",
    "dns_queries",
    "dns_names",
    "dns_name_max_len",
    "dns_top_domain_names",
    "dns_nxdomain",
    "outer_src_ip",
    "outer_dst_ip",
)


def _row_problems(df: pd.DataFrame) -> pd.Series:
    """Per row, the reason it is invalid ("" when valid). ``df`` has the schema's dtypes and
    at least :data:`CHECKED_COLUMNS`.

    A row gets the first reason that applies. Reasons are tracked as small integer codes
    (comparing a column of Python strings per check cost more than the checks).
    """
    reasons = [""]
    code = np.zeros(len(df), dtype=np.int8)

    def flag(mask: np.ndarray, text: str) -> None:
        reasons.append(text)
        m = np.asarray(mask, dtype=bool)
        if m.any():
            code[m & (code == 0)] = len(reasons) - 1

    flag(~valid_ip_mask(df["src_ip"]), "src_ip: not an IP address")
    flag(~valid_ip_mask(df["dst_ip"]), "dst_ip: not an IP address")
    for col in COUNTER_COLUMNS:
        flag(df[col].to_numpy() < 0, f"{col}: negative")
    for col in ("src_port", "dst_port"):
        v = df[col].to_numpy()
        flag((v < 0) | (v > 65535), f"{col}: outside 0-65535")
    p = df["proto"].to_numpy()
    flag((p < 0) | (p > 255), "proto: outside 0-255")
    ts0, ts1 = df["ts_start"].to_numpy(), df["ts_end"].to_numpy()
    flag(~np.isfinite(ts0) | ~np.isfinite(ts1), "ts_start/ts_end: not a finite number")
    flag(ts1 < ts0, "ts_end: earlier than ts_start")
    flag(~df["state"].isin(FLOW_STATES).to_numpy(), "state: unknown value")
    flag(~df["direction"].isin(FLOW_DIRECTIONS).to_numpy(), "direction: unknown value")
    flag(~df["end_reason"].isin(FLOW_END_REASONS).to_numpy(), "end_reason: unknown value")
    for col in ("dns_queries", "dns_names", "dns_name_max_len", "dns_top_domain_names", "dns_nxdomain"):
        flag(df[col].to_numpy() < 0, f"{col}: negative")
    for col in ("outer_src_ip", "outer_dst_ip"):
        outer = df[col]
        flag((outer != "").to_numpy() & ~valid_ip_mask(outer), f"{col}: not an IP address")
    return pd.Series(np.array(reasons, dtype=object)[code], index=df.index, dtype=object)


def split_invalid_flows(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a conformed batch into (valid rows, invalid rows with a ``reason`` column)."""
    reason = _row_problems(df)
    bad = reason.to_numpy() != ""
    if not bad.any():
        return df, df.iloc[0:0].assign(reason=pd.Series(dtype=object))
    return df[~bad].reset_index(drop=True), df[bad].assign(reason=reason[bad]).reset_index(drop=True)


def validate_flows(df: pd.DataFrame) -> pd.DataFrame:
    """Conform ``df`` and raise :class:`RecordError` on the first invalid field of any row."""
    df = conform_flows(df)
    reason = _row_problems(df)
    bad = reason[reason != ""]
    if len(bad):
        field, _, why = str(bad.iloc[0]).partition(": ")
        raise RecordError(field, f"{why} (row {bad.index[0]}, {len(bad)} bad rows)")
    return df


# --------------------------------------------------------------------------- entity-windows

WINDOW_KEY_SCHEMA: dict[str, str] = {
    "window_start": "float64",  # seconds since the epoch, a multiple of the window length
    "window_end": "float64",  # window_start + the window length (exclusive)
    "entity": STR,  # "namespace/pod", or the source address when no pod owns it
    "src_ip": STR,  # the entity's source address
    "namespace": STR,  # "" when no pod owns the address
    "pod": STR,
    "workload": STR,  # the pod's owner (Deployment, StatefulSet, DaemonSet, CronJob, ...)
    "workload_key": STR,  # "namespace/workload", else the entity: whose baseline it shares
    "node": STR,  # the node whose collector saw the flows
    "is_node": "bool",  # the source is a node's own address (host network), not a pod
}
"""Key columns of an entity-window: who, and when."""

WINDOW_FEATURES: tuple[str, ...] = (
    "flows",
    "bytes_out",
    "bytes_out_ext",
    "bytes_out_int",
    "pkts_out_ext",
    "pkts_out_int",
    "bytes_in_ext",
    "ext_dsts",
    "int_peers",
    "dst_ports",
    "max_ports_per_dst",
    "icmp_dsts",
    "failed_conns",
    "failed_share",
    "rejected_share",
    "syn_only_share",
    "failed_dsts",
    "failed_ports",
    "cp_api",
    "cp_etcd",
    "cp_kubelet",
    "cp_scheduler",
    "cp_controller_manager",
    "metadata_api",
    "dns_queries",
    "dns_names",
    "dns_max_subdomains",
    "dns_mean_len",
    "dns_mean_entropy",
    "long_lived",
    "new_edges",
    "new_int_peers",
    "new_int_edges",
    "new_ext_dsts",
    "new_ext_bytes",
    "young_ext_bytes",
    "young_ext_age",
    "young_ext_upload_ratio",
    "recent_new_peers",
    "recent_failed_dsts",
    "recent_ports_per_dst",
    "beacon_score",
    "beacon_conns",
    "beacon_peers",
    "beacon_edge_age",
)
"""Every numeric feature of an entity-window, in a fixed order (all ``float64``).

These are the anomaly model's columns: a trained model stores them by name
(``feature_names`` in its metadata), so a name here never changes: a new feature is appended,
and an older model simply does not use it.
"""

WINDOW_SCHEMA: dict[str, str] = {**WINDOW_KEY_SCHEMA, **dict.fromkeys(WINDOW_FEATURES, "float64")}
"""Column name to pandas dtype for an entity-window table: the keys, then the features."""

WINDOW_KEY_COLUMNS: tuple[str, ...] = tuple(WINDOW_KEY_SCHEMA)
WINDOW_COLUMNS: tuple[str, ...] = tuple(WINDOW_SCHEMA)

# Key columns under their earlier short names (tables and engine state written by earlier
# versions still read): old name -> name in WINDOW_KEY_SCHEMA.
WINDOW_OLD_NAMES: dict[str, str] = {"ws": "window_start", "we": "window_end", "wl_key": "workload_key"}


def empty_windows(n: int = 0) -> pd.DataFrame:
    """An empty (or default-filled) entity-window table with the exact schema.

    One row is one source entity (a pod, or an address no pod owns) over one tumbling
    window ``[window_start, window_end)``: its key columns, then the features the pipeline
    computed from the flows it sourced that ended in that window (and from its memory
    of earlier windows).
    """
    data: dict[str, Any] = {}
    for col, dtype in WINDOW_SCHEMA.items():
        default = "" if dtype == STR else False if dtype == "bool" else 0.0
        data[col] = pd.Series([default] * n, dtype=dtype)
    return pd.DataFrame(data)


def conform_windows(df: pd.DataFrame) -> pd.DataFrame:
    """Rename old key columns (:data:`WINDOW_OLD_NAMES`), order and cast to :data:`WINDOW_SCHEMA`.

    Raises :class:`RecordError` naming the first column that is missing or cannot be cast.
    Extra columns (detector scores, labels) are kept, after the schema's columns.
    """
    df = df.rename(columns={o: n for o, n in WINDOW_OLD_NAMES.items() if o in df.columns})
    out: dict[str, pd.Series] = {}
    for col, dtype in WINDOW_SCHEMA.items():
        if col not in df.columns:
            raise RecordError(col, "required column is missing")
        series = df[col]
        try:
            if dtype == STR:
                series = series.fillna("").astype(cast(Any, STR))
            elif str(series.dtype) != dtype:
                if series.isna().any() and dtype == "bool":
                    raise ValueError("missing values")
                series = series.astype(cast(Any, dtype))
        except (ValueError, TypeError, OverflowError) as exc:
            raise RecordError(col, f"cannot be read as {dtype}: {exc}") from exc
        out[col] = series
    extra = [c for c in df.columns if c not in WINDOW_SCHEMA]
    return pd.concat([pd.DataFrame(out), df[extra]], axis=1).reset_index(drop=True)


# --------------------------------------------------------------------------- alerts

AlertKind = Literal["exfiltration", "lateral_movement"]
Severity = Literal["low", "medium", "high", "critical"]
SEVERITY_ORDER: dict[str, int] = {"low": 0, "medium": 1, "high": 2, "critical": 3}


def utcnow() -> datetime:
    return datetime.now(UTC)


def _check_ip(value: str, field: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as exc:
        raise ValueError(f"{field}: {value!r} is not an IP address") from exc


class Entity(BaseModel):
    """Who did it: the source of the flows, with its Kubernetes identity when known."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ip: str
    namespace: str = ""
    pod: str = ""
    workload: str = ""
    node: str = ""

    @field_validator("ip")
    @classmethod
    def _ip(cls, v: str) -> str:
        return _check_ip(v, "ip")

    def key(self) -> str:
        """Stable identity: the pod when known (its IP may be reused), else the address."""
        return f"{self.namespace}/{self.pod}" if self.pod else self.ip


def alert_id(detector: str, entity_key: str, window_start: datetime) -> str:
    """Deterministic alert id: the same evidence always gives the same id."""
    raw = f"{detector}|{entity_key}|{window_start.astimezone(UTC).isoformat()}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


class Alert(BaseModel):
    """A detector's finding about one entity over one or more windows."""

    model_config = ConfigDict(extra="forbid")

    id: str = ""
    kind: AlertKind
    detector: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")
    technique: str = ""  # MITRE ATT&CK id, e.g. T1046
    tactic: str = ""  # its ATT&CK tactic (flowwarden.attack), derived from technique when empty
    score: float = Field(ge=0.0, le=1.0)
    severity: Severity
    entity: Entity
    window_start: datetime
    window_end: datetime
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    targets: list[str] = Field(default_factory=list)  # IP addresses
    target_ports: list[int] = Field(default_factory=list)
    summary: str = ""
    evidence: dict[str, Any] = Field(default_factory=dict)
    example_flows: list[dict[str, Any]] = Field(default_factory=list)
    model_version: str = ""
    cluster: str = ""  # settings.cluster.name of the cluster that raised it
    # Raised while its entity's or workload's memory was still learning (the engine's first
    # ``pipeline.learning_s``, or a workload younger than that): maybe the cluster's normal,
    # not yet learned; severity at most ``medium``, and enforcement leaves it alone by default.
    learning: bool = False
    created_at: datetime = Field(default_factory=utcnow)

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        return [_check_ip(t, "targets") for t in v]

    @field_validator("target_ports")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        for p in v:
            if not 0 <= p <= 65535:
                raise ValueError(f"target_ports: {p} outside 0-65535")
        return v

    def model_post_init(self, __context: Any) -> None:
        if not self.id:
            self.id = alert_id(self.detector, self.entity.key(), self.window_start)
        if self.first_seen is None:
            self.first_seen = self.window_start
        if self.last_seen is None:
            self.last_seen = self.window_end
        if not self.tactic and self.technique:
            self.tactic = tactic_name(self.technique)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, data: str | bytes) -> Alert:
        try:
            return cls.model_validate_json(data)
        except ValueError as exc:
            raise RecordError(_first_loc(exc), str(exc).splitlines()[-1].strip()) from exc


# --------------------------------------------------------------------------- decisions

Action = Literal["block", "quarantine", "unblock"]
Mode = Literal["enforce", "dry_run", "approval"]
DecisionStatus = Literal["applied", "simulated", "pending", "refused", "failed", "revoked", "expired"]


class Decision(BaseModel):
    """What the enforcement hook did (or would do, or refused to do) with an alert.

    ``status``: ``applied`` (rules in place), ``simulated`` (dry-run: recorded only),
    ``pending`` (waiting for approval), ``refused`` (a guardrail said no: ``guardrail``
    names it), ``failed`` (a backend error), ``revoked``/``expired`` (lifted).
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    alert_id: str = ""
    action: Action
    source: Entity
    targets: list[str] = Field(default_factory=list)  # IPs or CIDRs; empty with quarantine
    target_ports: list[int] = Field(default_factory=list)
    ttl_s: int = Field(ge=0)
    expires_at: datetime | None = None
    backend: str = ""
    mode: Mode
    status: DecisionStatus
    guardrail: str = ""
    reason: str = ""
    decided_by: str = "policy"
    detector: str = ""
    backend_result: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, data: str | bytes) -> Decision:
        try:
            return cls.model_validate_json(data)
        except ValueError as exc:
            raise RecordError(_first_loc(exc), str(exc).splitlines()[-1].strip()) from exc


def _first_loc(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            errs = errors()
            if errs:
                return ".".join(str(p) for p in errs[0].get("loc", ())) or "record"
        except Exception:
            return "record"
    return "record"
