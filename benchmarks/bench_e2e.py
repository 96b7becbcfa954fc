"""End-to-end latency on real packets: attack start -> alert -> block, over repeated attacks.

Builds the namespace cluster of the end-to-end test (``tests/e2e/cluster.py``: a router with
tansu, the collector, the pipeline and the enforcer as separate processes, pods on a bridge,
a control plane, a DNS, an "internet"), lets the engine learn benign traffic, then runs
rounds of: an nmap SYN scan of the pod network, then a bulk upload to an internet address
never used before (a new one each round). Rounds are spaced so that each opens new alerts
(quiet for longer than the alert re-open gap). Prints p50/p99/max of

* scan start -> lateral-movement alert stored / its block applied (decision stored),
* upload start -> exfiltration alert stored / the ``attacker . destination`` nft element,

and the peak RSS and CPU seconds of every flowwarden process. Needs root (namespaces).
Two rounds take ~85 s; ``--quick`` runs one (~35 s: start-up and the engine's 12 s warm-up
dominate). The test cluster's windows are 2 s (``tests/e2e/cluster.py``), but the latency no
longer depends on them: the first records of a scan or an upload reach the pipeline within
a second (first sight) and their detectors alert from the open window (early firing).

    .venv/bin/python benchmarks/bench_e2e.py [--rounds 2] [--quick] [--json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from tests.e2e.cluster import (
    GATEWAY,
    INTERNET_PORT,
    PODS,
    Cluster,
    flowwarden_config,
    inventory,
    read_rows,
    running_cluster,
    start_flowwarden,
)
from tests.support.netns import wait_for

ATTACKER = PODS["attacker"]
UPLOAD_BYTES = 120_000_000
# Between rounds: longer than the recent-activity horizon (a scan stays in port_scan's evidence for
# that long) plus the alert re-open gap (6 windows), so that every round opens new alerts.
RECENT_HORIZON_S = 12.0  # 6 windows of 2 s: the default's ratio (60 s over 10 s windows)
QUIET_S = 40.0
PROCS = ("tansu", "collector", "pipeline", "enforcer")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _proc_figures(c: Cluster) -> dict[str, dict[str, float]]:
    """Peak RSS (MiB) and CPU seconds of each flowwarden process, from /proc before it stops."""
    out: dict[str, dict[str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for name, p in c.procs:
        if name not in PROCS or p.poll() is not None:
            continue
        try:
            status = Path(f"/proc/{p.pid}/status").read_text()
            stat = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        hwm = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
        out[name] = {
            "peak_rss_mib": round(hwm / 1024, 1),
            "cpu_s": round((int(stat[11]) + int(stat[12])) / tick, 1),
        }
    return out


def _rows(c: Cluster, db: str, query: str) -> list[dict[str, Any]]:
    return read_rows(c.workdir / db, query)


def _one_round(c: Cluster, dst: str, blob: Path, refused: list[str]) -> tuple[dict[str, float], float, float]:
    """One scan, then one upload to ``dst``; when each finding and block was first seen."""
    known_a = {r["id"] for r in _rows(c, "pipeline.db", "SELECT id FROM alerts")}
    known_d = {r["id"] for r in _rows(c, "enforcer.db", "SELECT id FROM decisions")}
    t_scan = time.time()
    c.host("attacker").run(
        "nmap", "-sS", "-n", "-T4", "--max-retries", "1", "--host-timeout", "20s", "-p", "1-200",
        "--exclude", GATEWAY, "10.244.1.0/24", timeout=90, check=False,
    )  # fmt: skip
    t_up = time.time()
    curl = c.host("attacker").popen(
        "curl", "-sS", "-H", "Expect:", "--max-time", "60", "-T", str(blob),
        f"http://{dst}:{INTERNET_PORT}/upload", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    seen: dict[str, float] = {}

    def progress() -> bool:
        now = time.time()
        alerts = [
            a
            for a in _rows(c, "pipeline.db", "SELECT id, kind, src_ip, targets FROM alerts")
            if a["id"] not in known_a
        ]
        decisions = [
            d for d in _rows(c, "enforcer.db", "SELECT id, status, guardrail, detector FROM decisions")
            if d["id"] not in known_d
        ]  # fmt: skip
        events = {
            "scan_alert": any(a["kind"] == "lateral_movement" and a["src_ip"] == ATTACKER for a in alerts),
            "scan_block": any(d["status"] == "applied" and d["detector"] == "port_scan" for d in decisions),
            "upload_alert": any(
                a["kind"] == "exfiltration" and dst in json.loads(a["targets"]) for a in alerts
            ),
            "upload_block": (ATTACKER, dst) in c.blocked_pairs(),
            "curl_ended": curl.poll() is not None,
        }
        for name, happened in events.items():
            if happened:
                seen.setdefault(name, now)
        for d in decisions:
            tag = f"{d['detector']}:{d['guardrail']}"
            if d["status"] == "refused" and tag not in refused:
                refused.append(tag)
        return "curl_ended" in seen and ("upload_block" in seen or now - t_up > 45)

    try:
        wait_for(progress, timeout=70, interval=0.2, what=f"the round against {dst}")
    finally:
        if curl.poll() is None:
            curl.kill()
            curl.wait(timeout=10)
    return seen, t_scan, t_up


def run(rounds: int, workdir: Path) -> dict[str, Any]:
    samples: dict[str, list[float]] = {
        k: [] for k in ("scan_alert", "scan_block", "upload_alert", "upload_block")
    }
    refused: list[str] = []
    with running_cluster(workdir) as c:
        dsts = [f"198.51.100.{30 + i}" for i in range(rounds)]
        for ip in dsts:
            c.host("inet").run("ip", "addr", "add", f"{ip}/32", "dev", "lo")
        inv = workdir / "inventory.json"
        inv.write_text(json.dumps(inventory()))
        config = workdir / "flowwarden.yaml"
        settings = flowwarden_config(workdir, inventory_path=inv)
        settings["pipeline"]["recent_horizon_s"] = RECENT_HORIZON_S
        config.write_text(yaml.safe_dump(settings))
        c.program(
            "benign-client", "client", "benign", "--role", "client", "--log", str(workdir / "client.jsonl")
        )
        c.program(
            "benign-scraper", "scraper", "benign", "--role", "scraper", "--period", "1",
            "--log", str(workdir / "scraper.jsonl"),
        )  # fmt: skip
        t0 = time.time()
        start_flowwarden(c, config)
        wait_for(
            lambda: c.metric(9102, "flowwarden_pipeline_windows_scored_total") > 0,
            timeout=90, interval=0.5, what="the pipeline scoring windows",
        )  # fmt: skip
        wait_for(
            lambda: c.router.run("nft", "list", "table", "inet", "flowwarden", check=False).returncode == 0,
            timeout=60, interval=0.5, what="the enforcer's nft table",
        )  # fmt: skip
        startup = time.time() - t0
        time.sleep(12.0)  # learn_s (10 s) of engine memory before the first new address
        blob = workdir / "blob.bin"
        with open(blob, "wb") as f:
            f.truncate(UPLOAD_BYTES)
        for i, dst in enumerate(dsts):
            seen, t_scan, t_up = _one_round(c, dst, blob, refused)
            for key in samples:
                if key in seen:
                    samples[key].append(seen[key] - (t_scan if key.startswith("scan") else t_up))
            done = ", ".join(f"{k}={samples[k][-1]:.1f}s" for k in samples if k in seen)
            print(f"round {i + 1}/{rounds}: {done}", flush=True)
            if i + 1 < rounds:
                time.sleep(QUIET_S)
        procs = _proc_figures(c)
        alerts = _rows(
            c, "pipeline.db", "SELECT kind, detector, window_start FROM alerts ORDER BY window_start"
        )
        decisions = _rows(
            c, "enforcer.db", "SELECT detector, status, created_at FROM decisions ORDER BY created_at"
        )
        collector = {
            "packets": c.metric(9101, "flowwarden_collector_packets_total"),
            "kernel_drops": c.metric(9101, "flowwarden_collector_kernel_drops_total"),
            "flows": c.metric(9101, "flowwarden_collector_flows_total"),
        }
    latency = {
        k: {"n": len(v), "p50_s": round(_pct(v, 0.5), 2), "p99_s": round(_pct(v, 0.99), 2),
            "max_s": round(max(v), 2) if v else None, "mean_s": round(statistics.fmean(v), 2) if v else None}
        for k, v in samples.items()
    }  # fmt: skip
    return {
        "rounds": rounds,
        "startup_to_ready_s": round(startup, 1),
        "latency": latency,
        "missed": {k: rounds - len(v) for k, v in samples.items()},
        "refused_decisions": refused,
        "alerts": [f"{a['window_start'][11:19]} {a['kind']}/{a['detector']}" for a in alerts],
        "decisions": [f"{d['created_at'][11:19]} {d['detector']}:{d['status']}" for d in decisions],
        "processes": procs,
        "collector": collector,
        "bench_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _emit(fig: dict[str, Any]) -> None:
    """``RESULT`` lines for ``benchmarks/run_all.py`` (see ``benchmarks/results.py``)."""
    from results import emit

    n = fig["rounds"]
    peer = "Calico flow logs: flushed every 300 s"
    labels = {
        "upload_alert": "upload start -> alert",
        "upload_block": "upload start -> block",
        "scan_alert": "scan start -> alert",
        "scan_block": "scan start -> block",
    }
    for key, label in labels.items():
        v = fig["latency"][key]
        emit("e2e", f"{label} p50", v["p50_s"], "s", peer=peer, note=f"{v['n']}/{n} rounds, real packets")
        emit("e2e", f"{label} p99", v["p99_s"], "s", peer=peer, note=f"{v['n']}/{n} rounds")
    for name, p in fig["processes"].items():
        emit("e2e", f"{name} peak RSS", p["peak_rss_mib"], "MiB", note=f"CPU {p['cpu_s']} s over the run")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="one round")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON only")
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it (stores, logs)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_e2e needs root: it creates network namespaces")
    rounds = 1 if args.quick else max(1, args.rounds)
    with tempfile.TemporaryDirectory(prefix="fw-bench-e2e-") as tmp:
        t0 = time.time()
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        fig = run(rounds, workdir)
        fig["wall_s"] = round(time.time() - t0, 1)
    _emit(fig)
    if args.json:
        print(json.dumps(fig))
        return
    print(f"\nend-to-end on real packets ({rounds} round(s), wall {fig['wall_s']} s, "
          f"start-up to ready {fig['startup_to_ready_s']} s)")  # fmt: skip
    print(f"{'measure':<34}{'n':>3}{'p50 s':>8}{'p99 s':>8}{'max s':>8}")
    labels = {
        "scan_alert": "scan start -> alert",
        "scan_block": "scan start -> block (decision)",
        "upload_alert": "upload start -> alert",
        "upload_block": "upload start -> block (nft)",
    }
    for key, label in labels.items():
        v = fig["latency"][key]
        print(f"{label:<34}{v['n']:>3}{v['p50_s']:>8}{v['p99_s']:>8}{v['max_s'] or float('nan'):>8}")
    print(f"missed: {fig['missed']}; refused decisions: {fig['refused_decisions'] or 'none'}")
    print("alerts (window start):", "; ".join(fig["alerts"]))
    print("decisions (created):", "; ".join(fig["decisions"]))
    for name, p in fig["processes"].items():
        print(f"{name:<10} peak RSS {p['peak_rss_mib']:>7} MiB   CPU {p['cpu_s']:>6} s")
    print(f"collector: {fig['collector']}; bench process peak RSS {fig['bench_peak_rss_mib']} MiB")


if __name__ == "__main__":
    main()
