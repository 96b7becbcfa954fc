"""How long each dashboard panel's SQL takes on a store filled by the real pipeline.

Grafana runs every panel of a dashboard at each refresh (30 s by default), so the slowest
panel on a realistic store is the figure that matters. The store is filled as in
``tests/integration/test_dashboard_queries.py``: the simulator's traffic through the
embedded pipeline stage into a fresh PostgreSQL database on 127.0.0.1:5432 (dropped at the
end), then each panel query runs ``--repeat`` times with Grafana's macros expanded.

    .venv/bin/python benchmarks/bench_dashboards.py            # 45 simulated minutes, 120 pods, ~1-2 min
    .venv/bin/python benchmarks/bench_dashboards.py --quick    # 10 minutes, 50 pods, < 30 s
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results import emit  # noqa: E402

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def fill(url: str, minutes: int, pods: int) -> tuple[datetime, datetime, dict[str, float]]:
    """Simulator -> memory bus -> pipeline stage -> PostgreSQL; returns the data's range and timings."""
    from flowwarden.bus import open_bus, publish_flows
    from flowwarden.pipeline.runtime.stage import build_stage
    from flowwarden.settings import load_settings
    from flowwarden.simulator import simulate
    from flowwarden.store import Store

    end = datetime.now(UTC).replace(second=0, microsecond=0)
    start = end - timedelta(minutes=minutes)
    t0 = time.perf_counter()
    sim = simulate(minutes=minutes, pods=pods, seed=1, attacks="all", start=start)
    t_sim = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        inventory = Path(tmp) / "inventory.json"
        inventory.write_text(json.dumps(sim.inventory))
        settings = load_settings(
            None,
            bus={"kind": "memory"},
            store={"url": url},
            kubernetes={"inventory_path": str(inventory)},
            pipeline={"metrics_port": 0},
        )
        store = Store(url).start()
        bus = open_bus(settings)
        stage = build_stage(settings, bus=bus, store=store)
        stage.start()
        t0 = time.perf_counter()
        publish_flows(bus.producer(), settings.kafka.topics.flows, sim.flows, settings.kafka.partitions)
        stage.drain(max_seconds=600)
        t_pipe = time.perf_counter() - t0
        stage.stop()
        with store.engine.connect() as conn:
            rollups = conn.exec_driver_sql("SELECT count(*) FROM flow_rollups").scalar_one()
            alerts = conn.exec_driver_sql("SELECT count(*) FROM alerts").scalar_one()
        store.stop()
    return (
        start,
        end,
        {
            "flows": float(len(sim.flows)),
            "rollup_rows": float(rollups),
            "alerts": float(alerts),
            "simulate_s": t_sim,
            "pipeline_s": t_pipe,
        },
    )


def time_panels(url: str, start: datetime, end: datetime, repeat: int) -> list[tuple[str, str, int, float]]:
    """(dashboard, panel, rows, median seconds) for every SQL query of every dashboard."""
    from flowwarden.dashboards.catalog import load_committed
    from flowwarden.dashboards.model import POSTGRES_TYPE
    from flowwarden.dashboards.queries import QueryContext, interpolate_sql, panel_queries

    ctx = QueryContext(start, end + timedelta(minutes=1), {"namespace": None, "workload": None})
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    out = []
    with engine.connect() as conn:
        for name, board in load_committed().items():
            for q in panel_queries(name, board):
                if q.datasource_type != POSTGRES_TYPE:
                    continue
                text = interpolate_sql(q.text, ctx)
                times, rows = [], 0
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    rows = len(conn.exec_driver_sql(text).fetchall())
                    times.append(time.perf_counter() - t0)
                out.append((name, f"{q.panel} [{q.ref}]", rows, statistics.median(times)))
    engine.dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 simulated minutes, 50 pods (< 30 s)")
    ap.add_argument("--minutes", type=int, default=None)
    ap.add_argument("--pods", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    minutes = args.minutes or (10 if args.quick else 45)
    pods = args.pods or (50 if args.quick else 120)

    name = f"fw_bench_dash_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        start, end, figures = fill(url, minutes, pods)
        panels = time_panels(url, start, end, args.repeat)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    print(f"store: {minutes} simulated minutes, {pods} pods")
    for k, v in figures.items():
        print(f"  {k:12} {v:,.1f}")
    print(f"\n{'dashboard':18} {'panel':62} {'rows':>6} {'median ms':>10}")
    for board, panel, rows, secs in sorted(panels, key=lambda p: -p[3]):
        print(f"{board:18} {panel[:62]:62} {rows:6d} {secs * 1000:10.1f}")
    per_board: dict[str, float] = {}
    for board, _panel, _rows, secs in panels:
        per_board[board] = per_board.get(board, 0.0) + secs
    print("\nall SQL of one dashboard refresh (sequential):")
    for board, secs in per_board.items():
        print(f"  {board:18} {secs * 1000:8.1f} ms")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    slowest = max(p[3] for p in panels) * 1000
    print(f"\npanels: {len(panels)}  slowest: {slowest:.1f} ms  peak RSS: {peak_mb:.0f} MB")
    emit_results(panels, per_board, figures, minutes, pods, args.repeat, peak_mb)


def emit_results(
    panels: list[tuple[str, str, int, float]],
    per_board: dict[str, float],
    figures: dict[str, float],
    minutes: int,
    pods: int,
    repeat: int,
    peak_mb: float,
) -> None:
    """The headline figures as ``RESULT`` lines for ``run_all.py``."""
    peer = "Grafana refresh every 30 s"
    store = f"store: {minutes} min, {pods} pods, {figures['rollup_rows']:,.0f} rollup rows"
    board, panel, rows, secs = max(panels, key=lambda p: p[3])
    emit(
        "dashboards",
        "slowest panel query",
        round(secs * 1000, 1),
        "ms",
        peer=peer,
        note=f"{board}: {panel}, {rows} rows; median of {repeat}; {store}",
    )
    for name, secs in sorted(per_board.items(), key=lambda b: -b[1]):
        n = sum(1 for p in panels if p[0] == name)
        emit(
            "dashboards",
            f"full refresh, {name}",
            round(secs * 1000, 1),
            "ms",
            peer=peer,
            note=f"{n} queries, sequential",
        )
    note = "one process: simulator, pipeline stage, queries"
    emit("dashboards", "peak RSS", round(peak_mb), "MiB", note=note)


if __name__ == "__main__":
    main()
