"""The dashboards as a catalogue: build them, write their JSON, tell when the JSON is stale."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from flowwarden.dashboards.boards import (
    enforcement,
    exfiltration,
    lateral_movement,
    overview,
    pipeline_health,
)
from flowwarden.dashboards.model import Json

JSON_DIR = Path(__file__).parent / "json"
PROVISIONING_DIR = Path(__file__).parent / "provisioning"

BUILDERS: dict[str, Callable[[], Json]] = {
    "overview": overview.build,
    "exfiltration": exfiltration.build,
    "lateral-movement": lateral_movement.build,
    "enforcement": enforcement.build,
    "pipeline-health": pipeline_health.build,
}


def build_all() -> dict[str, Json]:
    """File stem -> dashboard JSON, in menu order."""
    return {name: build() for name, build in BUILDERS.items()}


def render_json(board: Json) -> str:
    """The exact text committed for one dashboard (stable key order, trailing newline)."""
    return json.dumps(board, indent=2, sort_keys=True) + "\n"


def generate(out_dir: Path = JSON_DIR) -> list[Path]:
    """Write every dashboard's JSON; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, board in build_all().items():
        path = out_dir / f"{name}.json"
        path.write_text(render_json(board))
        written.append(path)
    return written


def stale(out_dir: Path = JSON_DIR) -> list[str]:
    """Names of dashboards whose committed JSON differs from the code (or is missing or extra)."""
    boards = build_all()
    problems = []
    for name, board in boards.items():
        path = out_dir / f"{name}.json"
        if not path.exists():
            problems.append(f"{path}: missing")
        elif path.read_text() != render_json(board):
            problems.append(f"{path}: differs from the code")
    for path in sorted(out_dir.glob("*.json")):
        if path.stem not in boards:
            problems.append(f"{path}: no dashboard in the code produces it")
    return problems


def load_committed(out_dir: Path = JSON_DIR) -> dict[str, Json]:
    """The committed JSON files, as Grafana would read them."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json"))}
