"""Store throughput: rolling up flows, adding rollups, upserting alerts, marking batches.

Prints figures for SQLite (a temporary file) and, when it is up, the machine's PostgreSQL
(a temporary database ``fw_bench_<uuid>``, dropped at the end). Timings only, no asserts.

    .venv/bin/python benchmarks/bench_store.py           # 100k flows, 5k alerts
    .venv/bin/python benchmarks/bench_store.py --quick   # 20k flows, 1k alerts (< 30 s)
    .venv/bin/python benchmarks/bench_store.py --only sqlite
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from flowwarden.records import Alert, Entity, empty_flows
from flowwarden.rollups import rollup_flows
from flowwarden.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import compact, emit

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def synthetic_flows(n: int, *, seed: int = 1, pods: int = 400, minutes: int = 10) -> pd.DataFrame:
    """An enriched batch shaped like a service graph: pods of 40 workloads, each workload
    calling three others on their service port and two external addresses on 443."""
    rng = np.random.default_rng(seed)
    df = empty_flows(n)
    src = rng.integers(0, pods, n)
    wl = src % 40
    choice = rng.integers(0, 5, n)
    internal = choice < 3
    dst_wl = (wl + np.array([1, 7, 13, 0, 0])[choice]) % 40
    dst_pod = dst_wl + 40 * rng.integers(0, pods // 40, n)
    ext = (wl * 3 + choice) % 500
    ports = np.array([53, 80, 443, 5432, 6379, 8080, 9090])
    df["ts_start"] = rng.uniform(0, minutes * 60, n)
    df["ts_end"] = df["ts_start"] + rng.uniform(0, 10, n)
    df["node"] = pd.Series([f"node-{i % 5}" for i in src], dtype="str")
    df["src_ip"] = pd.Series([f"10.244.{i // 250}.{i % 250 + 1}" for i in src], dtype="str")
    dst_ip = [
        f"10.244.{d // 250}.{d % 250 + 1}" if k else f"198.51.100.{e % 250 + 1}"
        for d, e, k in zip(dst_pod, ext, internal, strict=True)
    ]
    df["dst_ip"] = pd.Series(dst_ip, dtype="str")
    df["dst_port"] = np.where(internal, ports[dst_wl % 7], 443).astype("int32")
    df["proto"] = 6
    df["bytes_out"] = rng.integers(40, 100_000, n)
    df["bytes_in"] = rng.integers(40, 1_000_000, n)
    df["pkts_out"] = rng.integers(1, 100, n)
    df["pkts_in"] = rng.integers(1, 1000, n)
    df["state"] = pd.Series(np.where(rng.random(n) < 0.02, "rejected", "closed"), dtype="str")
    df["final"] = rng.random(n) < 0.9
    df["direction"] = pd.Series(np.where(internal, "internal", "egress"), dtype="str")
    df["src_namespace"] = pd.Series([f"ns-{i % 8}" for i in wl], dtype="str")
    df["src_pod"] = pd.Series([f"pod-{i}" for i in src], dtype="str")
    df["src_workload"] = pd.Series([f"wl-{i}" for i in wl], dtype="str")
    df["dst_namespace"] = pd.Series(np.where(internal, [f"ns-{i % 8}" for i in dst_wl], ""), dtype="str")
    df["dst_pod"] = pd.Series(np.where(internal, [f"pod-{i}" for i in dst_pod], ""), dtype="str")
    df["dst_workload"] = pd.Series(np.where(internal, [f"wl-{i}" for i in dst_wl], ""), dtype="str")
    return df


def synthetic_alerts(n: int) -> list[Alert]:
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    return [
        Alert(
            kind="lateral_movement",
            detector="port_scan",
            score=0.5 + (i % 50) / 100,
            severity="high",
            entity=Entity(
                ip=f"10.244.{i // 250 % 250}.{i % 250 + 1}", namespace="shop", pod=f"p-{i}", workload="w"
            ),
            window_start=t0 + timedelta(seconds=10 * (i % 1000)),
            window_end=t0 + timedelta(seconds=10 * (i % 1000) + 10),
            targets=[f"10.244.9.{j}" for j in range(1, 21)],
            target_ports=list(range(20, 40)),
            summary="scanned 20 ports",
            evidence={"distinct_ports": 20, "baseline": {"median": 2.0, "mad": 1.0}},
            example_flows=[{"dst_ip": "10.244.9.1", "dst_port": p, "state": "rejected"} for p in range(5)],
        )
        for i in range(n)
    ]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(
    label: str, count: int, unit: str, fn: Callable[[], Any], rates: dict[str, float] | None = None
) -> Any:
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    print(f"  {label:<38} {count:>8} {unit:<8} {dt:7.3f} s  {count / dt:>12,.0f} {unit}/s")
    if rates is not None:
        rates[label] = count / dt
    return out


@contextmanager
def pg_database() -> Iterator[str | None]:
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    name = f"fw_bench_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        print(f"postgresql: not reachable ({str(exc.orig).strip().splitlines()[-1]}); skipped")
        yield None
        return
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run(url: str, flows: pd.DataFrame, alerts: list[Alert], batches: int) -> dict[str, float]:
    """Times each operation on one store; returns the rates (per second) by label, and sizes."""
    rates: dict[str, float] = {}
    with Store(url) as store:
        print(f"{store.dialect}:")
        rollups = timed("rollup_flows (pandas)", len(flows), "flows", lambda: rollup_flows(flows), rates)
        print(f"  -> {len(rollups)} rollup rows")
        timed("add_rollups (new rows)", len(rollups), "rows", lambda: store.add_rollups(rollups), rates)
        timed(
            "add_rollups (all conflict, additive)",
            len(rollups),
            "rows",
            lambda: store.add_rollups(rollups),
            rates,
        )
        timed("upsert_alerts (new)", len(alerts), "alerts", lambda: store.upsert_alerts(alerts), rates)
        timed("upsert_alerts (replay)", len(alerts), "alerts", lambda: store.upsert_alerts(alerts), rates)
        timed("list_alerts", len(alerts), "alerts", store.list_alerts)
        chunk = max(1, len(flows) // batches)
        in_time_order = flows.sort_values("ts_end", ignore_index=True)  # as batches arrive

        def per_batch_transactions() -> None:
            for b in range(batches):
                part = in_time_order.iloc[b * chunk : (b + 1) * chunk]
                with store.transaction() as conn:
                    if store.seen_batches("bench", [("flows", 0, b)], conn=conn):
                        continue
                    store.add_rollups(rollup_flows(part), conn=conn)
                    store.mark_batches("bench", [("flows", 0, b)], conn=conn)

        label = f"pipeline-style tx ({chunk} flows each)"
        timed(label, batches, "batches", per_batch_transactions, rates)
        rates["pipeline-style tx"] = rates.pop(label)
        rates["chunk"] = chunk
        rates["rollup_rows"] = len(rollups)
    return rates


HEADLINE = [  # (label in run(), figure, unit)
    ("rollup_flows (pandas)", "rollup_flows (pandas)", "flows/s"),
    ("add_rollups (new rows)", "add_rollups (new rows)", "rows/s"),
    ("upsert_alerts (new)", "alert upserts (new)", "alerts/s"),
    ("pipeline-style tx", "pipeline-style batch transactions", "batches/s"),
]


def emit_results(by_dialect: dict[str, dict[str, float]], n_flows: int, n_alerts: int) -> None:
    """The headline figures as ``RESULT`` lines for ``run_all.py``; each dialect's peer is the other."""
    sizes = {"flows/s": f"{n_flows:,} flows", "alerts/s": f"{n_alerts:,} alerts"}
    for dialect, rates in by_dialect.items():
        others = [d for d in by_dialect if d != dialect]
        for label, figure, unit in HEADLINE:
            peer = ", ".join(f"{o} {compact(by_dialect[o][label], unit)}" for o in others)
            if unit == "rows/s":
                note = f"{rates['rollup_rows']:,.0f} rollup rows"
            elif unit == "batches/s":
                note = f"{rates['chunk']:,.0f} flows each, one transaction per batch"
            else:
                note = sizes[unit]
            if label == "rollup_flows (pandas)":
                note += "; pandas, not the database"
            emit("store", f"{dialect}: {figure}", round(rates[label], 1), unit, peer=peer, note=note)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, well under 30 s")
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    args = parser.parse_args()
    n_flows, n_alerts, n_batches = (20_000, 1_000, 20) if args.quick else (100_000, 5_000, 100)
    t = time.perf_counter()
    flows = synthetic_flows(n_flows)
    alerts = synthetic_alerts(n_alerts)
    print(f"built {n_flows} flows and {n_alerts} alerts in {time.perf_counter() - t:.1f} s")
    by_dialect: dict[str, dict[str, float]] = {}
    if args.only in (None, "sqlite"):
        with tempfile.TemporaryDirectory() as tmp:
            by_dialect["sqlite"] = run(f"sqlite:///{Path(tmp) / 'bench.db'}", flows, alerts, n_batches)
    if args.only in (None, "postgresql"):
        with pg_database() as url:
            if url:
                by_dialect["postgresql"] = run(url, flows, alerts, n_batches)
    print(f"peak RSS {peak_rss_mb():.0f} MiB")
    emit_results(by_dialect, n_flows, n_alerts)
    emit("store", "peak RSS", round(peak_rss_mb()), "MiB", note=", ".join(by_dialect) + " in one process")


if __name__ == "__main__":
    main()
