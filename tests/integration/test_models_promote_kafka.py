"""Promote then roll back a model under a running pipeline on the real broker.

Must show (issue 6): the running pipeline picks up a promoted model without a restart (its
log and the ``flowwarden_pipeline_model_info`` metric say so, and its alerts carry the new
version), and ``models rollback`` restores the earlier version the same way.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from flowwarden import simulator
from flowwarden.bus import KafkaBus, publish_flows
from flowwarden.cli import app
from flowwarden.kube import PodInventory
from flowwarden.models.estimators import BudgetThreshold, WindowAnomalyDetector
from flowwarden.models.registry import promote, save_model
from flowwarden.pipeline.detection.engine import DetectionEngine
from flowwarden.pipeline.runtime.metrics import PipelineMetrics
from flowwarden.pipeline.runtime.model_watch import ModelWatcher
from flowwarden.pipeline.runtime.notify import NotifierHub
from flowwarden.pipeline.runtime.stage import PipelineStage, StageOptions
from flowwarden.records import WINDOW_FEATURES
from flowwarden.settings import Settings
from flowwarden.store import Store
from tests.support.broker import unique_group
from tests.support.netns import wait_for

pytestmark = pytest.mark.integration

CHUNK_S = 5.0
LATER_S = 3600.0  # the second phase replays the traffic an hour later


def _model(registry: Path, version: str, threshold: float) -> None:
    """A forest over the pipeline's features; ``threshold`` 0 flags every window, 1 none."""
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.lognormal(2, 1, (400, len(WINDOW_FEATURES))), columns=list(WINDOW_FEATURES))
    est = WindowAnomalyDetector(n_estimators=20, random_state=0).fit(X)
    thr = BudgetThreshold(value=threshold, margin=0.0)
    save_model(registry / version, estimator=est, threshold=thr, metadata={"window_s": 10.0})


def _publish(settings: Settings, flows: pd.DataFrame) -> None:
    bus = KafkaBus(settings.kafka)
    bus.ensure_topics(
        [settings.kafka.topics.flows, settings.kafka.topics.alerts, settings.kafka.topics.flows_dlq]
    )
    producer = bus.producer()
    ts = flows["ts_end"].to_numpy()
    for lo in np.arange(ts.min(), ts.max() + CHUNK_S, CHUNK_S):
        part = flows[(ts >= lo) & (ts < lo + CHUNK_S)]
        if len(part):
            publish_flows(producer, settings.kafka.topics.flows, part, settings.kafka.partitions)
    assert producer.flush(60)
    producer.close()


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, ["models", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_promote_then_rollback_in_a_running_pipeline(
    kafka_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flowwarden.pipeline.runtime.stage")
    caplog.set_level(logging.INFO, logger="flowwarden.pipeline.runtime.model_watch")
    registry = tmp_path / "registry"
    _model(registry, "quiet-v1", threshold=1.0)
    _model(registry, "loud-v2", threshold=0.0)
    promote(registry, "quiet-v1")
    sim = simulator.simulate(minutes=3, pods=30, seed=31, attacks="port_scan")
    later = sim.flows.assign(ts_start=sim.flows["ts_start"] + LATER_S, ts_end=sim.flows["ts_end"] + LATER_S)
    data = kafka_settings.model_dump()
    data["pipeline"] |= {"group_id": unique_group("models"), "model_dir": str(registry)}
    settings = Settings.model_validate(data)
    store = Store(f"sqlite:///{tmp_path / 'alerts.db'}").start()
    metrics = PipelineMetrics()
    engine = DetectionEngine(settings, inventory=PodInventory.from_dict(sim.inventory))
    stage = PipelineStage(
        settings,
        bus=KafkaBus(settings.kafka),
        store=store,
        engine=engine,
        metrics=metrics,
        notifiers=NotifierHub([]),
        model_watcher=ModelWatcher(registry),
        options=StageOptions(poll_timeout_s=0.2, idle_tick_s=1.0, align_idle_s=2.0, model_poll_s=0.2),
    )
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            stage.run(stop, max_seconds=240)
        except BaseException as exc:
            errors.append(exc)

    def info(version: str) -> float | None:
        return metrics.registry.get_sample_value("flowwarden_pipeline_model_info", {"version": version})

    def settled(total: int) -> bool:
        return (
            stage.stats.flows == total and not len(stage.aligner) and stage.engine.open_window_floor() is None
        )

    stage.start()
    thread = threading.Thread(target=loop, name="models-stage", daemon=True)
    thread.start()
    try:
        assert engine.model is not None and engine.model.version == "quiet-v1"
        assert info("quiet-v1") == 1.0

        _cli("promote", "loud-v2", "--registry", str(registry))
        wait_for(lambda: getattr(engine.model, "version", None) == "loud-v2", timeout=30, what="promote")
        assert info("loud-v2") == 1.0 and info("quiet-v1") is None
        assert "model switched from=quiet-v1 to=loud-v2" in caplog.text
        _publish(settings, sim.flows)
        wait_for(lambda: settled(len(sim.flows)), timeout=120, what="first phase consumed, windows closed")
        forest = [a for a in store.list_alerts() if a.detector == "isolation_forest"]
        assert forest and {a.model_version for a in forest} == {"loud-v2"}

        assert "rolled back to quiet-v1" in _cli("rollback", "--registry", str(registry))
        wait_for(lambda: getattr(engine.model, "version", None) == "quiet-v1", timeout=30, what="rollback")
        assert info("quiet-v1") == 1.0 and info("loud-v2") is None
        assert "model switched from=loud-v2 to=quiet-v1" in caplog.text
        _publish(settings, later)
        wait_for(lambda: settled(len(sim.flows) + len(later)), timeout=120, what="second phase consumed")
        alerts: list[Any] = store.list_alerts()
        second = [a for a in alerts if a.window_start.timestamp() >= float(later["ts_end"].min())]
        # Detection went on (the rule detectors), and the quiet forest is the one in use again.
        assert second, "the second phase raised no alert at all"
        assert not [a for a in second if a.detector == "isolation_forest"]
        assert engine.alerts.model_version == "quiet-v1"
        assert errors == []
    finally:
        stop.set()
        thread.join(timeout=60)
        stage.stop()
        store.stop()
    assert not thread.is_alive()
