"""Threat feeds: the formats people publish, parsed into one matchable snapshot.

Formats (``FeedSource.format``; ``auto`` guesses from the text):

* ``lines``: one entry per line (an address, a CIDR or a domain name), ``#`` or ``;``
  comments, anything after the first blank ignored;
* ``spamhaus_drop``: Spamhaus DROP / EDROP (``1.10.16.0/20 ; SBL256894``);
* ``feodo_csv``: abuse.ch Feodo Tracker CSV (the ``dst_ip`` column);
* ``urlhaus_csv``: abuse.ch URLhaus CSV (the host of the ``url`` column: an address, or a
  name matched *exactly*, since URLhaus lists single URLs on shared hosts too);
* ``hosts``: a hosts file (``0.0.0.0 bad.example``): its names.

Every entry is validated (strict dotted quads, CIDR lengths, DNS label syntax) before it
can reach a rule; what does not parse is counted per feed, never guessed. A domain entry
covers the name and every name below it. :class:`FeedSet` holds every feed at once for
the ``threat_feed`` detector, the CLI and the exports (downloading is
:mod:`flowwarden.feeds_fetch`).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from flowwarden.feeds_index import (
    AddressSet,
    NameSet,
    network_text,
    normalise_name,
    parse_addresses,
    parse_network,
)

FORMATS: tuple[str, ...] = ("lines", "spamhaus_drop", "feodo_csv", "urlhaus_csv", "hosts")
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?$")
_HOSTS_SINKS = frozenset({"0.0.0.0", "127.0.0.1", "::", "::1"})  # noqa: S104 - text, not a bind
_HOSTS_IGNORED = frozenset({"localhost", "localhost.localdomain", "local", "broadcasthost", "ip6-localhost"})


def valid_name(name: str) -> bool:
    """A DNS name fit for a rule: 2+ labels of letters, digits, ``-`` and ``_``, 253 characters at most."""
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    return len(labels) >= 2 and all(_LABEL.match(label) for label in labels) and not labels[-1].isdigit()


@dataclass
class ParsedFeed:
    """One feed's valid entries: networks as ``(family, int, prefix length)``, names normalised."""

    name: str
    # A tuple (see :meth:`_done`): the cyclic GC untracks a tuple of plain tuples of ints (after
    # a collection or two), so a million entries are no longer walked by every full collection
    # (a list is: ~40 ms more per full pass with the benchmark's 1,000,000-entry feed loaded).
    networks: tuple[tuple[int, int, int], ...] = ()
    domains: list[str] = field(default_factory=list)
    exact_names: list[str] = field(default_factory=list)  # URLhaus hosts: the name only
    rejected: int = 0
    first_rejected: str = ""
    _parsed: list[tuple[int, int, int]] = field(default_factory=list, repr=False, compare=False)

    @property
    def entries(self) -> int:
        return len(self.networks) + len(self.domains) + len(self.exact_names)

    def _entry(self, token: str, *, exact: bool = False) -> None:
        token = token.strip().strip('"')
        net = parse_network(token)
        if net is not None:
            self._parsed.append(net)
            return
        name = normalise_name(token)
        if valid_name(name):
            (self.exact_names if exact else self.domains).append(name)
            return
        self.rejected += 1
        if not self.first_rejected:
            self.first_rejected = token[:80]

    def _done(self) -> ParsedFeed:
        """The networks parsed so far moved into :attr:`networks` (a tuple), once parsing ends."""
        if self._parsed:
            self.networks = (*self.networks, *self._parsed)
            self._parsed = []
        return self

    def cidr_texts(self, keep: Iterable[bool] | None = None) -> list[str]:
        """The networks as canonical CIDR text (``keep``: a mask over :attr:`networks`)."""
        nets = self.networks if keep is None else [n for n, k in zip(self.networks, keep, strict=True) if k]
        return [network_text(*n) for n in nets]


def detect_format(text: str) -> str:
    """Guess a feed's format from its first lines."""
    head = text[:4096]
    if "SBL" in head and ";" in head:
        return "spamhaus_drop"
    if "dst_ip" in head and "," in head:
        return "feodo_csv"
    if "url_status" in head or ("urlhaus" in head.lower() and "," in head and "http" in head):
        return "urlhaus_csv"
    for line in head.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        parts = line.split()
        if len(parts) >= 2 and parts[0] in _HOSTS_SINKS:
            return "hosts"
        break
    return "lines"


def _csv_rows(text: str) -> tuple[list[str] | None, list[list[str]]]:
    """(header from the last ``#`` comment line that looks like one, data rows)."""
    header: list[str] | None = None
    data_lines = []
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            body = s.lstrip("#").strip()
            if "," in body and ('"' in body or body.count(",") >= 2):
                header = [h.strip().strip('"').lower() for h in next(csv.reader([body]))]
            continue
        data_lines.append(s)
    rows = list(csv.reader(io.StringIO("\n".join(data_lines))))
    if rows and header is None and any(c.strip().lower() in ("dst_ip", "url", "ip_address") for c in rows[0]):
        header = [c.strip().lower() for c in rows[0]]
        rows = rows[1:]
    return header, rows


def parse_feed(name: str, text: str, fmt: str = "auto") -> ParsedFeed:
    """Parse a feed's text; invalid lines are counted in ``rejected``, never kept."""
    if fmt == "auto":
        fmt = detect_format(text)
    feed = ParsedFeed(name)
    if fmt in ("lines", "spamhaus_drop"):
        for line in text.splitlines():
            s = line.split("#", 1)[0].split(";", 1)[0].strip()
            if s:
                feed._entry(s.split()[0])
    elif fmt == "hosts":
        for line in text.splitlines():
            parts = line.split("#", 1)[0].split()
            if len(parts) < 2:
                continue
            for host in parts[1:]:
                if normalise_name(host) not in _HOSTS_IGNORED:
                    feed._entry(host)
    elif fmt in ("feodo_csv", "urlhaus_csv"):
        header, rows = _csv_rows(text)
        want = ("dst_ip", "ip_address") if fmt == "feodo_csv" else ("url",)
        col = next((header.index(w) for w in want if header and w in header), 1 if fmt == "feodo_csv" else 2)
        for row in rows:
            if len(row) <= col:
                feed.rejected += 1
                continue
            value = row[col].strip()
            if fmt == "urlhaus_csv":
                try:
                    host = urlsplit(value).hostname or ""
                except ValueError:
                    host = ""
                feed._entry(host or value, exact=True)
            else:
                feed._entry(value)
    else:
        raise ValueError(f"unknown feed format {fmt!r} (valid: auto, {', '.join(FORMATS)})")
    return feed._done()


@dataclass(frozen=True)
class FeedHit:
    feed: str
    entry: str


class FeedSet:
    """Every loaded feed as one snapshot: addresses in an :class:`AddressSet`, names in a :class:`NameSet`.

    ``protected``: addresses and CIDRs that no feed may block (nodes, the API server, the
    cluster DNS, ``enforcement.protected_ips``); entries covering them stay matchable for
    alerts but are listed in :attr:`protected_entries` and left out of every export.
    """

    def __init__(self, feeds: Sequence[ParsedFeed], protected: Iterable[str] = ()) -> None:
        self.feeds = list(feeds)
        self.names = [f.name for f in self.feeds]
        self.addresses = AddressSet(
            (fam, value, plen, tag) for tag, f in enumerate(self.feeds) for fam, value, plen in f.networks
        )
        self.domains = NameSet()
        for tag, f in enumerate(self.feeds):
            for d in f.domains:
                self.domains.add(d, tag)
            for d in f.exact_names:
                self.domains.add(d, tag, subdomains=False)
        self.protected = [p for p in (parse_network(x) for x in protected) if p is not None]
        self.protected_entries: list[FeedHit] = []
        self._exportable: dict[str, np.ndarray] = {}  # per feed, per network (an array: not walked by the GC)
        for f in self.feeds:
            keep = _not_protected(f.networks, self.protected)
            self._exportable[f.name] = keep
            self.protected_entries.extend(
                FeedHit(f.name, network_text(*n)) for n, k in zip(f.networks, keep, strict=True) if not k
            )

    def __len__(self) -> int:
        return sum(f.entries for f in self.feeds)

    def exportable_cidrs(self, feed: str) -> list[str]:
        """A feed's CIDRs minus those that cover a protected address (those are reported instead)."""
        f = self.feeds[self.names.index(feed)]
        return f.cidr_texts(self._exportable[feed])

    def check(self, value: str) -> list[FeedHit]:
        """What lists ``value`` (an address or a name): at most one entry per feed, most specific first."""
        value = value.strip()
        net = parse_network(value)
        hits: list[FeedHit] = []
        if net is not None:
            for tag, f in enumerate(self.feeds):
                single = AddressSet((fam, v, p, tag) for fam, v, p in f.networks)
                found = single.lookup(value.split("/")[0])
                if found:
                    hits.append(FeedHit(f.name, found[0]))
            return hits
        name = normalise_name(value)
        for f in self.feeds:
            one = NameSet()
            for d in f.domains:
                one.add(d, 0)
            for d in f.exact_names:
                one.add(d, 0, subdomains=False)
            found_name = one.lookup(name)
            if found_name:
                hits.append(FeedHit(f.name, found_name[0]))
        return hits

    def match_addresses(self, addresses: pd.Series) -> np.ndarray:
        """Per row: whether any feed lists the address (one vectorised search per family)."""
        return self.addresses.contains(parse_addresses(addresses))

    def address_hit(self, address: str) -> FeedHit | None:
        found = self.addresses.lookup(address)
        return FeedHit(self.names[found[1]], found[0]) if found else None

    def name_hit(self, name: str) -> FeedHit | None:
        found = self.domains.lookup(name)
        return FeedHit(self.names[found[1]], found[0]) if found else None


def _not_protected(
    networks: Sequence[tuple[int, int, int]], protected: list[tuple[int, int, int]]
) -> np.ndarray:
    """Per network: False when it covers (or lies in) a protected network. Vectorised for IPv4."""
    if not protected or not networks:
        return np.ones(len(networks), dtype=bool)
    fam = np.fromiter((n[0] for n in networks), dtype="int8", count=len(networks))
    keep = np.ones(len(networks), dtype=bool)
    v4 = np.flatnonzero(fam == 4)
    if len(v4):
        start = np.fromiter((networks[i][1] for i in v4.tolist()), dtype="int64", count=len(v4))
        plen = np.fromiter((networks[i][2] for i in v4.tolist()), dtype="int64", count=len(v4))
        end = start + (np.int64(1) << (32 - plen)) - 1
        for pf, pv, pl in protected:
            if pf == 4:
                p_end = pv + (1 << (32 - pl)) - 1
                keep[v4[(start <= p_end) & (pv <= end)]] = False
    for i in np.flatnonzero(fam == 6).tolist():
        _, value6, plen6 = networks[i]
        end6 = value6 + (1 << (128 - plen6)) - 1
        for pf, pv, pl in protected:
            if pf == 6 and value6 <= pv + (1 << (128 - pl)) - 1 and pv <= end6:
                keep[i] = False
    return keep
