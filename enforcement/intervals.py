"""Address ranges as sorted integer intervals: membership and overlap in O(log n), never a list scan.

A network is the closed interval ``[first address, last address]`` of its family. Two CIDR
networks either nest or do not touch, which is what makes one sort and one sweep enough to
merge them (:func:`outermost`) and one binary search enough to ask whether a network
overlaps any of a set (:class:`Ranges`).
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from flowwarden.enforcement.targets import Network

T = TypeVar("T")

Span = tuple[int, int, int]  # (family, first, last) as integers


def span(net: Network) -> Span:
    """``net`` as (family, first address, last address)."""
    first = int(net.network_address)
    return (net.version, first, first + net.num_addresses - 1)


def network(value: str | Network) -> Network:
    """A network from a string (host bits allowed: these are configured ranges, already validated)."""
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    return ipaddress.ip_network(value, strict=False)


@dataclass(frozen=True)
class Tagged(Generic[T]):
    """A network and what it stands for (the guardrail that protects it, a decision id…)."""

    net: Network
    tag: T


class Ranges(Generic[T]):
    """Tagged networks, possibly overlapping, asked "which of you overlaps this network?".

    The networks are merged into disjoint sorted intervals once; a query is one binary search
    (the usual answer, "none", costs nothing more). On a hit, the tagged networks inside the
    merged interval that was hit are checked in the order given, so the first one wins, as a
    scan in that order would decide.
    """

    def __init__(self, items: Iterable[tuple[str | Network, T]] = ()) -> None:
        tagged = [Tagged(network(n), tag) for n, tag in items]
        self.items: tuple[Tagged[T], ...] = tuple(tagged)
        order = sorted(range(len(tagged)), key=lambda i: span(tagged[i].net))
        starts: list[tuple[int, int]] = []
        ends: list[int] = []
        members: list[list[int]] = []
        for i in order:
            fam, lo, hi = span(tagged[i].net)
            if starts and starts[-1][0] == fam and lo <= ends[-1]:
                ends[-1] = max(ends[-1], hi)
                members[-1].append(i)
            else:
                starts.append((fam, lo))
                ends.append(hi)
                members.append([i])
        self._starts = starts
        self._ends = ends
        self._members = [sorted(m) for m in members]
        self._end_keys = [(fam, end) for (fam, _), end in zip(starts, ends, strict=True)]

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def first_overlap(self, net: Network) -> Tagged[T] | None:
        """The first tagged network (in the order given) that overlaps ``net``, or None."""
        fam, lo, hi = span(net)
        # Merged intervals are disjoint and sorted: those that meet [lo, hi] are one run, j..k.
        k = bisect.bisect_right(self._starts, (fam, hi)) - 1
        j = bisect.bisect_left(self._end_keys, (fam, lo))
        if k < j:
            return None
        best: int | None = None
        for m in range(j, k + 1):
            for i in self._members[m]:
                if best is not None and i >= best:
                    break
                _, a, b = span(self.items[i].net)
                if a <= hi and lo <= b:
                    best = i
                    break
        return None if best is None else self.items[best]

    def overlaps(self, net: Network) -> bool:
        return self.first_overlap(net) is not None


def outermost(nets: Iterable[Network]) -> list[Network]:
    """The networks not inside another one of ``nets`` (sorted; duplicates once): one sort, one sweep."""
    out: list[Network] = []
    last: Span | None = None
    for net in sorted(set(nets), key=lambda n: (n.version, int(n.network_address), -n.num_addresses)):
        s = span(net)
        if last is not None and s[0] == last[0] and s[2] <= last[2]:
            continue  # inside the previous outermost network
        out.append(net)
        last = s
    return out


def iter_hosts_sorted(ips: Iterable[str]) -> Iterator[tuple[int, int, str]]:
    """(family, integer, text) of each valid address in ``ips``, sorted; invalid ones skipped."""
    keyed = []
    for ip in ips:
        try:
            a = ipaddress.ip_address(ip)
        except ValueError:
            continue
        keyed.append((a.version, int(a), ip))
    yield from sorted(keyed)


class HostIndex:
    """Addresses sorted once, so "which of them are inside this network" is two binary searches."""

    def __init__(self, ips: Iterable[str]) -> None:
        rows = list(iter_hosts_sorted(ips))
        self._keys = [(fam, n) for fam, n, _ in rows]
        self._ips = [ip for _, _, ip in rows]

    def inside(self, net: Network) -> list[str]:
        fam, lo, hi = span(net)
        a = bisect.bisect_left(self._keys, (fam, lo))
        b = bisect.bisect_right(self._keys, (fam, hi))
        return self._ips[a:b]
