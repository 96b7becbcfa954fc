"""Threat feeds as data for the cluster: Calico GlobalNetworkSets and an nftables named set.

The guardrails still win: only :meth:`~flowwarden.feeds.FeedSet.exportable_cidrs` leave
this module, so an entry that covers a node, the API server, the cluster DNS or a protected
address is never exported (it is listed in the report instead, and still alerts through
the ``threat_feed`` detector).

* **Calico**: per feed, GlobalNetworkSets ``flowwarden.feed.<feed>.<n>`` (chunks of
  :data:`NETS_PER_SET` nets: one Kubernetes object must stay well under etcd's request
  limit) labelled ``flowwarden.io/feed: <feed>`` and ``flowwarden.io/threat-feed: "true"``,
  and one GlobalNetworkPolicy in flowwarden's tier that denies egress to every set with
  that label: a reviewer approves the policy once; feed refreshes only change data.
  Domain entries are not exported (a name-based deny needs Calico Enterprise's DNS policy);
  the detector matches them.
* **nftables**: table ``inet <nft_table>_feeds`` (never the backend's own table, which the
  backend rebuilds), sets ``feed_v4`` / ``feed_v6`` of merged intervals, and a ``forward`` /
  ``output`` chain: ``reject`` (mode ``enforce``) or ``counter`` only (``dry_run``, ``alert``).
  Every refresh is ONE libnftables batch (flush the set, add the elements), which the
  kernel applies atomically: there is no moment with an empty set.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from flowwarden.enforcement.backends.kube import write_manifest
from flowwarden.enforcement.backends.nftables import FAMILY, Transport, make_transport
from flowwarden.feeds import FeedHit, FeedSet
from flowwarden.feeds_index import AddressSet, parse_network
from flowwarden.settings import Settings

NETS_PER_SET = 20_000
FEED_LABEL = "flowwarden.io/feed"
THREAT_LABEL = "flowwarden.io/threat-feed"
MANAGED_BY = {"app.kubernetes.io/managed-by": "flowwarden"}
API_VERSION = "projectcalico.org/v3"
TIER = "flowwarden"
ExportMode = Literal["enforce", "dry_run", "alert"]


@dataclass
class ExportReport:
    """What an export wrote, and the protected entries it left out."""

    cidrs: dict[str, int] = field(default_factory=dict)  # per feed
    protected: list[FeedHit] = field(default_factory=list)
    objects: int = 0

    def lines(self) -> list[str]:
        out = [f"{name}: {n} CIDRs exported" for name, n in self.cidrs.items()]
        out += [f"{h.feed}: {h.entry} not exported (covers a protected address)" for h in self.protected]
        return out


def _name_ok(feed: str) -> str:
    """Feed names come from the settings (pattern-checked); checked again before they reach a manifest."""
    if not feed or len(feed) > 63 or not all(c.isalnum() or c in "-_" for c in feed):
        raise ValueError(f"feed name {feed!r} cannot name a Kubernetes object")
    return feed.replace("_", "-").lower()


# --------------------------------------------------------------------------- Calico


def calico_network_sets(feeds: FeedSet) -> tuple[list[dict[str, Any]], ExportReport]:
    """GlobalNetworkSets for every feed's exportable CIDRs (chunked), and the report."""
    docs: list[dict[str, Any]] = []
    report = ExportReport(protected=list(feeds.protected_entries))
    for feed in feeds.names:
        nets = feeds.exportable_cidrs(feed)
        report.cidrs[feed] = len(nets)
        safe = _name_ok(feed)
        for i in range(0, max(len(nets), 1), NETS_PER_SET):
            docs.append(
                {
                    "apiVersion": API_VERSION,
                    "kind": "GlobalNetworkSet",
                    "metadata": {
                        "name": f"flowwarden.feed.{safe}.{i // NETS_PER_SET}",
                        "labels": {FEED_LABEL: safe, THREAT_LABEL: "true", **MANAGED_BY},
                    },
                    "spec": {"nets": nets[i : i + NETS_PER_SET]},
                }
            )
    report.objects = len(docs)
    return docs, report


def calico_deny_policy(action: Literal["Deny", "Log"] = "Deny") -> dict[str, Any]:
    """The one policy a reviewer approves: egress to any threat-feed network set is denied."""
    return {
        "apiVersion": API_VERSION,
        "kind": "GlobalNetworkPolicy",
        "metadata": {"name": f"{TIER}.threat-feeds", "labels": dict(MANAGED_BY)},
        "spec": {
            "tier": TIER,
            "order": 50,
            "selector": "all()",
            "types": ["Egress"],
            "egress": [{"action": action, "destination": {"selector": f'{THREAT_LABEL} == "true"'}}],
        },
    }


def write_calico(feeds: FeedSet, directory: Path, mode: ExportMode) -> ExportReport:
    """``calico/feeds/<feed>.yaml`` (data) and ``calico/feeds-policy.yaml`` (approved once)."""
    docs, report = calico_network_sets(feeds)
    out = directory / "calico" / "feeds"
    out.mkdir(parents=True, exist_ok=True)
    by_feed: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_feed.setdefault(d["metadata"]["labels"][FEED_LABEL], []).append(d)
    for feed, items in by_feed.items():
        write_manifest(out / f"{feed}.yaml", items)
    write_manifest(
        directory / "calico" / "feeds-policy.yaml",
        [calico_deny_policy("Deny" if mode == "enforce" else "Log")],
    )
    return report


# --------------------------------------------------------------------------- nftables


def _elements(cidrs: Sequence[str], family: int) -> list[Any]:
    """Merged intervals as libnftables JSON elements (a prefix when the interval is one)."""
    nets = [n for n in (parse_network(c) for c in cidrs) if n is not None and n[0] == family]
    merged = AddressSet((f, v, p, 0) for f, v, p in nets)
    if family == 4:
        pairs = list(zip(merged.v4_start.tolist(), merged.v4_end.tolist(), strict=True))
    else:
        pairs = [
            (int.from_bytes(bytes(s), "big"), int.from_bytes(bytes(e), "big"))
            for s, e in zip(merged.v6_start.tolist(), merged.v6_end.tolist(), strict=True)
        ]
    bits = 32 if family == 4 else 128
    text = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
    out: list[Any] = []
    for lo, hi in pairs:
        size = hi - lo + 1
        if size & (size - 1) == 0 and lo % size == 0:  # exactly one prefix
            plen = bits - (size.bit_length() - 1)
            out.append(str(text(lo)) if plen == bits else {"prefix": {"addr": str(text(lo)), "len": plen}})
        else:
            out.append({"range": [str(text(lo)), str(text(hi))]})
    return out


def nft_feed_commands(
    feeds: FeedSet, table: str, mode: ExportMode
) -> tuple[list[dict[str, Any]], ExportReport]:
    """One atomic libnftables batch: table, sets, chains (created if missing), sets flushed and refilled."""
    report = ExportReport(protected=list(feeds.protected_entries))
    cidrs: list[str] = []
    for feed in feeds.names:
        mine = feeds.exportable_cidrs(feed)
        report.cidrs[feed] = len(mine)
        cidrs.extend(mine)
    cmds: list[dict[str, Any]] = [{"add": {"table": {"family": FAMILY, "name": table}}}]
    for name, kind in (("feed_v4", "ipv4_addr"), ("feed_v6", "ipv6_addr")):
        cmds.append(
            {
                "add": {
                    "set": {
                        "family": FAMILY,
                        "table": table,
                        "name": name,
                        "type": kind,
                        "flags": ["interval"],
                    }
                }
            }
        )
    for hook in ("forward", "output"):
        chain = f"feeds_{hook}"
        cmds.append(
            {
                "add": {
                    "chain": {
                        "family": FAMILY,
                        "table": table,
                        "name": chain,
                        "type": "filter",
                        "hook": hook,
                        "prio": -5,
                        "policy": "accept",
                    }
                }
            }
        )
        cmds.append({"flush": {"chain": {"family": FAMILY, "table": table, "name": chain}}})
        for proto, set_name in (("ip", "feed_v4"), ("ip6", "feed_v6")):
            expr: list[dict[str, Any]] = [
                {
                    "match": {
                        "op": "==",
                        "left": {"payload": {"protocol": proto, "field": "daddr"}},
                        "right": f"@{set_name}",
                    }
                },
                {"counter": None},
            ]
            if mode == "enforce":
                expr.append({"reject": None})
            cmds.append({"add": {"rule": {"family": FAMILY, "table": table, "chain": chain, "expr": expr}}})
    for name, family in (("feed_v4", 4), ("feed_v6", 6)):
        cmds.append({"flush": {"set": {"family": FAMILY, "table": table, "name": name}}})
        elems = _elements(cidrs, family)
        if elems:
            cmds.append({"add": {"element": {"family": FAMILY, "table": table, "name": name, "elem": elems}}})
    report.objects = 2
    return cmds, report


class NftFeedExporter:
    """Applies :func:`nft_feed_commands` with the nftables backend's transport (``nft_netns`` if set)."""

    def __init__(self, settings: Settings, mode: ExportMode, transport: Transport | None = None) -> None:
        e = settings.enforcement
        self.table = f"{e.nft_table}_feeds"
        self.mode = mode
        self.transport = transport if transport is not None else make_transport(e.nft_netns)

    def apply(self, feeds: FeedSet) -> ExportReport:
        cmds, report = nft_feed_commands(feeds, self.table, self.mode)
        self.transport.run(cmds)
        return report

    def remove(self) -> None:
        self.transport.run(
            [
                {"add": {"table": {"family": FAMILY, "name": self.table}}},
                {"delete": {"table": {"family": FAMILY, "name": self.table}}},
            ]
        )


def export_mode(settings: Settings) -> ExportMode:
    """The ``threat_feed`` detector's mode: its per-detector mode, else the enforcement mode; ``alert``
    when enforcement leaves the detector out (``enforcement.detectors`` set without it)."""
    e = settings.enforcement
    if e.detectors and "threat_feed" not in e.detectors:
        return "alert"
    mode = e.mode_by_detector.get("threat_feed", e.mode)
    return "enforce" if mode == "enforce" else "dry_run"
