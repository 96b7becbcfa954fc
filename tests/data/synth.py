"""Synthetic captures with many distinct 5-tuples, written with numpy (no per-packet objects).

Used by the flow-table tests (against the per-packet reference) and by
``benchmarks/bench_collector.py`` (a capture of >= 1M packets in /tmp). Each TCP flow
opens with SYN / SYN+ACK, carries ACK/PSH segments both ways and ends with FIN; some flows
are UDP; flows last from milliseconds to a minute, so idle and active timeouts both fire.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SNAP = 64  # captured bytes per packet (headers only, like a snap-length capture)


def synth_capture(
    path: str | Path, *, packets: int, flows: int, duration_s: float = 60.0, seed: int = 1, t0: float = 1.7e9
) -> Path:
    """Write a pcap of about ``packets`` packets in ``flows`` flows (TCP 80 %, UDP 20 %)."""
    rng = np.random.default_rng(seed)
    path = Path(path)
    per = rng.geometric(flows / packets, size=flows).astype(np.int64) + 2  # >= 3 packets a flow
    scale = packets / per.sum()
    per = np.maximum(3, np.round(per * scale).astype(np.int64))
    fid = np.repeat(np.arange(flows), per)
    j = np.arange(len(fid)) - np.repeat(np.cumsum(per) - per, per)  # index within the flow
    last = j == per[fid] - 1
    udp = rng.random(flows) < 0.2
    start = rng.uniform(0, duration_s, flows)
    gap = np.exp(rng.uniform(np.log(1e-4), np.log(8.0), flows))  # 0.1 ms .. 8 s between packets
    ts_us = np.round((t0 + start[fid] + j * gap[fid] * rng.uniform(0.5, 1.5, len(fid))) * 1e6).astype(
        np.int64
    )
    order = np.argsort(ts_us, kind="stable")
    # Per-flow endpoints: 10.a.b.c clients to 10.96.x.y servers, random ports.
    cli = (10 << 24) | rng.integers(0, 1 << 20, flows)
    srv = (10 << 24) | (96 << 16) | rng.integers(0, 1 << 12, flows)
    cport = rng.integers(1024, 65535, flows)
    sport = rng.choice(np.array([53, 80, 443, 5432, 6379, 8080, 9092]), flows)
    to_srv = (j == 0) | ((j != 1) & (rng.random(len(fid)) < 0.55))
    flags = np.where(
        j == 0, 0x02, np.where(j == 1, 0x12, np.where(last, 0x11, np.where(j % 3 == 0, 0x18, 0x10)))
    )
    proto = np.where(udp[fid], 17, 6)
    flags = np.where(udp[fid], 0, flags)
    wirelen = np.where(rng.random(len(fid)) < 0.3, rng.integers(64, 1515, len(fid)), 66)

    fid, j, to_srv, flags, proto, wirelen, ts_us = (
        a[order] for a in (fid, j, to_srv, flags, proto, wirelen, ts_us)
    )
    n = len(fid)
    src = np.where(to_srv, cli[fid], srv[fid])
    dst = np.where(to_srv, srv[fid], cli[fid])
    sp = np.where(to_srv, cport[fid], sport[fid])
    dp = np.where(to_srv, sport[fid], cport[fid])

    rec = np.zeros((n, 16 + SNAP), dtype=np.uint8)

    def put(col: int, values: np.ndarray, width: int, big: bool = True) -> None:
        v = values.astype(np.uint64)
        for k in range(width):
            shift = 8 * (width - 1 - k) if big else 8 * k
            rec[:, col + k] = ((v >> np.uint64(shift)) & np.uint64(0xFF)).astype(np.uint8)

    caplen = np.minimum(wirelen, SNAP)
    put(0, ts_us // 1_000_000, 4, big=False)
    put(4, ts_us % 1_000_000, 4, big=False)
    put(8, caplen, 4, big=False)
    put(12, wirelen, 4, big=False)
    e = 16
    rec[:, e : e + 6] = 0x02
    rec[:, e + 6 : e + 12] = 0x04
    put(e + 12, np.full(n, 0x0800), 2)
    ip = e + 14
    rec[:, ip] = 0x45
    put(ip + 2, wirelen - 14, 2)
    rec[:, ip + 8] = 64
    put(ip + 9, proto, 1)
    put(ip + 12, src, 4)
    put(ip + 16, dst, 4)
    l4 = ip + 20
    put(l4, sp, 2)
    put(l4 + 2, dp, 2)
    tcp = proto == 6
    rec[tcp, l4 + 12] = 0x50
    rec[:, l4 + 13] = np.where(tcp, flags, 0).astype(np.uint8)
    put(l4 + 4, np.where(tcp, j * 1000, np.minimum(wirelen - 34, 65535)), 4)

    header = np.array([0xA1B2C3D4], "<u4").tobytes() + np.array([2, 4], "<u2").tobytes()
    header += np.array([0, 0, 65535, 1], "<u4").tobytes()
    with open(path, "wb") as fh:
        fh.write(header)
        # Rows are SNAP + 16 bytes, but short frames keep only their caplen.
        if (caplen == SNAP).all():
            fh.write(rec.tobytes())
        else:
            keep = (np.arange(16 + SNAP)[None, :] < (16 + caplen)[:, None]).ravel()
            fh.write(rec.ravel()[keep].tobytes())
    return path
