"""The bidirectional flow table: packets in, flow records (FLOW_SCHEMA) out.

Semantics (the golden tests check them against a per-packet reference in
``tests/data/make_pcaps.py``):

* A flow is keyed by its 5-tuple in either direction. The *initiator* (``src_*``) sends
  the flow's first packet, except when that packet is a SYN+ACK: then its receiver (whose
  SYN was missed) is the initiator. Counters are per direction: ``*_out`` initiator to
  responder, ``*_in`` back. Bytes are frame bytes on the wire (what ``tshark -z conv``
  and nfstream's default accounting report).
* Flows end as IPFIX (``flowEndReason``, RFC 5102) and nfstream define it, and every
  record says why it was emitted (``end_reason``, :class:`~flowwarden.records.FlowEnd`):
  a TCP flow ends on a reset (``rst``) or once both sides sent FIN and ``fin_grace_s`` has
  passed for the last ACK (``fin``); any flow ends after ``idle_timeout_s`` of silence
  (``idle``); more than ``max_flows`` open flows end the least recently seen (``evicted``);
  :meth:`FlowTable.flush` ends the rest (``end_of_capture``).
* Time moves in ticks (``tick_s``, 1 s of packet time). When the first packet of a new tick
  arrives (or :meth:`FlowTable.advance` is called with the wall clock), the table is swept
  at the tick's start ``now``. Besides ending flows, the sweep emits interim records
  (``final=False``, ``end_reason="active"``, counters are deltas since the previous record):

  - *first sight*: a flow that has not been reported yet is reported at the end of the
    tick in which it started, so a scan or a probe reaches the pipeline within about a
    second. A TCP handshake still in flight (a SYN with no answer yet) waits up to
    ``handshake_wait_s`` so that a slow answer does not read as ``syn_only``, and a flow
    already closing waits for its final record instead (one record for a short connection);
  - *active timeout*: a long flow reports every ``active_timeout_s``, only when it carried
    packets since its last record.

  A record never has zero packets unless it is its flow's only record: a flow that ends
  with nothing new since its last (interim) record ends without a record of its own. So
  count connections by ``first`` (the flow's first record), not by ``final``;
  :meth:`FlowTable.take_ended` lists every flow that ended, with or without a record.
* ``tcp_flags`` is the OR of every flag seen so far in both directions; ``state`` follows
  from the flags per direction (see :func:`tcp_state`).

The work per tick is vectorised: packets of a tick are grouped by key with a 64-bit hash
(checked against the full key, exact), aggregated with ``bincount``/``ufunc.at``, then merged
into columnar slot arrays; the only per-flow Python work is one dict lookup per distinct
key per tick, by that hash (an int: cheaper to hash than the 40-byte key), checked against
the slot's full key; the rare flow whose hash another open flow already holds is indexed
by its full key instead. Each record carries an internal ``uid`` (the flow's identity in this table)
so that application-layer names can be joined afterwards, and the flow's Community ID
(:mod:`collectors.community_id`), hashed once per flow when its first record is emitted.
"""

from __future__ import annotations

import collections
import ipaddress
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import numpy as np
import pandas as pd
import pyarrow as pa

from flowwarden.collectors.community_id import ID_LEN, community_ids
from flowwarden.collectors.decode import ICMP, ICMPV6, TCP, TUNNELS, UDP, Decoded
from flowwarden.records import FLOW_COLUMNS, FLOW_DEFAULTS, FLOW_SCHEMA, FlowEnd, FlowState, conform_flows

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_V4_PREFIX = 0x0000FFFF00000000


@dataclass(frozen=True)
class FlowTableConfig:
    idle_timeout_s: float = 15.0
    active_timeout_s: float = 10.0
    max_flows: int = 1_000_000
    tick_s: float = 1.0
    fin_grace_s: float = 0.5  # after both FINs: the last ACK still belongs to the flow
    handshake_wait_s: float = 1.0  # first sight of an unanswered SYN waits this long
    node: str = ""
    community_id_seed: int = 0


# end_reason codes of raw blocks (index into _END_NAMES)
_ACTIVE, _IDLE, _FIN, _RST, _EVICTED, _EOC = range(6)
_END_TEXT = pa.array(
    [
        r.value
        for r in (
            FlowEnd.ACTIVE,
            FlowEnd.IDLE,
            FlowEnd.FIN,
            FlowEnd.RST,
            FlowEnd.EVICTED,
            FlowEnd.END_OF_CAPTURE,
        )
    ],
    type=pa.string(),
)


_STATES = list(FlowState)  # state codes index this list
_STATE_TEXT = pa.array([st.value for st in _STATES], type=pa.string())
_CODE = {st: np.int8(i) for i, st in enumerate(_STATES)}


def tcp_state_codes(fwd: np.ndarray, rev: np.ndarray, pkts_in: np.ndarray) -> np.ndarray:
    """TCP state (index into ``FlowState``) from the OR of flags sent by the initiator
    (``fwd``) and responder (``rev``)."""
    syn = (fwd & SYN) != 0
    synack = ((rev & SYN) != 0) & ((rev & ACK) != 0)
    ended = ((fwd | rev) & (FIN | RST)) != 0
    out = np.full(len(fwd), _CODE[FlowState.TCP_OTHER], dtype=np.int8)
    out[syn & synack] = _CODE[FlowState.ESTABLISHED]
    out[syn & synack & ended] = _CODE[FlowState.CLOSED]
    out[syn & ~synack & ((rev & RST) != 0)] = _CODE[FlowState.REJECTED]
    out[syn & ~synack & ((rev & RST) == 0) & (pkts_in == 0)] = _CODE[FlowState.SYN_ONLY]
    return out


def tcp_state(fwd: np.ndarray, rev: np.ndarray, pkts_in: np.ndarray) -> np.ndarray:
    """TCP state (text) from the OR of flags sent by the initiator and the responder."""
    return np.asarray([st.value for st in _STATES], dtype=object)[tcp_state_codes(fwd, rev, pkts_in)]


def _ipv4_bytes(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dotted-quad text of 32-bit addresses as a (n, 16) byte matrix and each row's length,
    built in numpy (no Python per address)."""
    n = len(v)
    v = v.astype(np.int64)
    buf = np.zeros((n, 16), dtype=np.uint8)
    rows = np.arange(n)
    pos = np.zeros(n, dtype=np.int64)
    for shift in (24, 16, 8, 0):
        octet = (v >> shift) & 255
        for digit, shown in ((octet // 100, octet >= 100), ((octet // 10) % 10, octet >= 10)):
            buf[rows[shown], pos[shown]] = 48 + digit[shown]
            pos += shown
        buf[rows, pos] = 48 + octet % 10
        pos += 1
        if shift:
            buf[rows, pos] = 46  # "."
            pos += 1
    return buf, pos


def ipv4_text(v: np.ndarray) -> pa.StringArray:
    """Dotted-quad text of 32-bit addresses as an Arrow string array (its buffers built in numpy)."""
    buf, length = _ipv4_bytes(v)
    data = buf[np.arange(16) < length[:, None]]  # row-major: each row's text, in order
    offsets = np.concatenate([[0], np.cumsum(length)]).astype(np.int32)
    return pa.StringArray.from_buffers(len(v), pa.py_buffer(offsets), pa.py_buffer(data))


def _take_text(codes: np.ndarray, text: pa.Array) -> pa.Array:
    """``text[codes]`` as a plain string array (one C-level cast of a dictionary array)."""
    codes = np.asarray(codes, dtype=np.int32)
    return pa.DictionaryArray.from_arrays(pa.array(codes), text).cast(pa.string())


def arrow_ip_strings(hi: np.ndarray, lo: np.ndarray) -> pa.Array:
    """Text addresses from the (hi, lo) halves as an Arrow string array; each distinct
    address converted once (IPv4 without any Python per address)."""
    v4 = (hi == 0) & ((lo >> np.uint64(32)) == np.uint64(0xFFFF))
    if v4.all():
        codes, uniq = pd.factorize(lo & np.uint64(0xFFFFFFFF))
        return _take_text(codes, ipv4_text(np.asarray(uniq)))
    out = np.empty(len(hi), dtype=object)
    if v4.any():
        codes, uniq = pd.factorize(lo[v4] & np.uint64(0xFFFFFFFF))
        out[v4] = np.asarray(ipv4_text(np.asarray(uniq)).to_pylist(), dtype=object)[codes]
    idx = np.flatnonzero(~v4)
    pairs = pd.MultiIndex.from_arrays([hi[idx], lo[idx]])
    codes6, uniq6 = pd.factorize(pairs)
    text6 = [str(ipaddress.IPv6Address((int(h) << 64) | int(low))) for h, low in uniq6]
    out[idx] = np.asarray(text6, dtype=object)[codes6]
    return pa.array(out, type=pa.string())


def ip_strings(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Text addresses from the (hi, lo) halves, as an object array."""
    return np.asarray(arrow_ip_strings(hi, lo).to_pylist(), dtype=object)


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
_SLOT_FIELDS: dict[str, type | np.dtype] = {
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
    "close_ts": np.float64,  # when the second FIN was seen; NaN until then
    "emitted": np.int64,  # records emitted so far
    "tunnel": np.int64,  # overlay the flow's first packet came in (index into decode.TUNNELS)
    "o_src_hi": np.uint64,  # that packet's outer addresses (0 when not tunnelled)
    "o_src_lo": np.uint64,
    "o_dst_hi": np.uint64,
    "o_dst_lo": np.uint64,
    "icmp": np.int64,  # ICMP type << 8 | code of the flow's first packet
    "cid": np.dtype(f"S{ID_LEN}"),  # Community ID, computed at the flow's first record
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
        self._index: dict[int, int] = {}  # key hash -> slot
        self._exact: dict[bytes, int] = {}  # full key -> slot, for flows whose hash was taken
        self._key = np.zeros((0, 5), dtype=np.uint64)  # canonical key per slot
        self._hash = np.zeros(0, dtype=np.uint64)  # its hash
        self._next_uid = 1
        self._tick: int | None = None
        self.evicted = 0
        self.records_emitted = 0
        self.ended_silently = 0  # flows that ended with nothing new since their last record
        self._ended: list[np.ndarray] = []
        self.last_uids = np.zeros(0, dtype=np.int64)  # per packet of the last batch (-1: not metered)

    # ------------------------------------------------------------------ public

    def __len__(self) -> int:
        return len(self._index) + len(self._exact)

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
        return self._frames(out)

    def open_uids(self) -> np.ndarray:
        """Uids of the flows still open."""
        return self._s["uid"][self._used]

    def take_ended(self) -> np.ndarray:
        """Uids of the flows that ended since the last call, with or without a final record
        (so that per-flow state kept beside the table, such as names, can be let go)."""
        out = np.concatenate(self._ended) if self._ended else np.zeros(0, dtype=np.int64)
        self._ended = []
        return out

    def advance(self, now: float) -> list[pd.DataFrame]:
        """Let time pass without packets (live capture): sweep at the tick containing ``now``."""
        t = int(np.floor(now / self.cfg.tick_s))
        if self._tick is not None and t <= self._tick:
            return []
        self._tick = t
        return self._frames(list(self._sweep(t * self.cfg.tick_s)))

    def flush(self) -> pd.DataFrame:
        """End every open flow (end of file, SIGTERM)."""
        slots = np.flatnonzero(self._used)
        frames = self._frames([self._end(slots, _EOC)])
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
        khash = np.zeros(cap, dtype=np.uint64)
        khash[: self._cap] = self._hash
        self._free.extend(range(cap - 1, self._cap - 1, -1))
        self._used, self._key, self._hash, self._cap = used, key, khash, cap

    def _alloc(self, n: int) -> np.ndarray:
        if len(self._free) < n:
            self._grow(self._cap + n - len(self._free))
        slots = np.asarray(self._free[-n:][::-1], dtype=np.int64) if n else np.zeros(0, np.int64)
        del self._free[len(self._free) - n :]
        return slots

    def _release(self, slots: np.ndarray) -> None:
        if len(slots) == 0:
            return
        self._ended.append(self._s["uid"][slots].copy())
        index = self._index
        if not self._exact:  # every open flow is indexed by its hash: drop them in C
            collections.deque(map(index.pop, self._hash[slots].tolist()), maxlen=0)
        else:
            for h, slot in zip(self._hash[slots].tolist(), slots.tolist(), strict=True):
                if index.get(h) == slot:
                    del index[h]
                else:
                    del self._exact[_key_bytes(self._key[slot : slot + 1])[0]]
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
        collided = not (key == key[first][codes]).all()
        if collided:  # a 64-bit hash collision in this tick: group exactly
            _, first, codes = np.unique(key, axis=0, return_index=True, return_inverse=True)
            codes = codes.ravel().astype(np.int64)
        g = len(first)
        gkey = np.ascontiguousarray(key[first])
        ghash = h[first]
        hashes = ghash.tolist()
        slot = np.fromiter(map(self._index.get, hashes, itertools.repeat(-1)), dtype=np.int64, count=g)
        found = slot >= 0
        # The hash's slot must hold this very key; otherwise (or when the hash is not unique
        # in this tick, or flows were indexed by their full key) look the full key up.
        slow = np.zeros(g, dtype=bool)
        slow[found] = ~(self._key[slot[found]] == gkey[found]).all(axis=1)
        if collided:
            slow |= pd.Series(ghash).duplicated(keep=False).to_numpy()
        if self._exact:
            slow |= ~found
        if slow.any():
            for i in np.flatnonzero(slow).tolist():
                slot[i] = self._exact.get(_key_bytes(gkey[i : i + 1])[0], -1)
                hs = self._index.get(hashes[i], -1)
                if slot[i] < 0 and hs >= 0 and (self._key[hs] == gkey[i]).all():
                    slot[i] = hs
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
            s["close_ts"][ns] = np.nan
            for k in ("bytes_out", "bytes_in", "pkts_out", "pkts_in", "pkts_in_total", "fl_fwd", "fl_rev"):
                s[k][ns] = 0
            s["emitted"][ns] = 0
            fp = idx[first[new]]  # the flow's first packet: its overlay, if any
            s["tunnel"][ns] = d.tunnel[fp]
            s["o_src_hi"][ns], s["o_src_lo"][ns] = d.outer_src_hi[fp], d.outer_src_lo[fp]
            s["o_dst_hi"][ns], s["o_dst_lo"][ns] = d.outer_dst_hi[fp], d.outer_dst_lo[fp]
            s["icmp"][ns] = d.icmp[fp]
            s["cid"][ns] = b""  # named at its first record (a freed slot keeps its last flow's)
            s["uid"][ns] = np.arange(self._next_uid, self._next_uid + len(ns))
            self._next_uid += len(ns)
            self._used[ns] = True
            self._key[ns] = fk
            self._hash[ns] = ghash[new]
            by_hash = ~slow[new]
            self._index.update(zip(ghash[new][by_hash].tolist(), ns[by_hash].tolist(), strict=True))
            for i, slot_i in zip(np.flatnonzero(~by_hash).tolist(), ns[~by_hash].tolist(), strict=True):
                h_i = int(ghash[new][i])
                if h_i not in self._index:
                    self._index[h_i] = slot_i
                else:
                    self._exact[_key_bytes(fk[i : i + 1])[0]] = slot_i
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
        prior_fwd, prior_rev = s["fl_fwd"][slot], s["fl_rev"][slot]  # copies (fancy indexing)
        s["fl_fwd"][slot] |= fl_f
        s["fl_rev"][slot] |= fl_r
        s["first_ts"][slot] = np.minimum(s["first_ts"][slot], tmin)
        s["last_ts"][slot] = np.maximum(s["last_ts"][slot], tmax)
        s["period_ts"][slot] = np.fmin(s["period_ts"][slot], tmin)
        # When the flow closed: the time of the packet that completed both FINs.
        fin_f = np.full(g, np.inf)
        fin_r = np.full(g, np.inf)
        has_fin = (flags & FIN) != 0
        np.minimum.at(fin_f, codes[has_fin & fwd], ts[has_fin & fwd])
        np.minimum.at(fin_r, codes[has_fin & ~fwd], ts[has_fin & ~fwd])
        fin_f = np.where((prior_fwd & FIN) != 0, -np.inf, fin_f)
        fin_r = np.where((prior_rev & FIN) != 0, -np.inf, fin_r)
        closed_at = np.maximum(fin_f, fin_r)
        closing = np.isfinite(closed_at) & np.isnan(s["close_ts"][slot])
        s["close_ts"][slot[closing]] = closed_at[closing]
        return s["uid"][slot][codes]

    def _sweep(self, now: float) -> Iterator[dict[str, np.ndarray]]:
        used = np.flatnonzero(self._used)
        if len(used) == 0:
            return
        s, cfg = self._s, self.cfg
        fwd, rev = s["fl_fwd"][used], s["fl_rev"][used]
        tcp = s["proto"][used] == TCP
        rst = tcp & (((fwd | rev) & RST) != 0)
        closing = tcp & ~np.isnan(s["close_ts"][used])
        fin = closing & ~rst & (now - s["close_ts"][used] >= cfg.fin_grace_s)
        idle = now - s["last_ts"][used] > cfg.idle_timeout_s
        end = rst | fin | idle
        reason = np.where(rst, _RST, np.where(fin, _FIN, _IDLE))
        for code in (_RST, _FIN, _IDLE):
            yield self._end(used[end & (reason == code)], code)
        keep = ~end
        rest, fwd, rev, tcp, closing = used[keep], fwd[keep], rev[keep], tcp[keep], closing[keep]
        emitted = s["emitted"][rest]
        syn_waiting = (
            tcp
            & ((fwd & SYN) != 0)
            & ((rev & (SYN | ACK)) != (SYN | ACK))
            & (now - s["first_ts"][rest] < cfg.handshake_wait_s)
        )
        first_sight = (emitted == 0) & ~closing & ~syn_waiting
        active = (emitted > 0) & (now - s["period_ts"][rest] >= cfg.active_timeout_s)  # NaN: False
        yield self._emit(rest[first_sight | active], final=False, reason=_ACTIVE)

    def _evict(self) -> Iterator[dict[str, np.ndarray]]:
        excess = len(self) - self.cfg.max_flows
        if excess <= 0:
            return
        used = np.flatnonzero(self._used)
        last = self._s["last_ts"][used]
        oldest = used[np.argsort(last, kind="stable")[:excess]]
        self.evicted += len(oldest)
        yield self._end(oldest, _EVICTED)

    def _end(self, slots: np.ndarray, reason: int) -> dict[str, np.ndarray]:
        """End the flows in ``slots``: a final record for each that carried packets since its
        last record (or never had one), then free their slots."""
        if len(slots) == 0:
            return {}
        s = self._s
        news = (s["pkts_out"][slots] + s["pkts_in"][slots] > 0) | (s["emitted"][slots] == 0)
        self.ended_silently += int((~news).sum())
        block = self._emit(slots[news], final=True, reason=reason)
        self._release(slots)
        return block

    def _emit(self, slots: np.ndarray, *, final: bool, reason: int) -> dict[str, np.ndarray]:
        """Raw record columns for ``slots``; an interim record resets the deltas (the caller
        of a final one frees the slots)."""
        if len(slots) == 0:
            return {}
        block = {k: v[slots] for k, v in self._s.items()}
        block["slot"] = slots
        block["final"] = np.full(len(slots), final)
        block["first"] = block["emitted"] == 0
        block["end_reason"] = np.full(len(slots), reason, dtype=np.int64)
        self.records_emitted += len(slots)
        self._s["emitted"][slots] += 1
        if not final:
            for k in ("bytes_out", "bytes_in", "pkts_out", "pkts_in"):
                self._s[k][slots] = 0
            self._s["period_ts"][slots] = np.nan
        return block

    def _frames(self, blocks: list[dict[str, np.ndarray]]) -> list[pd.DataFrame]:
        """Record frames from raw blocks, each flow's Community ID filled in (see :meth:`_name`)."""
        blocks = [b for b in blocks if b]
        if not blocks:
            return []
        s = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
        self._name(s)
        return [_frame(s, self.cfg.node)]

    def _name(self, s: dict[str, np.ndarray]) -> None:
        """Fill in the Community ID of the records whose flow has none yet, once per flow.

        Hashed here, for every record of a batch at once, rather than in each tick's sweep
        (hundreds of small calls); kept in the flow's slot for its later records, unless the
        slot has been freed (the flow ended) or taken by another flow since.
        """
        need = np.flatnonzero(s["cid"] == b"")
        if len(need) == 0:
            return
        codes, uids = pd.factorize(s["uid"][need])
        codes = codes.astype(np.int64)
        prev_max = np.maximum.accumulate(np.concatenate([[-1], codes[:-1]]))
        one = need[np.flatnonzero(codes > prev_max)]  # one record per flow, in code order
        proto = s["proto"][one]
        icmp = (proto == ICMP) | (proto == ICMPV6)
        kind = s["icmp"][one]
        ids = community_ids(
            s["i_hi"][one],
            s["i_lo"][one],
            s["r_hi"][one],
            s["r_lo"][one],
            proto,
            np.where(icmp, kind >> 8, s["i_port"][one]),
            np.where(icmp, kind & 0xFF, s["r_port"][one]),
            seed=self.cfg.community_id_seed,
        )
        s["cid"][need] = ids[codes]
        slot = s["slot"][one]
        same = self._used[slot] & (self._s["uid"][slot] == np.asarray(uids))
        self._s["cid"][slot[same]] = ids[same]


def _frame(s: dict[str, np.ndarray], node: str) -> pd.DataFrame:
    """One record frame (FLOW_SCHEMA + ``uid``) from the concatenated raw blocks: the only
    per-record pandas work."""
    n = len(s["uid"])
    proto = s["proto"]
    state = np.full(n, _CODE[FlowState.OTHER], dtype=np.int8)
    tcp = proto == TCP
    state[tcp] = tcp_state_codes(s["fl_fwd"][tcp], s["fl_rev"][tcp], s["pkts_in_total"][tcp])
    state[proto == UDP] = _CODE[FlowState.UDP]
    state[(proto == ICMP) | (proto == ICMPV6)] = _CODE[FlowState.ICMP]
    ts_end = s["last_ts"]
    ts_start = np.where(np.isnan(s["period_ts"]), ts_end, s["period_ts"])
    # Text columns as Arrow arrays built from codes (pandas' str dtype is Arrow-backed): no
    # Python string per record.
    zeros = np.zeros(n, dtype=np.int32)
    empty = _text(_take_text(zeros, pa.array([""])))
    cols: dict[str, object] = {
        "ts_start": ts_start,
        "ts_end": ts_end,
        "node": _text(_take_text(zeros, pa.array([node]))),
        "src_ip": _text(arrow_ip_strings(s["i_hi"], s["i_lo"])),
        "src_port": s["i_port"].astype(np.int32),
        "dst_ip": _text(arrow_ip_strings(s["r_hi"], s["r_lo"])),
        "dst_port": s["r_port"].astype(np.int32),
        "proto": proto.astype(np.int16),
        "bytes_out": s["bytes_out"],
        "bytes_in": s["bytes_in"],
        "pkts_out": s["pkts_out"],
        "pkts_in": s["pkts_in"],
        "tcp_flags": (s["fl_fwd"] | s["fl_rev"]).astype(np.int16),
        "state": _text(_take_text(state, _STATE_TEXT)),
        "dns_qname": empty,
        "dns_rcode": np.full(n, -1, dtype=np.int16),
        "server_name": empty,
        "final": s["final"],
        "first": s["first"],
        "end_reason": _text(_take_text(s["end_reason"], _END_TEXT)),
        "tunnel": _text(_take_text(s["tunnel"], pa.array(list(TUNNELS), type=pa.string()))),
        "outer_src_ip": _outer_ips(s["tunnel"], s["o_src_hi"], s["o_src_lo"]),
        "outer_dst_ip": _outer_ips(s["tunnel"], s["o_dst_hi"], s["o_dst_lo"]),
        "community_id": _text(_fixed_width_text(s["cid"])),
    }
    for c in FLOW_COLUMNS:
        if c not in cols:
            dtype = FLOW_SCHEMA[c]
            cols[c] = empty if dtype == "str" else np.full(n, FLOW_DEFAULTS[c], dtype=dtype)
    df = pd.DataFrame({c: cols[c] for c in FLOW_COLUMNS})
    df["uid"] = s["uid"]
    return df


def _fixed_width_text(values: np.ndarray) -> pa.StringArray:
    """An ``S<w>`` array (every item exactly w ASCII bytes) as Arrow strings, without copies per item."""
    width = values.dtype.itemsize
    offsets = np.arange(0, (len(values) + 1) * width, width, dtype=np.int32)
    data = np.ascontiguousarray(values).view(np.uint8)
    return pa.StringArray.from_buffers(len(values), pa.py_buffer(offsets), pa.py_buffer(data))


def _text(values: pa.Array) -> pd.api.extensions.ExtensionArray:
    return pd.array(values, dtype="str")


def _outer_ips(tunnel: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """Outer addresses of tunnelled flows as text ("" for the others)."""
    t = tunnel != 0
    if not t.any():
        return _text(_take_text(np.zeros(len(tunnel), dtype=np.int32), pa.array([""])))
    out = np.full(len(tunnel), "", dtype=object)
    out[t] = ip_strings(hi[t], lo[t])
    return pd.array(out, dtype="str")


_EMPTY = conform_flows(pd.DataFrame({c: [] for c in FLOW_COLUMNS})).assign(uid=np.zeros(0, dtype=np.int64))
