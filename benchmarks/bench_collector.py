"""Collector metering throughput, side by side on one capture, one core each.

Makes a synthetic capture (>= 1M packets, many distinct 5-tuples; ``--quick``: 200k) in
/tmp, then runs every contender in its own child process (so peak memory is its own,
from ``wait4``'s rusage) and prints packets/s and peak RSS:

* ``meter``: the collector's metering path (read + decode + flow table), names off;
* ``meter-64k``: the same fed 64 KiB at a time, as the live capture pipe delivers it;
* ``meter+names``: the same with DNS/TLS/HTTP candidates dissected by tshark;
* ``nfstream``: ``nfstream.NFStreamer`` with one meter process (the C flow meter);
* ``pyshark``: pyshark's default path on a slice of the file (extrapolated: it is ~1000x slower);
* ``tcpdump -r FILE -w /dev/null``: the read ceiling.

Usage: ``.venv/bin/python benchmarks/bench_collector.py [--quick] [--real | --pcap FILE]``
(``--real``: real traffic made in network namespaces and captured by tcpdump; root).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results import compact, emit  # noqa: E402

PYSHARK_SLICE = 2000


def run_meter(path: str, names: bool) -> tuple[int, int]:
    from flowwarden.collectors.offline import meter_capture
    from flowwarden.settings import Settings

    df, report = meter_capture(path, Settings(collector={"node": "bench", "app_names": names}))
    return report.packets, len(df)


def run_meter_pipe(path: str) -> tuple[int, int]:
    """The live path's parsing: 64 KiB reads, as a capture pipe delivers them."""
    from flowwarden.collectors.meter import Meter
    from flowwarden.collectors.pcapfile import read_capture
    from flowwarden.settings import CollectorSettings

    meter = Meter(CollectorSettings(node="bench", app_names=False))
    flows = 0
    for batch in read_capture(path, chunk_bytes=65536):
        flows += sum(len(r) for r in meter.feed(batch))
    flows += len(meter.table.flush())
    return meter.packets, flows


def run_nfstream(path: str) -> tuple[int, int]:
    from nfstream import NFStreamer

    flows = packets = 0
    for f in NFStreamer(source=path, n_meters=1, statistical_analysis=False, n_dissections=0):
        flows += 1
        packets += f.bidirectional_packets
    return packets, flows


def run_pyshark(path: str) -> tuple[int, int]:
    import pyshark

    cap = pyshark.FileCapture(path)
    n = 0
    try:
        for _pkt in cap:
            n += 1
            if n >= PYSHARK_SLICE:
                break
    finally:
        cap.close()
    return n, 0


def real_capture(path: Path, target: int) -> None:
    """Real kernel traffic in isolated namespaces, captured by tcpdump (needs root).

    Bulk HTTP downloads (GSO capped at one MSS so the capture sees wire-size segments), an
    nmap SYN scan of every port, and UDP datagrams from many sockets: ~``target`` packets.
    """
    from tests.support.netns import Lab, wait_for

    with Lab() as lab, tempfile.TemporaryDirectory(prefix="fw-www-") as www:
        cli, srv = lab.host("cli"), lab.host("srv")
        ic, isv = lab.link(cli, "10.99.0.1/24", srv, "10.99.0.2/24")
        cli.run("ip", "link", "set", "dev", ic, "gso_max_size", "1500")
        srv.run("ip", "link", "set", "dev", isv, "gso_max_size", "1500")
        Path(www, "blob").write_bytes(os.urandom(8 << 20))
        srv.popen("python3", "-m", "http.server", "80", "--bind", "10.99.0.2", "--directory", www,
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        wait_for(lambda: "LISTEN" in srv.run("ss", "-ltn", "sport = :80").stdout, timeout=10, what="http")
        tcpdump = ["tcpdump", "-Z", "root", "-i", ic, "-s", "96", "-B", "131072", "-U", "-n", "-w", str(path)]
        cap = cli.popen(*tcpdump, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert cap.stderr is not None
        while b"listening on" not in cap.stderr.readline():
            pass
        time.sleep(1.0)  # the capture socket warms up after the banner
        downloads = max(1, int(target * 0.5 / 8500))  # ~8.5k packets per 8 MiB download
        fetch = (
            "import sys, urllib.request\n"
            "for _ in range(int(sys.argv[1])):\n"
            "    urllib.request.urlopen('http://10.99.0.2/blob').read()\n"
        )
        cli.run("python3", "-c", fetch, str(downloads), timeout=600)
        cli.run("nmap", "-n", "-Pn", "-sS", "-p-", "--min-rate", "20000", "--max-retries", "0", "10.99.0.2",
                timeout=600)  # fmt: skip
        udp = (
            "import socket, sys\n"
            "n = int(sys.argv[1])\n"
            "socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(500)]\n"
            "for i in range(n):\n"
            "    socks[i % 500].sendto(b'x' * (i % 200), ('10.99.0.2', 20000 + i % 40))\n"
        )
        cli.run("python3", "-c", udp, str(int(target * 0.3)), timeout=600)
        time.sleep(1.0)
        cap.send_signal(2)
        cap.wait(timeout=30)


def child(kind: str, path: str) -> None:
    """Runs in the child: one contender, prints "packets flows seconds" (imports not timed)."""
    if kind.startswith("meter"):
        import flowwarden.collectors.offline  # noqa: F401
    elif kind == "nfstream":
        import nfstream  # noqa: F401
    elif kind == "pyshark":
        import pyshark  # noqa: F401
    t0 = time.perf_counter()
    if kind == "meter":
        packets, flows = run_meter(path, names=False)
    elif kind == "meter+names":
        packets, flows = run_meter(path, names=True)
    elif kind == "meter-64k":
        packets, flows = run_meter_pipe(path)
    elif kind == "nfstream":
        packets, flows = run_nfstream(path)
    elif kind == "pyshark":
        packets, flows = run_pyshark(path)
    else:
        raise SystemExit(f"unknown contender {kind}")
    print(packets, flows, time.perf_counter() - t0)


def measure(args: list[str]) -> tuple[str, float, float]:
    """Run a child; (stdout, wall seconds, peak RSS MiB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{args} failed with status {proc.returncode}")
    return out, wall, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200k packets, < 30 s")
    ap.add_argument("--pcap", type=Path, help="benchmark this capture instead of a synthetic one")
    ap.add_argument("--real", action="store_true", help="capture real traffic in namespaces (root) instead")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "PCAP"), help=argparse.SUPPRESS)
    ap.add_argument("--skip", default="", help="comma-separated contenders to skip")
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return
    packets = 200_000 if a.quick else 1_000_000
    with tempfile.TemporaryDirectory(prefix="fw-bench-") as d:
        if a.pcap:
            path = a.pcap
            source = f"capture {a.pcap.name}"
        elif a.real:
            path = Path(d) / "real.pcap"
            t0 = time.perf_counter()
            real_capture(path, packets)
            mib = path.stat().st_size / 2**20
            print(f"real-traffic capture: {path} {mib:.0f} MiB in {time.perf_counter() - t0:.1f}s")
            source = "real traffic (netns)"
        else:
            # Made in a child: a forked child inherits the parent's peak RSS, which would
            # pollute every contender's figure if the parent held the capture's arrays.
            path = Path(d) / "bench.pcap"
            t0 = time.perf_counter()
            code = (
                "import sys; sys.path.insert(0, sys.argv[1]); from tests.data.synth import synth_capture; "
                "synth_capture(sys.argv[2], packets=int(sys.argv[3]), flows=int(sys.argv[3]) // 10, seed=7)"
            )
            subprocess.run([sys.executable, "-c", code, str(ROOT), str(path), str(packets)], check=True)
            mib = path.stat().st_size / 2**20
            print(f"synthetic capture: {path} {mib:.0f} MiB in {time.perf_counter() - t0:.1f}s")
            source = f"synthetic {packets // 1000}k pkts"
        rows = []
        skip = set(a.skip.split(","))
        py = sys.executable
        me = str(Path(__file__).resolve())
        for kind in ("meter", "meter-64k", "meter+names", "nfstream", "pyshark"):
            if kind in skip:
                continue
            out, wall, rss = measure(["taskset", "-c", "0", py, me, "--child", kind, str(path)])
            fields = out.strip().splitlines()[-1].split()
            n, flows, secs = int(fields[0]), int(fields[1]), float(fields[2])
            note = f"slice of {n} packets, extrapolated" if kind == "pyshark" else f"{flows} flows"
            rows.append((kind, n, secs, rss, note))
        if "tcpdump" not in skip:
            _, wall, rss = measure(["taskset", "-c", "0", "tcpdump", "-r", str(path), "-w", "/dev/null"])
            total = rows[0][1] if rows else packets
            rows.append(("tcpdump -r (read ceiling)", total, wall, rss, "process wall time"))
    print(f"\n{'contender':<28}{'packets':>10}{'seconds':>9}{'packets/s':>12}{'peak MiB':>10}  note")
    base = {k: n / s for k, n, s, _, _ in rows}
    for kind, n, secs, rss, note in rows:
        print(f"{kind:<28}{n:>10}{secs:>9.2f}{n / secs:>12,.0f}{rss:>10.0f}  {note}")
    if "meter" in base and "nfstream" in base:
        print(f"\nmetering path / nfstream: {base['meter'] / base['nfstream']:.1f}x")
    emit_results(rows, f"{source}, 1 core")


def emit_results(rows: list[tuple[str, int, float, float, str]], source: str) -> None:
    """The headline figures as ``RESULT`` lines for ``run_all.py``."""
    by = {kind: (n, secs, rss, note) for kind, n, secs, rss, note in rows}
    rate = {kind: n / secs for kind, (n, secs, _, _) in by.items()}
    ceiling = "tcpdump -r (read ceiling)"
    nfs = f"nfstream {compact(rate['nfstream'], 'pkts/s')}" if "nfstream" in rate else ""
    top = f"tcpdump -r ceiling {compact(rate[ceiling], 'pkts/s')}" if ceiling in rate else ""
    meter = f"metering {compact(rate['meter'], 'pkts/s')}" if "meter" in rate else ""
    figures = {
        "meter": ("metering (names off)", f"{nfs}; {top}" if nfs and top else nfs or top),
        "meter-64k": ("metering, 64 KiB reads (live pipe)", nfs),
        "meter+names": ("metering + names (tshark)", nfs),
        "nfstream": ("nfstream, 1 meter (peer)", top),
        "pyshark": ("pyshark default (peer)", nfs),
        ceiling: ("tcpdump -r -w /dev/null (ceiling)", meter),
    }
    for kind, (figure, peer) in figures.items():
        if kind in by:
            n = by[kind][0]
            note = f"extrapolated from a slice of {n} packets" if kind == "pyshark" else by[kind][3]
            emit("collector", figure, round(rate[kind]), "packets/s", peer=peer, note=f"{note}; {source}")
    if "meter" in rate and "nfstream" in rate:
        ratio = round(rate["meter"] / rate["nfstream"], 2)
        emit("collector", "metering / nfstream", ratio, "x", peer=nfs, note=f"packets/s, names off; {source}")
    for kind, (_, _, rss, _) in by.items():
        label = "tcpdump -r" if kind == ceiling else kind
        emit("collector", f"peak RSS {label}", round(rss), "MiB", note="child process, wait4 rusage")


if __name__ == "__main__":
    main()
