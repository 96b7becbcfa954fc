"""A network-namespace "cluster" for the end-to-end test, and the small programs that run in it.

::

    web      10.244.1.10 ─┐                      ┌─ control plane 10.0.0.10 (6443, 2379, 10250)
    client   10.244.1.11 ─┤                      │
    scraper  10.244.1.12 ─┼─ br0 ─ router ───────┼─ cluster DNS 10.96.0.10 (dnsmasq)
    attacker 10.244.1.13 ─┘  10.244.1.1  (tansu, │
                              collector, pipeline└─ "internet" 198.51.100.20 (+ 203.0.113.10, 192.0.2.10)
                              enforcer, nft)

Every namespace is created by :class:`~tests.support.netns.Lab`; none is linked to the host's.
The broker (``tansu``, the same binary as the ``kafka_broker`` fixture) listens on the router's
loopback, where the collector, the pipeline and the enforcer (separate processes, all in the
router namespace) reach it; the test reads their effects from the files they leave (SQLite
stores, nft sets, the traffic programs' JSON lines).

``python -m tests.e2e.cluster serve|benign|listen …`` are the programs the test runs inside
the namespaces (argument lists only, no shell). They use the standard library only, so they
start fast on a busy machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

GATEWAY = "10.244.1.1"
PODS: dict[str, str] = {
    "web": "10.244.1.10",
    "client": "10.244.1.11",
    "scraper": "10.244.1.12",
    "attacker": "10.244.1.13",
}
CONTROL_PLANE, CP_ROUTER = "10.0.0.10", "10.0.0.1"
CP_PORTS = (6443, 2379, 10250)
DNS, DNS_ROUTER = "10.96.0.10", "10.96.0.9"
INTERNET, INTERNET_ROUTER = "198.51.100.20", "198.51.100.1"
SAAS = "203.0.113.10"  # an external API the workloads use every day (known before the attack)
OTHER_EXTERNAL = "192.0.2.10"
WEB_PORT, METRICS_PORT, INTERNET_PORT = 8080, 9100, 8080
BROKER_PORT = 9092
NODE = "node-a"

# name -> (namespace, pod name, owner kind, owner name): what ``kubectl get pods -A`` would say.
WORKLOADS: dict[str, tuple[str, str, str, str]] = {
    "web": ("shop", "web-5c8d7f9b4-x2k8q", "ReplicaSet", "web-5c8d7f9b4"),
    "client": ("shop", "checkout-7f6d5c4b3-pq9rs", "ReplicaSet", "checkout-7f6d5c4b3"),
    "scraper": ("monitoring", "prometheus-0", "StatefulSet", "prometheus"),
    "attacker": ("shop", "frontend-6b9f8d7c5-abcde", "ReplicaSet", "frontend-6b9f8d7c5"),
}
# The compromised pod is one of three frontend replicas; the other two run on another node.
OTHER_REPLICAS = (("frontend-6b9f8d7c5-fghij", "10.244.2.21"), ("frontend-6b9f8d7c5-klmno", "10.244.2.22"))


# ---------------------------------------------------------------------- the topology


@dataclass
class Cluster:
    """The namespaces, the processes started in them, and where their results land."""

    lab: Any  # tests.support.netns.Lab
    workdir: Path
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    @property
    def router(self) -> Any:
        return self.lab.hosts["router"]

    def host(self, short: str) -> Any:
        return self.lab.hosts[short]

    def log(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def start(self, name: str, host: str, *args: str, env: dict[str, str] | None = None) -> None:
        """A long-running process inside ``host``'s namespace, its output in ``logs/<name>.log``."""
        self.log(name).parent.mkdir(parents=True, exist_ok=True)
        with open(self.log(name), "ab") as out:
            proc = self.host(host).popen(
                *args, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO), env={**os.environ, **(env or {})}
            )
        self.procs.append((name, proc))

    def program(self, name: str, host: str, *args: str) -> None:
        """One of this module's programs (``serve``, ``benign``, ``listen``) inside ``host``."""
        self.start(name, host, sys.executable, "-m", "tests.e2e.cluster", *args)

    def alive(self, name: str) -> bool:
        return any(n == name and p.poll() is None for n, p in self.procs)

    def dead(self) -> list[str]:
        return [f"{n} (exit {p.returncode})" for n, p in self.procs if p.poll() is not None]

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM every process (newest first), then SIGKILL whatever did not stop in time."""
        for _, p in reversed(self.procs):
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _, p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)

    def close(self) -> None:
        try:
            self.stop_all()
        finally:
            self.lab.close()

    def tail_logs(self, lines: int = 15) -> str:
        out = []
        for name, _ in self.procs:
            path = self.log(name)
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {name} ---\n" + "\n".join(text))
        return "\n".join(out)

    # -------------------------------------------------------------- probes

    def reachable(self, pod: str, ip: str, ports: Sequence[int], timeout: float = 2.0) -> dict[int, bool]:
        """Which of ``ports`` on ``ip`` accept a TCP connection from ``pod`` (one process for all)."""
        code = (
            "import json,socket,sys\n"
            "out={}\n"
            "for p in map(int, sys.argv[2:]):\n"
            "    try:\n"
            f"        socket.create_connection((sys.argv[1], p), timeout={timeout}).close(); out[p]=True\n"
            "    except OSError:\n"
            "        out[p]=False\n"
            "print(json.dumps(out))\n"
        )
        args = [sys.executable, "-c", code, ip, *map(str, ports)]
        out = self.host(pod).run(*args, timeout=timeout * len(ports) + 10).stdout
        return {int(k): bool(v) for k, v in json.loads(out).items()}

    def listening(self, host: str, port: int, proto: str = "t") -> bool:
        out = self.host(host).run("ss", f"-ln{proto}", f"sport = :{port}", check=False).stdout
        return f":{port}" in out

    def blocked_pairs(self, table: str = "flowwarden") -> set[tuple[str, str]]:
        """``(source, target)`` pairs in the router's nft block set (empty before the table exists)."""
        out = self.router.run("nft", "-j", "list", "set", "inet", table, "blocked_v4", check=False)
        if out.returncode != 0:
            return set()
        pairs: set[tuple[str, str]] = set()
        for item in json.loads(out.stdout)["nftables"]:
            for elem in item.get("set", {}).get("elem", []):
                value = elem.get("elem", {}).get("val", elem) if isinstance(elem, dict) else elem
                concat = value.get("concat", []) if isinstance(value, dict) else []
                if len(concat) == 2:
                    pairs.add((_addr(concat[0]), _addr(concat[1])))
        return pairs

    def metric(self, port: int, name: str) -> float:
        """Sum of a Prometheus metric served inside the router (0 when unreachable)."""
        out = self.router.run(
            "curl", "-s", "--max-time", "2", f"http://127.0.0.1:{port}/metrics", check=False
        )
        total = 0.0
        for line in out.stdout.splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
                with contextlib.suppress(ValueError):
                    total += float(line.rsplit(" ", 1)[1])
        return total


def _addr(value: Any) -> str:
    """An nft JSON set member: "10.0.0.1", or {"prefix": {"addr": …, "len": 32}}."""
    if isinstance(value, dict) and "prefix" in value:
        p = value["prefix"]
        return str(p["addr"]) if int(p["len"]) == 32 else f"{p['addr']}/{p['len']}"
    if isinstance(value, dict) and "range" in value:
        return str(value["range"][0])
    return str(value)


def build_cluster(workdir: Path) -> Cluster:
    """Namespaces, links, routes and the cluster's own servers (no flowwarden process yet)."""
    from tests.support.netns import Lab

    lab = Lab()
    cluster = Cluster(lab=lab, workdir=workdir)
    try:
        _wire(lab)
        _start_servers(cluster)
    except BaseException:
        cluster.close()
        raise
    return cluster


def _wire(lab: Any) -> None:
    router = lab.host("router")
    router.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    # As on a Kubernetes node (kubeadm checks it): bridged pod-to-pod traffic goes through
    # netfilter, so the router's nft table can block it too (needs the br_netfilter module).
    router.run("sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1")
    lab.bridge(router, "br0", f"{GATEWAY}/24")
    for short, ip in PODS.items():
        pod = lab.host(short)
        _, peer = lab.link(pod, f"{ip}/24", router, "")
        router.run("ip", "link", "set", peer, "master", "br0")
        pod.run("ip", "route", "add", "default", "via", GATEWAY)
    cp = lab.host("cp")
    lab.link(cp, f"{CONTROL_PLANE}/24", router, f"{CP_ROUTER}/24")
    cp.run("ip", "route", "add", "default", "via", CP_ROUTER)
    dns = lab.host("dns")
    lab.link(dns, f"{DNS}/30", router, f"{DNS_ROUTER}/30")
    dns.run("ip", "route", "add", "default", "via", DNS_ROUTER)
    inet = lab.host("inet")
    lab.link(inet, f"{INTERNET}/24", router, f"{INTERNET_ROUTER}/24")
    inet.run("ip", "route", "add", "default", "via", INTERNET_ROUTER)
    for extra, net in ((SAAS, "203.0.113.0/24"), (OTHER_EXTERNAL, "192.0.2.0/24")):
        inet.run("ip", "addr", "add", f"{extra}/32", "dev", "lo")
        router.run("ip", "route", "add", net, "via", INTERNET)


def _start_servers(c: Cluster) -> None:
    from tests.support.netns import wait_for

    c.program("web", "web", "serve", "--ports", str(WEB_PORT), str(METRICS_PORT))
    for pod in ("client", "scraper", "attacker"):
        c.program(f"{pod}-metrics", pod, "serve", "--ports", str(METRICS_PORT))
    c.program("control-plane", "cp", "listen", "--ports", *map(str, CP_PORTS))
    c.program(
        "internet", "inet", "serve", "--ports", str(INTERNET_PORT),
        "--upload-rate", str(4_000_000), "--log", str(c.workdir / "uploads.jsonl"),
    )  # fmt: skip
    c.start(
        "dnsmasq", "dns", "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
        "--no-hosts", "--bind-interfaces", f"--listen-address={DNS}", "--pid-file=", "--user=root",
        f"--host-record=web.shop.svc.cluster.local,{PODS['web']}",
        f"--host-record=api.saas.example,{SAAS}",
        "--log-queries=extra", "--log-facility=-",
    )  # fmt: skip
    checks = [
        ("web", WEB_PORT, "t"),
        ("web", METRICS_PORT, "t"),
        ("inet", INTERNET_PORT, "t"),
        ("dns", 53, "u"),
    ]
    checks += [(p, METRICS_PORT, "t") for p in ("client", "scraper", "attacker")]
    checks += [("cp", port, "t") for port in CP_PORTS]
    for host, port, proto in checks:
        wait_for(partial(c.listening, host, port, proto), timeout=20, what=f"{host} listening on {port}")


def inventory(now: float | None = None) -> dict[str, Any]:
    """The pods as ``kubectl get pods -A -o json`` prints them (created an hour ago)."""
    created = datetime.fromtimestamp((now or time.time()) - 3600, tz=UTC).isoformat().replace("+00:00", "Z")

    def pod(ns: str, name: str, kind: str, owner: str, ip: str, node: str, host_ip: str) -> dict[str, Any]:
        return {
            "metadata": {
                "name": name, "namespace": ns, "creationTimestamp": created,
                "ownerReferences": [{"kind": kind, "name": owner, "controller": True}],
            },
            "spec": {"nodeName": node},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": host_ip},
        }  # fmt: skip

    items = [pod(*WORKLOADS[k], PODS[k], NODE, GATEWAY) for k in PODS]
    ns, _, kind, owner = WORKLOADS["attacker"]
    items += [pod(ns, name, kind, owner, ip, "node-b", "10.244.2.1") for name, ip in OTHER_REPLICAS]
    return {"apiVersion": "v1", "kind": "List", "items": items}


def flowwarden_config(workdir: Path, *, inventory_path: Path) -> dict[str, Any]:
    """Settings shared by the collector, the pipeline and the enforcer (each gets its own store)."""
    return {
        "cluster": {
            "name": "e2e",
            "pod_cidrs": ["10.244.0.0/16"],
            "service_cidrs": ["10.96.0.0/12"],
            "node_cidrs": ["10.0.0.0/24"],
            "node_ips": [GATEWAY],
            "cluster_dns": [DNS],
        },
        "control_plane": {"api_server_ips": [CONTROL_PLANE]},
        "bus": {"kind": "kafka"},
        "kafka": {
            "bootstrap_servers": [f"127.0.0.1:{BROKER_PORT}"],
            "client_id": "fw-e2e",
            "partitions": 1,
            "linger_ms": 5,
            "connect_timeout_s": 10.0,
            # The broker fixture's settings (tests/support/broker.py): fast group joins on tansu.
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
            "max_poll_interval_ms": 10000,
            "request_timeout_ms": 5000,
            "delivery_timeout_ms": 20000,
            "idempotence": False,
            "max_in_flight": 1,
        },
        "collector": {
            "node": NODE,
            # As on a node: the pods' interfaces (br0 stands for its ports) and the uplinks
            # (the router's links to the control plane, the DNS and the internet, v5route..v7route;
            # the ports match too and stay workload interfaces). Without the uplinks, answers
            # the router forwards to a pod are never counted: they enter the node there.
            "interfaces": ["br0", "v*route"],
            "active_timeout_s": 2.0,
            "idle_timeout_s": 5.0,
            "batch_interval_ms": 500,
            "spool_dir": str(workdir / "spool"),
            "metrics_port": 9101,
        },
        "kubernetes": {"inventory_path": str(inventory_path)},
        "pipeline": {
            "window_s": 2.0,
            "checkpoint_interval_s": 5.0,
            "metrics_port": 9102,
            # The two "new external destination" detectors only trust novelty after learn_s of
            # memory (default 60 s); the test gives the engine 12 s of benign history instead.
            "detectors": {"bulk_egress": {"learn_s": 10.0}, "new_destination_volume": {"learn_s": 10.0}},
            # Alerts within learning_s of the engine's start say learning: true and the enforcer
            # leaves them alone (enforcement.act_on_learning): the same 12 s are enough here.
            "learning_s": 10.0,
        },
        "enforcement": {
            "mode": "enforce",
            "backends": ["nftables"],
            "metrics_port": 9103,
            "ttl_s": 600,
        },
    }


def start_flowwarden(c: Cluster, config: Path) -> None:
    """Broker, collector, pipeline and enforcer: separate processes in the router namespace."""
    from tests.support.broker import tansu_path
    from tests.support.netns import wait_for

    url = f"tcp://127.0.0.1:{BROKER_PORT}"
    c.start(
        "tansu", "router", str(tansu_path()), "broker", "--listener-url", url,
        "--advertised-listener-url", url, "--storage-engine", "memory://tansu/",
    )  # fmt: skip
    wait_for(lambda: c.listening("router", BROKER_PORT), timeout=20, what="tansu listening in the router")
    fw = str(Path(sys.executable).with_name("flowwarden"))
    stores = {name: f"sqlite:///{c.workdir / name}.db" for name in ("pipeline", "enforcer")}
    c.start("enforcer", "router", fw, "enforce", "run", "--config", str(config),
            env={"FLOWWARDEN_STORE__URL": stores["enforcer"]})  # fmt: skip
    c.start("pipeline", "router", fw, "pipeline", "run", "--config", str(config),
            env={"FLOWWARDEN_STORE__URL": stores["pipeline"]})  # fmt: skip
    c.start("collector", "router", fw, "collect", "--config", str(config))


# ---------------------------------------------------------------------- reading results


def read_rows(db: Path, query: str) -> list[dict[str, Any]]:
    """Rows of a stage's SQLite store (WAL: reading never blocks the writer); [] before it exists."""
    if not db.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute(query)]
    except sqlite3.OperationalError:
        return []  # the tables are not migrated yet


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


# ---------------------------------------------------------------------- programs run in the namespaces


class _Handler(BaseHTTPRequestHandler):
    """GET: a small page. PUT/POST: read the body; ``/upload`` at a limited rate, logged."""

    upload_rate = 0.0
    log_path: Path | None = None
    protocol_version = "HTTP/1.0"
    timeout = 5.0  # a blocked client never says goodbye: give up on its body after this long

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        body = b"ok\n" * 100
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        self._receive()

    def do_POST(self) -> None:
        self._receive()

    def _receive(self) -> None:
        expected = int(self.headers.get("Content-Length") or 0)
        limited = self.path.startswith("/upload") and self.upload_rate > 0
        received, t0, error = 0, time.monotonic(), ""
        try:
            while received < expected:
                chunk = self.rfile.read(min(65536, expected - received))
                if not chunk:
                    error = "eof"
                    break
                received += len(chunk)
                if limited:
                    ahead = received / self.upload_rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
        except OSError as exc:
            error = type(exc).__name__
        if limited and self.log_path is not None:
            record = {"path": self.path, "expected": expected, "received": received, "error": error,
                      "client": self.client_address[0], "t_end": time.time()}  # fmt: skip
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if not error:
            body = json.dumps({"received": received}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


def _serve(ports: Sequence[int], upload_rate: float, log_path: Path | None) -> None:
    handler = type("Handler", (_Handler,), {"upload_rate": upload_rate, "log_path": log_path})
    servers = [ThreadingHTTPServer(("0.0.0.0", p), handler) for p in ports]
    for s in servers[1:]:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    servers[0].serve_forever()


def _listen(ports: Sequence[int]) -> None:
    """Accept and close: a stand-in for the API server, etcd and the kubelet."""
    socks = []
    for p in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", p))
        s.listen(64)
        socks.append(s)

    def loop(s: socket.socket) -> None:
        while True:
            conn, _ = s.accept()
            conn.close()

    for s in socks[1:]:
        threading.Thread(target=loop, args=(s,), daemon=True).start()
    loop(socks[0])


def dns_query(server: str, name: str, timeout: float = 2.0) -> list[str]:
    """A records for ``name`` from ``server`` (a hand-built query: no resolver configuration needed)."""
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(q, (server, 53))
        data, _ = s.recvfrom(2048)
    rid, flags, _, ancount, _, _ = struct.unpack(">HHHHHH", data[:12])
    if rid != qid or flags & 0x000F:
        raise OSError(f"dns error rcode={flags & 0xF}")
    pos = len(q)  # answers follow the echoed question
    out = []
    for _ in range(ancount):
        if data[pos] & 0xC0 == 0xC0:
            pos += 2
        else:
            while data[pos]:
                pos += data[pos] + 1
            pos += 1
        rtype, _, _, rdlen = struct.unpack(">HHIH", data[pos : pos + 10])
        pos += 10
        if rtype == 1 and rdlen == 4:
            out.append(socket.inet_ntoa(data[pos : pos + 4]))
        pos += rdlen
    return out


def _benign(role: str, log_path: Path, period: float) -> None:
    """Everyday traffic, each attempt logged as one JSON line (kind, ok, time)."""
    checks: dict[str, Callable[[], bool]]
    if role == "client":
        checks = {
            "web": lambda: _http_ok(f"http://{PODS['web']}:{WEB_PORT}/"),
            "dns": lambda: dns_query(DNS, "web.shop.svc.cluster.local") == [PODS["web"]],
            "saas": lambda: _http_ok(f"http://{SAAS}:{INTERNET_PORT}/api", data=b"x" * 2000),
        }
    else:  # the scraper: the metrics endpoints of the pods that are not blocked in the test
        checks = {
            f"scrape-{k}": partial(_http_ok, f"http://{PODS[k]}:{METRICS_PORT}/metrics")
            for k in ("web", "client", "scraper")
        }
    with open(log_path, "a", buffering=1) as log:
        while True:
            t0 = time.monotonic()
            for kind, check in checks.items():
                try:
                    ok, error = bool(check()), ""
                except Exception as exc:
                    ok, error = False, str(exc)[:200]
                log.write(json.dumps({"kind": kind, "ok": ok, "t": time.time(), "error": error}) + "\n")
            time.sleep(max(0.0, period - (time.monotonic() - t0)))


def _http_ok(url: str, data: bytes | None = None) -> bool:
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=3) as r:
        r.read()
        return bool(r.status == 200)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.cluster")
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--ports", type=int, nargs="+", required=True)
    serve.add_argument("--upload-rate", type=float, default=0.0, help="bytes/s for /upload bodies")
    serve.add_argument("--log", type=Path)
    listen = sub.add_parser("listen")
    listen.add_argument("--ports", type=int, nargs="+", required=True)
    benign = sub.add_parser("benign")
    benign.add_argument("--role", choices=["client", "scraper"], required=True)
    benign.add_argument("--log", type=Path, required=True)
    benign.add_argument("--period", type=float, default=0.5)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.cmd == "serve":
        _serve(args.ports, args.upload_rate, args.log)
    elif args.cmd == "listen":
        _listen(args.ports)
    else:
        _benign(args.role, args.log, args.period)


@contextlib.contextmanager
def running_cluster(workdir: Path) -> Iterator[Cluster]:
    """:func:`build_cluster`, then every process stopped and every namespace deleted, even on failure."""
    c = build_cluster(workdir)
    try:
        yield c
    finally:
        c.close()


__all__ = [
    "Cluster",
    "build_cluster",
    "flowwarden_config",
    "inventory",
    "running_cluster",
    "start_flowwarden",
]

if __name__ == "__main__":
    main()
