"""A PostgreSQL store filled by the product: simulator -> memory bus -> pipeline -> store,
and the alerts through the enforcer (dry-run) into the decision log."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from flowwarden.labels import Labels
from flowwarden.settings import Settings
from flowwarden.store import Store
from tests.support.postgres import truncate_store


@dataclass
class SeededStore:
    pg_url: str
    time_from: datetime
    time_to: datetime
    flows: pd.DataFrame  # what the simulator sent
    labels: Labels
    inventory: Path
    settings: Settings


def seed_store(
    pg_url: str, tmp: Path, *, minutes: int = 20, seed: int = 3, enforce: bool = True
) -> SeededStore:
    """Run ``minutes`` of simulated traffic (every attack) through the pipeline into ``pg_url``."""
    from flowwarden.bus import open_bus, publish_flows
    from flowwarden.enforcement.enforcer import Enforcer
    from flowwarden.pipeline.runtime.stage import build_stage
    from flowwarden.settings import load_settings
    from flowwarden.simulator import simulate

    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = now - timedelta(minutes=minutes)
    sim = simulate(minutes=minutes, pods=60, seed=seed, attacks="all", start=start)
    inventory = tmp / "inventory.json"
    inventory.write_text(json.dumps(sim.inventory))
    settings = load_settings(
        None,
        bus={"kind": "memory"},
        store={"url": pg_url},
        kubernetes={"inventory_path": str(inventory)},
        pipeline={"metrics_port": 0},
        enforcement={"min_severity": "low", "min_score": 0.0, "max_new_blocks_per_minute": 3},
    )
    store = Store(pg_url).start()
    truncate_store(store)
    bus = open_bus(settings)
    stage = build_stage(settings, bus=bus, store=store)
    stage.start()
    try:
        producer = bus.producer()
        publish_flows(producer, settings.kafka.topics.flows, sim.flows, settings.kafka.partitions)
        stage.drain(max_seconds=120)
        assert stage.stats.alerts > 0, "the simulated attacks raised no alert"
        if enforce:
            enforcer = Enforcer(settings, store=store, bus=bus)
            enforcer.start()
            try:
                for _ in range(100):  # bounded: one poll per batch of alerts
                    if not enforcer.poll_once(0.2):
                        break
            finally:
                enforcer.stop()
    finally:
        stage.stop()
        store.stop()
    return SeededStore(
        pg_url=pg_url,
        time_from=start - timedelta(minutes=1),
        time_to=datetime.now(UTC) + timedelta(minutes=2),
        flows=sim.flows,
        labels=sim.labels,
        inventory=inventory,
        settings=settings,
    )
