"""A flow to an address or name that a threat feed lists (:mod:`flowwarden.feeds`).

Catches: connections to a listed address or CIDR (Spamhaus DROP, Feodo Tracker C2s, your
own blocklist), DNS queries for a listed domain or any name below it, TLS SNI / HTTP Host
naming one, and connections to the addresses the pod's DNS answers gave for a listed name
(the C2 behind a fast-flux domain is caught by name even when no feed lists its address).
Must not flag: anything when no feed is loaded.

The evidence names the feed and the entry of every hit. A DNS query names no blockable
target (its destination is the resolver): it alerts, but only connections to listed
destinations become the alert's targets, so an enforcement block never hits the cluster DNS.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any

import numpy as np
import pandas as pd

from flowwarden.feeds import FeedSet
from flowwarden.kube import PodInventory
from flowwarden.pipeline.detection.detectors.base import DETECTORS
from flowwarden.pipeline.detection.detectors.flow_rules import (
    DnsCache,
    Findings,
    FlowRuleDetector,
    entity_keys_of,
    taken,
)
from flowwarden.plugins import Interval
from flowwarden.policy_match import BatchCodes
from flowwarden.records import Direction
from flowwarden.settings import Settings

MAX_EVIDENCE = 10
MAX_CACHED = 200_000  # distinct destination addresses whose verdict is kept across batches
_ENTITY = ("src_pod", "src_namespace", "src_ip")  # what a finding's entity is made from


@DETECTORS.register("threat_feed")
class ThreatFeed(FlowRuleDetector):
    name = "threat_feed"
    kind = "exfiltration"
    technique = "T1071"
    defaults = {"min_flows": 1.0}
    constraints = {"min_flows": Interval(Integral, 1, None, closed="left")}
    base_score = 0.95
    evidence_key = ("feed", "entry", "matched", "dst_ip")
    tally_column = "feed"  # hits per feed

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.feeds: FeedSet | None = None
        self.feeds_version = ""
        self.dns = DnsCache()  # answers for listed names only
        # Per destination address: listed or not, for the feed set in force. A cluster talks
        # to the same addresses batch after batch; each is searched once, not once per batch.
        self._listed: dict[str, bool] = {}

    def set_feeds(self, feeds: FeedSet | None, version: str = "") -> None:
        """Match against this snapshot from now on (the runtime loads and refreshes feeds)."""
        self.feeds = feeds
        self.feeds_version = version
        self._listed = {}  # verdicts of the previous feeds no longer hold

    def _match_addresses(self, feeds: FeedSet, cols: BatchCodes) -> np.ndarray:
        """Per row: whether a feed lists the destination address; only addresses not seen
        before are searched (parsed once per batch, with the policy's judging)."""
        col = cols.column("dst_ip")
        u = col.uniques.tolist()
        cache = self._listed
        new = [i for i, a in enumerate(u) if a not in cache]
        if new:
            if len(cache) + len(new) > MAX_CACHED:
                cache.clear()
                new = list(range(len(u)))
            found = feeds.addresses.contains(cols.parsed("dst_ip").at(np.array(new, dtype="int64")))
            cache.update(zip([u[i] for i in new], found.tolist(), strict=True))
        listed = np.fromiter((cache[a] for a in u), dtype=bool, count=len(u))
        return listed[col.codes]

    @property
    def wants_flows(self) -> bool:
        return self.feeds is not None and len(self.feeds) > 0

    def find(
        self,
        flows: pd.DataFrame,
        inventory: PodInventory | None,
        settings: Settings,
        codes: BatchCodes | None = None,
    ) -> Findings | None:
        feeds = self.feeds
        if feeds is None:
            return None
        n = len(flows)
        cols = codes.of(flows) if codes is not None else BatchCodes(flows)  # shared with the policy
        by_addr = self._match_addresses(feeds, cols)
        q = cols.column("dns_qname")
        q_hit, _ = feeds.domains.match_codes(q.codes, q.uniques)
        sn_col = cols.column("server_name")
        s_hit, _ = feeds.domains.match_codes(sn_col.codes, sn_col.uniques)
        if q_hit.any():  # remember what listed names resolved to, per pod
            self.dns.grace_s, self.dns.max_rows = settings.rules.dns_grace_s, settings.rules.dns_cache_max
            self.dns.learn(flows[q_hit].reset_index(drop=True))
        # Only listed names' answers are kept, so the cache is mostly empty: then no per-row work.
        resolved = self.dns.resolve(flows).to_numpy(dtype=object) if len(self.dns) else None
        r_hit = resolved != "" if resolved is not None else np.zeros(n, dtype=bool)
        hit = by_addr | q_hit | s_hit | r_hit
        if not hit.any():
            return None
        rows = np.flatnonzero(hit)
        # The hit rows' columns from their arrays (the enriched frame is wide, hits are few).
        dst = taken(flows["dst_ip"], rows)
        qn = taken(flows["dns_qname"], rows)
        sn = taken(flows["server_name"], rows)
        rs = resolved[rows] if resolved is not None else np.full(len(rows), "", dtype=object)
        feed, entry, how = [], [], []
        ip_hits = {a: feeds.address_hit(a) for a in pd.unique(dst[by_addr[rows]])}
        for i in range(len(rows)):
            h = None
            if by_addr[rows[i]]:
                h, m = ip_hits.get(dst[i]), "address"
            elif s_hit[rows[i]]:
                h, m = feeds.name_hit(sn[i]), "server_name"
            elif r_hit[rows[i]]:
                h, m = feeds.name_hit(rs[i]), "resolved"
            else:
                h, m = feeds.name_hit(qn[i]), "dns_query"
            feed.append(h.feed if h else "")
            entry.append(h.entry if h else "")
            how.append(m)
        how_a = np.array(how, dtype=object)
        direction = taken(flows["direction"], rows)
        return Findings(
            {
                "entity": entity_keys_of(*(taken(flows[c], rows) for c in _ENTITY)),
                "direction": direction,
                "ts_start": flows["ts_start"].to_numpy()[rows],
                "ts_end": flows["ts_end"].to_numpy()[rows],
                "dst_ip": dst,
                "dst_port": flows["dst_port"].to_numpy(dtype="int64")[rows],
                "proto": flows["proto"].to_numpy(dtype="int64")[rows],
                "egress": np.asarray(direction == Direction.EGRESS.value, dtype=bool),
                "feed": np.array(feed, dtype=object),
                "entry": np.array(entry, dtype=object),
                "matched": how_a,
                "name": np.where(sn != "", sn, np.where(qn != "", qn, rs)),
                "target": how_a != "dns_query",
            }
        )

    def describe(self, flows: pd.DataFrame) -> dict[str, Any]:
        """The feeds and entries hit, and how (address, DNS query, SNI, resolved name)."""
        rows = self.round_rows(flows)  # distinct by feed, entry, how and destination already
        if not len(rows):
            return {}
        ent = set(flows["dst_ip"].tolist())
        col = {c: self.round_values(c) for c in ("feed", "entry", "matched", "dst_ip", "dst_port", "name")}
        target = self.round_values("target")
        # This window's destinations, and the hits that name none (a DNS query); blockable first.
        sel = [i for i in rows.tolist() if col["dst_ip"][i] in ent or not target[i]]
        sel = [i for i in sel if target[i]] + [i for i in sel if not target[i]]
        items = [
            {
                "feed": str(col["feed"][i]),
                "entry": str(col["entry"][i]),
                "matched": str(col["matched"][i]),
                "destination": str(col["dst_ip"][i]),
                "port": int(col["dst_port"][i]),
                "name": str(col["name"][i]),
            }
            for i in sel[:MAX_EVIDENCE]
        ]
        return {
            "feeds": sorted({i["feed"] for i in items}),
            "hits": items,
            "feeds_version": self.feeds_version,
        }
