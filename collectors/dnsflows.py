"""DNS aggregates per flow record: every message of a flow folded, emitted, reset.

A tunnel (iodine, dnscat2) sends hundreds of queries through one UDP 5-tuple, so the
record must carry what its queries looked like, not just the first name. State is one
small accumulator per flow uid with DNS traffic; a record takes the messages of its own
period (timestamps up to its ``ts_end``: the flow table closes a record's period at a tick
boundary, so a later packet of the flow has a later timestamp) and the accumulator starts
again; a final record, or the flow table's word that a flow ended, drops it.

Per-name figures (length, label entropy, registered domain) are taken once per distinct
name of a record, from :func:`flowwarden.dnsnames.label_stats` (cached per name). A batch's
messages are folded per (flow, record) group, so the Python work is per group and per new
name, not per message: a busy resolver flow repeats a handful of names.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from flowwarden.collectors.dnsparse import RCODE_NXDOMAIN, DnsBatch, qtype_name
from flowwarden.dnsnames import label_stats

MAX_ANSWERS = 16  # distinct answer addresses a record lists

# Record columns this module fills, with their dtypes (FLOW_SCHEMA's).
COLUMNS: dict[str, str] = {
    "dns_qname": "str",
    "dns_rcode": "int16",
    "dns_queries": "int32",
    "dns_names": "int32",
    "dns_name_max_len": "int16",
    "dns_name_mean_len": "float64",
    "dns_label_entropy": "float64",
    "dns_top_domain": "str",
    "dns_top_domain_names": "int32",
    "dns_qtypes": "str",
    "dns_nxdomain": "int32",
    "dns_answers": "str",
    "dns_answer_ttl": "int32",
    "dns_rtt_n": "int32",
    "dns_rtt_mean_ms": "float64",
    "dns_rtt_max_ms": "float64",
}
MAX_PENDING = 64  # unanswered queries a flow remembers (by ID) to time their responses


# (message indices in packet order, queries, NXDOMAIN responses, first query with a name,
# first response, first response with a name (indices, -1: none), smallest answer TTL
# (-1: none), whether any message has answers).
_Group = tuple[list[int], int, int, int, int, int, int, bool]

_STATS: dict[str, tuple[int, float, str]] = {}  # normalized name -> label_stats (per-batch hot path)
STATS_CACHE = 65_536


def _name_stats(key: str) -> tuple[int, float, str]:
    if len(_STATS) >= STATS_CACHE:
        _STATS.clear()  # a tunnel makes every name new: start again rather than grow
    st = _STATS[key] = label_stats(key)
    return st


@dataclass(slots=True)
class _Acc:
    """One flow's DNS since its previous record."""

    queries: int = 0
    first_query: str = ""
    first_answer_name: str = ""
    rcode: int = -1
    nxdomain: int = 0
    names: set[str] = field(default_factory=set)
    max_len: int = 0
    sum_len: int = 0
    sum_ent: float = 0.0
    domains: Counter[str] = field(default_factory=Counter)
    qtypes: set[int] = field(default_factory=set)
    answers: dict[str, None] = field(default_factory=dict)
    ttl: int = -1
    # Resolution time: a response's timestamp minus its query's (same flow, same DNS ID).
    # Queries still unanswered at a record move on to the flow's next one.
    pending: dict[int, float] = field(default_factory=dict)
    rtt_n: int = 0
    rtt_sum: float = 0.0
    rtt_max: float = 0.0

    def fold(self, b: _Lists, g: _Group) -> None:
        """Fold one group of a batch's messages (see :meth:`DnsFlows._groups`)."""
        idx, queries, nxdomain, first_q, first_r, first_named_r, ttl, answered = g
        self.queries += queries
        self.nxdomain += nxdomain
        if first_q >= 0 and not self.first_query:
            self.first_query = b.qname[first_q]
        if first_r >= 0 and self.rcode < 0:
            self.rcode = b.rcode[first_r]
        if first_named_r >= 0 and not self.first_answer_name:
            self.first_answer_name = b.qname[first_named_r]
        qt = b.qtype
        self.qtypes.update([qt[i] for i in idx])
        keys = b.qkey
        # In message order (a set's order changes with the process's hash seed): the first
        # domain seen wins a tie for the top domain, on every run.
        seen = self.names
        new = [k for k in dict.fromkeys(keys[i] for i in idx) if k and k not in seen]
        if new:
            self.names.update(new)
            get = _STATS.get
            for key in new:
                st = get(key)
                if st is None:
                    st = _name_stats(key)
                length, ent, reg = st
                if length > self.max_len:
                    self.max_len = length
                self.sum_len += length
                self.sum_ent += ent
                self.domains[reg] += 1
        self._time(b, idx)
        if answered:
            self.ttl = ttl if self.ttl < 0 else min(self.ttl, ttl)
            lo, hi = b.ans_lo, b.ans_hi
            ans = self.answers
            for i in idx:
                for a in b.addrs[lo[i] : hi[i]]:
                    if len(ans) >= MAX_ANSWERS:
                        break
                    ans[a] = None

    def _time(self, b: _Lists, idx: list[int]) -> None:
        """Pair responses with their queries by DNS ID; a retransmitted query restarts its clock."""
        txid, resp, ts, pending = b.txid, b.response, b.ts, self.pending
        for i in idx:
            t = txid[i]
            if t < 0:
                continue
            if not resp[i]:
                if len(pending) >= MAX_PENDING and t not in pending:
                    del pending[next(iter(pending))]  # the oldest: its answer is not coming
                pending[t] = ts[i]
                continue
            sent = pending.pop(t, None)
            if sent is not None and ts[i] >= sent:
                ms = (ts[i] - sent) * 1000.0
                self.rtt_n += 1
                self.rtt_sum += ms
                if ms > self.rtt_max:
                    self.rtt_max = ms

    def carry(self) -> _Acc | None:
        """What the flow's next record inherits: the queries still waiting for an answer."""
        return _Acc(pending=self.pending) if self.pending else None

    def row(self) -> tuple[object, ...]:
        """The record's values, in :data:`COLUMNS` order."""
        n = len(self.names)
        top, top_n = "", 0
        for reg, count in self.domains.items():  # the first seen wins a tie
            if count > top_n:
                top, top_n = reg, count
        qtypes = sorted(qtype_name(t) for t in self.qtypes if t >= 0)
        return (
            self.first_query or self.first_answer_name,
            self.rcode,
            self.queries,
            n,
            min(self.max_len, 32767),
            self.sum_len / n if n else 0.0,
            self.sum_ent / n if n else 0.0,
            top,
            top_n,
            ",".join(qtypes),
            self.nxdomain,
            ",".join(self.answers),
            self.ttl,
            self.rtt_n,
            self.rtt_sum / self.rtt_n if self.rtt_n else 0.0,
            self.rtt_max,
        )


class _Lists:
    """A :class:`DnsBatch`'s columns as Python lists: the group folds index them one by one."""

    __slots__ = (
        "addrs",
        "ans_hi",
        "ans_lo",
        "qkey",
        "qname",
        "qtype",
        "rcode",
        "response",
        "ts",
        "ttl",
        "txid",
    )

    def __init__(self, b: DnsBatch, ts: np.ndarray) -> None:
        self.txid: list[int] = b.txid.tolist() if len(b.txid) == len(b) else [-1] * len(b)
        self.ts: list[float] = np.asarray(ts, dtype=np.float64).tolist()
        self.response: list[bool] = b.response.tolist()
        self.rcode: list[int] = b.rcode.tolist()
        self.qtype: list[int] = b.qtype.tolist()
        self.ttl: list[int] = b.ttl.tolist()
        self.ans_lo: list[int] = b.ans_lo.tolist()
        self.ans_hi: list[int] = b.ans_hi.tolist()
        self.qname = b.qname
        self.qkey = b.qkey
        self.addrs = b.addrs


class DnsFlows:
    """Per-flow-uid DNS accumulators; see the module docstring."""

    def __init__(self) -> None:
        self._acc: dict[int, _Acc] = {}

    def __len__(self) -> int:
        return len(self._acc)

    def join(
        self,
        records: list[pd.DataFrame],
        uids: np.ndarray | None = None,
        ts: np.ndarray | None = None,
        batch: DnsBatch | None = None,
    ) -> list[pd.DataFrame]:
        """Fold a batch's messages and fill the DNS columns of the records it caused.

        ``records`` are the frames the same batch caused (each with ``uid``, ``ts_end``,
        ``final``); ``uids``/``ts`` give each message's flow and time. A message goes to
        its flow's first record in this batch whose ``ts_end`` is not before it (or that
        is final); messages after every such record open the flow's next period.
        """
        frames = [r for r in records if len(r)]
        df = None
        if frames:
            df = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        if df is not None:
            rec_uid = df["uid"].to_numpy().astype(np.int64)
            rec_end = df["ts_end"].to_numpy().astype(np.float64)
            rec_final = df["final"].to_numpy().astype(bool)
        else:
            rec_uid = np.zeros(0, dtype=np.int64)
            rec_end = np.zeros(0)
            rec_final = np.zeros(0, dtype=bool)
        # Records by (uid, ts_end); each record's rank among its flow's records here.
        rorder = np.lexsort((rec_end, rec_uid))
        su, se, sf = rec_uid[rorder], rec_end[rorder], rec_final[rorder]
        groups: dict[tuple[int, int], _Group] = {}
        if batch is not None and len(batch):
            assert uids is not None and ts is not None
            groups = self._groups(batch, uids.astype(np.int64), ts, su, se, sf)
        lists = _Lists(batch, ts) if batch is not None and ts is not None and groups else None
        acc = self._acc
        values: list[tuple[object, ...]] = []
        rows: list[int] = []
        # Records of flows with DNS, in (uid, ts_end) order: fold each one's messages, emit,
        # start again. Only those flows' records are visited (all of a flow's, for the rank).
        in_batch = {u for u, _ in groups}
        visit = [(j, u) for j, u in enumerate(su.tolist()) if u in acc or u in in_batch]
        prev_uid, rank = -1, 0
        for j, u in visit:
            rank = rank + 1 if u == prev_uid else 0
            prev_uid = u
            g = groups.pop((u, rank), None)
            a = acc.pop(u, None)
            if a is None and g is None:
                continue
            a = a or _Acc()
            if g is not None:
                assert lists is not None
                a.fold(lists, g)
            values.append(a.row())
            rows.append(int(rorder[j]))
            if not sf[j] and (rest := a.carry()) is not None:
                acc[u] = rest
        for (u, _), g in groups.items():  # messages after the flow's last record here
            assert lists is not None
            a = acc.get(u)
            if a is None:
                a = acc[u] = _Acc()
            a.fold(lists, g)
        if not rows or df is None:
            return records
        df = df.copy() if len(frames) == 1 else df
        idx = np.asarray(rows, dtype=np.int64)
        for j, (col, dtype) in enumerate(COLUMNS.items()):
            column = [v[j] for v in values]
            if dtype == "str":
                if not any(column):
                    continue  # the flow table wrote "" already; rebuilding a text column is not free
                arr = df[col].to_numpy(dtype=object).copy()
                arr[idx] = np.asarray(column, dtype=object)
                df[col] = pd.array(arr, dtype="str")
            else:
                arr = df[col].to_numpy().astype(dtype, copy=True)
                arr[idx] = np.asarray(column, dtype=dtype)
                df[col] = arr
        return [df]

    @staticmethod
    def _groups(
        b: DnsBatch, uids: np.ndarray, ts: np.ndarray, su: np.ndarray, se: np.ndarray, sf: np.ndarray
    ) -> dict[tuple[int, int], _Group]:
        """Messages grouped by (flow uid, rank of the record they belong to), with per-group
        counts, first indices and smallest TTL taken with numpy (the fold is then per group).

        Rank r < (records of the flow here) is that record; rank == that count is the
        period after them. Vectorised but for flows with two or more records in one batch.
        """
        n = len(uids)
        lo = np.searchsorted(su, uids, side="left")
        cnt = np.searchsorted(su, uids, side="right") - lo
        rank = np.zeros(n, dtype=np.int64)
        one = cnt == 1
        if one.any():
            j = lo[one]
            rank[one] = (ts[one] > se[j]) & ~sf[j]
        for i in np.flatnonzero(cnt > 1).tolist():  # rare: several records of one flow in a batch
            r = 0
            for j in range(int(lo[i]), int(lo[i] + cnt[i])):
                if sf[j] or ts[i] <= se[j]:
                    break
                r += 1
            rank[i] = r
        order = np.lexsort((np.arange(n), rank, uids))
        ou, orank = uids[order], rank[order]
        cut = np.flatnonzero((np.diff(ou) != 0) | (np.diff(orank) != 0)) + 1
        starts = np.concatenate([[0], cut])
        ends = np.concatenate([cut, [n]])
        resp = b.response[order]
        named = np.fromiter((k != "" for k in b.qkey), dtype=bool, count=n)[order]
        q_sum = np.add.reduceat((~resp).astype(np.int64), starts)
        nx_sum = np.add.reduceat((resp & (b.rcode[order] == RCODE_NXDOMAIN)).astype(np.int64), starts)
        at = np.arange(n)

        def first(mask: np.ndarray) -> list[int]:
            pos = np.minimum.reduceat(np.where(mask, at, n), starts)
            return np.where(pos < n, order[np.minimum(pos, n - 1)], -1).tolist()

        ttl = b.ttl[order]
        big = np.iinfo(np.int64).max
        ttl_min = np.minimum.reduceat(np.where(ttl >= 0, ttl, big), starts)
        answered = np.add.reduceat((b.ans_hi > b.ans_lo)[order].astype(np.int64), starts) > 0
        out: dict[tuple[int, int], _Group] = {}
        olist = order.tolist()
        for a, z, u, r, q, x, fq, fr, fnr, t, w in zip(
            starts.tolist(),
            ends.tolist(),
            ou[starts].tolist(),
            orank[starts].tolist(),
            q_sum.tolist(),
            nx_sum.tolist(),
            first(~resp & named),
            first(resp),
            first(resp & named),
            np.where(ttl_min == big, -1, ttl_min).tolist(),
            answered.tolist(),
            strict=True,
        ):
            out[(u, r)] = (olist[a:z], q, x, fq, fr, fnr, t, w)
        return out

    def forget(self, uids: np.ndarray) -> None:
        """Drop the state of flows that ended (their last record, if any, is out)."""
        pop = self._acc.pop
        for u in uids.tolist():
            pop(u, None)

    def keep_only(self, open_uids: np.ndarray) -> None:
        """Drop the state of every flow not in ``open_uids`` (a bound, should a flow's end go unseen)."""
        live = set(open_uids.tolist())
        self._acc = {u: a for u, a in self._acc.items() if u in live}
