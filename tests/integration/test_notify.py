"""Notifiers against real receivers: Debian's Alertmanager and an HTTP server on loopback."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from flowwarden.pipeline.runtime.notify import (
    AlertmanagerNotifier,
    NotifierHub,
    SlackNotifier,
    WebhookNotifier,
    build_hub,
)
from flowwarden.records import Alert, Entity
from tests.support.netns import wait_for

pytestmark = pytest.mark.integration

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Alertmanager:
    url: str
    proc: subprocess.Popen[bytes]

    def alerts(self) -> list[dict[str, Any]]:
        resp = requests.get(f"{self.url}/api/v2/alerts", timeout=5)
        resp.raise_for_status()
        out: list[dict[str, Any]] = resp.json()
        return out


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    """A real Alertmanager on a free loopback port, clustering off, its own config and storage."""
    assert shutil.which(ALERTMANAGER), "install prometheus-alertmanager (scripts/install-system-deps.sh)"
    config = tmp_path / "alertmanager.yml"
    config.write_text(
        "route:\n  receiver: blackhole\n  group_wait: 1s\n  group_interval: 1s\n"
        "receivers:\n  - name: blackhole\n"
    )
    (tmp_path / "am-data").mkdir()
    port = free_port()
    log = (tmp_path / "alertmanager.log").open("wb")
    proc = subprocess.Popen(
        [
            ALERTMANAGER,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no gossip port on the host
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    am = Alertmanager(f"http://127.0.0.1:{port}", proc)

    def ready() -> bool:
        assert proc.poll() is None, (tmp_path / "alertmanager.log").read_text()[-2000:]
        try:
            return requests.get(f"{am.url}/-/ready", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_for(ready, timeout=30, what="alertmanager to be ready")
        yield am
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@dataclass
class Receiver:
    """An HTTP server on loopback that records every POST; it can fail or hang on purpose."""

    url: str
    bodies: list[Any] = field(default_factory=list)
    fail_first: int = 0
    release: threading.Event = field(default_factory=threading.Event)
    hold: bool = False
    requests_seen: int = 0


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(url="")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                rec.requests_seen += 1
                failing = rec.requests_seen <= rec.fail_first
            if rec.hold:
                rec.release.wait(timeout=30)
            if failing:
                self.send_response(500)
                self.end_headers()
                self.wfile.write(b"try again")
                return
            with lock:
                rec.bodies.append(json.loads(body))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        rec.release.set()
        server.shutdown()
        server.server_close()


def make_alert(i: int, severity: str = "high", detector: str = "port_scan") -> Alert:
    start = datetime(2026, 11, 27, 3, 0, 10 * i, tzinfo=UTC)
    return Alert(
        kind="lateral_movement",
        detector=detector,
        technique="T1046",
        score=0.9,
        severity=severity,
        entity=Entity(ip=f"10.244.1.{i + 1}", namespace="shop", pod=f"cart-{i}", workload="cart"),
        window_start=start,
        window_end=start.replace(second=start.second + 9),
        targets=["10.244.2.7"],
        target_ports=[22, 80],
        summary=f"scanned 120 ports on 1 host ({i})",
    )


class Outcomes:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, notifier: str, status: str) -> None:
        with self.lock:
            self.seen.append((notifier, status))

    def count(self, notifier: str, status: str) -> int:
        with self.lock:
            return self.seen.count((notifier, status))


def test_alertmanager_lists_the_alerts_it_received(alertmanager: Alertmanager) -> None:
    outcomes = Outcomes()
    hub = NotifierHub([AlertmanagerNotifier(alertmanager.url)], min_severity="medium", on_result=outcomes)
    alerts = [make_alert(0), make_alert(1, severity="critical"), make_alert(2, severity="low")]
    assert hub.submit(alerts) == 2  # "low" is below the minimum
    wait_for(lambda: outcomes.count("alertmanager", "delivered") == 1, timeout=20, what="delivery")
    hub.close()

    def listed() -> set[str]:
        return {a["labels"]["flowwarden_id"] for a in alertmanager.alerts()}

    wait_for(lambda: listed() == {alerts[0].id, alerts[1].id}, timeout=20, what="alertmanager to list both")
    got = {a["labels"]["flowwarden_id"]: a for a in alertmanager.alerts()}
    one = got[alerts[1].id]
    assert one["labels"]["severity"] == "critical"
    assert one["labels"]["detector"] == "port_scan"
    assert one["labels"]["namespace"] == "shop"
    assert one["annotations"]["summary"] == alerts[1].summary
    assert one["status"]["state"] == "active"


def test_webhook_and_slack_payloads(receiver: Receiver) -> None:
    outcomes = Outcomes()
    hub = NotifierHub(
        [WebhookNotifier(receiver.url), SlackNotifier(receiver.url)], min_severity="low", on_result=outcomes
    )
    alerts = [make_alert(i, detector="ip_sweep") for i in range(3)]
    hub.submit(alerts)
    hub.close(timeout_s=20)
    assert outcomes.count("webhook", "delivered") == 1
    assert outcomes.count("slack", "delivered") == 1
    webhook = next(b for b in receiver.bodies if "alerts" in b)
    assert webhook["source"] == "flowwarden"
    assert [Alert.model_validate(a) for a in webhook["alerts"]] == alerts
    slack = next(b for b in receiver.bodies if "text" in b)
    assert slack["text"].count("lateral_movement/ip_sweep [T1046]") == 3
    assert "shop/cart-2 (cart)" in slack["text"]


def test_receiver_errors_are_retried_with_back_off(receiver: Receiver) -> None:
    receiver.fail_first = 2
    outcomes = Outcomes()
    hub = NotifierHub([WebhookNotifier(receiver.url)], retries=3, backoff_s=0.05, on_result=outcomes)
    hub.submit([make_alert(0)])
    wait_for(lambda: outcomes.count("webhook", "delivered") == 1, timeout=20, what="delivery after retries")
    hub.close()
    assert outcomes.count("webhook", "retried") == 2
    assert receiver.requests_seen == 3
    assert len(receiver.bodies) == 1


def test_a_dead_receiver_fails_counted_and_does_not_hold_up_the_others(receiver: Receiver) -> None:
    dead = f"http://127.0.0.1:{free_port()}/nobody"  # nothing listens there
    outcomes = Outcomes()
    hub = NotifierHub(
        [WebhookNotifier(dead, timeout_s=1), WebhookNotifier(receiver.url)],
        retries=2,
        backoff_s=0.05,
        on_result=outcomes,
    )
    hub.submit([make_alert(0)])
    wait_for(lambda: len(receiver.bodies) == 1, timeout=20, what="the live receiver")
    wait_for(
        lambda: outcomes.count("webhook", "failed") == 1, timeout=20, what="the dead receiver to give up"
    )
    hub.close()
    assert outcomes.count("webhook", "retried") == 2
    assert outcomes.count("webhook", "delivered") == 1


def test_a_full_queue_drops_and_counts_instead_of_blocking(receiver: Receiver) -> None:
    receiver.hold = True  # the receiver hangs until released
    outcomes = Outcomes()
    hub = NotifierHub([WebhookNotifier(receiver.url, timeout_s=30)], queue_max=1, on_result=outcomes)
    hub.submit([make_alert(0)])
    wait_for(lambda: receiver.requests_seen == 1, timeout=20, what="the first request to hang")
    for i in range(1, 4):  # one fits in the queue, two are dropped; none of these calls blocks
        hub.submit([make_alert(i)])
    assert outcomes.count("webhook", "dropped") == 2
    receiver.release.set()
    wait_for(lambda: outcomes.count("webhook", "delivered") == 2, timeout=20, what="the queued batch")
    hub.close()


def test_build_hub_from_settings(receiver: Receiver, alertmanager: Alertmanager) -> None:
    from flowwarden.settings import load_settings

    settings = load_settings(
        None,
        notifiers={
            "webhook_urls": [receiver.url],
            "slack_webhook_url": receiver.url,
            "alertmanager_url": alertmanager.url,
            "min_severity": "critical",
        },
    )
    outcomes = Outcomes()
    hub = build_hub(settings.notifiers, on_result=outcomes)
    assert len(hub) == 3
    assert hub.submit([make_alert(0, severity="high"), make_alert(1, severity="critical")]) == 1
    hub.close(timeout_s=20)
    assert sorted(n for n, s in outcomes.seen if s == "delivered") == ["alertmanager", "slack", "webhook"]


@pytest.mark.parametrize("fmt", ["ecs", "ocsf"])
def test_webhook_sends_the_configured_format_with_the_cluster(
    fmt: str, receiver: Receiver, alertmanager: Alertmanager
) -> None:
    """alerts.format reaches the webhook; Alertmanager gets the cluster and a route's severity."""
    from flowwarden.alert_formats import AlertExporter
    from flowwarden.settings import load_settings

    settings = load_settings(
        None,
        cluster={"name": "prod-eu-1"},
        alerts={"format": fmt},
        notifiers={
            "webhook_urls": [receiver.url],
            "alertmanager_url": alertmanager.url,
            "min_severity": "low",
        },
    )
    outcomes = Outcomes()
    hub = build_hub(settings.notifiers, on_result=outcomes, exporter=AlertExporter.from_settings(settings))
    alert = make_alert(0, severity="low")
    hub.submit([alert])
    hub.close(timeout_s=20)
    assert outcomes.count("webhook", "delivered") == 1
    body = receiver.bodies[0]
    assert body["format"] == fmt and len(body["alerts"]) == 1
    doc = body["alerts"][0]
    if fmt == "ecs":
        assert doc["orchestrator"]["cluster"]["name"] == "prod-eu-1"
        assert doc["threat"]["tactic"]["name"] == ["Discovery"]
    else:
        assert doc["class_uid"] == 2004 and doc["unmapped"]["cluster"]["name"] == "prod-eu-1"
        assert doc["finding_info"]["attacks"][0]["technique"]["uid"] == "T1046"
    wait_for(lambda: len(alertmanager.alerts()) == 1, timeout=20, what="alertmanager to list the alert")
    labels = alertmanager.alerts()[0]["labels"]
    assert labels["cluster"] == "prod-eu-1" and labels["tactic"] == "Discovery"
    assert labels["severity"] == "info" and labels["flowwarden_severity"] == "low"


def test_chat_receivers_hear_an_alert_once_alertmanager_hears_every_update(
    receiver: Receiver, alertmanager: Alertmanager
) -> None:
    """An open alert is updated at every window: Slack once (and on escalation), Alertmanager each time."""
    outcomes = Outcomes()
    hub = NotifierHub(
        [SlackNotifier(receiver.url), AlertmanagerNotifier(alertmanager.url)],
        min_severity="low",
        on_result=outcomes,
    )
    first = make_alert(0, severity="medium")
    update = first.model_copy(update={"last_seen": first.window_end, "score": 0.95})
    escalated = first.model_copy(update={"severity": "critical"})
    for batch in ([first], [update], [update]):
        hub.submit(batch)
    wait_for(lambda: outcomes.count("alertmanager", "delivered") == 3, timeout=20, what="three deliveries")

    def listed() -> list[dict[str, Any]]:
        return [a for a in alertmanager.alerts() if a["labels"]["flowwarden_id"] == first.id]

    wait_for(lambda: len(listed()) == 1, timeout=20, what="alertmanager to list the alert")
    assert listed()[0]["annotations"]["score"] == "0.950"  # kept fresh by the updates, not duplicated
    hub.submit([escalated])
    hub.close(timeout_s=20)
    assert outcomes.count("slack", "delivered") == 2  # the first sighting and the escalation
    assert outcomes.count("alertmanager", "delivered") == 4
    texts = [b["text"] for b in receiver.bodies]
    assert "*medium*" in texts[0] and "*critical*" in texts[1]
    # Severity is a routing label: the escalation is a new series, the medium one resolves by itself.
    wait_for(lambda: len(listed()) == 2, timeout=20, what="the escalated alert")
    assert {a["labels"]["flowwarden_severity"] for a in listed()} == {"medium", "critical"}
    # Mapped for Alertmanager routes (alert_formats.ALERTMANAGER_SEVERITY): medium is a warning.
    assert {a["labels"]["severity"] for a in listed()} == {"warning", "critical"}
