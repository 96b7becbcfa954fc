"""Vectorised building blocks: arrays of flows, never a Python object per flow.

Each traffic generator appends column arrays to a :class:`FlowParts`; :meth:`FlowParts.frame`
concatenates them once, sorts by ``ts_end`` and conforms to ``FLOW_SCHEMA``. A parallel
array remembers which labelled episode (or ``-1``: benign) produced each flow, so tests and
evaluations can check flows against their labels.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from flowwarden.dnsnames import label_stats
from flowwarden.records import FLOW_COLUMNS, FlowState, Proto, conform_flows, empty_flows

# TCP flag bits, OR-ed over the conversation as a flow table records them.
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
FLAGS_CLOSED = FIN | SYN | PSH | ACK
FLAGS_REJECTED = SYN | RST | ACK
FLAGS_SYN_ONLY = SYN

EPHEMERAL = (32768, 61000)
MSS = 1400


def diurnal(ts: np.ndarray) -> np.ndarray:
    """Request-rate multiplier over the day: trough 0.45 at 03:00 UTC, peak 1.55 at 15:00."""
    hours = (ts % 86400.0) / 3600.0
    return 1.0 + 0.55 * np.sin(2 * np.pi * (hours - 9.0) / 24.0)


def event_times(
    rng: np.random.Generator,
    rates: np.ndarray,
    t0: float,
    t1: float,
    *,
    bin_s: float = 10.0,
    burstiness: float = 4.0,
    daily: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Poisson arrivals for each source ``i`` at ``rates[i]`` per second between t0 and t1.

    Rates follow the daily cycle and a gamma noise per source and bin (shape
    ``burstiness``: lower is burstier). Returns ``(times, source_index)``.
    """
    rates = np.asarray(rates, dtype=float)
    nbins = max(1, int(np.ceil((t1 - t0) / bin_s)))
    edges = t0 + bin_s * np.arange(nbins)
    width = np.minimum(bin_s, t1 - edges)
    mult = diurnal(edges + width / 2) if daily else np.ones(nbins)
    noise = rng.gamma(burstiness, 1.0 / burstiness, size=(len(rates), nbins))
    counts = rng.poisson(rates[:, None] * (width * mult)[None, :] * noise)
    src = np.repeat(np.arange(len(rates)), counts.sum(axis=1))
    bins = np.repeat(np.tile(np.arange(nbins), len(rates)), counts.ravel())
    times = edges[bins] + rng.random(len(bins)) * width[bins]
    return times, src


def lognormal(rng: np.random.Generator, median: float | np.ndarray, sigma: float, n: int) -> np.ndarray:
    return np.asarray(median) * np.exp(sigma * rng.standard_normal(n))


def packets(nbytes: np.ndarray, base: int = 1) -> np.ndarray:
    """Packets to carry ``nbytes`` (segments of about one MSS) plus ``base`` control packets."""
    return (np.ceil(np.asarray(nbytes, dtype=float) / MSS) + base).astype(np.int64)


def ephemeral_ports(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(*EPHEMERAL, size=n)


DNS_DTYPES: dict[str, Any] = {
    "dns_queries": np.int32,
    "dns_names": np.int32,
    "dns_name_max_len": np.int16,
    "dns_name_mean_len": np.float64,
    "dns_label_entropy": np.float64,
    "dns_top_domain": object,
    "dns_top_domain_names": np.int32,
    "dns_qtypes": object,
    "dns_nxdomain": np.int32,
    "dns_rtt_n": np.int32,
    "dns_rtt_mean_ms": np.float64,
    "dns_rtt_max_ms": np.float64,
}
DNS_DEFAULTS: dict[str, Any] = {k: "" if v is object else 0 for k, v in DNS_DTYPES.items()}


def dns_aggregates(names: np.ndarray, rcode: Any = 0, qtype: str = "A") -> dict[str, Any]:
    """The DNS aggregates of records that each carry one query (``names``, one per record)."""
    codes, uniq = pd.factorize(np.asarray(names, dtype=object))
    stats = [label_stats(str(q)) for q in uniq]  # once per distinct name
    length = np.array([st[0] for st in stats], dtype="float64")[codes]
    # Resolution time, stable per name: the cluster DNS answers its own names in about a
    # millisecond, names it must ask upstream for take 5-40 ms.
    spread = (pd.util.hash_array(np.asarray(uniq, dtype=object)) % 1000).astype("float64") / 1000.0
    local = np.array([str(q).endswith(".cluster.local") for q in uniq], dtype=bool)
    rtt = np.where(local, 0.3 + spread, 5.0 + 35.0 * spread)[codes]
    return {
        "dns_queries": 1,
        "dns_names": 1,
        "dns_name_max_len": length,
        "dns_name_mean_len": length,
        "dns_label_entropy": np.array([st[1] for st in stats], dtype="float64")[codes],
        "dns_top_domain": np.array([st[2] for st in stats], dtype=object)[codes],
        "dns_top_domain_names": 1,
        "dns_qtypes": qtype,
        "dns_nxdomain": (np.asarray(rcode) == 3).astype(np.int32),
        "dns_rtt_n": 1,
        "dns_rtt_mean_ms": rtt,
        "dns_rtt_max_ms": rtt,
    }


class FlowParts:
    """Column arrays of flows from many generators, concatenated once at the end."""

    def __init__(self) -> None:
        self._parts: list[dict[str, np.ndarray]] = []

    def __len__(self) -> int:
        return sum(len(p["ts_start"]) for p in self._parts)

    def add(
        self,
        *,
        ts_start: np.ndarray,
        ts_end: np.ndarray,
        node: Any,
        src_ip: Any,
        src_port: Any,
        dst_ip: Any,
        dst_port: Any,
        proto: Any,
        bytes_out: Any,
        bytes_in: Any,
        pkts_out: Any,
        pkts_in: Any,
        tcp_flags: Any,
        state: Any,
        dns_qname: Any = "",
        dns_rcode: Any = -1,
        server_name: Any = "",
        final: Any = True,
        first: Any = True,
        dns: dict[str, Any] | None = None,
        episode: int = -1,
    ) -> None:
        """Append ``n = len(ts_start)`` flows; scalars are broadcast.

        ``dns``: the records' DNS aggregates (:data:`~flowwarden.records.DNS_AGGREGATES`), as
        the collector fills them; :func:`dns_aggregates` gives them for one query per record.
        """
        n = len(ts_start)
        if n == 0:
            return
        agg = {**DNS_DEFAULTS, **(dns or {})}
        cols = {
            "ts_start": (ts_start, np.float64),
            "ts_end": (ts_end, np.float64),
            "node": (node, object),
            "src_ip": (src_ip, object),
            "src_port": (src_port, np.int32),
            "dst_ip": (dst_ip, object),
            "dst_port": (dst_port, np.int32),
            "proto": (proto, np.int16),
            "bytes_out": (bytes_out, np.int64),
            "bytes_in": (bytes_in, np.int64),
            "pkts_out": (pkts_out, np.int64),
            "pkts_in": (pkts_in, np.int64),
            "tcp_flags": (tcp_flags, np.int16),
            "state": (state, object),
            "dns_qname": (dns_qname, object),
            "dns_rcode": (dns_rcode, np.int16),
            "server_name": (server_name, object),
            "final": (final, np.bool_),
            "first": (first, np.bool_),
            **{name: (agg[name], dtype) for name, dtype in DNS_DTYPES.items()},
            "episode": (episode, np.int32),
        }
        part: dict[str, np.ndarray] = {}
        for name, (value, dtype) in cols.items():
            arr = np.asarray(value)
            if arr.dtype.kind == "f" and np.dtype(dtype).kind in "iu":
                arr = np.rint(arr)
            arr = np.broadcast_to(arr, (n,)).astype(dtype)
            part[name] = arr
        self._parts.append(part)

    def last_end(self, episode: int) -> float:
        """The latest ``ts_end`` among the flows of ``episode`` (-inf when it has none)."""
        ends = [p["ts_end"][p["episode"] == episode] for p in self._parts if p["episode"][0] == episode]
        return max((float(e.max()) for e in ends if len(e)), default=float("-inf"))

    def frame(self, t0: float = -np.inf, t1: float = np.inf) -> tuple[pd.DataFrame, np.ndarray]:
        """The flows ending in [t0, t1] as one ``FLOW_SCHEMA`` frame sorted by ``ts_end``.

        Also returns each flow's episode index. The parts are consumed (memory is freed
        column by column), so call this once.
        """
        if not self._parts:
            return empty_flows(), np.zeros(0, dtype=np.int32)
        parts, self._parts = self._parts, []

        def column(name: str) -> np.ndarray:
            return np.concatenate([p.pop(name) for p in parts])

        # Round to microseconds (what a collector reports) and sort stably: deterministic.
        ts_start = np.round(column("ts_start"), 6)
        ts_end = np.maximum(np.round(column("ts_end"), 6), ts_start)
        sport = column("src_port")
        order = np.lexsort((sport, ts_end))  # stable: ties keep generation order
        order = order[(ts_end[order] >= t0) & (ts_end[order] <= t1)]
        data: dict[str, Any] = {"ts_start": ts_start[order], "ts_end": ts_end[order]}
        del ts_start, ts_end
        for name in [c for c in FLOW_COLUMNS[2:] if c in parts[0] or c == "src_port"]:
            v = sport[order] if name == "src_port" else column(name)[order]
            data[name] = pd.array(v, dtype="str") if v.dtype == object else v
        episode = column("episode")[order]
        return conform_flows(pd.DataFrame(data, copy=False)), episode


def tcp_conversation(
    rng: np.random.Generator,
    n: int,
    *,
    req_median: float,
    resp_median: float,
    sigma: float = 0.8,
    dur_median: float = 0.05,
    reject_share: float = 0.0,
) -> dict[str, np.ndarray]:
    """Sizes, packets, flags, state and duration for ``n`` short client-server TCP exchanges.

    A ``reject_share`` of them are refused (SYN answered by RST, a benign failure).
    """
    out = lognormal(rng, req_median, sigma, n).astype(np.int64) + 60
    inn = lognormal(rng, resp_median, sigma, n).astype(np.int64) + 60
    dur = lognormal(rng, dur_median, 0.8, n)
    pkts_out, pkts_in = packets(out, 3), packets(inn, 2)
    flags = np.full(n, FLAGS_CLOSED, dtype=np.int16)
    state = np.full(n, FlowState.CLOSED.value, dtype=object)
    if reject_share > 0:
        rej = rng.random(n) < reject_share
        out[rej], inn[rej], pkts_out[rej], pkts_in[rej] = 60, 54, 1, 1
        flags[rej] = FLAGS_REJECTED
        state[rej] = FlowState.REJECTED.value
        dur[rej] = 0.0005
    return {
        "bytes_out": out,
        "bytes_in": inn,
        "pkts_out": pkts_out,
        "pkts_in": pkts_in,
        "tcp_flags": flags,
        "state": state,
        "duration": dur,
        "proto": np.full(n, Proto.TCP, dtype=np.int16),
    }


def long_lived(
    rng: np.random.Generator,
    *,
    t0: float,
    t1: float,
    n: int,
    interval_s: float,
    bytes_out_per_s: float | np.ndarray,
    bytes_in_per_s: float | np.ndarray,
    opened: np.ndarray | None = None,
    closed: np.ndarray | None = None,
    daily: bool = True,
) -> dict[str, np.ndarray]:
    """The records of ``n`` long-lived connections as a flow table with an active timeout exports them.

    Connection ``i`` is open from ``opened[i]`` (default: up to 6 h before ``t0``) to
    ``closed[i]`` (default: after ``t1``). While open it is exported every ``interval_s``
    after its start (interim records: ``final=False``, state ``established``, counters are
    deltas since the previous record); when it closes inside the run, a final record
    (``closed``) carries the rest. Only records ending in [t0, t1] are returned, flattened,
    with ``conn`` (connection index), ``ts_start`` (the conversation's start) and ``ts_end``.
    """
    opened = t0 - rng.uniform(60, 6 * 3600, n) if opened is None else np.asarray(opened, dtype=float)
    closed = np.full(n, np.inf) if closed is None else np.asarray(closed, dtype=float)
    # Scheduled exports at opened + m * interval (m >= 1), strictly before the close, inside the run.
    m0 = np.maximum(1.0, np.ceil((t0 - opened) / interval_s))
    first = opened + m0 * interval_s
    until = np.minimum(np.nextafter(closed, -np.inf), t1)
    sched = np.where(first <= until, np.floor((until - first) / interval_s).astype(np.int64) + 1, 0)
    ends = (closed <= t1) & (closed >= t0)
    counts = sched + ends
    conn = np.repeat(np.arange(n), counts)
    k = np.arange(len(conn)) - np.repeat(np.cumsum(counts) - counts, counts)
    is_final = k == sched[conn]  # only connections that close inside the run get this index
    ts_end = np.where(is_final, closed[conn], first[conn] + k * interval_s)
    prev = np.where(
        k == 0, np.maximum(opened[conn], first[conn] - interval_s), first[conn] + (k - 1) * interval_s
    )
    span = np.maximum(ts_end - prev, 0.001)
    mult = diurnal(ts_end) if daily else 1.0
    bo = np.broadcast_to(np.asarray(bytes_out_per_s, dtype=float), (n,))[conn]
    bi = np.broadcast_to(np.asarray(bytes_in_per_s, dtype=float), (n,))[conn]
    noise = rng.gamma(4.0, 0.25, size=(2, len(conn)))
    out = (bo * span * mult * noise[0]).astype(np.int64)
    inn = (bi * span * mult * noise[1]).astype(np.int64)
    pkts_out, pkts_in = packets(out, 0) + 1, packets(inn, 0) + 1
    # Flags seen during the record's interval: the handshake in the first, FIN in the last.
    flags = np.full(len(conn), PSH | ACK, dtype=np.int16)
    flags[prev <= opened[conn]] |= SYN
    flags[is_final] |= FIN
    state = np.where(is_final, FlowState.CLOSED.value, FlowState.ESTABLISHED.value).astype(object)
    return {
        "conn": conn,
        "ts_start": opened[conn],
        "ts_end": ts_end,
        "final": is_final,
        "bytes_out": out,
        "bytes_in": inn,
        "pkts_out": pkts_out,
        "pkts_in": pkts_in,
        "tcp_flags": flags,
        "state": state,
        "proto": np.full(len(conn), Proto.TCP, dtype=np.int16),
    }


def epoch(dt: datetime) -> float:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()
