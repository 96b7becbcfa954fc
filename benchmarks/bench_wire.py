"""Flow-batch serialisation alone (no broker): JSON per flow against the Arrow-IPC wire format.

Separates the cost of :mod:`flowwarden.wire` from the bus's (see ``bench_bus.py``). Rates are
per CPU-second of this process (``time.process_time``), so a busy shared machine slows the
run but not the figures.

    .venv/bin/python benchmarks/bench_wire.py           # ~20 s
    .venv/bin/python benchmarks/bench_wire.py --quick   # ~5 s
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_bus import make_flows  # noqa: E402

from flowwarden.records import split_invalid_flows  # noqa: E402
from flowwarden.wire import decode_flows, encode_flows  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import emit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 50_000 if args.quick else 300_000
    df = make_flows(n)
    print(f"wire benchmark: {n} flows, rates per CPU-second")
    print(f"{'format':<12} {'encode/s':>12} {'decode/s':>12} {'decode+split/s':>15} {'bytes/flow':>11}")

    rows = df.head(n // 10).to_dict("records")
    t = time.process_time()
    blobs = [json.dumps(r, separators=(",", ":")).encode() for r in rows]
    enc = len(rows) / (time.process_time() - t)
    t = time.process_time()
    for b in blobs:
        json.loads(b)
    dec = len(rows) / (time.process_time() - t)
    size = sum(len(b) for b in blobs) / len(rows)
    print(f"{'json/flow':<12} {enc:>12,.0f} {dec:>12,.0f} {'-':>15} {size:>11.1f}")
    json_peer = f"JSON per flow: encode {enc:,.0f}/s, {size:.0f} B/flow"

    for batch in (500, 5000, 50_000):
        chunks = [df.iloc[i : i + batch] for i in range(0, n, batch)]
        t = time.process_time()
        msgs = [encode_flows(c) for c in chunks]
        enc = n / (time.process_time() - t)
        t = time.process_time()
        decoded = [decode_flows(m) for m in msgs]
        dec = n / (time.process_time() - t)
        t = time.process_time()
        for d in decoded:
            split_invalid_flows(d)
        split = n / (time.process_time() - t)
        both = n / (n / dec + n / split)
        size = sum(len(m) for m in msgs) / n
        print(f"{f'arrow-{batch}':<12} {enc:>12,.0f} {dec:>12,.0f} {both:>15,.0f} {size:>11.1f}")
        note = f"{batch} flows/message, {size:.0f} bytes/flow on the wire; per CPU-second"
        emit("wire", f"encode arrow-{batch}", enc, "flows/s", peer=json_peer, note=note)
        emit("wire", f"decode + row checks arrow-{batch}", both, "flows/s", peer=json_peer, note=note)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
