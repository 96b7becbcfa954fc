"""Draw each dashboard's layout from its JSON: panel titles in their grid positions.

No Grafana server runs where the docs are built, so the README shows these pictures
instead of screenshots. The SVG output is deterministic (fixed hash salt, no date), so
regenerating it without a layout change gives the same bytes.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from flowwarden.dashboards.model import GRID_WIDTH, POSTGRES_TYPE, PROMETHEUS_TYPE, Json

COLOURS = {POSTGRES_TYPE: "#dbe9f6", PROMETHEUS_TYPE: "#fde6d2", "mixed": "#e6e6e6"}
EDGE = {POSTGRES_TYPE: "#336699", PROMETHEUS_TYPE: "#c0651b", "mixed": "#666666"}
UNIT_PX = 30  # Grafana's grid row height, in pixels, against a 24-column width of 1200 px


def _reads(panel: Json) -> list[str]:
    """What a panel reads: metric names for PromQL, table names for SQL (for the picture)."""
    found: list[str] = []
    for t in panel.get("targets", []):
        text = t.get("expr") or t.get("rawSql") or ""
        names = re.findall(r"flowwarden_\w+", text) or re.findall(
            r"\bFROM (alerts|decisions|flow_rollups|service_edges)\b", text
        )
        found += [n.removesuffix("_bucket") for n in names]
    return list(dict.fromkeys(found))


def _source(panel: Json) -> str:
    types = {t.get("datasource", {}).get("type") for t in panel.get("targets", [])}
    return types.pop() if len(types) == 1 else "mixed"


def render(board: Json, out: Path) -> Path:
    """Write one dashboard's layout picture (``.svg`` or ``.png`` by the suffix of ``out``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    plt.rcParams["svg.hashsalt"] = "flowwarden"
    plt.rcParams["svg.fonttype"] = "none"
    panels = board["panels"]
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    col_px = 1200 / GRID_WIDTH
    fig_w, fig_h = 12.0, max(3.0, (height * UNIT_PX) / 100 + 0.8)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    ax.set_xlim(0, GRID_WIDTH * col_px)
    ax.set_ylim(height * UNIT_PX, 0)
    ax.axis("off")
    for p in panels:
        g = p["gridPos"]
        x, y, w, h = g["x"] * col_px, g["y"] * UNIT_PX, g["w"] * col_px, g["h"] * UNIT_PX
        if p["type"] == "row":
            ax.text(x + 4, y + h / 2, p["title"], va="center", ha="left", fontsize=10, fontweight="bold")
            ax.plot([x, x + w], [y + h, y + h], color="#999999", linewidth=0.8)
            continue
        src = _source(p)
        ax.add_patch(
            Rectangle(
                (x + 3, y + 3), w - 6, h - 6, facecolor=COLOURS[src], edgecolor=EDGE[src], linewidth=1.0
            )
        )
        chars = max(8, int(w / 7))
        title = "\n".join(textwrap.wrap(p["title"], chars)[:3])
        ax.text(x + 9, y + 10, title, va="top", ha="left", fontsize=8, fontweight="bold")
        reads = "\n".join(textwrap.wrap(", ".join(_reads(p)), max(8, int(w / 5.5)))[:4])
        ax.text(
            x + 9,
            y + 26 + 13 * title.count("\n"),
            reads,
            va="top",
            ha="left",
            fontsize=6.5,
            color="#444444",
            family="monospace",
        )
        ax.text(
            x + w - 9,
            y + h - 9,
            p["type"],
            va="bottom",
            ha="right",
            fontsize=7,
            color="#555555",
            style="italic",
        )
    ax.set_title(board["title"], loc="left", fontsize=12)
    ax.legend(
        handles=[
            Patch(
                facecolor=COLOURS[POSTGRES_TYPE], edgecolor=EDGE[POSTGRES_TYPE], label="PostgreSQL (store)"
            ),
            Patch(facecolor=COLOURS[PROMETHEUS_TYPE], edgecolor=EDGE[PROMETHEUS_TYPE], label="Prometheus"),
            Patch(facecolor=COLOURS["mixed"], edgecolor=EDGE["mixed"], label="both"),
        ],
        loc="upper right",
        bbox_to_anchor=(1.0, 1.06),
        ncol=3,
        fontsize=7,
        frameon=False,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, metadata={"Date": None} if out.suffix == ".svg" else {})
    plt.close(fig)
    return out


def render_all(boards: dict[str, Json], out_dir: Path, fmt: str = "svg") -> list[Path]:
    """One picture per dashboard: ``out_dir/dashboard-<name>.<fmt>``."""
    return [render(board, out_dir / f"dashboard-{name}.{fmt}") for name, board in boards.items()]
