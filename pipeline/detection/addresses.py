"""Facts about each address (inside the cluster? a node? the API server?), once per address.

Every flow batch repeats the same few thousand addresses. Asking each question of every
address of every batch (factorise, look up, parse) cost more than scoring the windows, so
the answers live in arrays indexed by the engine's :class:`~flowwarden.pipeline.detection.state.Vocab` ids: a
string is parsed once when it first gets an id, and a batch's masks are numpy takes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from flowwarden.pipeline.detection.state import Vocab
from flowwarden.settings import Settings

INTERNAL = np.uint8(1)  # in a pod, service or node CIDR, or a configured node address
NODE = np.uint8(2)  # in a node CIDR, or a configured node address
API_SERVER = np.uint8(4)  # a configured API server address
API_SERVICE = np.uint8(8)  # the first address of a service CIDR (the ``kubernetes`` service)
METADATA = np.uint8(16)  # the cloud metadata API

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@lru_cache(maxsize=8)
def api_service_ip(service_cidr: str) -> str:
    """The ``kubernetes`` service's cluster IP: the first address of the service CIDR."""
    return str(ipaddress.ip_network(service_cidr, strict=False)[1])


@dataclass(frozen=True)
class BatchAddresses:
    """Per flow of one batch: address ids and the facts the features need."""

    src_id: np.ndarray
    dst_id: np.ndarray
    src_in: np.ndarray  # inside the cluster (settings CIDRs, node addresses)
    dst_in: np.ndarray
    src_node: np.ndarray  # a node's own address
    dst_node: np.ndarray
    dst_api_server: np.ndarray  # a configured API server address
    dst_api_service: np.ndarray
    dst_metadata: np.ndarray


class AddressFacts:
    """Bit flags per vocabulary id, extended as the vocabulary grows (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        cluster, cp = settings.cluster, settings.control_plane
        self._internal = _networks([*cluster.internal_cidrs(), *cluster.node_ips])
        self._node = _networks([*cluster.node_cidrs, *cluster.node_ips])
        self._api_server = _addresses(cp.api_server_ips)
        self._api_service = _addresses([api_service_ip(c) for c in cluster.service_cidrs])
        self._metadata = _addresses(cluster.metadata_api)
        self._vocab: Vocab | None = None
        self._bits = np.zeros(0, dtype="uint8")
        self._inv_nodes: dict[str, str] | None = None
        self._inv_node = np.zeros(0, dtype=bool)

    def batch(
        self, vocab: Vocab, src_ips: pd.Series, dst_ips: pd.Series, node_ips: dict[str, str]
    ) -> BatchAddresses:
        """Encode both address columns and look their facts up (``node_ips``: the inventory's nodes)."""
        src_id = vocab.encode(src_ips)
        dst_id = vocab.encode(dst_ips)
        bits = self._bits_for(vocab)
        inv_node = self._inventory_nodes(vocab, node_ips)
        sb, db = bits[src_id], bits[dst_id]
        sn, dn = inv_node[src_id], inv_node[dst_id]
        return BatchAddresses(
            src_id=src_id,
            dst_id=dst_id,
            src_in=((sb & INTERNAL) != 0) | sn,
            dst_in=((db & INTERNAL) != 0) | dn,
            src_node=((sb & NODE) != 0) | sn,
            dst_node=((db & NODE) != 0) | dn,
            dst_api_server=(db & API_SERVER) != 0,
            dst_api_service=(db & API_SERVICE) != 0,
            dst_metadata=(db & METADATA) != 0,
        )

    def _bits_for(self, vocab: Vocab) -> np.ndarray:
        if vocab is not self._vocab:  # a compacted vocabulary renumbers every string
            self._vocab, self._bits = vocab, np.zeros(0, dtype="uint8")
            self._inv_nodes = None
        done = len(self._bits)
        if done < len(vocab):
            self._bits = np.concatenate([self._bits, self._flags_of(vocab.strings[done:])])
        return self._bits

    def _flags_of(self, strings: list[str]) -> np.ndarray:
        """Flags of new vocabulary strings: dotted IPv4 in integer arithmetic, the rest one by one.

        The vocabulary also holds namespaces, pods and workloads; a string with neither a dot
        nor a colon is no address and is skipped without parsing.
        """
        out = np.zeros(len(strings), dtype="uint8")
        v4, v4_at, other = _dotted_quads(strings)
        if len(v4_at):
            out[v4_at] = self._v4_flags(v4)
        for i in other:
            out[i] = self._flags(strings[i])
        return out

    def _v4_flags(self, ints: np.ndarray) -> np.ndarray:
        bits = np.zeros(len(ints), dtype="uint8")
        for flag, nets in ((INTERNAL, self._internal), (NODE, self._node)):
            hit = np.zeros(len(ints), dtype=bool)
            for n in nets:
                if n.version == 4:
                    mask = int(n.netmask)
                    hit |= (ints & np.uint32(mask)) == np.uint32(int(n.network_address))
            bits[hit] |= flag
        for flag, addrs in (
            (API_SERVER, self._api_server),
            (API_SERVICE, self._api_service),
            (METADATA, self._metadata),
        ):
            v4 = [int(a) for a in addrs if a.version == 4]
            if v4:
                bits[np.isin(ints, np.array(v4, dtype="uint32"))] |= flag
        return bits

    def _inventory_nodes(self, vocab: Vocab, node_ips: dict[str, str]) -> np.ndarray:
        """Ids of the inventory's node addresses (they change when the inventory reloads)."""
        if node_ips is not self._inv_nodes or len(self._inv_node) < len(vocab):
            if node_ips is not self._inv_nodes:
                self._inv_nodes = node_ips
            mask = np.zeros(len(vocab), dtype=bool)
            ids = [vocab.id_of(ip) for ip in node_ips]
            mask[[i for i in ids if i >= 0]] = True
            self._inv_node = mask
        return self._inv_node

    def _flags(self, value: str) -> np.uint8:
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            return np.uint8(0)
        bits = 0
        if any(addr in n for n in self._internal):
            bits |= int(INTERNAL)
        if any(addr in n for n in self._node):
            bits |= int(NODE)
        if addr in self._api_server:
            bits |= int(API_SERVER)
        if addr in self._api_service:
            bits |= int(API_SERVICE)
        if addr in self._metadata:
            bits |= int(METADATA)
        return np.uint8(bits)


def _networks(cidrs: list[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _addresses(ips: list[str]) -> frozenset[IPAddress]:
    return frozenset(ipaddress.ip_address(ip) for ip in ips)


def _dotted_quads(strings: list[str]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Canonical dotted IPv4 strings as uint32 (and their positions); the rest that may be addresses.

    Canonical means what :mod:`ipaddress` accepts: four decimal parts of 0-255 without
    leading zeros. Anything else containing a dot or a colon goes to the slow path.
    """
    values: list[int] = []
    at: list[int] = []
    other: list[int] = []
    for i, s in enumerate(strings):
        parts = s.split(".")
        if (
            len(parts) == 4
            and all(p.isdigit() and p.isascii() and len(p) <= 3 for p in parts)
            and all(p == "0" or p[0] != "0" for p in parts)
        ):
            a, b, c, d = (int(p) for p in parts)
            if a < 256 and b < 256 and c < 256 and d < 256:
                values.append((a << 24) | (b << 16) | (c << 8) | d)
                at.append(i)
                continue
        if "." in s or ":" in s:
            other.append(i)
    return np.array(values, dtype="uint32"), np.array(at, dtype="int64"), other
