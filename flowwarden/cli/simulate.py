"""``flowwarden simulate``: labelled synthetic cluster traffic to a directory."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from flowwarden.cli.common import COMMANDS, ConfigOption, Output, OutputOption, emit, progress, settings_from
from flowwarden.errors import InputError


@COMMANDS.register("simulate")
def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate_command)


def _parse_start(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InputError(f"--start: {value!r} is not an ISO 8601 time (e.g. 2026-11-27T02:00:00Z)") from exc
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _parse_intensity(value: str) -> float | dict[str, float]:
    try:
        if "=" not in value:
            return float(value)
        pairs = (item.split("=", 1) for item in value.split(",") if item.strip())
        return {k.strip(): float(v) for k, v in pairs}
    except ValueError as exc:
        raise InputError(f"--intensity: {value!r} is not a number or technique=number list") from exc


def simulate_command(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Directory for flows.parquet, labels.json, inventory.json (+ hard_negatives.json).",
        ),
    ],
    minutes: Annotated[float, typer.Option(help="Length of the run in minutes.")] = 60,
    pods: Annotated[int, typer.Option(help="Pods with their own IP (host-network pods come on top).")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives byte-identical files.")] = 7,
    attacks: Annotated[
        str, typer.Option(help="'all', 'none', or comma-separated techniques (e.g. port_scan,dns_tunnel).")
    ] = "all",
    intensity: Annotated[
        str,
        typer.Option(
            help="Attack intensity: 0.3 subtle, 1 default, 3 loud; or per technique: port_scan=0.3,fan_out=3."
        ),
    ] = "1.0",
    start: Annotated[
        str | None, typer.Option(help="Start time, ISO 8601 UTC (default 2026-11-27T10:00:00Z).")
    ] = None,
    benign_only: Annotated[bool, typer.Option("--benign-only", help="No attacks at all.")] = False,
    config: ConfigOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Simulate a labelled cluster run: benign traffic, hard negatives and attack episodes."""
    from flowwarden.simulator import simulate
    from flowwarden.simulator.generate import resolve_intensity, resolve_techniques

    settings = settings_from(config)
    resolve_techniques(attacks)  # fail on a bad name before any work
    level = _parse_intensity(intensity)
    resolve_intensity(level)
    with progress("simulate", total=1.0) as bar:
        sim = simulate(
            minutes=minutes,
            pods=pods,
            seed=seed,
            attacks=attacks,
            intensity=level,
            start=_parse_start(start),
            settings=settings,
            benign_only=benign_only,
            progress=lambda what, done: bar(what, done, 1.0),
        )
        bar("writing files", 0.9, 1.0)
        sim.save(out)
    techniques = sorted({e.technique for e in sim.labels.episodes})
    emit(
        output,
        {
            "flows": len(sim.flows),
            "episodes": len(sim.labels.episodes),
            "techniques": techniques,
            "pods": len(sim.inventory["items"]),
            "out": str(out),
        },
        f"{len(sim.flows)} flows, {len(sim.labels.episodes)} episodes "
        f"({', '.join(techniques) or 'none'}), {len(sim.inventory['items'])} pods -> {out}",
    )
