"""A detect worker killed mid-stream: its partitions' state moves to the others (issue 19, item 3).

Must show: three detect worker *processes* (``flowwarden pipeline run --stage detect``) behind
an enrich stage, on tansu and PostgreSQL; one is killed with SIGKILL after it has checkpointed
its partition and while flows keep coming. The survivors are assigned its partition, restore
that partition's state from its last checkpoint (saved under the partition's key, not the
worker's) and go on from the group's committed offset. Compared with one uninterrupted worker
on the same input: the same alerts (ids and all), and every flow in the store's rollups once
(no batch skipped, none counted twice).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from flowwarden import simulator
from flowwarden.bus import KafkaBus
from flowwarden.kube import FixedSource, PodInventory
from flowwarden.pipeline.runtime.repartition import EnrichStage
from flowwarden.settings import Settings
from flowwarden.store import Store
from tests.integration.test_scale_out_kafka import comparable, publish_spread, settings_with
from tests.support.broker import unique_group
from tests.support.netns import wait_for
from tests.support.stage_thread import StageThread

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sim() -> Any:
    return simulator.simulate(minutes=4, pods=30, seed=23, attacks="all")


class Worker:
    """``flowwarden pipeline run --stage detect`` (or ``all``) as a process of its own, its log in a file."""

    def __init__(self, config: Path, name: str, log_dir: Path, *, stage: str = "detect") -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flowwarden.cli",
                "pipeline",
                "run",
                "--config",
                str(config),
                "--stage",
                stage,
                "--worker-id",
                name,
                "--metrics-port",
                "0",
            ],
            cwd=REPO,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def assigned(self) -> set[int]:
        """Partitions the worker holds now, by its own log (assigned minus revoked, in order)."""
        held: set[int] = set()
        for line in self.text().splitlines():
            for verb in ("assigned", "revoked"):
                mark = f"partitions {verb} ["
                if mark in line:
                    listed = line.split(mark, 1)[1].split("]", 1)[0]
                    parts = {int(x) for x in listed.split(",") if x.strip()}
                    held = held | parts if verb == "assigned" else held - parts
        return held

    def restored(self) -> set[int]:
        return {
            int(line.split("partition=", 1)[1].split()[0])
            for line in self.text().splitlines()
            if "partition state restored" in line
        }

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._out.close()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(timeout=30)


def committed_to_end(settings: Settings, group: str, topic: str) -> bool:
    """True when ``group`` has committed every partition of ``topic`` up to its end."""
    from kafka import KafkaConsumer, TopicPartition

    from flowwarden.bus_kafka import client_config

    # A consumer that names the group but never joins it: it only fetches its commits.
    consumer = KafkaConsumer(**client_config(settings.kafka), group_id=group, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        ends = consumer.end_offsets(tps)
        return bool(tps) and all((consumer.committed(tp) or 0) >= ends[tp] for tp in tps)
    finally:
        consumer.close(autocommit=False)


def rollup_flows(url: str) -> pd.DataFrame:
    """Flows and bytes per minute and pair of workloads or addresses, from the store's rollups.

    Not per port: a scanner's ports are folded into port 0 per written frame, and which
    frame a replayed batch is written in depends on timing (the flows and bytes do not)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            df = pd.read_sql(
                "SELECT minute, src_namespace, src_workload, dst_namespace, dst_workload, dst_external, "
                "SUM(flows) AS flows, SUM(bytes) AS bytes FROM flow_rollups GROUP BY 1, 2, 3, 4, 5, 6",
                conn,
            )
    finally:
        engine.dispose()
    df["minute"] = pd.to_datetime(df["minute"], utc=True)
    return df.sort_values(list(df.columns[:6])).reset_index(drop=True)


def test_a_killed_detect_worker_s_partition_moves_with_its_state(
    kafka_settings: Settings, fresh_pg_url: str, tmp_path: Path, sim: Any, workers: list[Worker]
) -> None:
    suffix = uuid.uuid4().hex[:8]
    topics = {"flows_by_workload": f"by-workload-{suffix}", "global_memory": f"memory-{suffix}"}
    pods = tmp_path / "pods.json"
    pods.write_text(json.dumps(sim.inventory))
    one_db = f"sqlite:///{tmp_path / 'one.db'}"

    def config(name: str, group: str, store_url: str, alerts: str) -> tuple[Settings, Path]:
        """Settings and their file for a worker process: the same but for group, store, topic."""
        settings = settings_with(
            kafka_settings,
            pipeline={"group_id": group, "checkpoint_interval_s": 1.0, "idle_tick_s": 1.0},
            kafka={"topics": {**topics, "alerts": alerts}},
            store={"url": store_url},
            kubernetes={"inventory_source": "file", "inventory_path": str(pods)},
        )
        path = tmp_path / f"{name}.yaml"
        path.write_text(json.dumps(settings.model_dump(mode="json")))  # JSON is YAML
        return settings, path

    one, one_file = config("one", unique_group("one"), one_db, kafka_settings.kafka.topics.alerts)
    many, many_file = config(
        "many", unique_group("many"), fresh_pg_url, kafka_settings.kafka.topics.alerts + "-m"
    )
    inventory = PodInventory.from_dict(sim.inventory)
    n = kafka_settings.kafka.partitions
    enrich = EnrichStage(
        many, bus=KafkaBus(many.kafka), inventory_source=FixedSource(inventory), poll_timeout_s=0.2
    )
    enrich.start()
    runner = StageThread(enrich, "enrich").start()
    try:
        solo = Worker(one_file, "solo", tmp_path, stage="all")
        detect = [Worker(many_file, f"d{i}", tmp_path) for i in range(3)]
        workers += [solo, *detect]
        wait_for(
            lambda: (
                all(len(w.assigned()) == 1 for w in detect)
                and set().union(*(w.assigned() for w in detect)) == set(range(n))
                and len(solo.assigned()) == n
                and len(enrich._assigned) == n
            ),
            timeout=120,
            what="one partition per detect worker, all of them for the one worker and the enrich stage",
        )

        # The first half of the input, until the victim has checkpointed its partition and
        # committed part of it; then SIGKILL, while the rest of the stream comes.
        ts = sim.flows["ts_end"]
        half = float(ts.min() + (ts.max() - ts.min()) / 2)
        publish_spread(kafka_settings, sim.flows[ts < half], inventory)
        victim, survivors = detect[0], detect[1:]
        (lost,) = victim.assigned()
        key = f"pipeline/{many.pipeline.group_id}/partitions/{topics['flows_by_workload']}/{lost}/offsets"
        state = Store(fresh_pg_url).start()
        try:

            def victim_committed() -> bool:
                raw = state.get_state(key)
                return raw is not None and bool(json.loads(raw).get("committed"))

            wait_for(victim_committed, timeout=120, what="the victim to checkpoint and commit its partition")
        finally:
            state.stop()
        assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
        publish_spread(kafka_settings, sim.flows[ts >= half], inventory)
        wait_for(
            lambda: any(lost in w.restored() for w in survivors),
            timeout=120,
            what=f"a survivor to restore partition {lost}'s state",
        )
        wait_for(
            lambda: (
                committed_to_end(one, one.pipeline.group_id, one.kafka.topics.flows)
                and committed_to_end(many, many.pipeline.group_id, topics["flows_by_workload"])
            ),
            timeout=180,
            what="both groups committed to the end (every window closed)",
        )
        for w in (solo, *survivors):
            assert w.stop() == 0, w.text()[-3000:]
    finally:
        runner.halt()
        enrich.stop()

    reference, scaled = Store(one_db).start(), Store(fresh_pg_url).start()
    try:
        alone, together = comparable(reference.list_alerts()), comparable(scaled.list_alerts())
    finally:
        reference.stop()
        scaled.stop()
    assert len(alone) >= 5
    assert set(together) == set(alone)
    assert together == alone
    # Every flow's rollup once: no batch skipped, none added twice on the replay.
    expected, got = rollup_flows(one_db), rollup_flows(fresh_pg_url)
    assert int(got["flows"].sum()) == int(expected["flows"].sum()) > 0.99 * len(sim.flows)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
