"""Record a labelled capture of the lab: a learning phase of cluster traffic, then the attacks.

    .venv/bin/python -m tests.lab.record --minutes 20 --seed 2 --out tests/data/lab/reporting

writes into ``--out``:

- ``capture.pcap``: every packet that enters the fabric (tcpdump, inbound only), snap length 128,
  DNS 512 (query names);
- ``labels.json``: the attack episodes (technique, MITRE id, tool, source pod, targets, start,
  end), the hard negatives (benign traffic that looks like an attack), the learning phase's end;
- ``pods.json``: the pod inventory, as ``kubectl get pods -A -o json`` prints it (one pod per run
  of the backup CronJob, with its lifetime);
- ``lab.yaml``: the lab's settings for ``flowwarden detect`` (its address plan).

Needs root (network namespaces) and the tools in ``scripts/install-system-deps.sh``. Traffic
stays inside namespaces this script creates, none linked to the host's; every process it
starts is stopped and every namespace deleted on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tests.lab import topology as T
from tests.lab.attacks import Attacker, Pace

REPO = Path(__file__).resolve().parents[2]
TOOLS = (
    "ip",
    "tcpdump",
    "nmap",
    "hydra",
    "sshd",
    "ssh-keygen",
    "iodine",
    "iodined",
    "dnsmasq",
    "curl",
    "openssl",
    "ifconfig",
)
SNAPLEN = 128
SNAPLEN_DNS = 512  # DNS only: the query names a tunnel detector needs
T_DNS_PORT = 53


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class LabRun:
    """The namespaces, the processes in them, and what happened when."""

    workdir: Path
    seed: int
    until: float
    log_fn: Any = print
    lab: Any = None
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    etc_dirs: list[Path] = field(default_factory=list)
    backup_runs: list[dict[str, Any]] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)

    def log(self, msg: str) -> None:
        self.log_fn(f"[{time.strftime('%H:%M:%S')}] {msg}")

    # ------------------------------------------------------------------ processes

    def start(self, name: str, host: str, *args: str) -> subprocess.Popen[bytes]:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.log", "ab") as out:
            proc = self.lab.hosts[host].popen(*args, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO))
        self.procs.append((name, proc))
        return proc

    def program(self, name: str, host: str, role: str, *extra: str) -> None:
        self.start(
            name,
            host,
            sys.executable,
            "-m",
            "tests.lab.programs",
            role,
            "--until",
            str(self.until),
            "--seed",
            str(self.seed),
            "--certs",
            str(self.workdir / "certs"),
            *extra,
        )

    def stop_all(self) -> None:
        self.stop_event.set()
        for _, p in reversed(self.procs):
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
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
            if self.lab is not None:
                self.lab.close()
            for d in self.etc_dirs:
                shutil.rmtree(d, ignore_errors=True)

    # ------------------------------------------------------------------ building

    def build(self) -> None:
        from tests.support.netns import Lab

        self.lab = Lab()
        lab = self.lab
        fabric = lab.host("fabric")
        fabric.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        T.ipv4_only(fabric)
        hosts = {
            "cp": T.CONTROL_PLANE,
            "node-a": T.NODE_A,
            "node-b": T.NODE_B,
            "dns": T.CLUSTER_DNS,
            "meta": T.METADATA,
        }
        for short, ip in hosts.items():
            T.attach(lab, lab.host(short), ip)
        T.attach(lab, lab.host("inet"), T.ATTACKER, *T.INTERNET_IPS[1:])
        for p in T.PODS:
            T.attach(lab, lab.host(p.role), p.ip)
        for p in T.PODS:
            self.etc_dirs.append(T.write_resolv(lab.hosts[p.role], T.CLUSTER_DNS))
        for short in ("cp", "node-a", "node-b", "dns", "meta", "inet"):
            self.etc_dirs.append(T.write_resolv(lab.hosts[short], T.UPSTREAM_DNS))
        T.make_certs(self.workdir / "certs")
        self._ssh_keys()

    def _ssh_keys(self) -> None:
        d = self.workdir / "ssh"
        d.mkdir(parents=True, exist_ok=True)
        key = d / "ssh_host_ed25519_key"
        if not key.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30
            )
        (d / "sshd_config").write_text(
            f"HostKey {key}\nPort 22\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nPermitRootLogin no\nMaxStartups 100:30:200\nMaxAuthTries 6\nLoginGraceTime 20\n"
            f"PidFile {d}/sshd.pid\nUseDNS no\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory

    def start_capture(self) -> None:
        """Two tcpdumps on every interface of the fabric, inbound only: DNS with a longer snap
        length (a tunnel's query names run to 250 bytes; at 128 neither tshark nor the collector
        sees them), everything else at 128. :meth:`merge_capture` joins them afterwards."""
        common = ["tcpdump", "-i", "any", "-Q", "in", "-n", "-U"]
        self.start(
            "tcpdump",
            "fabric",
            *common,
            "-s",
            str(SNAPLEN),
            "-w",
            str(self.workdir / "main.pcap"),
            f"not udp port {T_DNS_PORT}",
        )
        self.start(
            "tcpdump-dns",
            "fabric",
            *common,
            "-s",
            str(SNAPLEN_DNS),
            "-w",
            str(self.workdir / "dns.pcap"),
            f"udp port {T_DNS_PORT}",
        )
        deadline = time.monotonic() + 20
        for name in ("tcpdump", "tcpdump-dns"):
            log = self.workdir / "logs" / f"{name}.log"
            while time.monotonic() < deadline and "listening on" not in log.read_text(errors="replace"):
                time.sleep(0.1)

    def merge_capture(self, pcap: Path) -> None:
        """One time-ordered pcap of both captures (after :meth:`close` stopped them)."""
        parts = [str(self.workdir / f) for f in ("main.pcap", "dns.pcap") if (self.workdir / f).exists()]
        subprocess.run(["mergecap", "-F", "pcap", "-w", str(pcap), *parts], check=True, timeout=120)

    def start_services(self) -> None:
        d = self.workdir
        dnsmasq = [
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--pid-file=",
            "--user=root",
            "--log-facility=-",
        ]
        self.start(
            "dns-upstream",
            "inet",
            *dnsmasq,
            f"--listen-address={T.UPSTREAM_DNS}",
            "--local-ttl=30",
            *(f"--host-record={n},{ip}" for n, ip in T.UPSTREAM_RECORDS.items()),
        )
        self.start(
            "iodined",
            "inet",
            "iodined",
            "-f",
            "-c",
            "-l",
            T.ATTACKER,
            "-P",
            "labsecret",
            T.TUNNEL_NET,
            T.TUNNEL_DOMAIN,
        )
        self.start(
            "dns-cluster",
            "dns",
            *dnsmasq,
            f"--listen-address={T.CLUSTER_DNS}",
            "--local-ttl=5",
            f"--server=/{T.TUNNEL_DOMAIN}/{T.ATTACKER}",
            f"--server={T.UPSTREAM_DNS}",
            *(f"--host-record={n},{ip}" for n, ip in T.CLUSTER_RECORDS.items()),
        )
        self.program("internet", "inet", "internet")
        self.program("metadata", "meta", "metadata")
        self.program("control-plane", "cp", "control-plane")
        for n in ("node-a", "node-b"):
            self.start(f"sshd-{n}", n, "/usr/sbin/sshd", "-D", "-e", "-f", str(d / "ssh" / "sshd_config"))
        time.sleep(1.0)  # servers first, so the first requests find them listening
        for n in ("node-a", "node-b"):
            self.program(n, n, n)
        for p in T.PODS:
            self.program(p.role, p.role, p.role)

    # ------------------------------------------------------------------ the backup CronJob

    def backup_loop(self, first: float, period: float) -> None:
        """Runs of the backup CronJob: each a new pod (namespace, IP) that lives for its run."""
        rng = random.Random(f"{self.seed}-backup")
        at, n = first, 0
        while not self.stop_event.is_set() and at < self.until - 30:
            if self.stop_event.wait(max(0.0, at - time.time())):
                return
            self.backup_run(n, rng)
            n += 1
            at += period

    def backup_run(self, n: int, rng: random.Random) -> None:
        from tests.support.netns import run

        minute = int(time.time() // 60)
        job = f"backup-{minute}"
        pod = f"{job}-{''.join(rng.choice('bcdfghjklmnpqrstvwxz2456789') for _ in range(5))}"
        ip = T.BACKUP_IPS[n % len(T.BACKUP_IPS)]
        short = f"bk{n}"
        created = time.time()
        host = self.lab.host(short)
        try:
            T.attach(self.lab, host, ip)
            etc = T.write_resolv(host, T.CLUSTER_DNS)
            self.etc_dirs.append(etc)
            self.log(f"backup run {n}: {pod} {ip}")
            try:
                out = subprocess.run(
                    host.cmd(
                        sys.executable, "-m", "tests.lab.programs", "backup", "--until", str(self.until)
                    ),
                    capture_output=True,
                    text=True,
                    timeout=120,
                    cwd=str(REPO),
                    check=False,
                )
                result = out.stdout.strip() + out.stderr[-200:]
            except subprocess.TimeoutExpired:
                result = "timed out"
            finished = time.time()
            self.log(f"backup run {n} done in {finished - created:.1f}s {result}")
        finally:
            run(["ip", "netns", "del", host.name], check=False)
            self.lab.hosts.pop(short, None)
        self.backup_runs.append({"pod": pod, "job": job, "ip": ip, "created": created, "finished": finished})


def plan_gaps(total_s: float, nominal: list[float], min_gap: float, rng: random.Random) -> list[float]:
    """Pauses after each step so that the steps spread over ``total_s`` (never below ``min_gap``)."""
    spare = total_s - sum(nominal)
    base = max(min_gap, spare / max(1, len(nominal)))
    return [max(min_gap, base * rng.uniform(0.8, 1.2)) for _ in nominal]


def record(
    out: Path,
    *,
    minutes: float,
    seed: int,
    jitter: float,
    learning_min: float | None,
    quick: bool,
    log: Any = print,
) -> dict[str, Any]:
    """One labelled capture into ``out``; returns the labels written."""
    missing = missing_tools()
    if missing:
        raise SystemExit(f"missing tools: {' '.join(missing)} (run scripts/install-system-deps.sh)")
    out = out.resolve()  # sshd re-executes itself for each connection: its paths must be absolute
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rng = random.Random(seed)
    pace = (
        Pace.quick(jitter)
        if quick
        else Pace(beacon_jitter=jitter, beacon_interval=10.0 * rng.uniform(0.8, 1.2))
    )
    t_begin = time.time()
    end = t_begin + minutes * 60
    learning_s = learning_min * 60 if learning_min is not None else min(300.0, max(20.0, minutes * 60 * 0.25))
    run = LabRun(workdir=work, seed=seed, until=end + 30, log_fn=log)
    pcap = out / "capture.pcap"
    pcap.unlink(missing_ok=True)
    attacker: Attacker | None = None
    try:
        run.build()
        run.log(f"lab {run.lab.prefix}: {len(run.lab.hosts)} namespaces; capture starts")
        run.start_capture()
        t_capture = time.time()
        run.start_services()
        end = t_capture + minutes * 60
        learning_end = t_capture + learning_s
        backup_period = 240.0 if not quick else max(30.0, minutes * 60 / 3)
        first_backup = t_capture + min(90.0, learning_s * 0.5)
        bk = threading.Thread(target=run.backup_loop, args=(first_backup, backup_period), daemon=True)
        bk.start()
        run.log(f"learning phase until {iso(learning_end)}")
        time.sleep(max(0.0, learning_end - time.time()))
        attacker = Attacker(host=run.lab.hosts["attacker"], workdir=work, pace=pace, seed=seed, log=run.log)
        steps = attacker.steps()
        tail = 60.0 if not quick else 10.0
        gaps = plan_gaps(end - tail - time.time(), [s[2] for s in steps], pace.min_gap_s, rng)
        for (name, step, _), gap in zip(steps, gaps, strict=True):
            run.log(f"attack: {name}")
            step()
            if time.time() + gap < end:
                time.sleep(gap)
        run.log("attacks done; benign tail")
        time.sleep(max(0.0, end - time.time()))
        run.stop_event.set()
        bk.join(timeout=150)
    finally:
        run.close()
    t_end = time.time()
    run.merge_capture(pcap)
    labels = write_outputs(
        out,
        run,
        attacker,
        t_capture=t_capture,
        t_end=t_end,
        learning_end=learning_end,
        seed=seed,
        minutes=minutes,
        pace=pace,
    )
    if not (work / "keep").exists():
        shutil.rmtree(work, ignore_errors=True)
    return labels


def write_outputs(
    out: Path,
    run: LabRun,
    attacker: Attacker | None,
    *,
    t_capture: float,
    t_end: float,
    learning_end: float,
    seed: int,
    minutes: float,
    pace: Pace,
) -> dict[str, Any]:
    a = T.ATTACKER_POD
    src = {"ip": a.ip, "namespace": a.namespace, "pod": a.name, "workload": "frontend"}
    episodes = [
        {
            "id": f"ep-{i + 1:02d}",
            **{k: e[k] for k in ("technique", "mitre", "kind", "tool")},
            "source": src,
            "targets": e["targets"],
            "start": iso(e["start"]),
            "end": iso(e["end"]),
            "command": e["command"],
        }
        for i, e in enumerate(attacker.episodes if attacker else [])
    ]

    def ent(role: str) -> dict[str, str]:
        p = T.POD_BY_ROLE[role]
        return {
            "ip": p.ip,
            "namespace": p.namespace,
            "pod": p.name,
            "workload": p.owner.rsplit("-", 1)[0] if p.owner_kind == "ReplicaSet" else p.owner,
        }

    whole = {"start": iso(t_capture), "end": iso(t_end)}
    negatives: list[dict[str, Any]] = [
        {
            "id": f"hn-backup-{i + 1}",
            "what": "backup CronJob run: database dump uploaded to object storage"
            + (" (during learning)" if r["finished"] < learning_end else ""),
            "source": {"ip": r["ip"], "namespace": "data", "pod": r["pod"], "workload": "backup"},
            "targets": [T.STORAGE],
            "start": iso(r["created"]),
            "end": iso(r["finished"]),
        }
        for i, r in enumerate(run.backup_runs)
    ]
    negatives += [
        {
            "id": "hn-scrape",
            "what": "Prometheus scrapes every pod, the kubelets and the API server every 30 s",
            "source": ent("prometheus"),
            "targets": [T.CONTROL_PLANE, T.NODE_A, T.NODE_B, "10.244.0.0/16"],
            **whole,
        },
        {
            "id": "hn-saas",
            "what": "checkout calls the payments SaaS API (a health check every 30 s, steady)",
            "source": ent("checkout"),
            "targets": [T.SAAS],
            **whole,
        },
        {
            "id": "hn-node-metadata",
            "what": "nodes read the metadata API every minute",
            "source": {"ip": T.NODE_A, "namespace": "", "pod": "", "workload": ""},
            "targets": [T.METADATA],
            **whole,
        },
        {
            "id": "hn-node-metadata-b",
            "what": "nodes read the metadata API every minute",
            "source": {"ip": T.NODE_B, "namespace": "", "pod": "", "workload": ""},
            "targets": [T.METADATA],
            **whole,
        },
        {
            "id": "hn-kubelet-api",
            "what": "kubelets report to the API server every 20 s; the API server calls kubelets",
            "source": {"ip": T.CONTROL_PLANE, "namespace": "", "pod": "", "workload": ""},
            "targets": [T.NODE_A, T.NODE_B],
            **whole,
        },
        {
            "id": "hn-frontend",
            "what": "the compromised pod keeps doing the frontend's work (checkout calls)",
            "source": src,
            "targets": [T.POD_BY_ROLE["checkout"].ip],
            **whole,
        },
    ]
    labels = {
        "version": 1,
        "lab": {
            "seed": seed,
            "minutes": minutes,
            "capture": "capture.pcap",
            "snaplen": SNAPLEN,
            "snaplen_dns": SNAPLEN_DNS,
            "start": iso(t_capture),
            "end": iso(t_end),
            "learning_end": iso(learning_end),
            "beacon_interval_s": round(pace.beacon_interval, 2),
            "beacon_jitter": pace.beacon_jitter,
            "attacker": src,
            "recorded_with": "python -m tests.lab.record",
            "netns_prefix": run.lab.prefix if run.lab is not None else "",
        },
        "episodes": episodes,
        "hard_negatives": negatives,
    }
    (out / "labels.json").write_text(json.dumps(labels, indent=2) + "\n")
    (out / "pods.json").write_text(json.dumps(T.inventory(t_capture, run.backup_runs), indent=2) + "\n")
    (out / "lab.yaml").write_text(
        "# The lab's address plan for\n"
        "#   flowwarden detect --pcap capture.pcap --inventory pods.json --config lab.yaml -o alerts.jsonl\n"
        "# (written by tests/lab/record.py; every detector at its defaults).\n"
        + yaml.safe_dump(T.flowwarden_config(), sort_keys=False)
    )
    return labels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.lab.record", description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jitter", type=float, default=0.2, help="beacon jitter, a share in [0, 0.5]")
    ap.add_argument("--learning-minutes", type=float, default=None, help="default: a quarter, at most 5")
    ap.add_argument(
        "--quick", action="store_true", help="short, small attacks (the netns test's 1-2 minutes)"
    )
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if not 0 <= a.jitter <= 0.5:
        ap.error("--jitter must be within [0, 0.5]")
    if not 0.5 <= a.minutes <= 60:
        ap.error("--minutes must be within [0.5, 60]")
    from tests.support.netns import netns_available

    if not netns_available():
        ap.error("needs root and iproute2 (network namespaces)")

    def stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    labels = record(
        a.out,
        minutes=a.minutes,
        seed=a.seed,
        jitter=a.jitter,
        learning_min=a.learning_minutes,
        quick=a.quick,
        log=lambda m: print(m, flush=True),
    )
    size = (a.out / "capture.pcap").stat().st_size
    print(
        f"{len(labels['episodes'])} episodes, {len(labels['hard_negatives'])} hard negatives, "
        f"capture {size / 1e6:.1f} MB -> {a.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
