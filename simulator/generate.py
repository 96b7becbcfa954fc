"""``simulate()`` and ``iter_batches()``: a labelled, deterministic cluster run.

The same ``seed`` (and parameters) always gives the same flows, labels and inventory,
byte for byte once saved; each kind of traffic draws from its own named random stream.

Each conversation is recorded once, by the collector of the client's node (the server's
node for traffic from outside): flows carry ``node`` but no Kubernetes metadata and no
``direction``, which the pipeline derives from the inventory and the cluster's CIDRs.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from flowwarden.errors import ConfigError
from flowwarden.labels import TECHNIQUES, Labels
from flowwarden.settings import Settings
from flowwarden.simulator.attacks import generate_attacks, plan_attacks
from flowwarden.simulator.benign import generate_benign
from flowwarden.simulator.cluster import CATALOGUE, Cluster
from flowwarden.simulator.context import SimContext, stream
from flowwarden.simulator.flows import epoch
from flowwarden.simulator.hard_negatives import generate_hard_negatives, plan

DEFAULT_START = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
MIN_PODS = len(CATALOGUE)
Progress = Callable[[str, float], None]  # (step description, fraction done)


@dataclass
class Simulation:
    """A simulated run: flows as a collector sees them, ground truth, and the pods."""

    flows: pd.DataFrame
    labels: Labels
    inventory: dict[str, Any]
    flow_episode: np.ndarray  # per flow: index into labels.episodes, or -1 for benign
    start: datetime
    end: datetime
    hard_negatives: list[dict[str, Any]] = field(default_factory=list)  # benign look-alikes

    def save(self, directory: str | Path) -> None:
        """Write ``flows.parquet``, ``labels.json``, ``inventory.json`` and ``hard_negatives.json``.

        Byte-deterministic: the same simulation always gives the same files.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        write_flows_parquet(self.flows, out / "flows.parquet")
        (out / "labels.json").write_text(self.labels.to_json() + "\n")
        (out / "inventory.json").write_text(json.dumps(self.inventory, indent=1) + "\n")
        doc = {"version": 1, "hard_negatives": self.hard_negatives}
        (out / "hard_negatives.json").write_text(json.dumps(doc, indent=1) + "\n")


def write_flows_parquet(flows: pd.DataFrame, path: Path) -> None:
    """Parquet with fixed writer options and no wall-clock metadata: same frame, same bytes."""
    table = pa.Table.from_pandas(flows, preserve_index=False)
    pq.write_table(
        table,
        path,
        compression="zstd",
        compression_level=3,
        use_dictionary=True,
        write_statistics=True,
        row_group_size=1_000_000,
        data_page_version="2.0",
    )


def resolve_techniques(attacks: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"all"``, ``"none"``, a comma-separated string, or a list of technique names."""
    if isinstance(attacks, str):
        if attacks == "all":
            return list(TECHNIQUES)
        if attacks in ("none", ""):
            return []
        attacks = [a.strip() for a in attacks.split(",") if a.strip()]
    unknown = [a for a in attacks if a not in TECHNIQUES]
    if unknown:
        raise ConfigError(
            f"attacks: unknown technique(s) {', '.join(unknown)}; valid: all, none, {', '.join(TECHNIQUES)}"
        )
    return [t for t in TECHNIQUES if t in set(attacks)]  # canonical order


Intensity = float | Mapping[str, float]


def resolve_intensity(intensity: Intensity) -> dict[str, float]:
    """One intensity for every technique, or a mapping technique -> intensity (others 1.0)."""
    if isinstance(intensity, Mapping):
        unknown = [k for k in intensity if k not in TECHNIQUES]
        if unknown:
            raise ConfigError(
                f"intensity: unknown technique(s) {', '.join(unknown)}; valid: {', '.join(TECHNIQUES)}"
            )
    try:
        if isinstance(intensity, Mapping):
            values = {t: float(intensity.get(t, 1.0)) for t in TECHNIQUES}
        else:
            values = dict.fromkeys(TECHNIQUES, float(intensity))
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"intensity: {intensity!r} is not a number (or a technique -> number mapping)"
        ) from exc
    for tech, v in values.items():
        if not (v > 0 and np.isfinite(v)):
            raise ConfigError(f"intensity: must be positive (got {v} for {tech})")
    return values


def _check(minutes: float, pods: int) -> None:
    if not (minutes > 0 and np.isfinite(minutes)):
        raise ConfigError(f"minutes: must be positive (got {minutes})")
    if not MIN_PODS <= pods <= 5000:
        raise ConfigError(f"pods: must be between {MIN_PODS} (one per workload) and 5000 (got {pods})")


def simulate(
    *,
    minutes: float = 60,
    pods: int = 200,
    seed: int = 7,
    attacks: str | list[str] = "all",
    intensity: Intensity = 1.0,
    start: datetime | None = None,
    settings: Settings | None = None,
    benign_only: bool = False,
    progress: Progress | None = None,
) -> Simulation:
    """Simulate ``minutes`` of a cluster of about ``pods`` pods (with their own IPs).

    ``intensity`` scales every attack (0.3 subtle, 1 default, 3 loud), or each technique
    on its own when given as a mapping (``{"port_scan": 0.3}``; the others stay at 1).

    Flows have exactly ``FLOW_SCHEMA`` and are sorted by ``ts_end``; Kubernetes metadata
    and ``direction`` are left empty, as a collector leaves them. ``benign_only`` (or
    ``attacks="none"``) gives benign traffic and every hard negative, with no episode.
    """
    _check(minutes, pods)
    intensities = resolve_intensity(intensity)
    techniques = [] if benign_only else resolve_techniques(attacks)
    settings = settings or Settings()
    start = start or DEFAULT_START
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    t0 = epoch(start)
    t1 = t0 + minutes * 60.0
    step = progress or (lambda _what, _done: None)

    step("cluster", 0.0)
    cluster = Cluster(pods=pods, rng=stream(seed, "cluster"), start=t0, settings=settings)
    hn = plan(cluster, stream(seed, "plan"), t0, t1)
    ctx = SimContext(cluster=cluster, settings=settings, seed=seed, t0=t0, t1=t1)
    planned = plan_attacks(ctx, techniques, intensities, stream(seed, "attacks"))
    step("benign traffic", 0.1)
    generate_benign(ctx)
    step("hard negatives", 0.5)
    hard_negatives = generate_hard_negatives(ctx, hn)
    step("attacks", 0.7)
    episodes = generate_attacks(ctx, planned)
    step("assembling flows", 0.8)
    flows, flow_episode = ctx.parts.frame(t0, t1)
    step("done", 1.0)
    return Simulation(
        flows=flows,
        labels=Labels(episodes=episodes),
        inventory=cluster.inventory(t1),
        flow_episode=flow_episode,
        start=start,
        end=datetime.fromtimestamp(t1, UTC),
        hard_negatives=hard_negatives,
    )


def iter_batches(
    *,
    minutes: float = 60,
    pods: int = 200,
    seed: int = 7,
    attacks: str | list[str] = "all",
    intensity: Intensity = 1.0,
    start: datetime | None = None,
    settings: Settings | None = None,
    benign_only: bool = False,
    batch_s: float = 1.0,
) -> Iterator[pd.DataFrame]:
    """Time-ordered flow batches: the flows whose ``ts_end`` falls in each ``batch_s`` slice.

    Empty slices are skipped. The run is simulated up front (a 60-minute, 200-pod run
    takes seconds), then cut, so the batches concatenate to ``simulate(...).flows``.
    """
    if not batch_s > 0:
        raise ConfigError(f"batch_s: must be positive (got {batch_s})")
    sim = simulate(
        minutes=minutes,
        pods=pods,
        seed=seed,
        attacks=attacks,
        intensity=intensity,
        start=start,
        settings=settings,
        benign_only=benign_only,
    )
    yield from cut_batches(sim.flows, epoch(sim.start), batch_s)


def cut_batches(flows: pd.DataFrame, t0: float, batch_s: float) -> Iterator[pd.DataFrame]:
    """Slice a ``ts_end``-sorted frame into consecutive ``batch_s`` batches."""
    ts = flows["ts_end"].to_numpy()
    if len(ts) == 0:
        return
    slot = np.floor((ts - t0) / batch_s).astype(np.int64)
    bounds = np.flatnonzero(np.diff(slot)) + 1
    edges = np.concatenate([[0], bounds, [len(ts)]])
    for a, b in itertools.pairwise(edges):
        yield flows.iloc[a:b].reset_index(drop=True)
