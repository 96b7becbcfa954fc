"""Learning alerts reach people marked as such, without changing the alert's identity."""

from __future__ import annotations

from datetime import UTC, datetime

from flowwarden.pipeline.runtime.notify.alertmanager import AlertmanagerNotifier
from flowwarden.pipeline.runtime.notify.slack import alert_line
from flowwarden.records import Alert, Entity

T = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)


def _alert(learning: bool) -> Alert:
    return Alert(
        kind="lateral_movement", detector="fan_out", score=0.8, severity="medium", learning=learning,
        entity=Entity(ip="10.244.1.5", namespace="monitoring", workload="prometheus"),
        window_start=T, window_end=T,
    )  # fmt: skip


def test_alertmanager_says_learning_in_an_annotation_and_keeps_the_labels() -> None:
    am = AlertmanagerNotifier("http://alertmanager:9093")
    (early,) = am.payload([_alert(True)])
    (later,) = am.payload([_alert(False)])
    assert early["annotations"]["learning"] == "true" and later["annotations"]["learning"] == "false"
    # Same labels: Alertmanager sees one alert that outgrew its learning period, not two.
    assert early["labels"] == later["labels"]


def test_chat_line_says_the_workloads_normal_is_not_known_yet() -> None:
    assert "learning" in alert_line(_alert(True))
    assert "learning" not in alert_line(_alert(False))
