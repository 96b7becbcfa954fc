"""Bus throughput through a real Kafka-protocol broker (tansu, started here).

Compares one JSON message per flow with Arrow-IPC+zstd batches (500 and 5000 flows per
message, the wire format of :mod:`flowwarden.wire`), with kafka-python's CRC-32C in C
(the ``crc32c`` package) and without it (pure Python). Each case runs in its own process
so that its peak memory is its own, and "no crc32c" really is the pure-Python path.

    .venv/bin/python benchmarks/bench_bus.py            # ~1-2 minutes
    .venv/bin/python benchmarks/bench_bus.py --quick    # < 30 s

Produce time runs from the first send (serialisation included) until ``flush`` returns;
consume time from the first poll until every flow is decoded and validated
(:func:`~flowwarden.bus.read_flow_batches`, the pipeline's path). ``raw-500`` sends
batches encoded before the clock and does not decode them: the bus and broker alone. Group join happens before
either clock starts. Rates are wall-clock (the broker runs beside us); "cpu s" is this
process's CPU time for both phases, which shows how much a busy shared machine stole.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARTITIONS = 3


def make_flows(n: int, seed: int = 1) -> pd.DataFrame:
    import numpy as np

    from flowwarden.records import conform_flows

    rng = np.random.default_rng(seed)
    src = rng.integers(0, 2000, n)
    start = 1_700_000_000.0 + np.sort(rng.uniform(0, 600, n))
    return conform_flows(
        {
            "ts_start": start,
            "ts_end": start + rng.exponential(2.0, n),
            "node": np.array([f"node-{i % 5}" for i in range(n)]),
            "src_ip": np.array([f"10.244.{s // 250}.{s % 250 + 1}" for s in src]),
            "src_port": rng.integers(32768, 61000, n),
            "dst_ip": np.array([f"10.96.{d // 250}.{d % 250 + 1}" for d in rng.integers(0, 500, n)]),
            "dst_port": rng.choice([53, 80, 443, 5432, 6379, 8080], n),
            "proto": rng.choice([6, 17], n),
            "bytes_out": rng.integers(60, 200_000, n),
            "bytes_in": rng.integers(0, 2_000_000, n),
            "pkts_out": rng.integers(1, 200, n),
            "pkts_in": rng.integers(0, 2000, n),
            "state": rng.choice(["established", "closed", "udp"], n),
        }
    )


def worker(mode: str, flows: int, bootstrap: str) -> dict[str, object]:
    """One case in this process; returns its figures."""
    from flowwarden.bus import open_bus, read_flow_batches
    from flowwarden.bus_kafka import crc32c_accelerated
    from flowwarden.settings import Settings
    from flowwarden.wire import encode_flows

    df = make_flows(flows)
    suffix = uuid.uuid4().hex[:8]
    topic = f"bench-{mode}-{suffix}"
    settings = Settings.model_validate(
        {
            "bus": {"kind": "kafka"},
            "kafka": {
                "bootstrap_servers": [bootstrap],
                "client_id": f"bench-{suffix}",
                "partitions": PARTITIONS,
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 1000,
                "max_poll_interval_ms": 60000,
                "idempotence": False,
            },
        }
    )
    bus = open_bus(settings)
    bus.ensure_topics([topic])
    consumer = bus.consumer([topic], f"bench-{suffix}")
    deadline = time.monotonic() + 30
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(timeout_s=0.2)
    producer = bus.producer()

    wire_bytes = 0
    messages = 0
    size = int(mode.split("-")[1]) if mode.startswith(("arrow", "raw")) else 1
    # "raw-N": batches encoded before the clock starts, so only the bus is measured.
    pre = (
        [encode_flows(df.iloc[s : s + size]) for s in range(0, len(df), size)]
        if mode.startswith("raw")
        else []
    )
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    if pre:
        for i, value in enumerate(pre):
            wire_bytes += len(value)
            producer.send(topic, value, partition=i % PARTITIONS)
            messages += 1
    elif mode.startswith("json"):
        for i, row in enumerate(df.to_dict("records")):
            value = json.dumps(row, separators=(",", ":")).encode()
            wire_bytes += len(value)
            producer.send(topic, value, partition=i % PARTITIONS)
            messages += 1
    else:
        for i, start in enumerate(range(0, len(df), size)):
            value = encode_flows(df.iloc[start : start + size])
            wire_bytes += len(value)
            producer.send(topic, value, partition=i % PARTITIONS)
            messages += 1
    flushed = producer.flush(120)
    produce_s = time.perf_counter() - t0
    failed = producer.failed_count

    seen = 0
    t1 = time.perf_counter()
    deadline = time.monotonic() + 120
    while seen < flows and time.monotonic() < deadline:
        polled = consumer.poll(timeout_s=0.5, max_records=2000)
        if mode.startswith("json"):
            for m in polled:
                json.loads(m.value)
                seen += 1
        elif mode.startswith("raw"):
            seen += size * len(polled)  # the bus alone: no decoding
        else:  # the pipeline's path: decode, validate rows, separate dead letters
            good, dead = read_flow_batches(polled)
            seen += sum(len(df) for _, df in good) + len(dead)
    consume_s = time.perf_counter() - t1
    cpu_s = time.process_time() - cpu0
    consumer.close()
    producer.close()
    return {
        "mode": mode,
        "crc32c_c": crc32c_accelerated(),
        "flows": flows,
        "messages": messages,
        "wire_mb": wire_bytes / 1e6,
        "produce_fps": flows / produce_s,
        "consume_fps": seen / consume_s,
        "consumed": seen,
        "failed": failed,
        "flushed": flushed,
        "cpu_s": cpu_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_case(mode: str, flows: int, bootstrap: str, crc32c: bool) -> dict[str, object]:
    args = [sys.executable, __file__, "--worker", mode, "--flows", str(flows), "--bootstrap", bootstrap]
    if not crc32c:
        args.append("--no-crc32c")
    out = subprocess.run(args, capture_output=True, text=True, timeout=240, check=False)
    if out.returncode != 0:
        raise SystemExit(f"case {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run (< 30 s)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--flows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--no-crc32c", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        if args.no_crc32c:
            sys.modules["crc32c"] = None  # type: ignore[assignment]  # kafka-python: pure Python CRC
        print(json.dumps(worker(args.worker, args.flows, args.bootstrap)))
        return

    from tests.support.broker import TansuBroker

    json_flows, arrow_flows = (5_000, 50_000) if args.quick else (50_000, 500_000)
    cases = [
        ("json", json_flows, True),
        ("arrow-500", arrow_flows, True),
        ("arrow-5000", arrow_flows, True),
        ("raw-500", arrow_flows, True),
    ]
    if args.quick:
        cases.append(("arrow-500", arrow_flows // 2, False))
    else:
        cases += [("json", json_flows // 2, False), ("arrow-500", arrow_flows // 2, False)]
    started = time.monotonic()
    with TansuBroker() as broker:
        rows = [run_case(mode, n, broker.bootstrap, crc) for mode, n, crc in cases]
    print(f"bus benchmark: tansu {broker.bootstrap}, {PARTITIONS} partitions, cpus={os.cpu_count()}")
    header = (
        f"{'format':<11} {'crc32c':<7} {'flows':>8} {'msgs':>8} {'wire MB':>8} "
        f"{'produce/s':>11} {'consume/s':>11} {'cpu s':>6} {'failed':>6} {'peak RSS MB':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['mode']:<11} {'C' if r['crc32c_c'] else 'python':<7} {r['flows']:>8} {r['messages']:>8} "
            f"{r['wire_mb']:>8.1f} {r['produce_fps']:>11,.0f} {r['consume_fps']:>11,.0f} "
            f"{r['cpu_s']:>6.1f} {r['failed']:>6} {r['peak_rss_mb']:>11.0f}"
        )
        if r["consumed"] != r["flows"] or not r["flushed"]:
            print(f"  ! {r['mode']}: consumed {r['consumed']} of {r['flows']}, flushed={r['flushed']}")
    print(f"total {time.monotonic() - started:.0f}s")
    report(rows)


def report(rows: list[dict[str, object]]) -> None:
    """Headline figures for run_all.py: each format's produce and consume rates, JSON as the peer."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results import emit

    json_row = next((r for r in rows if r["mode"] == "json" and r["crc32c_c"]), None)
    peer = f"JSON per flow {float(json_row['produce_fps']):,.0f}/s produced" if json_row else ""
    for r in rows:
        crc = "crc32c C" if r["crc32c_c"] else "pure-Python CRC"
        note = f"{r['flows']:,} flows, {r['messages']:,} messages, {PARTITIONS} partitions, {crc}"
        label = {"raw-500": "pre-encoded 500/msg (bus alone)"}.get(str(r["mode"]), str(r["mode"]))
        emit("bus", f"produce {label}", float(r["produce_fps"]), "flows/s", peer=peer, note=note)
        emit("bus", f"consume {label}", float(r["consume_fps"]), "flows/s", peer=peer, note=note)
    emit("bus", "peak RSS (largest case)", max(float(r["peak_rss_mb"]) for r in rows), "MiB")


if __name__ == "__main__":
    main()
