"""The bidirectional flow table: packets in, flow records (FLOW_SCHEMA) out.

Semantics (the golden tests check them against a per-packet reference in
``tests/data/make_pcaps.py``):

* A flow is keyed by its 5-tuple in either direction. The *initiator* (``src_*``) sends
  the flow's first packet, except when that packet is a SYN+ACK: then its receiver (whose
  SYN was missed) is the initiator. Counters are per direction: ``*_out`` initiator to
  responder, ``*_in`` back. Bytes are frame bytes on the wire (what ``tshark -z conv``
  and nfstream's default accounting report).
* Time moves in ticks (``tick_s``, 1 s of packet time). When the first packet of a new tick
  arrives (or :meth:`FlowTable.advance` is called with the wall clock), the table is swept
  at the tick's start ``now``: a flow silent for more than ``idle_timeout`` ends (a final
  record); a flow whose current record began ``active_timeout`` or more ago emits an
  interim record (``final=False``) whose counters are deltas since its previous record.
  So a flow ends after between ``idle_timeout`` and ``idle_timeout + tick_s`` of silence.
* More than ``max_flows`` open flows: the least recently seen are ended early (final
  records) and counted in :attr:`FlowTable.evicted`. :meth:`flush` ends every open flow.
* ``tcp_flags`` is the OR of every flag seen so far in both directions; ``state`` follows
  from the flags per direction (see :func:`tcp_state`).

The work per tick is vectorised: packets of a tick are grouped by key with a 64-bit hash
(checked against the full key, exact), aggregated with ``bincount``/``ufunc.at``, then merged
into columnar slot arrays; the only per-flow Python work is one dict lookup per distinct
key per tick. Each record carries an internal ``uid`` (the flow's identity in this table)
so that application-layer names can be joined afterwards.
"""

from __future__ import annotations

import ipaddress
import itertools
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import numpy as np
import pandas as pd

from flowwarden.collectors.decode import ICMP, ICMPV6, TCP, UDP, Decoded
from flowwarden.records import FLOW_COLUMNS, FlowState, conform_flows

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_V4_PREFIX = 0x0000FFFF00000000


@dataclass(frozen=True)
class FlowTableConfig:
    idle_timeout_s: float = 15.0
    active_timeout_s: float = 10.0
    max_flows: int = 1_000_000
    tick_s: float = 1.0
    node: str = ""


def tcp_state(fwd: np.ndarray, rev: np.ndarray, pkts_in: np.ndarray) -> np.ndarray:
    """TCP state from the OR of flags sent by the initiator (``fwd``) and responder (``rev``)."""
    syn = (fwd & SYN) != 0
    synack = ((rev & SYN) != 0) & ((rev & ACK) != 0)
    ended = ((fwd | rev) & (FIN | RST)) != 0
    out = np.full(len(fwd), FlowState.TCP_OTHER.value, dtype=object)
    out[syn & synack] = FlowState.ESTABLISHED.value
    out[syn & synack & ended] = FlowState.CLOSED.value
    out[syn & ~synack & ((rev & RST) != 0)] = FlowState.REJECTED.value
    out[syn & ~synack & ((rev & RST) == 0) & (pkts_in == 0)] = FlowState.SYN_ONLY.value
    return out


def ip_strings(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Text addresses from the (hi, lo) halves; each distinct address converted once."""
    out = np.empty(len(hi), dtype=object)
    v4 = (hi == 0) & ((lo >> np.uint64(32)) == np.uint64(0xFFFF))
    if v4.any():
        codes, uniq = pd.factorize(lo[v4] & np.uint64(0xFFFFFFFF))
        text = np.array([socket.inet_ntoa(int(u).to_bytes(4, "big")) for u in uniq.tolist()], dtype=object)
        out[v4] = text[codes]
    if not v4.all():
        idx = np.flatnonzero(~v4)
        pairs = pd.MultiIndex.from_arrays([hi[idx], lo[idx]])
        codes6, uniq6 = pd.factorize(pairs)
        text6 = [str(ipaddress.IPv6Address((int(h) << 64) | int(low))) for h, low in uniq6]
        out[idx] = np.asarray(text6, dtype=object)[codes6]
    return out


def _key_bytes(keys: np.ndarray) -> list[bytes]:
    """Each 40-byte canonical key as ``bytes`` (one C-level conversion for the whole array)."""
    out = np.ascontiguousarray(keys).view(np.dtype((np.void, 40))).ravel().tolist()
    return cast(list[bytes], out)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (wrapping uint64 arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


# Slot arrays: the state of every open flow, in initiator orientation.
_SLOT_FIELDS: dict[str, type] = {
    "i_hi": np.uint64,
    "i_lo": np.uint64,
    "r_hi": np.uint64,
    "r_lo": np.uint64,
    "i_port": np.int64,
    "r_port": np.int64,
    "proto": np.int64,
    "first_ts": np.float64,
    "last_ts": np.float64,
    "period_ts": np.float64,  # first packet of the current record; NaN when none yet
    "bytes_out": np.int64,
    "bytes_in": np.int64,
    "pkts_out": np.int64,
    "pkts_in": np.int64,
    "pkts_in_total": np.int64,
    "fl_fwd": np.int64,
    "fl_rev": np.int64,
    "uid": np.int64,
}


class FlowTable:
    """Open flows and their counters; feed :class:`Decoded` batches, collect records."""

    def __init__(self, config: FlowTableConfig | None = None) -> None:
        self.cfg = config or FlowTableConfig()
        self._cap = 0
        self._s: dict[str, np.ndarray] = {k: np.zeros(0, dtype=t) for k, t in _SLOT_FIELDS.items()}
        self._used = np.zeros(0, dtype=bool)
        self._free: list[int] = []
        self._index: dict[bytes, int] = {}
        self._key = np.zeros((0, 5), dtype=np.uint64)  # canonical key per slot
        self._next_uid = 1
        self._tick: int | None = None
        self.evicted = 0
        self.records_emitted = 0
        self.last_uids = np.zeros(0, dtype=np.int64)  # per packet of the last batch (-1: not metered)

    # ------------------------------------------------------------------ public

    def __len__(self) -> int:
        return len(self._index)

    def process(self, dec: Decoded) -> list[pd.DataFrame]:
        """Meter one decoded batch; returns the records it caused (one frame, or none)."""
        out: list[dict[str, np.ndarray]] = []
        uids = np.full(len(dec), -1, dtype=np.int64)
        m = np.flatnonzero(dec.metered)
        if len(m) == 0:
            self.last_uids = uids
            return []
        tick = np.floor(dec.ts[m] / self.cfg.tick_s).astype(np.int64)
        tick = np.maximum.accumulate(tick)  # late packets belong to the current tick
        if self._tick is not None:
            tick = np.maximum(tick, self._tick)
        cut = np.flatnonzero(np.diff(tick)) + 1
        bounds = [0, *cut.tolist(), len(m)]
        for a, b in itertools.pairwise(bounds):
            t = int(tick[a])
            if self._tick is None or t > self._tick:
                out.extend(self._sweep(t * self.cfg.tick_s))
                self._tick = t
            idx = m[a:b]
            uids[idx] = self._merge(dec, idx)
            out.extend(self._evict())
        self.last_uids = uids
        return _frames(out, self.cfg.node)

    def open_uids(self) -> np.ndarray:
        """Uids of the flows still open."""
        return self._s["uid"][self._used]

    def advance(self, now: float) -> list[pd.DataFrame]:
        """Let time pass without packets (live capture): sweep at the tick containing ``now``."""
        t = int(np.floor(now / self.cfg.tick_s))
        if self._tick is not None and t <= self._tick:
            return []
        self._tick = t
        return _frames(list(self._sweep(t * self.cfg.tick_s)), self.cfg.node)

    def flush(self) -> pd.DataFrame:
        """End every open flow (end of file, SIGTERM)."""
        slots = np.flatnonzero(self._used)
        frames = _frames([self._emit(slots, final=True)], self.cfg.node)
        return frames[0] if frames else _EMPTY.copy()

    # ------------------------------------------------------------------ internals

    def _grow(self, need: int) -> None:
        if need <= self._cap:
            return
        cap = max(need, self._cap * 2, 1024)
        for k, arr in self._s.items():
            new = np.zeros(cap, dtype=arr.dtype)
            new[: self._cap] = arr
            self._s[k] = new
        used = np.zeros(cap, dtype=bool)
        used[: self._cap] = self._used
        key = np.zeros((cap, 5), dtype=np.uint64)
        key[: self._cap] = self._key
        self._free.extend(range(cap - 1, self._cap - 1, -1))
        self._used, self._key, self._cap = used, key, cap

    def _alloc(self, n: int) -> np.ndarray:
        if len(self._free) < n:
            self._grow(self._cap + n - len(self._free))
        slots = np.asarray(self._free[-n:][::-1], dtype=np.int64) if n else np.zeros(0, np.int64)
        del self._free[len(self._free) - n :]
        return slots

    def _release(self, slots: np.ndarray) -> None:
        if len(slots) == 0:
            return
        for k in _key_bytes(self._key[slots]):
            del self._index[k]
        self._used[slots] = False
        self._free.extend(slots.tolist())

    def _merge(self, d: Decoded, idx: np.ndarray) -> np.ndarray:
        """Add the packets ``idx`` (one tick) to the table; returns each packet's flow uid."""
        s = self._s
        sh, sl, dh, dl = d.src_hi[idx], d.src_lo[idx], d.dst_hi[idx], d.dst_lo[idx]
        sp, dp, pr = d.sport[idx], d.dport[idx], d.proto[idx]
        # Canonical orientation: the lower (address, port) endpoint first.
        src_first = (sh < dh) | ((sh == dh) & ((sl < dl) | ((sl == dl) & (sp <= dp))))
        a_hi, a_lo = np.where(src_first, sh, dh), np.where(src_first, sl, dl)
        b_hi, b_lo = np.where(src_first, dh, sh), np.where(src_first, dl, sl)
        a_p, b_p = np.where(src_first, sp, dp), np.where(src_first, dp, sp)
        ports = (
            (a_p.astype(np.uint64) << np.uint64(24)) | (b_p.astype(np.uint64) << np.uint64(8))
        ) | pr.astype(np.uint64)
        key = np.stack([a_hi, a_lo, b_hi, b_lo, ports], axis=1)
        h = _mix(a_hi ^ _mix(a_lo ^ _mix(b_hi ^ _mix(b_lo ^ _mix(ports)))))
        codes, _ = pd.factorize(h)
        codes = codes.astype(np.int64)
        prev_max = np.maximum.accumulate(np.concatenate([[-1], codes[:-1]]))
        first = np.flatnonzero(codes > prev_max)  # first packet of each group, by code
        if not (key == key[first][codes]).all():  # a 64-bit hash collision: group exactly
            _, first, codes = np.unique(key, axis=0, return_index=True, return_inverse=True)
            codes = codes.ravel().astype(np.int64)
        g = len(first)
        gkey = np.ascontiguousarray(key[first])
        kbytes = _key_bytes(gkey)
        get = self._index.get
        slot = np.fromiter((get(k, -1) for k in kbytes), dtype=np.int64, count=g)
        new = slot < 0
        # Initiator of new flows: the first packet's sender, or its receiver for a SYN+ACK.
        fflags = d.flags[idx][first]
        synack = (pr[first] == TCP) & ((fflags & (SYN | ACK)) == (SYN | ACK))
        init_is_a = np.where(new, src_first[first] ^ synack, False)
        if new.any():
            ns = self._alloc(int(new.sum()))
            slot[new] = ns
            ia = init_is_a[new]
            fk = gkey[new]
            s["i_hi"][ns] = np.where(ia, fk[:, 0], fk[:, 2])
            s["i_lo"][ns] = np.where(ia, fk[:, 1], fk[:, 3])
            s["r_hi"][ns] = np.where(ia, fk[:, 2], fk[:, 0])
            s["r_lo"][ns] = np.where(ia, fk[:, 3], fk[:, 1])
            ap = (fk[:, 4] >> np.uint64(24)).astype(np.int64)
            bp = ((fk[:, 4] >> np.uint64(8)) & np.uint64(0xFFFF)).astype(np.int64)
            s["i_port"][ns] = np.where(ia, ap, bp)
            s["r_port"][ns] = np.where(ia, bp, ap)
            s["proto"][ns] = (fk[:, 4] & np.uint64(0xFF)).astype(np.int64)
            s["first_ts"][ns] = np.inf
            s["last_ts"][ns] = -np.inf
            s["period_ts"][ns] = np.nan
            for k in ("bytes_out", "bytes_in", "pkts_out", "pkts_in", "pkts_in_total", "fl_fwd", "fl_rev"):
                s[k][ns] = 0
            s["uid"][ns] = np.arange(self._next_uid, self._next_uid + len(ns))
            self._next_uid += len(ns)
            self._used[ns] = True
            self._key[ns] = fk
            self._index.update(zip(np.asarray(kbytes, dtype=object)[new].tolist(), ns.tolist(), strict=True))
        # Existing flows: is canonical endpoint "a" their initiator?
        old = ~new
        if old.any():
            so = slot[old]
            init_is_a[old] = (
                (s["i_hi"][so] == gkey[old, 0])
                & (s["i_lo"][so] == gkey[old, 1])
                & (s["i_port"][so] == (gkey[old, 4] >> np.uint64(24)).astype(np.int64))
            )
            # A flow between one endpoint and itself (same address and port) is all "out".
        fwd = src_first == init_is_a[codes]
        length, flags, ts = d.length[idx], d.flags[idx], d.ts[idx]
        fwd_len = np.where(fwd, length, 0)
        bytes_out = np.bincount(codes, weights=fwd_len, minlength=g).astype(np.int64)
        bytes_all = np.bincount(codes, weights=length, minlength=g).astype(np.int64)
        pkts_out = np.bincount(codes, weights=fwd, minlength=g).astype(np.int64)
        pkts_all = np.bincount(codes, minlength=g).astype(np.int64)
        fl_f = np.zeros(g, dtype=np.int64)
        fl_r = np.zeros(g, dtype=np.int64)
        np.bitwise_or.at(fl_f, codes[fwd], flags[fwd])
        np.bitwise_or.at(fl_r, codes[~fwd], flags[~fwd])
        tmin = np.full(g, np.inf)
        tmax = np.full(g, -np.inf)
        np.minimum.at(tmin, codes, ts)
        np.maximum.at(tmax, codes, ts)
        s["bytes_out"][slot] += bytes_out
        s["bytes_in"][slot] += bytes_all - bytes_out
        s["pkts_out"][slot] += pkts_out
        s["pkts_in"][slot] += pkts_all - pkts_out
        s["pkts_in_total"][slot] += pkts_all - pkts_out
        s["fl_fwd"][slot] |= fl_f
        s["fl_rev"][slot] |= fl_r
        s["first_ts"][slot] = np.minimum(s["first_ts"][slot], tmin)
        s["last_ts"][slot] = np.maximum(s["last_ts"][slot], tmax)
        s["period_ts"][slot] = np.fmin(s["period_ts"][slot], tmin)
        return s["uid"][slot][codes]

    def _sweep(self, now: float) -> Iterator[dict[str, np.ndarray]]:
        used = np.flatnonzero(self._used)
        if len(used) == 0:
            return
        s = self._s
        idle = now - s["last_ts"][used] > self.cfg.idle_timeout_s
        yield self._emit(used[idle], final=True)
        rest = used[~idle]
        active = now - s["period_ts"][rest] >= self.cfg.active_timeout_s  # NaN compares False
        yield self._emit(rest[active], final=False)

    def _evict(self) -> Iterator[dict[str, np.ndarray]]:
        excess = len(self._index) - self.cfg.max_flows
        if excess <= 0:
            return
        used = np.flatnonzero(self._used)
        last = self._s["last_ts"][used]
        oldest = used[np.argsort(last, kind="stable")[:excess]]
        self.evicted += len(oldest)
        yield self._emit(oldest, final=True)

    def _emit(self, slots: np.ndarray, *, final: bool) -> dict[str, np.ndarray]:
        """Raw record columns for ``slots``; a final record frees the slot, an interim one resets deltas."""
        if len(slots) == 0:
            return {}
        block = {k: v[slots] for k, v in self._s.items()}
        block["final"] = np.full(len(slots), final)
        self.records_emitted += len(slots)
        if final:
            self._release(slots)
        else:
            for k in ("bytes_out", "bytes_in", "pkts_out", "pkts_in"):
                self._s[k][slots] = 0
            self._s["period_ts"][slots] = np.nan
        return block


def _frames(blocks: list[dict[str, np.ndarray]], node: str) -> list[pd.DataFrame]:
    """One record frame (FLOW_SCHEMA + ``uid``) from raw blocks: the only per-record pandas work."""
    blocks = [b for b in blocks if b]
    if not blocks:
        return []
    s = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
    n = len(s["uid"])
    proto = s["proto"]
    state = np.full(n, FlowState.OTHER.value, dtype=object)
    tcp = proto == TCP
    state[tcp] = tcp_state(s["fl_fwd"][tcp], s["fl_rev"][tcp], s["pkts_in_total"][tcp])
    state[proto == UDP] = FlowState.UDP.value
    state[(proto == ICMP) | (proto == ICMPV6)] = FlowState.ICMP.value
    ts_end = s["last_ts"]
    ts_start = np.where(np.isnan(s["period_ts"]), ts_end, s["period_ts"])
    empty = pd.array(np.full(n, "", dtype=object), dtype="str")
    cols: dict[str, object] = {
        "ts_start": ts_start,
        "ts_end": ts_end,
        "node": pd.array(np.full(n, node, dtype=object), dtype="str"),
        "src_ip": pd.array(ip_strings(s["i_hi"], s["i_lo"]), dtype="str"),
        "src_port": s["i_port"].astype(np.int32),
        "dst_ip": pd.array(ip_strings(s["r_hi"], s["r_lo"]), dtype="str"),
        "dst_port": s["r_port"].astype(np.int32),
        "proto": proto.astype(np.int16),
        "bytes_out": s["bytes_out"],
        "bytes_in": s["bytes_in"],
        "pkts_out": s["pkts_out"],
        "pkts_in": s["pkts_in"],
        "tcp_flags": (s["fl_fwd"] | s["fl_rev"]).astype(np.int16),
        "state": pd.array(state, dtype="str"),
        "dns_qname": empty,
        "dns_rcode": np.full(n, -1, dtype=np.int16),
        "server_name": empty,
        "final": s["final"],
    }
    for c in FLOW_COLUMNS:
        if c not in cols:
            cols[c] = empty
    df = pd.DataFrame({c: cols[c] for c in FLOW_COLUMNS})
    df["uid"] = s["uid"]
    return [df]


_EMPTY = conform_flows(pd.DataFrame({c: [] for c in FLOW_COLUMNS})).assign(uid=np.zeros(0, dtype=np.int64))
