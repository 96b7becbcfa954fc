"""The metering path shared by live capture and pcap files: packet batches to flow records.

:class:`Meter` decodes each :class:`~collectors.pcapfile.PacketBatch`, feeds the flow
table, counts what it could not decode (by cause), and keeps the application-layer
candidate packets (DNS, TLS ClientHello, HTTP requests) as raw IP packets for the name
dissector, tagged with the uid of the flow they belong to.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from flowwarden.collectors.decode import APP_DNS, APP_NONE, Decoded, cause_counts, decode
from flowwarden.collectors.flowtable import FlowTable, FlowTableConfig
from flowwarden.collectors.pcapfile import PacketBatch
from flowwarden.settings import CollectorSettings


def table_config(settings: CollectorSettings) -> FlowTableConfig:
    return FlowTableConfig(
        idle_timeout_s=settings.idle_timeout_s,
        active_timeout_s=settings.active_timeout_s,
        max_flows=settings.max_flows,
        node=settings.node,
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
    """Decode + flow table + counters, with no I/O of its own."""

    def __init__(self, settings: CollectorSettings, *, app_names: bool | None = None) -> None:
        self.table = FlowTable(table_config(settings))
        self.app_names = settings.app_names if app_names is None else app_names
        self.packets = 0
        self.bytes = 0
        self.undecoded: Counter[str] = Counter()
        self.candidates = Candidates()
        self._named: dict[int, int] = {}  # flow uid -> bitmask of candidate kinds already kept

    def feed(self, batch: PacketBatch) -> list[pd.DataFrame]:
        """Meter one batch; returns the flow records it caused (with an internal ``uid``)."""
        if len(batch) == 0:
            return []
        dec = decode(batch)
        self.packets += len(batch)
        self.bytes += int(batch.wirelen.sum())
        self.undecoded.update(cause_counts(dec))
        records = self.table.process(dec)
        if self.app_names:
            self._keep_candidates(batch, dec)
        return records

    def _keep_candidates(self, batch: PacketBatch, dec: Decoded) -> None:
        """Keep the first packet of each kind per flow (names fold to the first one anyway).

        Kinds: DNS query, DNS response, TLS ClientHello, HTTP request. A long DNS-over-TCP
        or keep-alive HTTP flow thus costs tshark one or two packets, not all of them.
        """
        uids = self.table.last_uids
        idx = np.flatnonzero((dec.app != APP_NONE) & (uids >= 0))
        if len(idx) == 0:
            return
        kind = dec.app[idx].astype(np.int64) * 2 + ((dec.app[idx] == APP_DNS) & (dec.sport[idx] == 53))
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
