"""Collector metering throughput, side by side on one capture, one core each.

Makes a synthetic capture (>= 1M packets, many distinct 5-tuples; ``--quick``: 200k) in
/tmp, then runs every contender in its own child process (so peak memory is its own,
from ``wait4``'s rusage) and prints packets/s and peak RSS:

* ``meter``: the collector's metering path (read + decode + flow table), names off;
* ``meter-64k``: the same fed 64 KiB at a time, as the live capture pipe delivers it;
* ``meter+dns``: the same with every DNS message parsed and aggregated per record in the
  collector's own path (:mod:`collectors.dnsparse`), no tshark;
* ``meter+names``: the product's default: own DNS parsing plus tshark for the first TLS
  ClientHello / HTTP request of each flow;
* ``meter+tshark-dns``: the alternative that was measured and not chosen: every DNS packet
  streamed to one tshark (same core; the time includes tshark draining its input);
* ``nfstream``: ``nfstream.NFStreamer`` with one meter process (the C flow meter);
* ``pyshark``: pyshark's default path on a slice of the file (extrapolated: it is ~1000x slower);
* ``tcpdump -r FILE -w /dev/null``: the read ceiling.

It also prints the DNS share of the capture (packets on port 53) and records per distinct
5-tuple (names off) next to nfstream's flow count on the same file.

Usage: ``.venv/bin/python benchmarks/bench_collector.py [--quick] [--real | --pcap FILE | --dns-heavy]
[--repeat N]`` (``--real``: real traffic made in network namespaces and captured by tcpdump;
root; ``--dns-heavy``: a synthetic resolver capture, every packet DNS, with a tunnel flow;
``--repeat``: the fastest of N runs per contender, for a busy machine). Besides wall-clock
packets/s it prints packets per CPU-second (the child's and tshark's), steadier when other
processes share the core.
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results import compact, emit  # noqa: E402

PYSHARK_SLICE = 2000


def run_meter(path: str, names: bool) -> tuple[int, int, int]:
    from flowwarden.collectors.offline import meter_capture
    from flowwarden.settings import Settings

    df, report = meter_capture(path, Settings(collector={"node": "bench", "app_names": names}))
    return report.packets, len(df), -1


def distinct_tuples(df: object) -> int:
    """Distinct 5-tuples of the records, either direction counting once (computed untimed)."""
    import numpy as np
    import pandas as pd

    assert isinstance(df, pd.DataFrame)
    a = (df["src_ip"].astype(str) + "|" + df["src_port"].astype(str)).to_numpy(dtype=object)
    b = (df["dst_ip"].astype(str) + "|" + df["dst_port"].astype(str)).to_numpy(dtype=object)
    lo, hi = np.where(a <= b, a, b), np.where(a <= b, b, a)
    return int(pd.DataFrame({"lo": lo, "hi": hi, "p": df["proto"].to_numpy()}).drop_duplicates().shape[0])


def meter_like_offline(path: str, meter: Any, each: Callable[[Any], None] | None = None) -> int:
    """What :func:`meter_capture` does (feed, flush, concat, conform), with a given Meter.

    So ``meter+dns`` and ``meter+tshark-dns`` differ from ``meter`` only by their DNS work.
    """
    import pandas as pd

    from flowwarden.collectors.pcapfile import read_capture
    from flowwarden.records import FLOW_COLUMNS, conform_flows

    parts = []
    for batch in read_capture(path):
        parts.extend(meter.feed(batch))
        if each is not None:
            each(batch)
    parts.append(meter.flush())
    df = pd.concat([x for x in parts if len(x)] or parts[-1:], ignore_index=True)
    return len(conform_flows(df[list(FLOW_COLUMNS)]))


def run_meter_dns(path: str) -> tuple[int, int, int]:
    """Names off but every DNS message parsed and aggregated in the collector's own path."""
    from flowwarden.collectors.meter import Meter
    from flowwarden.settings import CollectorSettings

    meter = Meter(CollectorSettings(node="bench", app_names=False), dns=True)
    flows = meter_like_offline(path, meter)
    return meter.packets, flows, meter.dns_messages


TSHARK_DNS_FIELDS = ("frame.number", "dns.flags.response", "dns.qry.name", "dns.qry.type",
                     "dns.flags.rcode", "dns.a", "dns.aaaa", "dns.resp.ttl")  # fmt: skip


def run_meter_tshark_dns(path: str) -> tuple[int, int, int]:
    """The rejected alternative: every DNS packet to one tshark (as the name dissector streams)."""
    from flowwarden.collectors.decode import APP_DNS
    from flowwarden.collectors.meter import Meter
    from flowwarden.settings import CollectorSettings

    args = ["tshark", "-n", "-l", "-r", "-", "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a"]
    for f in TSHARK_DNS_FIELDS:
        args += ["-e", f]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    lines = [0]

    def drain(out: object = proc.stdout) -> None:
        for _ in out:  # type: ignore[attr-defined]
            lines[0] += 1

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc.stdin.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 101))
    meter = Meter(CollectorSettings(node="bench", app_names=False), dns=False)
    rec = struct.Struct("<IIII")

    def to_tshark(batch: Any, stdin: Any = proc.stdin) -> None:
        dec = meter.last_decoded
        assert dec is not None
        idx = ((dec.app == APP_DNS) & (meter.table.last_uids >= 0)).nonzero()[0]
        starts, ends = dec.l3[idx].tolist(), (batch.off + batch.caplen)[idx].tolist()
        parts = []
        for s, e, t in zip(starts, ends, batch.ts[idx].tolist(), strict=True):
            sec = int(t)
            parts.append(rec.pack(sec, int((t - sec) * 1e6), e - s, e - s))
            parts.append(batch.buf[s:e].tobytes())
        stdin.write(b"".join(parts))

    flows = meter_like_offline(path, meter, to_tshark)
    proc.stdin.close()
    reader.join(600)
    proc.wait(timeout=60)
    return meter.packets, flows, lines[0]


def run_meter_pipe(path: str) -> tuple[int, int, int]:
    """The live path's parsing: 64 KiB reads, as a capture pipe delivers them."""
    from flowwarden.collectors.meter import Meter
    from flowwarden.collectors.pcapfile import read_capture
    from flowwarden.settings import CollectorSettings

    meter = Meter(CollectorSettings(node="bench", app_names=False))
    flows = 0
    for batch in read_capture(path, chunk_bytes=65536):
        flows += sum(len(r) for r in meter.feed(batch))
    flows += len(meter.table.flush())
    return meter.packets, flows, -1


def run_nfstream(path: str) -> tuple[int, int, int]:
    """nfstream with the collector's idle and active timeouts (15 s, 10 s), so that its flow
    count is the fair peer of our records (at its own defaults, 120 s and 1800 s, it would not
    split long flows at all)."""
    from nfstream import NFStreamer

    from flowwarden.settings import CollectorSettings

    cs = CollectorSettings()
    flows = packets = 0
    for f in NFStreamer(
        source=path,
        n_meters=1,
        statistical_analysis=False,
        n_dissections=0,
        idle_timeout=int(cs.idle_timeout_s),
        active_timeout=int(cs.active_timeout_s),
    ):
        flows += 1
        packets += f.bidirectional_packets
    return packets, flows, -1


def run_pyshark(path: str) -> tuple[int, int, int]:
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
    return n, 0, -1


def dns_share(path: str) -> tuple[int, int]:
    """(packets, packets on port 53) of the capture, read with the collector's decoder."""
    from flowwarden.collectors.decode import APP_DNS, decode
    from flowwarden.collectors.pcapfile import read_capture

    total = dns = 0
    for batch in read_capture(path):
        total += len(batch)
        dns += int((decode(batch).app == APP_DNS).sum())
    return total, dns


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
    """Runs in the child: one contender, prints "packets flows seconds extra" (imports not timed).

    ``extra``: distinct 5-tuples (``meter``), DNS messages parsed (``meter+dns``), tshark
    output lines (``meter+tshark-dns``), else -1; computed after the clock stops.
    """
    if kind.startswith("meter"):
        import flowwarden.collectors.offline  # noqa: F401
    elif kind == "nfstream":
        import nfstream  # noqa: F401
    elif kind == "pyshark":
        import pyshark  # noqa: F401
    runs = {
        "meter+names": lambda: run_meter(path, names=True),
        "meter-64k": lambda: run_meter_pipe(path),
        "meter+dns": lambda: run_meter_dns(path),
        "meter+tshark-dns": lambda: run_meter_tshark_dns(path),
        "nfstream": lambda: run_nfstream(path),
        "pyshark": lambda: run_pyshark(path),
    }
    if kind not in runs and kind != "meter":
        raise SystemExit(f"unknown contender {kind}")
    t0, c0 = time.perf_counter(), _cpu()
    if kind == "meter":  # the 5-tuples are counted outside the clock
        from flowwarden.collectors.offline import meter_capture
        from flowwarden.settings import Settings

        df, report = meter_capture(path, Settings(collector={"node": "bench", "app_names": False}))
        secs, cpu = time.perf_counter() - t0, _cpu() - c0
        print(report.packets, len(df), secs, distinct_tuples(df), cpu)
        return
    packets, flows, extra = runs[kind]()
    print(packets, flows, time.perf_counter() - t0, extra, _cpu() - c0)


def _cpu() -> float:
    """CPU seconds of this process and its waited-for children (tshark): robust on a busy machine."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


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
    ap.add_argument("--dns-heavy", action="store_true", help="synthetic resolver capture, all DNS")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "PCAP"), help=argparse.SUPPRESS)
    ap.add_argument("--skip", default="", help="comma-separated contenders to skip")
    ap.add_argument(
        "--repeat", type=int, default=1, help="runs per contender, the fastest kept (busy machines)"
    )
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
        elif a.dns_heavy:
            path = Path(d) / "dns.pcap"
            code = (
                "import sys; sys.path.insert(0, sys.argv[1]); import tests.data.dnsgen as g; "
                "g.dns_heavy_capture(sys.argv[2], packets=int(sys.argv[3]))"
            )
            n_dns = packets // 5
            subprocess.run([sys.executable, "-c", code, str(ROOT), str(path), str(n_dns)], check=True)
            source = f"synthetic DNS-heavy {n_dns // 1000}k pkts"
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
        total, dns = dns_share(str(path))
        print(f"DNS share: {dns} of {total} packets on port 53 ({dns / max(total, 1):.1%})")
        counts: dict[str, tuple[int, int]] = {}  # kind -> (records or flows, extra)
        cpu: dict[str, float] = {}  # kind -> CPU seconds of the timed part
        kinds = ("meter", "meter-64k", "meter+dns", "meter+names", "meter+tshark-dns", "nfstream", "pyshark")
        for kind in kinds:
            if kind in skip:
                continue
            runs = [
                measure(["taskset", "-c", "0", py, me, "--child", kind, str(path)]) for _ in range(a.repeat)
            ]
            out, wall, rss = min(runs, key=lambda r: float(r[0].strip().splitlines()[-1].split()[2]))
            fields = out.strip().splitlines()[-1].split()
            n, flows, secs, extra = int(fields[0]), int(fields[1]), float(fields[2]), int(fields[3])
            counts[kind] = (flows, extra)
            cpu[kind] = float(fields[4])
            note = f"slice of {n} packets, extrapolated" if kind == "pyshark" else f"{flows} flows"
            if kind == "meter+dns":
                note += f", {extra} DNS messages parsed"
            elif kind == "meter+tshark-dns":
                note += f", {extra} tshark lines"
            rows.append((kind, n, secs, rss, note))
        if "tcpdump" not in skip:
            _, wall, rss = measure(["taskset", "-c", "0", "tcpdump", "-r", str(path), "-w", "/dev/null"])
            total = rows[0][1] if rows else packets
            rows.append(("tcpdump -r (read ceiling)", total, wall, rss, "process wall time"))
    head = f"{'contender':<28}{'packets':>10}{'seconds':>9}{'packets/s':>12}{'CPU s':>8}{'pkts/CPU-s':>12}"
    print(f"\n{head}{'peak MiB':>10}  note")
    base = {k: n / s for k, n, s, _, _ in rows}
    per_cpu = {k: n / cpu[k] for k, n, _, _, _ in rows if cpu.get(k)}
    for kind, n, secs, rss, note in rows:
        c = f"{cpu[kind]:>8.2f}{per_cpu[kind]:>12,.0f}" if kind in per_cpu else f"{'':>8}{'':>12}"
        print(f"{kind:<28}{n:>10}{secs:>9.2f}{n / secs:>12,.0f}{c}{rss:>10.0f}  {note}")
    if "meter" in base and "nfstream" in base:
        print(f"\nmetering path / nfstream: {base['meter'] / base['nfstream']:.1f}x")
    for kind in ("meter+dns", "meter+names", "meter+tshark-dns"):
        if "meter" in per_cpu and kind in per_cpu:
            busy = per_cpu["meter"] / per_cpu[kind] - 1
            wall = base["meter"] / base[kind] - 1
            print(f"{kind}: {busy:+.0%} CPU per packet against names off (wall time {wall:+.0%})")
    emit_results(rows, f"{source}, 1 core")
    if "meter" in counts:
        emit_flow_counts(counts, source)


def emit_flow_counts(counts: dict[str, tuple[int, int]], source: str) -> None:
    """Records per distinct 5-tuple (names off) next to nfstream's flows on the same file."""
    records, tuples = counts["meter"]
    print(f"\nrecords per distinct 5-tuple: {records} records / {tuples} 5-tuples = {records / tuples:.2f}")
    emit("collector", "records per distinct 5-tuple", round(records / tuples, 2), "x", note=source)
    if "nfstream" in counts:
        nfs = counts["nfstream"][0]
        ratio = records / nfs
        print(
            f"nfstream flows (same idle/active timeouts): {nfs} ({nfs / tuples:.2f} per 5-tuple); "
            f"records / nfstream flows: {ratio:.2f} (the extra: first-sight records)"
        )
        note = f"{records} records, {tuples} 5-tuples; {source}"
        emit("collector", "records / nfstream flows", round(ratio, 2), "x", peer=f"nfstream {nfs}", note=note)


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
        "meter+dns": ("metering + DNS parsed in the own path", nfs),
        "meter+names": ("metering + DNS (own) + TLS/HTTP names (tshark)", nfs),
        "meter+tshark-dns": ("metering + every DNS packet to tshark (not chosen)", nfs),
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
