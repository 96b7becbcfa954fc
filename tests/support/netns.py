"""Isolated network namespaces for tests: hosts joined by veth pairs, never linked to the host.

Every namespace gets a unique name prefix so that parallel or aborted runs never collide,
and :meth:`Lab.close` (or the context manager) deletes everything it made. Commands run
with ``ip netns exec`` as argument lists, never shell strings.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


def netns_available() -> bool:
    """True when this process may create network namespaces (root and iproute2)."""
    return os.geteuid() == 0 and shutil.which("ip") is not None


class CommandFailed(subprocess.CalledProcessError):
    """A lab command that failed, shown with what it wrote to stderr (the reason)."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr: {(self.stderr or '').strip()[-2000:]}"


def run(
    args: Sequence[str], *, check: bool = True, timeout: float = 30.0, **kw: Any
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), timeout=timeout, capture_output=True, text=True, **kw)
    if check and done.returncode:
        raise CommandFailed(done.returncode, done.args, done.stdout, done.stderr)
    return done


def wait_for(predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` when ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")


@dataclass
class Host:
    """One namespace: an "attacker pod", a "target", a "router"…"""

    name: str  # full namespace name
    short: str

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return run(self.cmd(*args), check=check, timeout=timeout)

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.cmd(*args), **kw)


@dataclass
class Lab:
    """A set of namespaces made by one test; closed (deleted) at the end."""

    prefix: str = field(default_factory=lambda: f"fw{uuid.uuid4().hex[:6]}")
    hosts: dict[str, Host] = field(default_factory=dict)
    _links: int = 0

    def host(self, short: str) -> Host:
        name = f"{self.prefix}-{short}"
        run(["ip", "netns", "add", name])
        h = Host(name=name, short=short)
        self.hosts[short] = h
        h.run("ip", "link", "set", "lo", "up")
        return h

    def link(self, a: Host, a_addr: str, b: Host, b_addr: str) -> tuple[str, str]:
        """A veth pair between two namespaces; addresses in CIDR form ("10.0.0.1/24").

        Returns the interface names (in ``a``, in ``b``).
        """
        self._links += 1
        ia, ib = f"v{self._links}{a.short[:5]}", f"v{self._links}{b.short[:5]}"
        tmp_a, tmp_b = f"t{uuid.uuid4().hex[:10]}", f"t{uuid.uuid4().hex[:10]}"
        run(
            [
                "ip",
                "link",
                "add",
                tmp_a,
                "netns",
                a.name,
                "type",
                "veth",
                "peer",
                "name",
                tmp_b,
                "netns",
                b.name,
            ]
        )
        a.run("ip", "link", "set", tmp_a, "name", ia)
        b.run("ip", "link", "set", tmp_b, "name", ib)
        for h, iface, addr in ((a, ia, a_addr), (b, ib, b_addr)):
            if addr:
                h.run("ip", "addr", "add", addr, "dev", iface)
            h.run("ip", "link", "set", iface, "up")
        return ia, ib

    def bridge(self, host: Host, name: str, addr: str = "") -> str:
        host.run("ip", "link", "add", name, "type", "bridge")
        if addr:
            host.run("ip", "addr", "add", addr, "dev", name)
        host.run("ip", "link", "set", name, "up")
        return name

    def close(self) -> None:
        for h in self.hosts.values():
            # Kill whatever still runs inside, then remove the namespace.
            pids = run(["ip", "netns", "pids", h.name], check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            run(["ip", "netns", "del", h.name], check=False)
        self.hosts.clear()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
