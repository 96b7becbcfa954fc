"""A small Kubernetes-API-compatible server for tests: pods only, real HTTP on loopback.

``GET /api/v1/pods`` lists (``limit``/``continue`` paging, ``metadata.resourceVersion``);
``GET /api/v1/pods?watch=true&resourceVersion=N`` streams newline-delimited JSON events
(chunked), replaying every event after N from its log, as the API server's watch cache does.
The test drives it: :meth:`add`, :meth:`modify`, :meth:`delete` change the store and announce
the event (``announce=False``: the change is lost to watchers, as after a compaction);
:meth:`gone` ends open watches with a 410 ``Expired`` status event and refuses older
resourceVersions; :meth:`stop` cuts every connection; :meth:`start` serves again on the same
port. The real ``kubernetes`` client talks to it with ``Configuration(host=server.url)``.
"""

from __future__ import annotations

import copy
import json
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_POLL_S = 0.05  # how often an idle watch stream looks at the log and the server's state


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    """A ``Status`` object, as the API server sends it for errors."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class FakeKubeApi:
    """Pods in memory, an event log with resourceVersions, and an HTTP server in a thread."""

    def __init__(self) -> None:
        self.port = 0
        self._cond = threading.Condition()
        self._pods: dict[str, dict[str, Any]] = {}  # uid -> pod
        self._log: list[tuple[int, dict[str, Any]]] = []  # (resourceVersion, event) announced
        self._rv = 1000
        self._compacted = 0  # a watch from an older resourceVersion gets 410
        self._gone = 0  # bumped by gone(): open watches send 410 and end
        self._epoch = 0  # bumped by stop(): open watches are cut
        self._serving = False
        self.lists = 0  # complete lists served (first pages)
        self.pages = 0  # list pages served
        self.watch_rvs: list[int] = []  # the resourceVersion of every watch request
        self.open_watches = 0
        self.forbidden = False  # answer 403 to everything (no RBAC)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeKubeApi:
        api = self

        class Handler(_Handler):
            server_api = api

        with self._cond:
            self._serving = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": _POLL_S}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open watch without its final chunk (a lost connection)."""
        with self._cond:
            self._epoch += 1
            self._serving = False
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # ------------------------------------------------------------------ the store
    def _write(self, kind: str, pod: dict[str, Any], *, announce: bool) -> dict[str, Any]:
        with self._cond:
            self._rv += 1
            obj = copy.deepcopy(pod)
            obj["metadata"]["resourceVersion"] = str(self._rv)
            uid = obj["metadata"]["uid"]
            if kind == "DELETED":
                self._pods.pop(uid, None)
            else:
                self._pods[uid] = obj
            if announce:
                self._log.append((self._rv, {"type": kind, "object": obj}))
                self._cond.notify_all()
            return obj

    def add(self, pod: dict[str, Any], *, announce: bool = True) -> dict[str, Any]:
        return self._write("ADDED", pod, announce=announce)

    def modify(self, pod: dict[str, Any], *, announce: bool = True) -> dict[str, Any]:
        return self._write("MODIFIED", pod, announce=announce)

    def delete(self, uid: str, *, deletion_timestamp: str | None = None, announce: bool = True) -> None:
        with self._cond:
            pod = copy.deepcopy(self._pods[uid])
        if deletion_timestamp is not None:
            pod["metadata"]["deletionTimestamp"] = deletion_timestamp
        self._write("DELETED", pod, announce=announce)

    def bookmark(self) -> None:
        with self._cond:
            obj = {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": str(self._rv)}}
            self._log.append((self._rv, {"type": "BOOKMARK", "object": obj}))
            self._cond.notify_all()

    def gone(self) -> None:
        """History compacted up to now: open watches get 410 and end; older resourceVersions too."""
        with self._cond:
            self._compacted = self._rv
            self._gone += 1
            self._cond.notify_all()

    # ------------------------------------------------------------------ serving
    def list_body(self, limit: int, cont: int) -> dict[str, Any]:
        with self._cond:
            items = sorted(
                self._pods.values(), key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"])
            )
            rv = self._rv
            self.pages += 1
            self.lists += cont == 0
        end = cont + limit if limit else len(items)
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if end < len(items):
            meta["continue"] = str(end)
        return {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": items[cont:end]}

    def stream(self, handler: _Handler, since: int, timeout_s: float) -> None:
        """Events after ``since`` until the timeout (clean end), gone() (410) or stop() (cut)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self.watch_rvs.append(since)
            self.open_watches += 1
            gone, epoch = self._gone, self._epoch
            too_old = bool(since) and since < self._compacted
            sent = next((i for i, (rv, _) in enumerate(self._log) if rv > since), len(self._log))
        try:
            if too_old:
                handler.chunk(self._error_event(since))
                handler.chunk(b"")
                return
            while True:
                with self._cond:
                    self._cond.wait_for(
                        lambda: len(self._log) > sent or self._gone != gone or self._epoch != epoch,
                        timeout=max(0.0, min(_POLL_S, deadline - time.monotonic())),
                    )
                    events = [e for _, e in self._log[sent:]]
                    sent = len(self._log)
                    is_gone, cut = self._gone != gone, self._epoch != epoch or not self._serving
                for event in events:
                    handler.chunk(json.dumps(event).encode() + b"\n")
                if handler.client_gone():
                    handler.close_connection = True
                    return
                if cut:
                    handler.close_connection = True  # no final chunk: the client sees a broken stream
                    return
                if is_gone:
                    handler.chunk(self._error_event(since))
                    handler.chunk(b"")
                    return
                if time.monotonic() >= deadline:
                    handler.chunk(b"")
                    return
        finally:
            with self._cond:
                self.open_watches -= 1

    def _error_event(self, since: int) -> bytes:
        msg = f"too old resource version: {since} ({self._compacted})"
        return json.dumps({"type": "ERROR", "object": status(410, "Expired", msg)}).encode() + b"\n"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked watch streams and keep-alive, as the API server
    server_api: FakeKubeApi

    def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows failures
        pass

    def client_gone(self) -> bool:
        """True once the client closed its end (an idle stream would not notice otherwise)."""
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        api = self.server_api
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path != "/api/v1/pods":
            self._json(404, status(404, "NotFound", f"{url.path} not found"))
            return
        if api.forbidden:
            msg = 'pods is forbidden: User "system:serviceaccount:flowwarden:flowwarden-pipeline" cannot list'
            self._json(403, status(403, "Forbidden", msg))
            return
        if query.get("watch", "").lower() in ("true", "1"):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                api.stream(
                    self, int(query.get("resourceVersion") or 0), float(query.get("timeoutSeconds", 300))
                )
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client went away (its stop())
            return
        self._json(200, api.list_body(int(query.get("limit") or 0), int(query.get("continue") or 0)))
