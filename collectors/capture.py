"""Live capture: one capture child on the ``any`` device writing a pcap stream to a pipe.

Why one child on ``any`` (not one per interface): pods' veths come and go; the ``any``
device sees them all from their first packet without restarting anything, and its
``LINUX_SLL2`` link header tells, per packet, the interface and whether the host sent or
received it. :class:`~collectors.interfaces.SightingFilter` keeps the interfaces the
``collector.interfaces`` patterns select and counts each packet once (see
``collectors/interfaces.py``); the measured cost with 100 interfaces is in
``benchmarks/bench_interfaces.py`` and the README.

Why a capture tool rather than an AF_PACKET socket in Python: the kernel-side work (the
ring, the BPF filter, the snap length) stays in C and our process only parses big chunks
of a pcap stream with the same code as a file (:class:`~collectors.pcapfile.PcapStream`);
reading a capture (``tcpdump -r FILE -w /dev/null``) runs at 5-10M packets/s here, far above
the metering path (~0.6-0.9M packets/s), so the pipe is never the bottleneck.

Which tool (``collector.capture_tool``), measured on this machine:

* ``dumpcap`` (default): runs as root with *only* ``NET_RAW`` and ``NET_ADMIN``, as the
  DaemonSet grants; kernel drops are reported when it stops (its final statistics line).
  It has no immediate mode and does not drain the kernel ring on a signal (measured: the
  packets of the last ~0.3 s are lost, uncounted even by dumpcap), so :meth:`stop` first
  waits until its pipe has been quiet for ``DRAIN_QUIET_S`` (at most ``DRAIN_MAX_S``):
  everything captured before the stop request is delivered (its latency is bounded by
  its 250 ms ring timeout plus 100 ms update interval).
* ``tcpdump``: reports kernel drops while running (``SIGUSR1``), but it insists on
  dropping privileges to a user (``setuid``/``setgroups``), which fails without
  ``CAP_SETUID``/``CAP_SETGID``: use it where those are granted.

The child is started with an argument list (never a shell string); no interface name
reaches it (the device is ``any``); the BPF expression is one argument, and the clause that
leaves out the collector's own Kafka traffic is built only from validated ``host:port`` pairs.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence

from flowwarden.collectors.interfaces import InterfaceTable, InterfaceWatcher, SightingFilter
from flowwarden.collectors.pcapfile import PacketBatch, PcapStream
from flowwarden.errors import ConfigError, ServiceUnavailable

log = logging.getLogger("flowwarden.collector.capture")

_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_IFACE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")
_DROPS = re.compile(rb"(\d+) packets? dropped by kernel")  # tcpdump
_DUMPCAP_DROPS = re.compile(rb"Packets received/dropped on interface .*: \d+/(\d+)")
_READY = (b"listening on", b"Capturing on")
INSTALL = {"tcpdump": "apt-get install tcpdump", "dumpcap": "apt-get install wireshark-common"}
READ_BYTES = 1 << 20
DRAIN_QUIET_S = 0.4
DRAIN_MAX_S = 1.0
PIPE_BYTES = 1 << 20  # the default /proc/sys/fs/pipe-max-size
# The kernel ring of the one capture on ``any``: it absorbs bursts of every interface of the
# node (the default 2 MiB dropped 13% of a 400k-packet burst over 100 veths; see the README).
ANY_BUFFER_MIB = 64


def parse_host_port(server: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``, validated (raises :class:`ConfigError`)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", server.strip())
    if not m:
        raise ConfigError(f"kafka.bootstrap_servers: {server!r} is not host:port")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        if not _HOSTNAME.match(host):
            raise ConfigError(f"kafka.bootstrap_servers: {host!r} is not an address or host name") from None
    if not 0 < int(port) < 65536:
        raise ConfigError(f"kafka.bootstrap_servers: port {port} outside 1-65535")
    return host, int(port)


def build_bpf(user_bpf: str, exclude: Sequence[str] = ()) -> str:
    """The capture filter: the user's expression, minus traffic to the given ``host:port``."""
    clauses = [f"({user_bpf.strip()})"] if user_bpf.strip() else []
    for server in exclude:
        host, port = parse_host_port(server)
        clauses.append(f"not (host {host} and tcp port {port})")
    return " and ".join(clauses)


def list_interfaces(netns: str = "") -> list[str]:
    """Interfaces of this network namespace (or of ``netns``)."""
    if not netns:
        return sorted(name for _, name in socket.if_nameindex())
    out = subprocess.run(
        ["ip", "-n", netns, "-o", "link", "show"], check=False, capture_output=True, text=True, timeout=10
    )
    if out.returncode != 0:
        raise ConfigError(f"collector.netns: network namespace {netns!r} not found ({out.stderr.strip()})")
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines() if ":" in line)


def check_interfaces(interfaces: Sequence[str], netns: str = "") -> None:
    """One clear line when an interface does not exist, listing those that do."""
    if not interfaces:
        raise ConfigError("collect: give at least one --interface (or collector.interfaces)")
    existing = list_interfaces(netns)
    for iface in interfaces:
        if not _IFACE.match(iface) or (iface not in existing and iface != "any"):
            where = f" in network namespace {netns}" if netns else ""
            raise ConfigError(f"interface {iface!r} does not exist{where}; interfaces: {', '.join(existing)}")


def tool_path(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ServiceUnavailable(f"{tool} is not installed: {INSTALL.get(tool, 'install it')}")
    return path


class InterfaceCapture:
    """One capture child; a reader thread parses its stream into packet batches."""

    def __init__(
        self,
        iface: str,
        *,
        bpf: str,
        snaplen: int,
        netns: str,
        out: queue.Queue[PacketBatch],
        tool: str = "dumpcap",
        sighting: SightingFilter | None = None,
    ) -> None:
        self.iface = iface
        self.label = ""  # what the operator asked for (the interface patterns), for messages
        self.sighting = sighting
        self.tool = tool
        self.bpf = bpf
        self.snaplen = snaplen
        self.netns = netns
        self.out = out
        self.stream = PcapStream()
        self.kernel_drops = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._threads: list[threading.Thread] = []
        self._ready = threading.Event()
        self._banner = False  # the tool said it is capturing (not merely: its stderr closed)
        self._data = threading.Event()  # set whenever the pipe delivered bytes
        self._header = threading.Event()  # the pcap stream header arrived

    def args(self) -> list[str]:
        path = tool_path(self.tool)
        if self.tool == "dumpcap":
            args = [path, "-i", self.iface, *self._link(), "-s", str(self.snaplen), "-P", "-w", "-", "-q"]
            if self.bpf:
                args += ["-f", self.bpf]
        else:
            # -Z root: stay root rather than switch to the tcpdump user (the pipe is ours anyway).
            args = [
                path,
                "-i",
                self.iface,
                *self._link(),
                "-s",
                str(self.snaplen),
                "-w",
                "-",
                "-U",
                "-n",
                "--immediate-mode",
            ]
            args += ["-Z", "root"]
            if self.bpf:
                args.append(self.bpf)
        return ["ip", "netns", "exec", self.netns, *args] if self.netns else args

    def _link(self) -> list[str]:
        """``any`` in SLL2 (the header carries each packet's interface and direction), with a
        ring sized for every interface of the node at once (``ANY_BUFFER_MIB``)."""
        if self.iface != "any":
            return []
        size = str(ANY_BUFFER_MIB if self.tool == "dumpcap" else ANY_BUFFER_MIB * 1024)  # tcpdump: KiB
        return ["-y", "LINUX_SLL2", "-B", size]

    def start(self, timeout_s: float = 10.0) -> None:
        self._proc = subprocess.Popen(self.args(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._threads = [
            threading.Thread(target=self._read, name=f"capture-{self.iface}", daemon=True),
            threading.Thread(target=self._stats, name=f"capture-stats-{self.iface}", daemon=True),
        ]
        for t in self._threads:
            t.start()
        deadline = time.monotonic() + timeout_s
        ok = self._ready.wait(timeout_s) and self._banner
        if ok and self.tool == "dumpcap":
            # dumpcap prints its banner before the socket is live (measured: the first
            # packets after it were missed); its pcap header comes once it is.
            ok = self._header.wait(max(0.0, deadline - time.monotonic()))
        if not ok or self._proc.poll() is not None:
            self.stop()
            raise ServiceUnavailable(
                f"{self.tool} did not start on {self.label or self.iface}: {self.stderr_tail}"
            )

    stderr_tail = ""

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        with contextlib.suppress(OSError):  # bigger reads under load: fewer, larger batches
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        while True:
            data = os.read(fd, READ_BYTES)
            if not data:
                break
            self._data.set()
            batch = self.stream.feed(data)
            if self.stream.started:
                self._header.set()
            if len(batch) and self.sighting is not None:
                batch = self.sighting.apply(batch)
            if len(batch):
                # Blocking on purpose: when metering falls behind, the pipe fills, tcpdump
                # stops reading its socket and the kernel drops, counted as kernel drops.
                self.out.put(batch)
            if self.stream.failed:
                log.error("capture stream unreadable iface=%s error=%s", self.iface, self.stream.error)
                break

    def _stats(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            if any(r in line for r in _READY):
                self._banner = True
                self._ready.set()
            m = _DROPS.search(line) or _DUMPCAP_DROPS.search(line)
            if m:
                self.kernel_drops = max(self.kernel_drops, int(m.group(1)))
            elif line.strip() and not any(r in line for r in _READY):
                self.stderr_tail = line.decode("utf-8", "replace").strip()
        self._ready.set()

    def _drain(self) -> None:
        """Wait until the pipe is quiet (or ``DRAIN_MAX_S``): see the module docstring."""
        deadline = time.monotonic() + DRAIN_MAX_S
        while self.alive and time.monotonic() < deadline:
            self._data.clear()
            if not self._data.wait(min(DRAIN_QUIET_S, max(0.0, deadline - time.monotonic()))):
                return  # quiet long enough: everything before the stop request has arrived

    def request_stats(self) -> None:
        """Ask tcpdump to print its counters (kernel drops); dumpcap prints them when it stops."""
        if self.tool == "tcpdump" and self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGUSR1)

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the child (it writes out what it holds) and read the stream to its end."""
        proc = self._proc
        if proc is None:
            return
        if self.tool == "dumpcap":
            self._drain()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
        for t in self._threads:
            t.join(timeout_s)
        self.stream.close()


class LiveCapture:
    """The node's capture: one child on ``any``, interfaces chosen by pattern, one sighting per packet."""

    def __init__(
        self,
        interfaces: Sequence[str],
        *,
        bpf: str = "",
        snaplen: int = 256,
        netns: str = "",
        queue_max: int = 64,
        tool: str = "dumpcap",
        poll_s: float = 2.0,
    ) -> None:
        self.queue: queue.Queue[PacketBatch] = queue.Queue(maxsize=queue_max)
        self.table = InterfaceTable(interfaces, netns=netns)
        self.sighting = SightingFilter(self.table)
        self.watcher = InterfaceWatcher(self.table, poll_s=poll_s)
        self.captures = [
            InterfaceCapture(
                "any",
                bpf=bpf,
                snaplen=snaplen,
                netns=netns,
                out=self.queue,
                tool=tool,
                sighting=self.sighting,
            )
        ]
        self.tool = tool
        self.interfaces = list(interfaces)  # the patterns; resolved by start()
        self.netns = netns

    def start(self) -> None:
        tool_path(self.tool)
        self.table.resolve()
        self.interfaces = list(self.table.patterns)
        for c in self.captures:
            c.label = ",".join(self.interfaces)
        self.watcher.start()
        try:
            for c in self.captures:
                c.start()
        except Exception:
            self.watcher.stop()
            raise

    def stop(self) -> None:
        for c in self.captures:
            c.stop()
        self.watcher.stop()

    def request_stats(self) -> None:
        for c in self.captures:
            c.request_stats()

    @property
    def kernel_drops(self) -> int:
        return sum(c.kernel_drops for c in self.captures)

    @property
    def duplicates(self) -> int:
        """Packets left out by the one-sighting rule so far."""
        return self.sighting.duplicates
