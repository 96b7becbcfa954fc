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
from flowwarden.pipeline.detection.detectors.flow_rules import DnsCache, FlowRuleDetector, entity_keys
from flowwarden.plugins import Interval
from flowwarden.records import Direction
from flowwarden.settings import Settings

MAX_EVIDENCE = 10
MAX_CACHED = 200_000  # distinct destination addresses whose verdict is kept across batches


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

    def _match_addresses(self, feeds: FeedSet, addresses: pd.Series) -> np.ndarray:
        """Per row: whether a feed lists the address; only addresses not seen before are searched."""
        codes, uniques = pd.factorize(addresses)
        u = np.asarray(uniques, dtype=object)
        cache = self._listed
        new = [a for a in u.tolist() if a not in cache]
        if new:
            if len(cache) + len(new) > MAX_CACHED:
                cache.clear()
                new = u.tolist()
            cache.update(zip(new, feeds.match_addresses(pd.Series(new, dtype=object)).tolist(), strict=True))
        listed = np.fromiter((cache[a] for a in u.tolist()), dtype=bool, count=len(u))
        listed = np.append(listed, False)  # a missing address (code -1) is never listed
        return listed[np.where(codes < 0, len(u), codes)]

    @property
    def wants_flows(self) -> bool:
        return self.feeds is not None and len(self.feeds) > 0

    def find(
        self, flows: pd.DataFrame, inventory: PodInventory | None, settings: Settings
    ) -> pd.DataFrame | None:
        feeds = self.feeds
        if feeds is None:
            return None
        n = len(flows)
        by_addr = self._match_addresses(feeds, flows["dst_ip"])
        q_hit, _ = feeds.domains.match(flows["dns_qname"])
        s_hit, _ = feeds.domains.match(flows["server_name"])
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
        sub = flows.iloc[rows]
        dst = sub["dst_ip"].to_numpy(dtype=object)
        qn = sub["dns_qname"].to_numpy(dtype=object)
        sn = sub["server_name"].to_numpy(dtype=object)
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
        return pd.DataFrame(
            {
                "entity": entity_keys(sub),
                "direction": sub["direction"].to_numpy(dtype=object),
                "ts_start": sub["ts_start"].to_numpy(),
                "ts_end": sub["ts_end"].to_numpy(),
                "dst_ip": dst,
                "dst_port": sub["dst_port"].to_numpy(dtype="int64"),
                "proto": sub["proto"].to_numpy(dtype="int64"),
                "egress": (sub["direction"] == Direction.EGRESS.value).to_numpy(),
                "feed": feed,
                "entry": entry,
                "matched": how_a,
                "name": np.where(sn != "", sn, np.where(qn != "", qn, rs)),
                "target": how_a != "dns_query",
            }
        )

    def describe(self, flows: pd.DataFrame) -> dict[str, Any]:
        """The feeds and entries hit, and how (address, DNS query, SNI, resolved name)."""
        f = self.round_for(flows)
        if not len(f):
            return {}
        ent = set(flows["dst_ip"].tolist())
        sel = f[f["dst_ip"].isin(ent).to_numpy() | ~f["target"].to_numpy(dtype=bool)]
        sel = sel.drop_duplicates(["feed", "entry", "matched", "dst_ip"])
        sel = sel.sort_values("target", ascending=False, kind="stable")  # blockable hits first
        items = [
            {
                "feed": str(r.feed),
                "entry": str(r.entry),
                "matched": str(r.matched),
                "destination": str(r.dst_ip),
                "port": int(r.dst_port),
                "name": str(r.name),
            }
            for r in sel.head(MAX_EVIDENCE).itertuples(index=False)
        ]
        return {
            "feeds": sorted({i["feed"] for i in items}),
            "hits": items,
            "feeds_version": self.feeds_version,
        }
