"""Which interfaces the collector meters, and the one-sighting rule that counts a packet once.

Why one capture on ``any``: pods come and go with their veths; a capture process per
interface (or one ``dumpcap`` with many ``-i``, which must restart to add one) would have to
follow them. The collector instead runs one capture child on Linux's ``any`` device with the
``LINUX_SLL2`` link header, which carries, per packet, the interface index and the packet
type (sent by this host, or received). Which interfaces count is decided here, in user
space, from ``collector.interfaces`` patterns: an interface that appears is metered from its
first packet (an unknown index triggers a look-up), one that disappears is forgotten at the
next refresh (netlink link/address events, or a bounded poll), and no capture restarts.

The one-sighting rule (see the README, "Where the collector captures"): a packet between two
pods on one node crosses two veths, and a pod's packet to another node crosses its veth and
the uplink. The collector keeps:

* on a workload interface (``cali*``, ``lxc*``, ``veth*``, ...), what the pod *sends* (the
  host receives it), plus what the host itself sends to the pod (source: a node address,
  e.g. kubelet probes); what the host forwards to the pod was counted where it entered;
* on an uplink, everything received, and what is sent unless its source (the inner source
  when tunnelled) is a pod of this node, learned from the pods' own packets: those were
  counted on the pod's veth, where the pod sent them.

So every packet is counted once, at the interface where it entered the node (its sender's),
and the flow's direction follows the pod that sent it, not the interface. Source NAT on the
uplink (pod egress masqueraded to the node's address) hides the pod's address there; those
packets are recognised by what NAT leaves alone (destination, port, protocol, IP id,
length) and counted on the pod's veth only, their answers too (:func:`_packet_keys`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import re
import select
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flowwarden.collectors.decode import V4_MAPPED, decode
from flowwarden.collectors.pcapfile import PacketBatch
from flowwarden.errors import ConfigError

log = logging.getLogger("flowwarden.collector.interfaces")

DLT_LINUX_SLL2 = 276
SLL2_LEN = 20
ARPHRD_ETHER = 1
PACKET_OUTGOING = 4
UNKNOWN, IGNORED, WORKLOAD, UPLINK = -1, 0, 1, 2  # UNKNOWN: an index no refresh has seen
ROLES = ("ignored", "workload", "uplink")
MAX_IFINDEX = 1 << 22  # a dense role table up to here (4 MiB); larger indexes are looked up sparsely

# Host-side names of pod interfaces, per CNI; anything else a pattern matches is an uplink.
CNI_WORKLOAD = {
    "calico": ("cali*",),
    "cilium": ("lxc*",),
    "flannel": ("veth*",),  # and every bridge CNI (cni0, docker0, kindnet)
    "aws-vpc-cni": ("eni*",),
    "azure": ("azv*",),
    "weave": ("vethwe*",),
}
WORKLOAD_PATTERNS = tuple(p for ps in CNI_WORKLOAD.values() for p in ps)
# Devices that tell which CNI runs on the node.
CNI_SIGNS = {
    "calico": ("cali*", "tunl0", "vxlan.calico", "vxlan-v6.calico"),
    "cilium": ("cilium_host", "cilium_net", "lxc*"),
    "flannel": ("flannel.*", "cni0"),
    "aws-vpc-cni": ("eni*",),
    "azure": ("azv*",),
    "weave": ("weave", "vethwe*"),
}

_PATTERN = re.compile(r"^[A-Za-z0-9_.:@*?-]{1,15}$")
_NAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x1, 0x10, 0x100
NETLINK_ROUTE = 0
MASQ_WINDOW_S = 1.0  # a pod's packet leaves the uplink microseconds after its veth: ample
MASQ_CHUNKS = 64  # and at most this many batches of keys are kept
POD_MEMORY_S = 300.0  # a learned pod address is forgotten after 1-2 of these without a packet


def check_patterns(patterns: Sequence[str]) -> list[str]:
    """Interface patterns (shell globs over names), validated: no other character reaches a command."""
    out = []
    for p in patterns:
        if not _PATTERN.match(p):
            raise ConfigError(
                f"collector.interfaces: {p!r} is not an interface name or pattern (A-Z a-z 0-9 _.:@- * ?)"
            )
        out.append(p)
    return out


def is_pattern(p: str) -> bool:
    return "*" in p or "?" in p


def matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def role_of(name: str, patterns: Sequence[str]) -> int:
    """Workload when a pod's pattern matches the name, uplink for the other matches."""
    if name == "any" or (not matches(name, patterns) and "any" not in patterns):
        return IGNORED
    return WORKLOAD if matches(name, WORKLOAD_PATTERNS) else UPLINK


def link_roles(names: dict[int, str], masters: dict[int, str], patterns: Sequence[str]) -> dict[int, int]:
    """The role of every interface. A matched bridge (``cni0``, ``docker0``, a lab's ``br0``)
    stands for its ports: they become workload interfaces and the bridge itself is ignored.

    Why: a capture on ``any`` sees frames bridged between two pods only on the bridge's
    ports (``any`` puts no device in promiscuous mode), and every frame between a pod and
    the host crosses a port too, so the ports alone count each packet once."""
    roles = {i: role_of(n, patterns) for i, n in names.items()}
    bridges = {m for m in masters.values() if role_of(m, patterns) != IGNORED}
    for i, n in names.items():
        if masters.get(i) in bridges:
            roles[i] = WORKLOAD
        elif n in bridges:
            roles[i] = IGNORED
    return roles


def detect_cni(names: Sequence[str]) -> list[str]:
    """The CNIs whose devices this node has (several during a migration)."""
    return [cni for cni, signs in CNI_SIGNS.items() if any(matches(n, signs) for n in names)]


def default_patterns(names: Sequence[str], uplinks: Sequence[str]) -> list[str]:
    """Per-CNI default: its pod interfaces plus the uplinks (interfaces of the default routes).

    With no CNI recognised every known pod pattern is used: patterns that match nothing
    cost nothing (the capture is on ``any``), and pods may appear later.
    """
    cnis = detect_cni(names)
    pods = [p for c in cnis for p in CNI_WORKLOAD[c]] or list(WORKLOAD_PATTERNS)
    return list(dict.fromkeys([*pods, *uplinks]))


def addr_key(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """One uint64 per (hi, lo) address; IPv4 keeps its mapped low half (hi is 0)."""
    return lo ^ (hi * _GOLDEN)


def _ip_json(netns: str, *args: str) -> list[dict[str, object]]:
    cmd = ["ip", "-j", *(["-n", netns] if netns else []), *args]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=10)
    if out.returncode != 0:
        where = f"network namespace {netns!r}" if netns else "this network namespace"
        raise ConfigError(f"cannot list interfaces of {where}: {out.stderr.strip()}")
    data = json.loads(out.stdout or "[]")
    return data if isinstance(data, list) else []


def uplinks(netns: str = "") -> list[str]:
    """Interfaces of the default routes (IPv4 and IPv6)."""
    devs = []
    for fam in ("-4", "-6"):
        with contextlib.suppress(ConfigError, json.JSONDecodeError):
            devs += [str(r.get("dev", "")) for r in _ip_json(netns, fam, "route", "show", "default")]
    return [d for d in dict.fromkeys(devs) if _NAME.match(d)]


@dataclass(frozen=True)
class Snapshot:
    """Interfaces and node addresses at one refresh; replaced whole, never mutated."""

    names: dict[int, str]
    masters: dict[int, str]  # ifindex -> the bridge (or bond) it is a port of
    roles: np.ndarray  # int8 per ifindex (dense up to the largest index; UNKNOWN in the gaps)
    node_addrs: np.ndarray  # sorted uint64 keys of this node's own addresses


class InterfaceTable:
    """Maps interface indexes to roles from the patterns; refreshed on events or a poll."""

    def __init__(self, patterns: Sequence[str], *, netns: str = "") -> None:
        self.requested = check_patterns(patterns)
        self.netns = netns
        self.patterns = list(self.requested)
        self.snapshot = Snapshot({}, {}, np.full(1, UNKNOWN, dtype=np.int8), np.zeros(0, dtype=np.uint64))
        self.refreshes = 0
        self._lock = threading.Lock()

    def resolve(self) -> None:
        """Expand ``auto`` (or no pattern) to the per-CNI default; check literal names exist."""
        links = _ip_json(self.netns, "link", "show")
        names = sorted(str(link.get("ifname", "")) for link in links)
        if not self.requested or "auto" in self.requested:
            extra = [p for p in self.requested if p != "auto"]
            self.patterns = list(dict.fromkeys([*default_patterns(names, uplinks(self.netns)), *extra]))
            log.info(
                "interfaces chosen cnis=%s patterns=%s",
                ",".join(detect_cni(names)) or "none",
                ",".join(self.patterns),
            )
        for p in self.patterns:
            if not is_pattern(p) and p != "any" and p not in names:
                where = f" in network namespace {self.netns}" if self.netns else ""
                raise ConfigError(f"interface {p!r} does not exist{where}; interfaces: {', '.join(names)}")
        self.refresh()

    def refresh(self) -> bool:
        """Re-read interfaces and addresses; True when the set of metered interfaces changed."""
        data = _ip_json(self.netns, "addr", "show")
        names: dict[int, str] = {}
        masters: dict[int, str] = {}
        hi: list[int] = []
        lo: list[int] = []
        for link in data:
            idx, name = link.get("ifindex"), str(link.get("ifname", ""))
            if not isinstance(idx, int) or not _NAME.match(name):
                continue
            names[idx] = name
            master = link.get("master")
            if isinstance(master, str) and _NAME.match(master):
                masters[idx] = master
            infos = link.get("addr_info", [])
            for info in infos if isinstance(infos, list) else []:
                local = info.get("local") if isinstance(info, dict) else None
                if not isinstance(local, str):
                    continue
                with contextlib.suppress(OSError):
                    if ":" in local:
                        b = socket.inet_pton(socket.AF_INET6, local)
                        hi.append(int.from_bytes(b[:8], "big"))
                        lo.append(int.from_bytes(b[8:], "big"))
                    else:
                        hi.append(0)
                        lo.append(int(V4_MAPPED) | int.from_bytes(socket.inet_aton(local), "big"))
        top = min(max(names, default=0), MAX_IFINDEX)
        roles = np.full(top + 1, UNKNOWN, dtype=np.int8)
        by_index = link_roles(names, masters, self.patterns)
        for idx, role in by_index.items():
            if idx <= top:
                roles[idx] = role
        keys = np.unique(addr_key(np.array(hi, dtype=np.uint64), np.array(lo, dtype=np.uint64)))
        with self._lock:
            old = self.snapshot
            self.snapshot = Snapshot(names, masters, roles, keys)
            self.refreshes += 1
        before = {i for i, r in link_roles(old.names, old.masters, self.patterns).items() if r}
        after = {i for i, r in by_index.items() if r}
        if before != after:
            log.info(
                "interfaces changed added=%s removed=%s",
                ",".join(sorted(names[i] for i in after - before)) or "-",
                ",".join(sorted(old.names[i] for i in before - after)) or "-",
            )
        return before != after

    def metered(self) -> dict[str, list[str]]:
        """Names of the metered interfaces by role (for the log and the gauge)."""
        snap = self.snapshot
        out: dict[str, list[str]] = {"workload": [], "uplink": []}
        roles = link_roles(snap.names, snap.masters, self.patterns)
        for idx, name in sorted(snap.names.items()):
            if roles[idx]:
                out[ROLES[roles[idx]]].append(name)
        return out


class InterfaceWatcher:
    """Refreshes an :class:`InterfaceTable` on netlink link/address events, or every ``poll_s``.

    Netlink works in the collector's own namespace; with ``collector.netns`` (another
    namespace) the bounded poll alone applies.
    """

    def __init__(self, table: InterfaceTable, *, poll_s: float = 2.0) -> None:
        self.table = table
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None  # a pipe: stop() ends the wait at once

    def start(self) -> None:
        self._wake = os.pipe()
        self._thread = threading.Thread(target=self._run, name="interface-watch", daemon=True)
        self._thread.start()

    def _open(self) -> socket.socket | None:
        if self.table.netns:
            return None
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            s.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        except OSError as exc:
            log.info("no netlink events, polling every %.1fs: %s", self.poll_s, exc)
            return None
        return s

    def _run(self) -> None:
        assert self._wake is not None
        sock = self._open()
        fds = [self._wake[0], *([sock.fileno()] if sock is not None else [])]
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select(fds, [], [], self.poll_s)
                if self._stop.is_set():
                    break
                if sock is not None and sock.fileno() in ready:
                    for _ in range(256):  # drain a burst of events (pods starting together)
                        sock.recv(65536)
                        if not select.select([sock], [], [], 0.05)[0]:
                            break
                try:
                    self.table.refresh()
                except ConfigError as exc:
                    log.warning("interface refresh failed: %s", exc)
        finally:
            if sock is not None:
                sock.close()

    def stop(self) -> None:
        self._stop.set()
        if self._wake is not None:
            os.write(self._wake[1], b"x")
        if self._thread is not None:
            self._thread.join(self.poll_s + 5)
        if self._wake is not None:
            for fd in self._wake:
                os.close(fd)
            self._wake = None


class SightingFilter:
    """Applies the one-sighting rule (module docstring) to ``LINUX_SLL2`` packet batches.

    Other link types pass unchanged (a capture on one named interface has nothing to
    de-duplicate). Frame lengths are given as the Ethernet frame (the SLL2 header is not
    on the wire), so bytes match a capture on the interface itself.
    """

    def __init__(self, table: InterfaceTable, *, lookup_interval_s: float = 0.2) -> None:
        self.table = table
        self.lookup_interval_s = lookup_interval_s
        self.duplicates = 0  # packets left out: counted at another interface
        self.ignored = 0  # packets of interfaces no pattern matches
        self._pods = (np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint64))  # current, previous
        self._rotated = time.monotonic()
        self._looked_up = 0.0
        self._chunks: list[tuple[float, np.ndarray]] = []  # (newest packet time, keys) per batch
        self._recent = np.zeros(0, dtype=np.uint64)

    def _roles(self, ifindex: np.ndarray) -> np.ndarray:
        def lookup() -> np.ndarray:
            roles = self.table.snapshot.roles
            return np.where(ifindex < len(roles), roles[np.minimum(ifindex, len(roles) - 1)], UNKNOWN)

        role = lookup()
        if (role == UNKNOWN).any() and time.monotonic() - self._looked_up >= self.lookup_interval_s:
            # A new interface (a pod just started): look it up now, not at the next poll.
            self._looked_up = time.monotonic()
            with contextlib.suppress(ConfigError):
                self.table.refresh()
            role = lookup()
        return np.where(role == UNKNOWN, IGNORED, role).astype(np.int8)

    def _answers(
        self, buf: np.ndarray, l3: np.ndarray, fwd: np.ndarray, role: np.ndarray, cand: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Answers to a masqueraded pod: counted on the pod's veth, not on the uplink.

        They arrive on the uplink addressed to the node (before the NAT is undone), then
        leave on the pod's veth addressed to the pod: the source side's packet key
        (address, port, protocol, IP id, length) is the same on both, so the uplink sighting
        is left out and the pod's kept (both in one batch: they are microseconds apart).
        Returns which of ``fwd`` to keep after all, and the uplink packets to leave out.
        """
        none = np.zeros(len(fwd), dtype=bool), np.zeros(0, dtype=np.int64)
        up = np.flatnonzero((role == UPLINK) & cand)
        if not len(up):
            return none
        last = len(buf) - 1
        dst = np.ascontiguousarray(buf[np.minimum(l3[up, None] + 16 + np.arange(4), last)])
        up = up[
            np.isin(dst.view(">u4").ravel().astype(np.uint64) | V4_MAPPED, self.table.snapshot.node_addrs)
        ]
        if not len(up):
            return none
        k_up = _packet_keys(buf, l3[up], source=True)
        k_fwd = _packet_keys(buf, l3[fwd], source=True)
        return np.isin(k_fwd, k_up), up[np.isin(k_up, k_fwd)]

    def _remember(self, ts: np.ndarray, keys: np.ndarray) -> None:
        """Keep the pods' recent packet keys for ``MASQ_WINDOW_S`` of packet time."""
        if len(keys):
            self._chunks.append((float(ts.max()), keys))
        newest = self._chunks[-1][0] if self._chunks else 0.0
        self._chunks = [(t, k) for t, k in self._chunks if newest - t <= MASQ_WINDOW_S][-MASQ_CHUNKS:]
        self._recent = (
            np.concatenate([k for _, k in self._chunks]) if self._chunks else np.zeros(0, np.uint64)
        )

    def is_pod(self, keys: np.ndarray) -> np.ndarray:
        cur, prev = self._pods
        return np.isin(keys, cur) | np.isin(keys, prev)

    def _learn(self, keys: np.ndarray) -> None:
        cur, prev = self._pods
        if time.monotonic() - self._rotated > POD_MEMORY_S:
            cur, prev, self._rotated = np.zeros(0, dtype=np.uint64), cur, time.monotonic()
        new = np.unique(keys)
        new = new[~np.isin(new, cur)]
        if len(new):
            cur = np.union1d(cur, new)
        self._pods = (cur, prev)

    def apply(self, batch: PacketBatch) -> PacketBatch:
        """The packets to meter, in order; see the module docstring for the rule."""
        sll2 = batch.linktype == DLT_LINUX_SLL2
        if not sll2.any():
            return batch
        buf, off = batch.buf, batch.off
        last = len(buf) - 1
        b = buf[np.minimum(off[:, None] + np.arange(SLL2_LEN), last)].astype(np.int64)
        ifindex = (b[:, 4] << 24) | (b[:, 5] << 16) | (b[:, 6] << 8) | b[:, 7]
        arphrd = (b[:, 8] << 8) | b[:, 9]
        outgoing = b[:, 10] == PACKET_OUTGOING
        role = np.where(sll2, self._roles(ifindex), UPLINK)
        keep = role != IGNORED
        self.ignored += int((~keep).sum())

        sent_by_pod = (role == WORKLOAD) & ~outgoing & sll2
        ethertype = (b[:, 0] << 8) | b[:, 1]
        v4 = ethertype == 0x0800
        l3 = off + SLL2_LEN
        if sent_by_pod.any():
            self._learn(_plain_sources(buf, l3, ethertype, sent_by_pod))
            pod_v4 = np.flatnonzero(sent_by_pod & v4)
            self._remember(batch.ts, _packet_keys(buf, l3[pod_v4], source=False))
        check = np.flatnonzero(keep & outgoing & sll2)
        if len(check):
            src = self._sources(batch, check)
            to_pod = role[check] == WORKLOAD
            from_node = np.isin(src, self.table.snapshot.node_addrs)
            # Host to pod: only when the host itself sent it. Uplink out: not when a pod sent it,
            # nor when it is a pod's packet masqueraded to the node's address (same packet key).
            drop = np.where(to_pod, ~from_node, self.is_pod(src))
            masq = ~to_pod & from_node & v4[check]
            if masq.any() and len(self._recent):
                keys = _packet_keys(buf, l3[check[masq]], source=False)
                drop[np.flatnonzero(masq)[np.isin(keys, self._recent)]] = True
            forwarded = to_pod & ~from_node & v4[check]
            if forwarded.any():
                revived, answered = self._answers(buf, l3, check[forwarded], role, ~outgoing & keep & v4)
                drop[np.flatnonzero(forwarded)[revived]] = False
                keep[answered] = False
                self.duplicates += len(answered)
            keep[check[drop]] = False
            self.duplicates += int(drop.sum())
        idx = np.flatnonzero(keep)
        wirelen = batch.wirelen[idx]
        is2 = sll2[idx]
        link = np.where(arphrd[idx] == ARPHRD_ETHER, 14, 0)
        wirelen = np.where(is2, np.maximum(wirelen - SLL2_LEN + link, 0), wirelen)
        return PacketBatch(buf, off[idx], batch.caplen[idx], wirelen, batch.ts[idx], batch.linktype[idx])

    @staticmethod
    def _sources(batch: PacketBatch, idx: np.ndarray) -> np.ndarray:
        """Source address keys of these packets (the inner source when tunnelled)."""
        sub = PacketBatch(
            batch.buf,
            batch.off[idx],
            batch.caplen[idx],
            batch.wirelen[idx],
            batch.ts[idx],
            batch.linktype[idx],
        )
        d = decode(sub)
        return addr_key(d.src_hi, d.src_lo)


def _plain_sources(buf: np.ndarray, l3: np.ndarray, ethertype: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Source keys of untunnelled IPv4/IPv6 packets, read in place (cheaper than a decode).

    A pod's own interface carries no overlay, so the outer source is the pod's address.
    """
    last = len(buf) - 1
    v4 = np.flatnonzero(mask & (ethertype == 0x0800))
    v6 = np.flatnonzero(mask & (ethertype == 0x86DD))
    keys = []
    if len(v4):
        raw = buf[np.minimum(l3[v4, None] + 12 + np.arange(4), last)]
        lo = np.ascontiguousarray(raw).view(">u4").ravel().astype(np.uint64) | V4_MAPPED
        keys.append(addr_key(np.zeros(len(v4), dtype=np.uint64), lo))
    if len(v6):
        raw = np.ascontiguousarray(buf[np.minimum(l3[v6, None] + 8 + np.arange(16), last)])
        halves = raw.view(">u8").reshape(-1, 2).astype(np.uint64)
        keys.append(addr_key(halves[:, 0].copy(), halves[:, 1].copy()))
    return np.concatenate(keys) if keys else np.zeros(0, dtype=np.uint64)


def _packet_keys(buf: np.ndarray, l3: np.ndarray, *, source: bool) -> np.ndarray:
    """What NAT leaves alone in an IPv4 packet, per packet at ``l3``.

    ``source=False``: destination address and port, protocol, IP id, total length (source NAT
    rewrites the other side); ``source=True``: the source side (the reverse NAT of an answer
    rewrites the destination). A pod's packet masqueraded to the node's address has the same
    key on the uplink as on the pod's veth; the node's own packets almost never do (the IP id
    differs).
    """
    if not len(l3):
        return np.zeros(0, dtype=np.uint64)
    last = len(buf) - 1
    head = buf[np.minimum(l3[:, None] + np.arange(20), last)].astype(np.uint64)
    at = 12 if source else 16
    addr = (head[:, at] << 24) | (head[:, at + 1] << 16) | (head[:, at + 2] << 8) | head[:, at + 3]
    ihl = (head[:, 0] & 0x0F).astype(np.int64) * 4
    port_at = np.minimum(l3 + ihl + (0 if source else 2), last - 1)
    port = (buf[port_at].astype(np.uint64) << np.uint64(8)) | buf[port_at + 1].astype(np.uint64)
    proto = head[:, 9]
    port = np.where((proto == 6) | (proto == 17), port, np.uint64(0))
    ident = (head[:, 4] << np.uint64(8)) | head[:, 5]
    length = (head[:, 2] << np.uint64(8)) | head[:, 3]
    a = addr | (port << np.uint64(32)) | (proto << np.uint64(48)) | (np.uint64(source) << np.uint64(63))
    return a ^ (((ident << np.uint64(16)) | length) * _GOLDEN)
