"""The metering path shared by live capture and pcap files: packet batches to flow records.

:class:`Meter` decodes each :class:`~collectors.pcapfile.PacketBatch`, feeds the flow
table and counts what it could not decode (by cause). With names on, it parses every DNS
message itself (:mod:`collectors.dnsparse`) and fills each record's DNS aggregates
(:mod:`collectors.dnsflows`) before returning it, and keeps the TLS ClientHello and HTTP
request candidates as raw IP packets for tshark's name dissector, tagged with the uid of
the flow they belong to.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from flowwarden.collectors.decode import APP_DNS, APP_HTTP, APP_TLS, Decoded, cause_counts, decode
from flowwarden.collectors.dnsflows import DnsFlows
from flowwarden.collectors.dnsparse import HEADER_LEN, PROBLEMS, TRUNCATED, parse_batch, payload_bounds
from flowwarden.collectors.flowtable import FlowTable, FlowTableConfig
from flowwarden.collectors.pcapfile import PacketBatch
from flowwarden.settings import CollectorSettings


def table_config(settings: CollectorSettings) -> FlowTableConfig:
    return FlowTableConfig(
        idle_timeout_s=settings.idle_timeout_s,
        active_timeout_s=settings.active_timeout_s,
        fin_grace_s=settings.fin_grace_s,
        handshake_wait_s=settings.handshake_wait_s,
        max_flows=settings.max_flows,
        node=settings.node,
        community_id_seed=settings.community_id_seed,
    )


@dataclass
class Candidates:
    """Packets that carry application-layer names, as raw IP packets with their flow uid."""

    packets: list[bytes] = field(default_factory=list)
    wirelen: list[int] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    uids: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.uids)

    def take(self) -> Candidates:
        out = Candidates(self.packets, self.wirelen, self.ts, self.uids)
        self.packets, self.wirelen, self.ts, self.uids = [], [], [], []
        return out


class Meter:
    """Decode + flow table + DNS aggregates + counters, with no I/O of its own.

    ``app_names`` keeps TLS/HTTP candidates for tshark; ``dns`` parses every DNS message
    (default: as ``app_names``, so "names off" is the bare metering path).
    """

    def __init__(
        self, settings: CollectorSettings, *, app_names: bool | None = None, dns: bool | None = None
    ) -> None:
        self.table = FlowTable(table_config(settings))
        self.app_names = settings.app_names if app_names is None else app_names
        self.dns = DnsFlows() if (self.app_names if dns is None else dns) else None
        self.packets = 0
        self.bytes = 0
        self.undecoded: Counter[str] = Counter()
        self.dns_messages = 0
        self.dns_problems: Counter[str] = Counter()  # DNS messages not parsed whole, by cause
        self.candidates = Candidates()
        self.last_decoded: Decoded | None = None
        self._named: dict[int, int] = {}  # flow uid -> bitmask of candidate kinds already kept
        self._ended: list[np.ndarray] = []  # uids of ended flows, for take_ended

    def feed(self, batch: PacketBatch) -> list[pd.DataFrame]:
        """Meter one batch; returns the flow records it caused (with an internal ``uid``)."""
        if len(batch) == 0:
            return []
        dec = decode(batch)
        self.packets += len(batch)
        self.bytes += int(batch.wirelen.sum())
        self.undecoded.update(cause_counts(dec))
        self.last_decoded = dec
        records = self.table.process(dec)
        if self.dns is not None:
            records = self._dns_join(batch, dec, records)
        if self.app_names:
            self._keep_candidates(batch, dec)
        self._forget_ended()
        return records

    def advance(self, now: float) -> list[pd.DataFrame]:
        """The flow table's sweep without packets (live capture), DNS aggregates joined."""
        records = self.table.advance(now)
        if self.dns is not None and records:
            records = self.dns.join(records)
        self._forget_ended()
        return records

    def flush(self) -> pd.DataFrame:
        """End every open flow (end of file, SIGTERM), DNS aggregates joined."""
        records = [self.table.flush()]
        if self.dns is not None:
            records = self.dns.join(records)
        self._forget_ended()
        return records[0]

    def _dns_join(self, batch: PacketBatch, dec: Decoded, records: list[pd.DataFrame]) -> list[pd.DataFrame]:
        """Parse every DNS message of the batch and fill the DNS aggregates of its records."""
        assert self.dns is not None
        uids = self.table.last_uids
        idx = np.flatnonzero((dec.app == APP_DNS) & (uids >= 0))
        if len(idx) == 0:
            return self.dns.join(records) if records else records
        start, end = payload_bounds(batch.buf, dec.l3[idx], (batch.off + batch.caplen)[idx], dec.proto[idx])
        has = end > start  # TCP segments without payload (ACKs, handshake) carry no message
        short = has & (end - start < HEADER_LEN)  # not even a header: counted, not a message
        if short.any():
            self.dns_problems[PROBLEMS[TRUNCATED]] += int(short.sum())
        has &= ~short
        idx, start, end = idx[has], start[has], end[has]
        if len(idx) == 0:
            return self.dns.join(records) if records else records
        lo = int(start.min())
        msgs = parse_batch(batch.buf[lo : int(end.max())].tobytes(), start - lo, end - lo)
        self.dns_messages += len(msgs)
        problems = np.bincount(msgs.problem.astype(np.int64), minlength=len(PROBLEMS))
        for cause, count in zip(PROBLEMS[1:], problems[1:].tolist(), strict=True):
            if count:
                self.dns_problems[cause] += count
        return self.dns.join(records, uids[idx], dec.ts[idx], msgs)

    def take_ended(self) -> np.ndarray:
        """Uids of the flows that ended since the last call (for state kept beside the meter,
        such as the name dissector's)."""
        out = np.concatenate(self._ended) if self._ended else np.zeros(0, dtype=np.int64)
        self._ended = []
        return out

    def _forget_ended(self) -> None:
        """Drop per-flow state of flows that ended (the flow table says which)."""
        ended = self.table.take_ended()
        if len(ended):
            self._ended.append(ended)
            if len(self._ended) > 1000:  # nobody takes them: keep the memory bounded
                self._ended = self._ended[-1:]
            if self.dns is not None:
                self.dns.forget(ended)
            pop = self._named.pop
            for u in ended.tolist():
                pop(u, None)
        if self.dns is not None and len(self.dns) > 2 * len(self.table) + 10_000:
            self.dns.keep_only(self.table.open_uids())

    def _keep_candidates(self, batch: PacketBatch, dec: Decoded) -> None:
        """Keep the first packet of each kind per flow (names fold to the first one anyway).

        Kinds: TLS ClientHello, HTTP request (DNS is parsed in :meth:`_dns_join`). A long
        keep-alive HTTP flow thus costs tshark one packet, not all of them.
        """
        uids = self.table.last_uids
        idx = np.flatnonzero(((dec.app == APP_TLS) | (dec.app == APP_HTTP)) & (uids >= 0))
        if len(idx) == 0:
            return
        kind = dec.app[idx].astype(np.int64)
        bit = np.left_shift(1, kind)
        key = uids[idx] * 16 + kind
        _, first = np.unique(key, return_index=True)
        first.sort()
        idx, bit = idx[first], bit[first]
        seen = self._named
        keep = np.fromiter(
            (not (seen.get(u, 0) & b) for u, b in zip(uids[idx].tolist(), bit.tolist(), strict=True)),
            dtype=bool,
            count=len(idx),
        )
        idx, bit = idx[keep], bit[keep]
        if len(idx) == 0:
            return
        for u, b in zip(uids[idx].tolist(), bit.tolist(), strict=True):
            seen[u] = seen.get(u, 0) | b
        if len(seen) > 2 * len(self.table) + 10_000:  # forget flows that have ended
            live = set(self.table.open_uids().tolist())
            self._named = {u: b for u, b in seen.items() if u in live}
        l3 = dec.l3
        raw = batch.buf
        ends = (batch.off + batch.caplen)[idx]
        starts = l3[idx]
        head = starts - batch.off[idx]
        c = self.candidates
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            c.packets.append(raw[s:e].tobytes())
        c.wirelen.extend((batch.wirelen[idx] - head).tolist())
        c.ts.extend(batch.ts[idx].tolist())
        c.uids.extend(self.table.last_uids[idx].tolist())
