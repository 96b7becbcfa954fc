"""The user's own hooks: a real executable (JSON on stdin, timeout, exit code recorded) and a real
HTTP server on loopback (JSON POST, retries on 5xx, no retry on 4xx)."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flowwarden.enforcement.backends.base import BackendError
from flowwarden.enforcement.backends.exec import ExecBackend
from flowwarden.enforcement.backends.webhook import WebhookBackend
from flowwarden.records import Decision, Entity

pytestmark = pytest.mark.integration

DECISION = Decision(
    id="d-hook1",
    action="block",
    source=Entity(ip="10.244.1.2"),
    targets=["10.244.2.7"],
    ttl_s=60,
    mode="enforce",
    status="pending",
)


def script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "hook.py"
    path.write_text(f"#!{sys.executable}\nimport json, sys, time\n{body}\n")
    path.chmod(0o755)
    return path


def test_exec_gets_the_decision_on_stdin_and_its_output_is_recorded(tmp_path: Path) -> None:
    seen = tmp_path / "seen.jsonl"
    hook = script(
        tmp_path,
        f"d = json.load(sys.stdin)\nopen({str(seen)!r}, 'a').write(sys.argv[1] + ' ' + d['id'] + '\\n')\n"
        "print('ok', d['targets'][0])",
    )
    b = ExecBackend(hook, timeout_s=20)
    assert b.apply(DECISION) == {"exit_code": 0, "stdout": "ok 10.244.2.7\n", "stderr": ""}
    b.revoke(DECISION)
    assert seen.read_text().splitlines() == ["apply d-hook1", "revoke d-hook1"]


def test_exec_failure_and_timeout_are_errors(tmp_path: Path) -> None:
    failing = script(tmp_path, "sys.stderr.write('no route to firewall'); sys.exit(3)")
    with pytest.raises(BackendError, match="exited 3: no route to firewall"):
        ExecBackend(failing, timeout_s=20).apply(DECISION)
    slow = script(tmp_path, "time.sleep(30)")
    with pytest.raises(BackendError, match="timed out"):
        ExecBackend(slow, timeout_s=0.5).apply(DECISION)
    with pytest.raises(BackendError, match="cannot run"):
        ExecBackend(tmp_path / "missing", timeout_s=1).apply(DECISION)


class Recorder(BaseHTTPRequestHandler):
    statuses: list[int] = []
    bodies: list[dict[str, object]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        status = type(self).statuses.pop(0) if type(self).statuses else 200
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"done")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[Recorder]]]:
    handler = type("H", (Recorder,), {"statuses": [], "bodies": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_webhook_retries_server_errors(server: tuple[str, type[Recorder]]) -> None:
    url, handler = server
    handler.statuses = [503, 502, 200]
    result = WebhookBackend(url, retries=3, backoff_s=0.01).apply(DECISION)
    assert result == {"status": 200, "attempts": 3, "body": "done"}
    assert [b["event"] for b in handler.bodies] == ["apply"] * 3
    assert handler.bodies[0]["decision"]["id"] == "d-hook1"  # type: ignore[index]


def test_webhook_gives_up(server: tuple[str, type[Recorder]]) -> None:
    url, handler = server
    handler.statuses = [400]
    with pytest.raises(BackendError, match="HTTP 400"):
        WebhookBackend(url, retries=3, backoff_s=0.01).revoke(DECISION)
    assert len(handler.bodies) == 1, "a 4xx is final"
    handler.statuses = [500] * 5
    with pytest.raises(BackendError, match="HTTP 500"):
        WebhookBackend(url, retries=2, backoff_s=0.01).apply(DECISION)
    assert len(handler.bodies) == 1 + 3


def test_webhook_unreachable() -> None:
    port = 9  # discard: nothing listens on loopback
    with pytest.raises(BackendError, match="webhook"):
        WebhookBackend(f"http://127.0.0.1:{port}/", retries=1, backoff_s=0.01, timeout_s=1).apply(DECISION)


def test_a_failing_hook_fails_the_decision_and_rolls_back_the_other_backends(tmp_path: Path) -> None:
    from flowwarden.enforcement.backends.networkpolicy import NetworkPolicyBackend
    from flowwarden.enforcement.enforcer import Enforcer
    from flowwarden.store import Store
    from tests.unit.enforcement_support import T0, alert, settings

    s = settings(gitops_dir=str(tmp_path / "gitops"), mode="enforce")
    hook = script(tmp_path, "sys.exit(0 if sys.argv[1] == 'revoke' else 4)")
    store = Store("sqlite://").start()
    try:
        enforcer = Enforcer(
            s,
            store=store,
            backends=[NetworkPolicyBackend(s), ExecBackend(hook)],
            clock=lambda: T0.timestamp(),
        )
        d = enforcer.handle_alert(alert())
        assert d is not None and d.status == "failed"
        assert "exited 4" in d.backend_result["exec"]["error"]
        assert "rolled_back" in d.backend_result["networkpolicy"], "the applied backend was rolled back"
        assert not list((tmp_path / "gitops").rglob("*.yaml"))
        assert store.active_blocks(T0) == []
    finally:
        store.stop()
