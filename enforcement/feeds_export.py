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

A running enforcer keeps the export current (:class:`FeedExportLoop`, ``enforcement.feed_export``):
a thread of its own looks at the feeds every ``refresh_s``, and when a copy changed applies the
new set in one batch. A fetch that fails keeps the feed's last good copy; an apply that fails
leaves the previous set in the kernel (the batch is atomic) and is tried again at the next look.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from flowwarden.enforcement.backends.kube import write_manifest
from flowwarden.enforcement.backends.nftables import FAMILY, Transport, make_transport
from flowwarden.enforcement.metrics import EnforcerMetrics
from flowwarden.errors import FlowwardenError
from flowwarden.feeds import FeedHit, FeedSet
from flowwarden.feeds_index import AddressSet, parse_network
from flowwarden.feeds_refresh import FeedRefresher
from flowwarden.settings import Settings

log = logging.getLogger("flowwarden.enforcement.feeds")

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


def feed_export_enabled(settings: Settings) -> bool:
    """Whether the running enforcer exports feeds: some feed configured and some export on."""
    fe = settings.enforcement.feed_export
    return any(f.enabled for f in settings.rules.feeds) and (fe.nft or fe.calico_dir is not None)


class FeedExportLoop:
    """The enforcer's feed export, kept current on the feeds' schedule (a thread of its own).

    ``protected``: what the guardrails protect beyond the settings' addresses (the enforcer's
    nodes from its pod inventory), asked for at each export: never exported, reported.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: EnforcerMetrics,
        *,
        transport: Transport | None = None,
        protected: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        fe = settings.enforcement.feed_export
        self.settings = settings
        self.metrics = metrics
        self.interval_s = fe.refresh_s
        self.mode = export_mode(settings)
        self.calico_dir = fe.calico_dir
        self.nft = NftFeedExporter(settings, self.mode, transport) if fe.nft else None
        self.refresher = FeedRefresher(settings)
        self.protected = protected
        self.exports = 0  # exports applied since the start
        self.last_report: ExportReport | None = None
        self._pending = False  # a changed set not applied yet (the last apply failed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Export the last good copies, then refresh in the background."""
        self.refresher.load_cached()
        self.tick()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="flowwarden-feed-export", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.rules.feed_timeout_s + 5.0)
            self._thread = None

    def tick(self, *, force: bool = False) -> bool:
        """Refresh what is due; export when a feed changed (or the last export failed). True if applied."""
        results, changed = self.refresher.refresh(force=force)
        for r in results:
            if r.error:
                self.metrics.feed_export_failures.labels("fetch").inc()
        self._pending |= changed or self.exports == 0
        if not self._pending:
            return False
        feeds = self.refresher.feed_set(self.protected())
        if feeds is None:
            return False
        try:
            report = self.apply(feeds)
        except (FlowwardenError, OSError, ValueError) as exc:
            self.metrics.feed_export_failures.labels("apply").inc()
            log.error("feed export failed, the previous export stays in force error=%s", exc)
            return False
        self._pending = False
        self.exports += 1
        self.last_report = report
        for feed, n in report.cidrs.items():
            self.metrics.feed_export_entries.labels(feed=feed).set(n)
        self.metrics.feed_export_protected.set(len(report.protected))
        self.metrics.feed_export_last_success.set(time.time())
        for hit in report.protected:
            log.warning("feed lists a protected address, not exported feed=%s entry=%s", hit.feed, hit.entry)
        log.info("feeds exported mode=%s %s", self.mode, "; ".join(report.lines()[:5]))
        return True

    def apply(self, feeds: FeedSet) -> ExportReport:
        """nftables first (one atomic batch), then the Calico files; one report."""
        report = ExportReport(protected=list(feeds.protected_entries))
        if self.nft is not None:
            report = self.nft.apply(feeds)
        if self.calico_dir is not None:
            report = write_calico(feeds, self.calico_dir, self.mode)
        return report

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception:  # the export must never end the enforcer; the last good set stays
                self.metrics.feed_export_failures.labels("apply").inc()
                log.exception("feed export failed")
