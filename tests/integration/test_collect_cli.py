"""``flowwarden collect`` as a process: SIGTERM flushes open flows, /metrics, offline Parquet."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from flowwarden.records import validate_flows
from flowwarden.settings import Settings
from tests.integration.test_collect_live import _consume
from tests.support.broker import free_port
from tests.support.netns import Lab, netns_available, wait_for

pytestmark = pytest.mark.integration

FLOWWARDEN = [str(Path(sys.executable).parent / "flowwarden")]
GOLDEN = Path(__file__).resolve().parents[1] / "data" / "pcaps"


@pytest.fixture
def lab() -> Iterator[Lab]:
    assert netns_available(), "these tests create network namespaces: run them as root"
    with Lab() as lab:
        yield lab


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    k = settings.kafka
    env = {
        **os.environ,
        "FLOWWARDEN_BUS__KIND": "kafka",
        "FLOWWARDEN_KAFKA__BOOTSTRAP_SERVERS": f'["{k.bootstrap_servers[0]}"]',
        "FLOWWARDEN_KAFKA__TOPICS__FLOWS": k.topics.flows,
        "FLOWWARDEN_KAFKA__PARTITIONS": "1",
    }
    env.update(extra)
    return env


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def test_sigterm_flushes_open_flows_to_the_broker(lab: Lab, kafka_settings: Settings, tmp_path: Path) -> None:
    a, b = lab.host("a"), lab.host("b")
    ia, _ = lab.link(a, "10.78.0.1/24", b, "10.78.0.2/24")
    port = free_port()
    env = _env(
        kafka_settings,
        # After its first-sight record, the flow's later packets stay in the table until SIGTERM.
        FLOWWARDEN_COLLECTOR__ACTIVE_TIMEOUT_S="600",
        FLOWWARDEN_COLLECTOR__IDLE_TIMEOUT_S="600",
        FLOWWARDEN_COLLECTOR__SPOOL_DIR=str(tmp_path / "spool"),
        FLOWWARDEN_COLLECTOR__METRICS_PORT=str(port),
    )
    args = [*FLOWWARDEN, "collect", "--interface", ia, "--netns", a.name, "--node", "node-cli"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _up(port), timeout=30, what="collector /metrics")

        def ping_seen() -> bool:
            a.run("ping", "-c", "1", "-W", "1", "10.78.0.2")
            return _metric(port, "flowwarden_collector_packets_total") >= 2

        wait_for(ping_seen, timeout=20, what="pings counted", interval=0.2)
        # The flow's first sight goes out within a tick; the pings after it are SIGTERM's to flush.
        wait_for(
            lambda: _metric(port, "flowwarden_collector_flows_total") >= 1, timeout=20, what="first sight"
        )
        seen = _metric(port, "flowwarden_collector_packets_total")
        for _ in range(2):
            a.run("ping", "-c", "1", "-W", "1", "10.78.0.2")
        wait_for(
            lambda: _metric(port, "flowwarden_collector_packets_total") >= seen + 4,
            timeout=20,
            what="packets",
        )
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, err.decode()[-2000:]
    got = _consume(
        kafka_settings, want=2, timeout=20, done=lambda df: bool(df[df["proto"] == 1]["final"].any())
    )
    icmp = got[got["proto"] == 1]
    assert icmp[["src_ip", "dst_ip", "state", "first", "final", "end_reason"]].values.tolist() == [
        ["10.78.0.1", "10.78.0.2", "icmp", True, False, "active"],  # first sight
        ["10.78.0.1", "10.78.0.2", "icmp", False, True, "end_of_capture"],  # flushed by SIGTERM
    ]
    assert int(icmp["pkts_out"].iloc[1]) >= 2, "the pings after the first sight were flushed"
    assert int(icmp["pkts_out"].sum()) >= 3 and int(icmp["pkts_out"].sum()) == int(icmp["pkts_in"].sum())
    assert (got["node"] == "node-cli").all()


def _metric(port: int, name: str) -> float:
    for line in _scrape(port).splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _up(port: int) -> bool:
    try:
        _scrape(port)
    except OSError:
        return False
    return True


def test_pcap_to_parquet_needs_no_bus(tmp_path: Path) -> None:
    out = tmp_path / "flows.parquet"
    r = subprocess.run(
        [*FLOWWARDEN, "collect", "--pcap", str(GOLDEN / "dns.pcapng"), "--out", str(out),
         "--node", "offline"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("18 packets -> 10 flow records -> "), r.stdout
    df = validate_flows(pd.read_parquet(out))
    assert set(df["dns_qname"]) - {""} == {"db.payments.svc.test", "api.example.test", "missing.example.test"}


def test_missing_tshark_is_one_line_saying_what_to_install(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    env = {**os.environ, "PATH": str(bindir)}  # no tshark (nor anything else) on PATH
    r = subprocess.run(
        [*FLOWWARDEN, "collect", "--pcap", str(GOLDEN / "web.pcap"), "--out", str(tmp_path / "f.parquet")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert r.returncode == 4  # ExitCode.UNAVAILABLE: a tool that is not installed
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines == ["flowwarden: error: tshark is not installed: apt-get install tshark "
                     "(or set collector.app_names: false)"]  # fmt: skip
    start = time.monotonic()
    r = subprocess.run(
        [*FLOWWARDEN, "collect", "--pcap", str(GOLDEN / "web.pcap"), "--out", str(tmp_path / "f.parquet")],
        capture_output=True, text=True, timeout=120,
        env={**env, "FLOWWARDEN_COLLECTOR__APP_NAMES": "false"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - start < 120


@pytest.mark.parametrize("tool", ["dumpcap", "tcpdump"])
def test_runs_with_only_net_raw_and_net_admin(lab: Lab, tmp_path: Path, tool: str) -> None:
    """What the DaemonSet grants: root without privileges but NET_RAW and NET_ADMIN.

    dumpcap captures; tcpdump cannot (it insists on switching user) and says so in one line.
    """
    a, b = lab.host("a"), lab.host("b")
    ia, _ = lab.link(a, "10.79.0.1/24", b, "10.79.0.2/24")
    port = free_port()
    env = {
        **os.environ,
        "FLOWWARDEN_COLLECTOR__CAPTURE_TOOL": tool,
        "FLOWWARDEN_COLLECTOR__ACTIVE_TIMEOUT_S": "1",
        "FLOWWARDEN_COLLECTOR__SPOOL_DIR": str(tmp_path / "spool"),
        "FLOWWARDEN_COLLECTOR__METRICS_PORT": str(port),
    }
    caps = ["setpriv", "--bounding-set=-all,+net_raw,+net_admin", "--inh-caps=-all"]
    proc = a.popen(*caps, *FLOWWARDEN, "collect", "--interface", ia, env=env,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        if tool == "tcpdump":
            _, err = proc.communicate(timeout=60)
            lines = [line for line in err.decode().splitlines() if line.startswith("flowwarden: error:")]
            assert proc.returncode == 4  # ExitCode.UNAVAILABLE: the capture tool did not start
            assert lines == [
                "flowwarden: error: tcpdump did not start on "
                f"{ia}: tcpdump: Couldn't change to 'root' uid=0 gid=0: Operation not permitted"
            ]
            return

        def scrape() -> str:
            r = a.run("curl", "-s", f"http://127.0.0.1:{port}/metrics", check=False)
            return r.stdout

        def flows() -> float:
            a.run("ping", "-c", "1", "-W", "1", "10.79.0.2", check=False)
            for line in scrape().splitlines():
                if line.startswith("flowwarden_collector_flows_total{"):
                    return float(line.rsplit(" ", 1)[1])
            return 0.0

        wait_for(lambda: flows() >= 1, timeout=30, what="flows metered under NET_RAW+NET_ADMIN", interval=0.3)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
