"""Regenerate the golden captures in ``tests/data/pcaps/`` and their expected flow tables.

Run as root: ``.venv/bin/python tests/data/make_pcaps.py``. It builds isolated network
namespaces joined by veth pairs (never linked to the host), makes real traffic in them
(python http.server + curl over IPv4 and IPv6, a refusing port, a SYN nobody answers, dig
against dnsmasq, an nmap SYN scan, a TLS request to ``openssl s_server``, 802.1Q-tagged
traffic), captures it with tcpdump or dumpcap, then writes beside each capture:

* ``NAME.flows.csv``: the flow table computed by :func:`reference_flows`, a deliberately
  plain per-packet implementation of the collector's semantics on top of dpkt (one Python
  object per packet: fine here, it is the yardstick, not the product), with the
  application-layer names taken from a full ``tshark`` dissection of the capture.

The tests compare the vectorised metering path with these tables field by field, and the
per-conversation totals with ``tshark -z conv``.
"""

from __future__ import annotations

import csv
import math
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dpkt

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.netns import Host, Lab, wait_for  # noqa: E402

OUT = Path(__file__).resolve().parent / "pcaps"
IDLE, ACTIVE, TICK = 15.0, 10.0, 1.0
FIN_GRACE, HANDSHAKE_WAIT = 0.5, 1.0
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
COLUMNS = [
    "ts_start", "ts_end", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "bytes_out", "bytes_in",
    "pkts_out", "pkts_in", "tcp_flags", "state", "dns_qname", "dns_rcode", "server_name", "final",
    "first", "end_reason",
]  # fmt: skip


# ---------------------------------------------------------------------------- reference meter


def _packets(path: Path):
    """(frame number, ts, wire length, src, dst, sport, dport, proto, flags) of each IP packet."""
    with open(path, "rb") as fh:
        if path.suffix == ".pcapng":  # the golden pcapng is captured whole: wire length = captured
            reader = dpkt.pcapng.Reader(fh)
            dlt, frames = reader.datalink(), ((ts, raw, len(raw)) for ts, raw in reader)
        else:
            dlt, frames = _classic_pcap(fh.read())
        for n, (ts, raw, wirelen) in enumerate(frames, start=1):
            if dlt == dpkt.pcap.DLT_EN10MB:
                ip = dpkt.ethernet.Ethernet(raw).data
            elif dlt == 276:
                ip = dpkt.sll2.SLL2(raw).data
            elif dlt == dpkt.pcap.DLT_LINUX_SLL:
                ip = dpkt.sll.SLL(raw).data
            else:
                raise SystemExit(f"unexpected link type {dlt}")
            if isinstance(ip, dpkt.ip.IP):
                if ip._flags_offset & 0x1FFF:
                    continue
                src, dst = socket.inet_ntop(socket.AF_INET, ip.src), socket.inet_ntop(socket.AF_INET, ip.dst)
            elif isinstance(ip, dpkt.ip6.IP6):
                src, dst = (
                    socket.inet_ntop(socket.AF_INET6, ip.src),
                    socket.inet_ntop(socket.AF_INET6, ip.dst),
                )
            else:
                continue
            l4 = ip.data
            sport = dport = flags = 0
            if ip.p in (6, 17):
                sport, dport = l4.sport, l4.dport
                flags = l4.flags if ip.p == 6 else 0
            yield n, ts, wirelen, src, dst, sport, dport, ip.p, flags


def _classic_pcap(data: bytes):
    """(link type, iterator of (ts, frame, original length)): dpkt hides the original length."""
    magic, _, _, _, _, _, dlt = struct.unpack_from("<IHHiIII", data, 0)
    assert magic == 0xA1B2C3D4, "the reference reads little-endian microsecond pcaps"

    def frames():
        pos = 24
        while pos + 16 <= len(data):
            sec, usec, caplen, wirelen = struct.unpack_from("<IIII", data, pos)
            yield sec + usec / 1e6, data[pos + 16 : pos + 16 + caplen], wirelen
            pos += 16 + caplen

    return dlt, frames()


def _state(f: dict) -> str:
    if f["proto"] == 17:
        return "udp"
    if f["proto"] in (1, 58):
        return "icmp"
    if f["proto"] != 6:
        return "other"
    fwd, rev = f["fl_fwd"], f["fl_rev"]
    syn, synack = bool(fwd & SYN), bool(rev & SYN) and bool(rev & ACK)
    if syn and synack:
        return "closed" if (fwd | rev) & (FIN | RST) else "established"
    if syn and rev & RST:
        return "rejected"
    if syn and f["pkts_in_total"] == 0:
        return "syn_only"
    return "tcp_other"


def reference_flows(path: Path) -> tuple[list[dict], dict[int, int]]:
    """Flow records of a capture, one packet at a time; also frame number -> flow serial."""
    flows: dict[tuple, dict] = {}
    records: list[dict] = []
    frame_flow: dict[int, int] = {}
    serial = 0
    tick: int | None = None

    def emit(key: tuple, final: bool, reason: str) -> None:
        f = flows[key]
        start = f["period_ts"] if f["period_ts"] is not None else f["last_ts"]
        records.append(
            {
                "ts_start": start, "ts_end": f["last_ts"], "src_ip": f["init"][0], "src_port": f["init"][1],
                "dst_ip": f["resp"][0], "dst_port": f["resp"][1], "proto": f["proto"],
                "bytes_out": f["bytes_out"], "bytes_in": f["bytes_in"], "pkts_out": f["pkts_out"],
                "pkts_in": f["pkts_in"], "tcp_flags": f["fl_fwd"] | f["fl_rev"], "state": _state(f),
                "final": final, "first": f["emitted"] == 0, "end_reason": reason, "serial": f["serial"],
            }
        )  # fmt: skip
        f["emitted"] += 1
        f.update(bytes_out=0, bytes_in=0, pkts_out=0, pkts_in=0, period_ts=None)

    def end(key: tuple, reason: str) -> None:
        """A final record unless the flow carried nothing since its last record."""
        f = flows[key]
        if f["pkts_out"] + f["pkts_in"] > 0 or f["emitted"] == 0:
            emit(key, True, reason)
        del flows[key]

    def sweep(now: float) -> None:
        for key in list(flows):
            f = flows[key]
            tcp = f["proto"] == 6
            rst = tcp and bool((f["fl_fwd"] | f["fl_rev"]) & RST)
            closing = tcp and f["close_ts"] is not None
            if rst:
                end(key, "rst")
            elif closing and now - f["close_ts"] >= FIN_GRACE:
                end(key, "fin")
            elif now - f["last_ts"] > IDLE:
                end(key, "idle")
            elif f["emitted"] == 0:
                syn_waiting = (
                    tcp
                    and bool(f["fl_fwd"] & SYN)
                    and (f["fl_rev"] & (SYN | ACK)) != (SYN | ACK)
                    and now - f["first_ts"] < HANDSHAKE_WAIT
                )
                if not closing and not syn_waiting:
                    emit(key, False, "active")  # first sight
            elif f["period_ts"] is not None and now - f["period_ts"] >= ACTIVE:
                emit(key, False, "active")

    for n, ts, wirelen, src, dst, sport, dport, proto, flags in _packets(path):
        t = math.floor(ts / TICK)
        if tick is not None:
            t = max(t, tick)
        if tick is None or t > tick:
            sweep(t * TICK)
            tick = t
        a, b = (src, sport), (dst, dport)
        key = (*sorted([a, b]), proto)
        f = flows.get(key)
        if f is None:
            serial += 1
            synack = proto == 6 and (flags & (SYN | ACK)) == (SYN | ACK)
            init, resp = (b, a) if synack else (a, b)
            f = flows[key] = {
                "init": init, "resp": resp, "proto": proto, "last_ts": ts, "period_ts": None, "bytes_out": 0,
                "bytes_in": 0, "pkts_out": 0, "pkts_in": 0, "pkts_in_total": 0, "fl_fwd": 0, "fl_rev": 0,
                "serial": serial, "first_ts": ts, "close_ts": None, "emitted": 0,
            }  # fmt: skip
        frame_flow[n] = f["serial"]
        fwd = a == f["init"]
        d = "out" if fwd else "in"
        f[f"bytes_{d}"] += wirelen
        f[f"pkts_{d}"] += 1
        if not fwd:
            f["pkts_in_total"] += 1
        f["fl_fwd" if fwd else "fl_rev"] |= flags
        if f["close_ts"] is None and f["fl_fwd"] & FIN and f["fl_rev"] & FIN:
            f["close_ts"] = ts  # the packet that completed both FINs
        f["first_ts"] = min(f["first_ts"], ts)
        f["last_ts"] = max(f["last_ts"], ts)
        f["period_ts"] = ts if f["period_ts"] is None else min(f["period_ts"], ts)
    for key in list(flows):
        end(key, "end_of_capture")
    return records, frame_flow


def tshark_names(path: Path) -> list[dict[str, str]]:
    """Per dissected packet: frame number and the names tshark found (full dissection)."""
    fields = [
        "frame.number",
        "dns.flags.response",
        "dns.qry.name",
        "dns.flags.rcode",
        "tls.handshake.extensions_server_name",
        "http.host",
    ]
    args = ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "occurrence=f", "-E", "separator=\t"]
    for f in fields:
        args += ["-e", f]
    args += ["-Y", "dns || tls.handshake.type == 1 || http.request"]
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout
    return [dict(zip(fields, line.split("\t"), strict=True)) for line in out.splitlines() if line]


def expected_table(path: Path) -> list[dict]:
    records, frame_flow = reference_flows(path)
    names: dict[int, dict] = {}
    for row in tshark_names(path):
        serial = frame_flow.get(int(row["frame.number"]))
        if serial is None:
            continue
        n = names.setdefault(serial, {"q": "", "qr": "", "rcode": -1, "sni": "", "host": ""})
        is_resp = row["dns.flags.response"] in ("1", "True")
        if row["dns.qry.name"]:
            if not is_resp and not n["q"]:
                n["q"] = row["dns.qry.name"]
            if is_resp and not n["qr"]:
                n["qr"] = row["dns.qry.name"]
        if is_resp and row["dns.flags.rcode"] and n["rcode"] < 0:
            n["rcode"] = int(row["dns.flags.rcode"])
        if row["tls.handshake.extensions_server_name"] and not n["sni"]:
            n["sni"] = row["tls.handshake.extensions_server_name"]
        if row["http.host"] and not n["host"]:
            n["host"] = row["http.host"]
    for r in records:
        n = names.get(r.pop("serial"), {"q": "", "qr": "", "rcode": -1, "sni": "", "host": ""})
        r["dns_qname"] = n["q"] or n["qr"]
        r["dns_rcode"] = n["rcode"]
        r["server_name"] = n["sni"] or n["host"]
    return records


def write_expected(path: Path) -> Path:
    rows = expected_table(path)
    out = path.with_name(path.name.rsplit(".", 1)[0] + ".flows.csv")
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({**r, "ts_start": f"{r['ts_start']:.6f}", "ts_end": f"{r['ts_end']:.6f}"})
    return out


# ---------------------------------------------------------------------------- traffic


class Capture:
    """tcpdump (or dumpcap) in a namespace, writing ``path``; stopped with SIGINT."""

    def __init__(self, host: Host, args: list[str]) -> None:
        self.proc = host.popen(*args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 10
        line = b""
        while time.monotonic() < deadline:  # "listening on ..." / "Capturing on ..."
            line = self.proc.stderr.readline()
            if b"istening on" in line or b"Capturing on" in line:
                time.sleep(1.0)  # the socket may still be warming up when the line is printed
                return
        raise RuntimeError(f"capture did not start: {line!r}")

    def stop(self) -> None:
        time.sleep(1.0)  # let the last segments (FIN/ACK) reach the capture
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)


def _pair(lab: Lab) -> tuple[Host, Host, str, str]:
    cli, srv = lab.host("cli"), lab.host("srv")
    ic, _ = lab.link(cli, "10.9.0.1/24", srv, "10.9.0.2/24")
    cli.run("ip", "-6", "addr", "add", "fd09::1/64", "dev", ic, "nodad")
    srv.run("ip", "-6", "addr", "add", "fd09::2/64", "dev", f"v1{srv.short[:5]}", "nodad")
    return cli, srv, ic, f"v1{srv.short[:5]}"


def _serve_http(srv: Host, root: Path) -> subprocess.Popen[bytes]:
    p = srv.popen(
        "python3", "-m", "http.server", "80", "--bind", "::", "--directory", str(root),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for(
        lambda: srv.run("ss", "-ltn", "sport = :80", check=False).stdout.count("LISTEN") > 0,
        timeout=10,
        what="http",
    )
    return p


def make_web(tmp: Path) -> Path:
    """HTTP over IPv4 and IPv6, a refused port, an unanswered SYN, a ping; Ethernet link."""
    out = OUT / "web.pcap"
    with Lab() as lab:
        cli, srv, ic, _ = _pair(lab)
        (tmp / "index.html").write_text("hello flowwarden\n" * 50)
        _serve_http(srv, tmp)
        cli.run("ip", "neigh", "add", "10.9.0.77", "lladdr", "02:00:00:00:00:77", "dev", ic)
        cap = Capture(
            cli,
            ["tcpdump", "-Z", "root", "-i", ic, "-s", "0", "-U", "-n", "-w", str(out), "ip or ip6 or arp"],
        )
        cli.run("curl", "-s", "-o", "/dev/null", "http://10.9.0.2/index.html")
        cli.run("curl", "-s", "-o", "/dev/null", "-g", "http://[fd09::2]/index.html")
        cli.run("curl", "-s", "-o", "/dev/null", "--max-time", "2", "http://10.9.0.2:81/", check=False)
        cli.run("curl", "-s", "-o", "/dev/null", "--max-time", "1", "http://10.9.0.77/", check=False)
        cli.run("ping", "-c", "2", "-i", "0.2", "10.9.0.2")
        cap.stop()
    return out


def make_dns(tmp: Path) -> Path:
    """dig against dnsmasq: answers and an NXDOMAIN; pcapng written by dumpcap."""
    out = OUT / "dns.pcapng"
    with Lab() as lab:
        cli, srv, ic, _ = _pair(lab)
        srv.popen(
            "dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--listen-address=10.9.0.2",
            "--bind-interfaces", "--address=/db.payments.svc.test/10.9.0.5",
            "--address=/api.example.test/10.9.0.6", "--local=/test/", f"--pid-file={tmp / 'dnsmasq.pid'}",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(
            lambda: srv.run("ss", "-lun", "sport = :53", check=False).stdout.count("10.9.0.2") > 0,
            timeout=10,
            what="dnsmasq",
        )
        cap = Capture(cli, ["dumpcap", "-q", "-i", ic, "-s", "0", "-w", str(out)])
        for name in ("db.payments.svc.test", "api.example.test", "missing.example.test"):
            cli.run("dig", "+tries=1", "+time=2", "@10.9.0.2", name, "A")
        cap.stop()
    return out


def make_tls(tmp: Path) -> Path:
    """A TLS request (SNI) and an HTTP request (Host) captured on "any" as Linux SLL2."""
    out = OUT / "tls_sll2.pcap"
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=secure.example.test"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    with Lab() as lab:
        cli, srv, _, _ = _pair(lab)
        srv.popen(
            "openssl", "s_server", "-accept", "443", "-cert", str(cert), "-key", str(key), "-www", "-quiet",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        (tmp / "index.html").write_text("x\n")
        _serve_http(srv, tmp)
        wait_for(
            lambda: srv.run("ss", "-ltn", "sport = :443", check=False).stdout.count("LISTEN") > 0,
            timeout=10,
            what="tls",
        )
        cap = Capture(
            cli,
            ["tcpdump", "-Z", "root", "-i", "any", "-y", "LINUX_SLL2", "-s", "0", "-U", "-n", "-w", str(out)],
        )
        cli.run(
            "curl", "-sk", "-o", "/dev/null", "--max-time", "5",
            "--resolve", "secure.example.test:443:10.9.0.2", "https://secure.example.test/",
        )  # fmt: skip
        cli.run(
            "curl", "-s", "-o", "/dev/null", "-H", "Host: intranet.example.test", "http://10.9.0.2/index.html"
        )
        cap.stop()
    return out


def make_scan() -> Path:
    """An nmap SYN scan and UDP datagrams, 802.1Q-tagged after capture (VLAN 10)."""
    out = OUT / "scan_vlan.pcap"
    plain = OUT / "scan_plain.tmp"
    with Lab() as lab:
        cli, srv, ic, _ = _pair(lab)
        srv.popen(
            "python3",
            "-m",
            "http.server",
            "8080",
            "--bind",
            "10.9.0.2",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(
            lambda: srv.run("ss", "-ltn", "sport = :8080", check=False).stdout.count("LISTEN") > 0,
            timeout=10,
            what="http",
        )
        cap = Capture(cli, ["tcpdump", "-Z", "root", "-i", ic, "-s", "0", "-U", "-n", "-w", str(plain)])
        cli.run("nmap", "-n", "-Pn", "-sS", "-p", "20-40,8080", "--max-retries", "0", "10.9.0.2", timeout=60)
        cli.run("python3", "-c",
                "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                "[s.sendto(b'x'*i, ('10.9.0.2', 9999)) for i in range(1, 6)]")  # fmt: skip
        cap.stop()
    _tag_vlan(plain, out, vlan=10)
    plain.unlink()
    return out


def _tag_vlan(src: Path, dst: Path, vlan: int) -> None:
    """Insert an 802.1Q tag into every Ethernet frame (this kernel has no 8021q module)."""
    tag = b"\x81\x00" + vlan.to_bytes(2, "big")
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        w = dpkt.pcap.Writer(fo, linktype=dpkt.pcap.DLT_EN10MB, snaplen=262144)
        for ts, raw in dpkt.pcap.Reader(fi):
            w.writepkt(raw[:12] + tag + raw[12:], ts)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for tool in ("tcpdump", "dumpcap", "tshark", "dnsmasq", "dig", "nmap", "curl", "openssl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install {tool}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        made = [make_web(tmp), make_dns(tmp), make_tls(tmp), make_scan()]
    for p in made:
        p.chmod(0o644)
        print(p, "->", write_expected(p))


if __name__ == "__main__":
    main()
