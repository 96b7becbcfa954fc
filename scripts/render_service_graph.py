"""Draw what the Service graph dashboard's Node Graph shows, from a real store, for the docs.

There is no Grafana where the docs are built: this runs the panel's own two queries (edges and
nodes, expanded as Grafana would by ``dashboards.queries``) against a PostgreSQL store and
draws the answer: workloads on an inner ring grouped by namespace, addresses of no known pod on an
outer ring, edges in red when they are in an open alert, wider with more bytes.

    .venv/bin/python scripts/render_service_graph.py --store postgresql+psycopg://... \\
        --minutes 30 --out docs/img/service-graph-sample.png
"""

from __future__ import annotations

import argparse
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from flowwarden.dashboards.catalog import build_all
from flowwarden.dashboards.queries import QueryContext, interpolate_sql, panel_queries


def _rows(engine: sa.Engine, text: str, ctx: QueryContext) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.exec_driver_sql(interpolate_sql(text, ctx)).mappings()]


def _layout(nodes: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    inner = sorted((n for n in nodes if n["subtitle"] != "address"), key=lambda n: (n["subtitle"], n["id"]))
    outer = sorted(n["id"] for n in nodes if n["subtitle"] == "address")
    pos = {}
    for i, n in enumerate(inner):
        a = 2 * math.pi * i / max(len(inner), 1)
        pos[n["id"]] = (math.cos(a), math.sin(a))
    for i, ip in enumerate(outer):
        a = 2 * math.pi * (i + 0.5) / max(len(outer), 1)
        pos[ip] = (1.7 * math.cos(a), 1.7 * math.sin(a))
    return pos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="PostgreSQL URL of a store the pipeline filled")
    ap.add_argument("--minutes", type=int, default=30, help="the range: this many minutes up to now")
    ap.add_argument("--out", type=Path, default=Path("docs/img/service-graph-sample.png"))
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = build_all()["service-graph"]
    queries = {q.ref: q.text for q in panel_queries("service-graph", board) if q.panel_type == "nodeGraph"}
    now = datetime.now(UTC)
    ctx = QueryContext(now - timedelta(minutes=args.minutes), now, {"namespace": None, "workload": None})
    engine = sa.create_engine(args.store)
    edges, nodes = _rows(engine, queries["edges"], ctx), _rows(engine, queries["nodes"], ctx)
    pos = _layout(nodes)
    fig, ax = plt.subplots(figsize=(13, 13))
    top = max((float(e["secondarystat"] or 0) for e in edges), default=1.0) or 1.0
    for e in sorted(edges, key=lambda e: bool(e["highlighted"])):  # red on top
        (x0, y0), (x1, y1) = pos[e["source"]], pos[e["target"]]
        width = 0.4 + 3.0 * math.log1p(float(e["secondarystat"] or 0)) / math.log1p(top)
        red = bool(e["highlighted"])
        ax.plot(
            [x0, x1], [y0, y1], color="#d62728" if red else "#9a9a9a", lw=width, alpha=0.9 if red else 0.35
        )
    for n in nodes:
        x, y = pos[n["id"]]
        ext = n["subtitle"] == "address"
        face = "#d62728" if n["color"] == "red" else ("#f2f2f2" if ext else "#cfe3f5")
        ax.scatter([x], [y], s=260 if not ext else 120, c=face, edgecolors="#333333", zorder=3)
        label = n["id"] if ext else f"{n['title']}\n({n['subtitle']})"
        ax.annotate(
            label, (x, y), xytext=(0, 11), textcoords="offset points", ha="center", fontsize=7, zorder=4
        )
    red = sum(bool(e["highlighted"]) for e in edges)
    ax.set_title(
        f"Service graph panel on a store the pipeline filled: {len(nodes)} nodes, {len(edges)} edges, "
        f"{red} red (in an open alert)\ninner ring: workloads by namespace; outer ring: addresses of "
        "no known pod (outside the cluster, nodes, services, unused pod addresses)",
        fontsize=11,
    )
    ax.set_aspect("equal")
    ax.axis("off")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80, bbox_inches="tight")
    print(f"{args.out}: {len(nodes)} nodes, {len(edges)} edges, {red} red")


if __name__ == "__main__":
    main()
