"""Fast membership of addresses in CIDR sets and of names in domain sets.

Shared by the threat feeds and the declared policy, so a million feed entries and a
policy's few hundred CIDRs are matched the same way:

* :class:`AddressSet`: networks (IPv4 and IPv6) as sorted, merged ``[start, end]``
  intervals; a batch of addresses is one ``np.searchsorted`` per family. Which entry
  matched (the most specific one) is looked up afterwards, for the few hits only, from
  one sorted array per prefix length.
* :class:`NameSet`: exact names and "this name and everything below it" suffixes; a name
  is looked up with each of its parent domains (a dict hit per label).

Addresses arrive as strings; :func:`parse_addresses` turns the distinct values of a column
into integers once (IPv6 as 16 big-endian bytes, which sort like the numbers).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

V6 = "S16"  # 16 big-endian bytes: byte order is numeric order
_V4_MAX = (1 << 32) - 1
_V6_MAX = (1 << 128) - 1


def _parse_raw(value: str) -> tuple[int, int]:
    """(family 4 or 6, integer); (0, 0) when ``value`` is not an address."""
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, value), "big")
    except OSError:
        pass
    try:
        return 6, int(ipaddress.IPv6Address(value))
    except ValueError:
        return 0, 0


# Flow addresses repeat: cached. Feed lines are a million distinct values: parsed raw.
_parse_one = lru_cache(maxsize=262144)(_parse_raw)


def parse_network(text: str) -> tuple[int, int, int] | None:
    """``(family, network as int, prefix length)`` of an address or CIDR, None if invalid.

    Host bits are cleared (``10.1.2.3/8`` is ``10.0.0.0/8``): feeds write both forms.
    Strict dotted quads only (``inet_pton``), so ``"1"`` or ``"010.1.1.1"`` never pass.
    """
    addr, sep, plen_s = text.partition("/")
    fam, value = _parse_raw(addr) if addr else (0, 0)
    if not fam:
        return None
    bits = 32 if fam == 4 else 128
    if sep:
        if not plen_s.isdigit() or len(plen_s) > 3:
            return None
        plen = int(plen_s)
        if plen > bits:
            return None
    else:
        plen = bits
    mask = ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)
    return fam, value & mask, plen


def network_text(fam: int, value: int, plen: int) -> str:
    """The canonical CIDR text of a parsed network."""
    if fam == 4:
        return f"{ipaddress.IPv4Address(value)}/{plen}"
    return f"{ipaddress.IPv6Address(value)}/{plen}"


def _to_v6(values: Sequence[int]) -> np.ndarray:
    return np.array([v.to_bytes(16, "big") for v in values], dtype=V6)


@dataclass(frozen=True)
class ParsedAddresses:
    """A column of addresses as numbers: ``fam`` 4, 6 or 0 (invalid/empty) per row."""

    fam: np.ndarray  # int8
    v4: np.ndarray  # int64 (valid where fam == 4)
    v6: np.ndarray  # S16 (valid where fam == 6)

    def at(self, rows: np.ndarray) -> ParsedAddresses:
        """The rows at positions ``rows``."""
        return ParsedAddresses(self.fam[rows], self.v4[rows], self.v6[rows])


def parse_distinct(values: Sequence[object]) -> ParsedAddresses:
    """:func:`parse_addresses` of values already distinct (a factorised column's uniques, shared
    by the policy and the feeds): each parsed, none factorised again."""
    parsed = [_parse_one(u) if isinstance(u, str) else (0, 0) for u in values]
    fam = np.array([p[0] for p in parsed], dtype="int8")
    v4 = np.array([p[1] if p[0] == 4 else 0 for p in parsed], dtype="int64")
    # IPv6 bytes only for the IPv6 addresses (a cluster's flows are mostly IPv4): zeros elsewhere.
    v6 = np.zeros(len(parsed), dtype=V6)
    six = np.flatnonzero(fam == 6)
    if len(six):
        v6[six] = _to_v6([parsed[i][1] for i in six.tolist()])
    return ParsedAddresses(fam, v4, v6)


def parse_addresses(values: pd.Series | np.ndarray | Sequence[str]) -> ParsedAddresses:
    """Parse every distinct value once; rows share the result."""
    # Factorised as they come (Arrow strings stay Arrow): no Python object per row.
    codes, uniques = pd.factorize(
        values if isinstance(values, pd.Series | np.ndarray) else np.asarray(values, dtype=object)
    )
    distinct = parse_distinct([*np.asarray(uniques, dtype=object).tolist(), None])  # last: missing
    return distinct.at(np.where(codes < 0, len(uniques), codes))


def _merge(starts: list[int], ends: list[int]) -> tuple[list[int], list[int]]:
    """Overlapping or touching intervals merged (Python ints: IPv6 needs 128 bits)."""
    order = sorted(range(len(starts)), key=starts.__getitem__)
    m_s: list[int] = []
    m_e: list[int] = []
    for i in order:
        s, e = starts[i], ends[i]
        if m_e and s <= m_e[-1] + 1:
            if e > m_e[-1]:
                m_e[-1] = e
        else:
            m_s.append(s)
            m_e.append(e)
    return m_s, m_e


def _merge_v4(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised merge for IPv4 (int64 fits every bound)."""
    if not len(starts):
        return starts, ends
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], ends[order]
    run_max = np.maximum.accumulate(e)
    new = np.r_[True, s[1:] > run_max[:-1] + 1]
    group = np.cumsum(new) - 1
    m_s = s[new]
    m_e = np.zeros(len(m_s), dtype="int64")
    np.maximum.at(m_e, group, e)
    return m_s, m_e


class AddressSet:
    """Networks with a label each (``tag``: e.g. the feed's index), matched in batches.

    Build once per snapshot (feeds change every few minutes at most, flows every second).
    """

    def __init__(self, networks: Iterable[tuple[int, int, int, int]]) -> None:
        """``networks``: ``(family, network int, prefix length, tag)``; already validated."""
        v4_net: list[int] = []
        v4_len: list[int] = []
        v4_tag: list[int] = []
        v6: list[tuple[int, int, int]] = []
        for fam, value, plen, tag in networks:
            if fam == 4:
                v4_net.append(value)
                v4_len.append(plen)
                v4_tag.append(tag)
            else:
                v6.append((value, plen, tag))
        net = np.array(v4_net, dtype="int64")
        plen_a = np.array(v4_len, dtype="int64")
        tags = np.array(v4_tag, dtype="int32")
        ends = net + (np.int64(1) << (32 - plen_a)) - 1
        self.v4_start, self.v4_end = _merge_v4(net, ends)
        # Per prefix length: sorted networks and their tags (the first tag of a duplicate).
        self._v4_by_len: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for length in np.unique(plen_a).tolist():
            sel = plen_a == length
            n, t = net[sel], tags[sel]
            order = np.argsort(n, kind="stable")
            n, t = n[order], t[order]
            keep = np.r_[True, n[1:] != n[:-1]]
            self._v4_by_len[int(length)] = (n[keep], t[keep])
        s6, e6 = _merge([v for v, _, _ in v6], [v + (1 << (128 - p)) - 1 for v, p, _ in v6])
        self.v6_start, self.v6_end = _to_v6(s6), _to_v6(e6)
        self._v6_by_len: dict[int, dict[int, int]] = {}
        for value, plen, tag in v6:
            self._v6_by_len.setdefault(plen, {}).setdefault(value, tag)
        self.size = len(v4_net) + len(v6)

    def __len__(self) -> int:
        return self.size

    def contains(self, parsed: ParsedAddresses) -> np.ndarray:
        """Per row: whether the address lies in any network of the set."""
        out = np.zeros(len(parsed.fam), dtype=bool)
        is4 = parsed.fam == 4
        if is4.any() and len(self.v4_start):
            x = parsed.v4[is4]
            i = np.searchsorted(self.v4_start, x, side="right") - 1
            ok = i >= 0
            ok[ok] = x[ok] <= self.v4_end[i[ok]]
            out[is4] = ok
        is6 = parsed.fam == 6
        if is6.any() and len(self.v6_start):
            x6 = parsed.v6[is6]
            i = np.searchsorted(self.v6_start, x6, side="right") - 1
            ok = i >= 0
            ok[ok] = x6[ok] <= self.v6_end[i[ok]]
            out[is6] = ok
        return out

    def lookup(self, address: str) -> tuple[str, int] | None:
        """The most specific network holding ``address`` and its tag (None: not in the set)."""
        fam, value = _parse_one(address)
        if fam == 4:
            for length in sorted(self._v4_by_len, reverse=True):
                nets, tags = self._v4_by_len[length]
                key = value & (_V4_MAX ^ ((1 << (32 - length)) - 1))
                i = int(np.searchsorted(nets, key))
                if i < len(nets) and int(nets[i]) == key:
                    return network_text(4, key, length), int(tags[i])
        elif fam == 6:
            for length in sorted(self._v6_by_len, reverse=True):
                key = value & (_V6_MAX ^ ((1 << (128 - length)) - 1))
                tag = self._v6_by_len[length].get(key)
                if tag is not None:
                    return network_text(6, key, length), tag
        return None


def normalise_name(name: str) -> str:
    """Lower case, no trailing dot: how names are stored and looked up."""
    return name.strip().rstrip(".").lower()


class NameSet:
    """Domain names with a tag each: exact names, and suffixes that cover every name below.

    ``add(name, tag, subdomains=True)`` covers ``name`` and its subdomains (a feed's domain);
    ``add("*.example.com", ...)`` covers only the names below ``example.com`` (a policy wildcard).
    """

    def __init__(self) -> None:
        self.exact: dict[str, int] = {}
        self.below: dict[str, int] = {}  # "example.com": every name ending in ".example.com"

    def __len__(self) -> int:
        return len(self.exact) + len(self.below)

    def add(self, name: str, tag: int, *, subdomains: bool = True) -> None:
        name = normalise_name(name)
        if name.startswith("*."):
            self.below.setdefault(name[2:], tag)
            return
        self.exact.setdefault(name, tag)
        if subdomains:
            self.below.setdefault(name, tag)

    def lookup(self, name: str) -> tuple[str, int] | None:
        """The entry covering ``name`` (itself first, then its nearest parent) and its tag."""
        name = normalise_name(name)
        if not name:
            return None
        tag = self.exact.get(name)
        if tag is not None:
            return name, tag
        if not self.below:
            return None
        rest = name
        while True:
            dot = rest.find(".")
            if dot < 0:
                return None
            rest = rest[dot + 1 :]
            tag = self.below.get(rest)
            if tag is not None:
                return (rest if rest in self.exact else "*." + rest), tag

    def match(self, names: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """Per row: whether the name is covered, and the tag (-1: not covered); once per distinct name."""
        codes, uniques = pd.factorize(names)
        return self.match_codes(np.asarray(codes), np.asarray(uniques, dtype=object))

    def match_codes(self, codes: np.ndarray, uniques: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`match` of a column already factorised (``codes`` into ``uniques``; -1: missing)."""
        found = [self.lookup(str(u)) if u else None for u in uniques.tolist()]
        u_tag = np.array([f[1] if f else -1 for f in found] + [-1], dtype="int32")
        tags = u_tag[np.where(codes < 0, len(found), codes)]
        return tags >= 0, tags
