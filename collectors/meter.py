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

from collectors.decode import APP_NONE, cause_counts, decode
from collectors.flowtable import FlowTable, FlowTableConfig
from collectors.pcapfile import PacketBatch
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
            self._keep_candidates(batch, dec.app, dec.l3)
        return records

    def _keep_candidates(self, batch: PacketBatch, app: np.ndarray, l3: np.ndarray) -> None:
        idx = np.flatnonzero((app != APP_NONE) & (self.table.last_uids >= 0))
        if len(idx) == 0:
            return
        raw = batch.buf
        ends = (batch.off + batch.caplen)[idx]
        starts = l3[idx]
        head = (starts - batch.off[idx])
        c = self.candidates
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            c.packets.append(raw[s:e].tobytes())
        c.wirelen.extend((batch.wirelen[idx] - head).tolist())
        c.ts.extend(batch.ts[idx].tolist())
        c.uids.extend(self.table.last_uids[idx].tolist())
