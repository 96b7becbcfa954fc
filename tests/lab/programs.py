"""The lab's own programs, run inside its namespaces: ``python -m tests.lab.programs ROLE …``.

Servers speak real HTTP (and TLS where the real service does: the API server, etcd, the
kubelet, the controller manager, the scheduler, the SaaS API, object storage); clients use
the system resolver (each namespace's ``/etc/netns/<ns>/resolv.conf`` points at the cluster
DNS) or ``curl``. Standard library only, so they start fast on a busy machine. Every client
loop is bounded by ``--until`` (a wall-clock deadline) as well as by its caller's SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.lab import topology as T

# ---------------------------------------------------------------------- servers


class Handler(BaseHTTPRequestHandler):
    """GET: a JSON body of ``reply_bytes``; PUT/POST: the body is read and acknowledged.

    ``downstream`` URLs are fetched before answering: the request chains between pods.
    """

    protocol_version = "HTTP/1.1"
    timeout = 10.0
    reply_bytes = 600
    downstream: tuple[str, ...] = ()
    db: tuple[str, int] | None = None  # a database read on every GET (the cart's)
    tls_ctx: ssl.SSLContext | None = None

    def setup(self) -> None:
        # The TLS handshake happens here, in the request's thread: a client that connects and
        # says nothing (nmap -sT) never stalls the accept loop.
        if self.tls_ctx is not None:
            self.request.settimeout(self.timeout)
            self.request = self.tls_ctx.wrap_socket(self.request, server_side=True)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _reply(self, body: bytes, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def do_GET(self) -> None:
        for url in self.downstream:
            with contextlib.suppress(Exception):
                http_get(url, timeout=3)
        if self.db is not None:
            with contextlib.suppress(Exception):
                db_query(*self.db, 2500)
        size = self.reply_bytes
        if "size=" in self.path:
            with contextlib.suppress(ValueError):
                size = min(int(self.path.split("size=", 1)[1].split("&")[0]), 50_000_000)
        pad = "x" * max(0, size - 40)
        self._reply(json.dumps({"path": self.path[:64], "pad": pad}).encode())

    def _receive(self) -> None:
        left = int(self.headers.get("Content-Length") or 0)
        got = 0
        with contextlib.suppress(OSError):
            while left > 0:
                chunk = self.rfile.read(min(65536, left))
                if not chunk:
                    break
                left -= len(chunk)
                got += len(chunk)
        self._reply(json.dumps({"received": got}).encode(), 201 if self.command == "PUT" else 200)

    do_PUT = _receive
    do_POST = _receive


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def serve_http(
    bind: str,
    port: int,
    *,
    tls: ssl.SSLContext | None = None,
    reply_bytes: int = 600,
    downstream: Sequence[str] = (),
    db: tuple[str, int] | None = None,
) -> ThreadingHTTPServer:
    """An HTTP(S) server on its own daemon thread."""
    attrs = {"tls_ctx": tls, "reply_bytes": reply_bytes, "downstream": tuple(downstream), "db": db}
    handler = type("LabHandler", (Handler,), attrs)
    server = ThreadingHTTPServer((bind, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def serve_tcp_reply(bind: str, port: int, reply_bytes: int) -> None:
    """A database stand-in: read one request, answer ``reply_bytes`` (the size may be asked for)."""
    srv = socket.create_server((bind, port), reuse_port=False)

    def one(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                req = conn.recv(4096)
                size = reply_bytes
                if req.startswith(b"SELECT ") and req[7:].strip().isdigit():
                    size = min(int(req[7:].strip()), 5_000_000)
                conn.sendall(b"r" * size)
            except OSError:
                return

    def loop() -> None:
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=one, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


# ---------------------------------------------------------------------- clients

_NO_VERIFY = ssl.create_default_context()
_NO_VERIFY.check_hostname = False
_NO_VERIFY.verify_mode = ssl.CERT_NONE


def http_get(url: str, *, timeout: float = 5.0, data: bytes | None = None, method: str | None = None) -> int:
    req = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(req, timeout=timeout, context=_NO_VERIFY) as r:
        return len(r.read())


def db_query(ip: str, port: int, size: int) -> int:
    with socket.create_connection((ip, port), timeout=5) as s:
        s.sendall(f"SELECT {size}\n".encode())
        s.shutdown(socket.SHUT_WR)
        got = 0
        while chunk := s.recv(65536):
            got += len(chunk)
        return got


def every(
    period: float, jitter: float, until: float, rng: random.Random, action: Callable[[], object]
) -> None:
    """``action`` every ``period`` ± ``jitter`` (a share) until the wall-clock ``until``."""
    time.sleep(rng.uniform(0, period))
    while time.time() < until:
        with contextlib.suppress(Exception):
            action()
        time.sleep(period * (1 + rng.uniform(-jitter, jitter)))


def in_threads(loops: Sequence[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=f, daemon=True) for f in loops]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# ---------------------------------------------------------------------- roles


def pod(role: str, until: float, seed: int, certs: Path) -> None:
    """A pod: its metrics endpoint, its service, and its part of the request chains."""
    rng = random.Random(f"{seed}-{role}")
    ip = T.POD_BY_ROLE[role].ip
    serve_http(ip, T.METRICS_PORT, reply_bytes=1800)
    loops: list[Callable[[], None]] = []
    if role in ("frontend", "frontend-b", "attacker"):
        serve_http(
            ip, T.APP_PORT, reply_bytes=4000, downstream=(f"http://{T.SVC['checkout']}:{T.APP_PORT}/",)
        )
        loops.append(
            lambda: every(
                20.0, 0.5, until, rng, lambda: http_get(f"http://{T.SVC['checkout']}:{T.APP_PORT}/cart")
            )
        )
    elif role == "checkout":
        serve_http(ip, T.APP_PORT, reply_bytes=1200, downstream=(f"http://{T.SVC['cart']}:{T.APP_PORT}/",))
        # The payment provider: a SaaS API every checkout calls, on a steady schedule too
        # (a health check every 30 s: the regular, benign twin of a beacon).
        loops.append(
            lambda: every(
                40.0, 0.6, until, rng, lambda: http_get(f"https://{T.SAAS_NAME}/v1/charges", data=b"a" * 900)
            )
        )
        loops.append(lambda: every(30.0, 0.0, until, rng, lambda: http_get(f"https://{T.SAAS_NAME}/health")))
    elif role == "cart":
        serve_http(ip, T.APP_PORT, reply_bytes=800, db=(T.POD_BY_ROLE["db"].ip, T.DB_PORT))
    elif role == "db":
        serve_tcp_reply(ip, T.DB_PORT, 3000)
    elif role == "prometheus":
        targets = [f"http://{p.ip}:{T.METRICS_PORT}/metrics" for p in T.PODS if p.role != "backup"]
        targets += [f"https://{n}:{T.KUBELET_PORT}/metrics" for n in (T.NODE_A, T.NODE_B, T.CONTROL_PLANE)]
        targets += [f"https://{T.CONTROL_PLANE}:{T.API_PORT}/metrics"]

        def scrape() -> None:
            for url in targets:
                with contextlib.suppress(Exception):
                    http_get(url, timeout=3)

        loops.append(lambda: every(30.0, 0.05, until, rng, scrape))
    in_threads(loops) if loops else _sleep_until(until)


def node(name: str, until: float, seed: int, certs: Path) -> None:
    """A node: its kubelet (TLS 10250) that reports to the API server and reads the metadata API."""
    rng = random.Random(f"{seed}-{name}")
    ip = T.NODE_IPS[name]
    tls = tls_context(certs / "server.crt", certs / "server.key")
    serve_http(ip, T.KUBELET_PORT, tls=tls, reply_bytes=2500)
    api = f"https://{T.CONTROL_PLANE}:{T.API_PORT}"
    loops: list[Callable[[], None]] = [
        lambda: every(20.0, 0.1, until, rng, lambda: http_get(f"{api}/api/v1/nodes/{name}")),
        lambda: every(
            20.0,
            0.1,
            until,
            rng,
            lambda: http_get(f"{api}/api/v1/nodes/{name}/status", data=b"s" * 700, method="PATCH"),
        ),
        lambda: every(
            60.0, 0.2, until, rng, lambda: http_get(f"http://{T.METADATA}/latest/meta-data/instance-id")
        ),
    ]
    in_threads(loops)


def control_plane(until: float, seed: int, certs: Path) -> None:
    """API server, etcd (client and peer), kubelet, controller manager, scheduler: all TLS."""
    rng = random.Random(f"{seed}-cp")
    tls = tls_context(certs / "server.crt", certs / "server.key")
    ip = T.CONTROL_PLANE
    serve_http(ip, T.API_PORT, tls=tls, reply_bytes=3000)
    for port in (T.ETCD_PORT, T.ETCD_PEER_PORT, T.CONTROLLER_PORT, T.SCHEDULER_PORT):
        serve_http(ip, port, tls=tls, reply_bytes=400)
    serve_http(ip, T.KUBELET_PORT, tls=tls, reply_bytes=2500)
    # The API server reaches the kubelets (logs, exec, metrics) now and then.
    kubelets = [f"https://{n}:{T.KUBELET_PORT}/healthz" for n in (T.NODE_A, T.NODE_B)]
    in_threads([lambda: every(60.0, 0.3, until, rng, lambda: [http_get(u) for u in kubelets])])


def metadata(until: float) -> None:
    serve_http(T.METADATA, 80, reply_bytes=300)
    _sleep_until(until)


def internet(until: float, certs: Path) -> None:
    """The SaaS API, object storage and the attacker's HTTP servers (iodined runs beside)."""
    tls = tls_context(certs / "server.crt", certs / "server.key")
    serve_http(T.SAAS, 443, tls=tls, reply_bytes=700)
    serve_http(T.STORAGE, 443, tls=tls, reply_bytes=300)
    serve_http("0.0.0.0", 80, reply_bytes=200)  # C2, exfil drop, and the tunnel's far end
    serve_http(T.EXFIL, 443, tls=tls, reply_bytes=200)
    _sleep_until(until)


def beacon(url: str, interval: float, jitter: float, count: int, seed: int, until: float) -> None:
    """An HTTP beacon: ``curl`` POSTs a small check-in every ``interval`` ± ``jitter`` share."""
    rng = random.Random(f"{seed}-beacon")
    for i in range(count):
        if time.time() >= until:
            break
        body = json.dumps({"id": "a1b2", "seq": i, "out": "x" * rng.randrange(40, 160)})
        subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "--max-time", "5", "-X", "POST", "-d", body, url],
            check=False,
            timeout=10,
        )
        if i < count - 1:
            time.sleep(max(0.2, interval * (1 + rng.uniform(-jitter, jitter))))


def backup(until: float) -> None:
    """One run of the backup CronJob: read the database, upload the dump to object storage."""
    got = 0
    with contextlib.suppress(Exception):
        got = db_query(T.POD_BY_ROLE["db"].ip, T.DB_PORT, 400_000)
    path = Path(f"/tmp/fw-lab-backup-{int(time.time() * 1000)}.bin")
    try:
        path.write_bytes(random.randbytes(T.BACKUP_BYTES))
        subprocess.run(
            [
                "curl",
                "-sk",
                "-o",
                "/dev/null",
                "--max-time",
                "60",
                "--limit-rate",
                "2M",
                "-T",
                str(path),
                f"https://{T.STORAGE_NAME}/backups/db-{int(time.time())}.dump",
            ],
            check=False,
            timeout=70,
        )
    finally:
        path.unlink(missing_ok=True)
    print(json.dumps({"db_bytes": got, "uploaded": T.BACKUP_BYTES}))


def _sleep_until(until: float) -> None:
    while time.time() < until:
        time.sleep(min(5.0, max(0.0, until - time.time())))


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.lab.programs")
    ap.add_argument("role")
    ap.add_argument("--until", type=float, required=True, help="wall-clock end (epoch seconds)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--certs", type=Path, default=Path("."))
    ap.add_argument("--url", default="")
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--jitter", type=float, default=0.2)
    ap.add_argument("--count", type=int, default=10)
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    until = min(a.until, time.time() + 4 * 3600)  # never more than four hours, whatever was asked
    if a.role in T.POD_BY_ROLE and a.role != "backup":
        pod(a.role, until, a.seed, a.certs)
    elif a.role in T.NODE_IPS:
        node(a.role, until, a.seed, a.certs)
    elif a.role == "control-plane":
        control_plane(until, a.seed, a.certs)
    elif a.role == "metadata":
        metadata(until)
    elif a.role == "internet":
        internet(until, a.certs)
    elif a.role == "beacon":
        beacon(a.url, a.interval, a.jitter, a.count, a.seed, until)
    elif a.role == "backup":
        backup(until)
    else:
        ap.error(f"unknown role {a.role}")


if __name__ == "__main__":
    main()
