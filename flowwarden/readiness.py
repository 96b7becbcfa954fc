"""Readiness: is this process connected to what it needs (Kafka and the store)?

A Kubernetes readiness probe on ``/metrics`` says only that the process is up; a pipeline that
cannot reach Kafka or the store is not doing its job and should not count as available (a
rollout waits for it, a PodDisruptionBudget sees it). :class:`Readiness` checks both for real
(a metadata request to the brokers, ``SELECT 1`` on the store) at most every ``cache_s``, and
serves the answer over HTTP:

* ``GET /ready``: 200 with ``{"kafka": "ok", "store": "ok"}`` when both answer, else 503 with
  the error of each that does not (a process that never opens the store, the pipeline's enrich
  stage, checks Kafka only);
* ``GET /healthz``: 200 while the process serves (the liveness probe).

The CLI's long-running commands start it on ``--ready-port`` beside ``/metrics``. It shares no
connection with the stage: a probe never waits on the consume loop, and the loop never waits
on a probe.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from flowwarden.settings import Settings

log = logging.getLogger(__name__)

Check = Callable[[], None]  # raises when the dependency is not reachable


def kafka_check(settings: Settings, timeout_s: float = 3.0) -> Check:
    """A metadata request to the brokers with the bus's own connection options."""

    def check() -> None:
        from kafka import KafkaAdminClient

        from flowwarden.bus_kafka import client_config

        cfg = {
            **client_config(settings.kafka),
            "request_timeout_ms": int(timeout_s * 1000),
            "bootstrap_timeout_ms": int(timeout_s * 1000),
        }
        admin = KafkaAdminClient(**cfg)
        try:
            admin.list_topics()
        finally:
            admin.close()

    return check


def store_check(url: str, timeout_s: float = 3.0) -> Check:
    """``SELECT 1`` on the store, over one connection kept for the probes."""
    import sqlalchemy as sa

    args: dict[str, Any] = {"connect_timeout": max(1, int(timeout_s))} if url.startswith("postgresql") else {}
    engine = sa.create_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True, connect_args=args)

    def check() -> None:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    return check


class Readiness:
    """The named checks, cached for ``cache_s``, served on ``/ready``."""

    def __init__(self, checks: dict[str, Check], *, cache_s: float = 2.0) -> None:
        self.checks = checks
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._last: dict[str, str] = {}
        self._server: ThreadingHTTPServer | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, timeout_s: float = 3.0, store: bool = True) -> Readiness:
        """The checks for what the process uses: ``store=False`` for one that never opens it
        (the pipeline's enrich stage), so an outage of the store does not take it out of service."""
        checks: dict[str, Check] = {"store": store_check(settings.store.url, timeout_s)} if store else {}
        if settings.bus.kind == "kafka":
            checks["kafka"] = kafka_check(settings, timeout_s)
        return cls(checks)

    def status(self) -> dict[str, str]:
        """Each check's result: ``ok`` or the error (one round of checks per ``cache_s``)."""
        with self._lock:
            if time.monotonic() - self._at < self.cache_s:
                return dict(self._last)
            out = {}
            for name, check in self.checks.items():
                try:
                    check()
                except Exception as exc:  # any failure means not ready; it is reported, not raised
                    out[name] = f"{type(exc).__name__}: {exc}"[:300]
                else:
                    out[name] = "ok"
            if out != self._last:
                log.info(
                    "readiness %s", " ".join(f"{k}={'ok' if v == 'ok' else 'down'}" for k, v in out.items())
                )
            self._last, self._at = out, time.monotonic()
            return dict(out)

    def ready(self) -> bool:
        return all(v == "ok" for v in self.status().values())

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:  # noqa: S104 - probed from the node
        """Serve ``/ready`` and ``/healthz`` on a thread; port 0 picks a free one. Returns it."""
        readiness = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/healthz":
                    code, body = 200, {"status": "alive"}
                elif self.path.split("?")[0] == "/ready":
                    body = readiness.status()
                    code = 200 if all(v == "ok" for v in body.values()) else 503
                else:
                    code, body = 404, {"error": "not found: /ready, /healthz"}
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer((addr, port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="readiness", daemon=True).start()
        bound = int(self._server.server_address[1])
        log.info("readiness listening port=%d", bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
