"""``flowwarden alerts resolve``: the verdict lands in the store (SQLite here, the same code as
PostgreSQL) and the engine folds it in: the workload's next pod sending there is no news."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flowwarden.cli import run
from flowwarden.pipeline.detection.feedback import (
    RESOLUTIONS_KEY,
    alert_edges,
    apply_verdict,
    parse_resolutions,
)
from flowwarden.pipeline.detection.state import SeenEdges
from flowwarden.records import Alert, Entity
from flowwarden.store import Store


def _alert() -> Alert:
    return Alert(
        kind="exfiltration",
        detector="new_destination_volume",
        technique="T1030",
        score=0.99,
        severity="critical",
        entity=Entity(ip="10.244.2.41", namespace="data", pod="backup-29939460-n5hrj", workload="backup"),
        window_start=datetime(2026, 12, 4, 7, 0, 10, tzinfo=UTC),
        window_end=datetime(2026, 12, 4, 7, 0, 20, tzinfo=UTC),
        targets=["203.0.113.20"],
        target_ports=[443],
    )


def test_resolve_records_the_verdict_with_who_and_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'fw.db'}"
    monkeypatch.setenv("FLOWWARDEN_STORE__URL", url)
    alert = _alert()
    with Store(url) as store:
        store.upsert_alerts([alert])
    assert run(["alerts", "resolve", alert.id, "--benign", "--reason", "nightly backup", "--by", "ana"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "benign" and out["by"] == "ana" and out["verdicts"] == 1
    assert run(["alerts", "resolve", alert.id, "--malicious", "--by", "bo"]) == 0  # the latest wins
    with Store(url) as store:
        [item] = parse_resolutions(store.get_state(RESOLUTIONS_KEY))
    assert item["alert_id"] == alert.id and item["verdict"] == "malicious" and item["by"] == "bo"
    assert run(["alerts", "resolve", "nope", "--benign"]) == 2  # bad input: no such alert
    assert run(["alerts", "resolve", alert.id]) == 2  # no verdict given


def test_a_benign_verdict_untaints_the_alerts_edges_a_malicious_one_pins_them() -> None:
    seen = SeenEdges(ttl_s=1e9, max_edges=100)
    alert = _alert()
    edges = alert_edges(alert)
    assert len(edges) == 1
    now = alert.window_end.timestamp()
    apply_verdict(seen, alert, benign=False, now=now, taint_s=3600.0, node_ips=set())
    until, _ = seen.taint_at(seen.positions(edges))
    assert until[0] == now + 3600.0
    apply_verdict(seen, alert, benign=True, now=now, taint_s=3600.0, node_ips=set())
    until, _ = seen.taint_at(seen.positions(edges))
    assert until[0] == float("-inf") and seen.first_seen(edges)[0] == alert.window_start.timestamp()
