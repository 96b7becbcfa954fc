"""Capture cost with 100 pod interfaces, and the metering cost of overlay decapsulation.

Part ``capture`` (root): a node namespace with 100 veth pairs (``cali000``..``cali099``,
peers in one pod namespace), real UDP sent round-robin over all of them, captured two ways:

* ``any``: the collector's design, :class:`~collectors.capture.LiveCapture` with the
  pattern ``cali*`` (one ``dumpcap`` on ``any`` + the one-sighting filter);
* ``per-interface``: the previous design, one ``dumpcap`` child (and reader thread) per veth.

For each it prints the start-up time, capture-side CPU (the dumpcap children from
``/proc/PID/stat``, plus this process's reader and filter threads) per packet, the
children's resident memory, and how many of the sent packets were delivered.

Part ``decap``: the synthetic benchmark capture of ``bench_collector.py`` metered as is, and
the same packets wrapped in VXLAN (as a node's uplink shows them): packets per CPU-second of
the collector's metering path (read + decode + flow table, names off) and of the decoder
alone, median of three interleaved runs (CPU time, so that other tenants of a shared machine
do not move the figure).

Usage: ``.venv/bin/python benchmarks/bench_interfaces.py [--part capture|decap|all] [--quick]``.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results import compact, emit  # noqa: E402

N_IFACES = 100
TICK = os.sysconf("SC_CLK_TCK")

_SENDER = """
import socket, sys, time
n, count = int(sys.argv[1]), int(sys.argv[2])
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
t = time.monotonic()
for i in range(count):
    k = i % n
    socks[k].sendto(b"x" * 64, ("10.100.%d.1" % k, 9))
print(time.monotonic() - t)
"""


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _node_with_veths(lab: object, n: int) -> tuple[object, object]:
    from tests.support.netns import Lab, run

    assert isinstance(lab, Lab)
    node, pods = lab.host("node"), lab.host("pods")
    for k in range(n):
        run(["ip", "link", "add", f"cali{k:03d}", "netns", node.name, "type", "veth", "peer", "name",
             f"eth{k:03d}", "netns", pods.name])  # fmt: skip
        node.run("ip", "addr", "add", f"10.100.{k}.1/24", "dev", f"cali{k:03d}")
        node.run("ip", "link", "set", f"cali{k:03d}", "up")
        pods.run("ip", "addr", "add", f"10.100.{k}.2/24", "dev", f"eth{k:03d}")
        pods.run("ip", "link", "set", f"eth{k:03d}", "up")
    # A sink on port 9, so the node answers with nothing (no ICMP back on every veth).
    node.popen("python3", "-c", "import socket,time\ns=socket.socket(2,2);s.bind(('0.0.0.0',9))\n"
               "s.settimeout(600)\nwhile True: s.recv(2048)", stdout=subprocess.DEVNULL)  # fmt: skip
    return node, pods


def _drain(q: queue.Queue[object], counted: list[int], stop: threading.Event) -> None:
    while not stop.is_set() or not q.empty():
        try:
            batch = q.get(timeout=0.1)
        except queue.Empty:
            continue
        counted[0] += len(batch)  # type: ignore[arg-type]


def _measure(kind: str, node: object, pods: object, count: int) -> dict[str, float]:
    from flowwarden.collectors.capture import InterfaceCapture, LiveCapture
    from flowwarden.collectors.pcapfile import PacketBatch
    from tests.support.netns import Host

    assert isinstance(node, Host) and isinstance(pods, Host)
    t0 = time.monotonic()
    if kind == "any":
        live = LiveCapture(["cali*"], netns=node.name, queue_max=1024)
        live.start()
        q: queue.Queue[PacketBatch] = live.queue
        captures = live.captures
    else:
        q = queue.Queue(maxsize=1024)
        captures = [
            InterfaceCapture(f"cali{k:03d}", bpf="", snaplen=256, netns=node.name, out=q)
            for k in range(N_IFACES)
        ]
        for c in captures:
            c.start()
    start_s = time.monotonic() - t0
    pids = [c._proc.pid for c in captures if c._proc is not None]
    counted = [0]
    stop = threading.Event()
    drain = threading.Thread(target=_drain, args=(q, counted, stop), daemon=True)
    drain.start()
    cpu0, own0 = sum(_cpu_s(p) for p in pids), time.process_time()
    send_s = float(pods.run("python3", "-c", _SENDER, str(N_IFACES), str(count), timeout=600).stdout)
    rss = sum(_rss_mib(p) for p in pids)
    for c in captures:
        c._drain() if c.tool == "dumpcap" else None  # everything sent has reached the pipe
    cpu1, own1 = sum(_cpu_s(p) for p in pids), time.process_time()
    for c in captures:
        c.stop()
    if kind == "any":
        live.watcher.stop()
    stop.set()
    drain.join(30)
    return {
        "start_s": start_s,
        "send_s": send_s,
        "children_cpu_us": (cpu1 - cpu0) / count * 1e6,
        "own_cpu_us": (own1 - own0) / count * 1e6,
        "rss_mib": rss,
        "processes": len(pids),
        "delivered": counted[0] / count,
        "kernel_drops": sum(c.kernel_drops for c in captures) / count,
    }


def part_capture(quick: bool) -> None:
    from tests.support.netns import Lab, netns_available

    if not netns_available():
        print("capture part skipped: needs root (network namespaces)")
        return
    count = 100_000 if quick else 400_000
    with Lab() as lab:
        node, pods = _node_with_veths(lab, N_IFACES)
        print(f"\n{N_IFACES} veth pairs, {count} UDP packets round-robin over them")
        print(f"{'design':<15}{'procs':>6}{'start s':>9}{'child CPU us/pkt':>18}{'reader us/pkt':>15}"
              f"{'child RSS MiB':>15}{'delivered':>11}{'kernel drops':>14}")  # fmt: skip
        for kind in ("any", "per-interface"):
            r = _measure(kind, node, pods, count)
            print(f"{kind:<15}{r['processes']:>6.0f}{r['start_s']:>9.2f}{r['children_cpu_us']:>18.2f}"
                  f"{r['own_cpu_us']:>15.2f}{r['rss_mib']:>15.1f}{r['delivered']:>10.1%}"
                  f"{r['kernel_drops']:>13.1%}")  # fmt: skip
            peer = f"{compact(r['rss_mib'], 'MiB')} RSS, {r['processes']:.0f} processes"
            emit("collector", f"capture CPU per packet, 100 interfaces, {kind}",
                 round(r["children_cpu_us"] + r["own_cpu_us"], 2), "us/packet", peer=peer)  # fmt: skip


def _vxlan_copy(src: str, dst: str) -> int:
    """Every Ethernet frame of ``src`` wrapped in outer Ethernet/IPv4/UDP 4789/VXLAN."""
    import dpkt

    n = 0
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        w = dpkt.pcap.Writer(fo, snaplen=65535, linktype=dpkt.pcap.DLT_EN10MB)
        head = struct.pack(">BBHI", 0x08, 0, 0, 42 << 8)
        mac = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00"
        for ts, frame in dpkt.pcap.Reader(fi):
            payload = head + frame
            udp = struct.pack(">HHHH", 40000 + n % 1000, 4789, 8 + len(payload), 0)
            ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0, 64, 17, 0,
                             bytes([192, 168, 50, 1]), bytes([192, 168, 50, 2]))  # fmt: skip
            w.writepkt(mac + ip + udp + payload, ts=ts)
            n += 1
    return n


def _meter_rate(path: str) -> float:
    from flowwarden.collectors.offline import meter_capture
    from flowwarden.settings import Settings

    settings = Settings(collector={"node": "bench", "app_names": False})
    t = time.process_time()  # CPU time: the figure must not depend on the other tenants of the machine
    _df, report = meter_capture(path, settings)
    return report.packets / (time.process_time() - t)


def _decode_rate(path: str) -> float:
    from flowwarden.collectors.decode import decode
    from flowwarden.collectors.pcapfile import read_capture

    batches = list(read_capture(path))
    n = sum(len(b) for b in batches)
    t = time.process_time()
    for b in batches:
        decode(b)
    return n / (time.process_time() - t)


def part_decap(quick: bool) -> None:
    from tests.data.synth import synth_capture

    packets = 200_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory(prefix="fw-bench-decap-") as tmp:
        plain, vx = str(Path(tmp, "plain.pcap")), str(Path(tmp, "vxlan.pcap"))
        synth_capture(plain, packets=packets, flows=packets // 10, seed=7)
        _vxlan_copy(plain, vx)
        rates: dict[str, list[float]] = {"plain": [], "vxlan": []}
        decodes: dict[str, list[float]] = {"plain": [], "vxlan": []}
        for _ in range(3):
            for name, path in (("plain", plain), ("vxlan", vx)):
                rates[name].append(_meter_rate(path))
                decodes[name].append(_decode_rate(path))
        print(f"\nmetering {packets} packets, names off, per CPU-second (median of 3)")
        print(f"{'capture':<10}{'meter pkt/s':>14}{'decode-only pkt/s':>20}")
        for name in ("plain", "vxlan"):
            print(
                f"{name:<10}{statistics.median(rates[name]):>14,.0f}{statistics.median(decodes[name]):>20,.0f}"
            )
        ratio = statistics.median(rates["vxlan"]) / statistics.median(rates["plain"])
        print(f"vxlan / plain metering speed: {ratio:.1%}")
        medians = {name: round(statistics.median(r)) for name, r in rates.items()}
        peer = f"{ratio:.0%} of plain"
        emit("collector", "metering, every packet in VXLAN", medians["vxlan"], "packets/CPU-s", peer=peer)
        emit("collector", "metering, plain Ethernet (decap path on)", medians["plain"], "packets/CPU-s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("capture", "decap", "all"), default="all")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.part in ("decap", "all"):
        part_decap(args.quick)
    if args.part in ("capture", "all"):
        part_capture(args.quick)


if __name__ == "__main__":
    main()
