"""Readiness means "connected to Kafka and the store": not ready while Kafka is down, ready once
it is back. Against the session's real broker (stopped and restarted on the same port) and the
machine's PostgreSQL; the last test probes a running ``flowwarden pipeline run`` process, as the
kubelet probes the pod (deploy/helm: readinessProbe on /ready)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from flowwarden.readiness import Readiness
from flowwarden.settings import Settings
from tests.support.broker import TansuBroker, free_port
from tests.support.netns import wait_for

pytestmark = pytest.mark.integration

PIPELINE = [sys.executable, "-m", "flowwarden.cli", "pipeline", "run", "--worker-id", "ready-test"]


def _probe(port: int, path: str = "/ready") -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return int(r.status), json.load(r)
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.load(exc)


def _settings(kafka_settings: Settings, pg_url: str) -> Settings:
    return kafka_settings.model_copy(
        update={"store": kafka_settings.store.model_copy(update={"url": pg_url})}
    )


def test_not_ready_while_kafka_is_down_ready_once_it_is_back(
    kafka_broker: TansuBroker, kafka_settings: Settings, pg_url: str
) -> None:
    readiness = Readiness.from_settings(_settings(kafka_settings, pg_url), timeout_s=2.0)
    readiness.cache_s = 0.0
    port = readiness.serve(0, addr="127.0.0.1")
    try:
        assert _probe(port) == (200, {"store": "ok", "kafka": "ok"})
        assert _probe(port, "/healthz")[0] == 200
        kafka_broker.stop()
        try:
            code, body = _probe(port)
            assert code == 503 and body["store"] == "ok" and body["kafka"] != "ok", body
            assert _probe(port, "/healthz")[0] == 200  # alive: no restart for an outage elsewhere
        finally:
            kafka_broker.start()
        wait_for(lambda: _probe(port)[0] == 200, timeout=30, what="ready again once kafka is back")
    finally:
        readiness.close()


def test_not_ready_while_the_store_is_unreachable(kafka_settings: Settings) -> None:
    dead = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/flowwarden"
    readiness = Readiness.from_settings(_settings(kafka_settings, dead), timeout_s=2.0)
    status = readiness.status()
    assert status["kafka"] == "ok" and status["store"].startswith("OperationalError")
    assert not readiness.ready()
    # The enrich stage never opens the store: its outage does not take that stage out of service.
    enrich = Readiness.from_settings(_settings(kafka_settings, dead), timeout_s=2.0, store=False)
    assert enrich.status() == {"kafka": "ok"} and enrich.ready()


def test_pipeline_process_serves_readiness_through_an_outage(
    kafka_broker: TansuBroker, kafka_settings: Settings, pg_url: str, tmp_path: Path
) -> None:
    settings = _settings(kafka_settings, pg_url)
    config = tmp_path / "flowwarden.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json", exclude={"collector"})))
    port = free_port()
    proc = subprocess.Popen(
        [*PIPELINE, "--config", str(config), "--metrics-port", "0", "--ready-port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "pipeline.log").open("wb"),
        env={**os.environ, "HOME": str(tmp_path)},
    )

    def answers(code: int) -> bool:
        assert proc.poll() is None, (tmp_path / "pipeline.log").read_text()[-3000:]
        try:
            return _probe(port)[0] == code
        except OSError:
            return False

    try:
        wait_for(lambda: answers(200), timeout=60, what="the pipeline to be ready")
        kafka_broker.stop()
        try:
            wait_for(lambda: answers(503), timeout=30, what="the pipeline to be not ready without kafka")
        finally:
            kafka_broker.start()
        wait_for(lambda: answers(200), timeout=60, what="the pipeline to be ready again")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
