"""Live capture in an isolated namespace to the real broker; Kafka outages and the spool."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest

from flowwarden.bus import open_bus
from flowwarden.collectors.collector import Collector
from flowwarden.collectors.metrics import CollectorMetrics
from flowwarden.collectors.publish import Publisher
from flowwarden.collectors.spool import Spool
from flowwarden.errors import ConfigError
from flowwarden.records import conform_flows
from flowwarden.settings import Settings
from flowwarden.wire import decode_flows
from tests.support.broker import TansuBroker, kafka_settings_for, unique_group
from tests.support.netns import Lab, netns_available, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def lab() -> Iterator[Lab]:
    assert netns_available(), "these tests create network namespaces: run them as root"
    with Lab() as lab:
        yield lab


def _consume(
    settings: Settings, want: int, timeout: float, done: Callable[[pd.DataFrame], bool] | None = None
) -> pd.DataFrame:
    """Flow records from the flows topic until ``want`` rows arrived and ``done`` holds (or the deadline)."""
    bus = open_bus(settings)
    consumer = bus.consumer([settings.kafka.topics.flows], unique_group("collect"))
    frames: list[pd.DataFrame] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frames += [decode_flows(m.value) for m in consumer.poll(timeout_s=0.5)]
            if sum(len(f) for f in frames) >= want and (done is None or done(pd.concat(frames))):
                break
    finally:
        consumer.close()
        bus.close()
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


@pytest.mark.parametrize("tool", ["dumpcap", "tcpdump"])
def test_live_flows_reach_the_broker_within_active_timeout_plus_batch_interval(
    lab: Lab, kafka_settings: Settings, tmp_path: Path, tool: str
) -> None:
    cli, srv = lab.host("cli"), lab.host("srv")
    ic, _ = lab.link(cli, "10.77.0.1/24", srv, "10.77.0.2/24")
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "f.txt").write_text("x" * 5000)
    www = str(tmp_path / "www")
    srv.popen("python3", "-m", "http.server", "80", "--bind", "10.77.0.2", "--directory", www,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wait_for(
        lambda: "LISTEN" in srv.run("ss", "-ltn", "sport = :80", check=False).stdout, timeout=10, what="http"
    )
    srv.popen("dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--listen-address=10.77.0.2",
              "--bind-interfaces", "--address=/db.live.test/10.77.0.9", f"--pid-file={tmp_path / 'dns.pid'}",
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wait_for(
        lambda: "10.77.0.2" in srv.run("ss", "-lun", "sport = :53", check=False).stdout,
        timeout=10,
        what="dns",
    )
    active, batch_ms = 3.0, 500
    settings = kafka_settings.model_copy(
        update={
            "collector": kafka_settings.collector.model_copy(
                update={
                    "node": "node-a", "interfaces": [ic], "netns": cli.name, "active_timeout_s": active,
                    "idle_timeout_s": 6.0, "batch_interval_ms": batch_ms, "spool_dir": tmp_path / "spool",
                    "metrics_port": 0, "capture_tool": tool,
                }
            )
        }
    )  # fmt: skip
    collector = Collector(settings, serve_metrics=False)
    collector.start()
    try:
        t0 = time.time()
        for _ in range(3):
            cli.run("curl", "-s", "-o", "/dev/null", "http://10.77.0.2/f.txt")
        cli.run("curl", "-s", "-o", "/dev/null", "--max-time", "2", "http://10.77.0.2:81/", check=False)
        cli.run("dig", "+tries=1", "+time=2", "@10.77.0.2", "db.live.test", "A")
        budget = active + 1.0 + batch_ms / 1000 + 5.0  # + one tick, + slack for a busy machine

        def complete(df: pd.DataFrame) -> bool:
            """Three HTTP flows ended (a first record at the end of a tick may show one still
            established), the refused one and the DNS query (IPv6 ND/MLD flows come too)."""
            ports = set(df.loc[(df["dst_port"] == 80) & df["final"], "src_port"])
            return len(ports) == 3 and {81, 53} <= set(df["dst_port"])

        got = _consume(settings, want=5, timeout=budget, done=complete)
        elapsed = time.time() - t0
    finally:
        collector.stop()
    assert len(got) >= 5, f"only {len(got)} flow records after {elapsed:.1f}s"
    dns = got[got["dst_port"] == 53]
    # An interim record and, later, the final one may both have arrived: same names on each.
    assert dns[["dns_qname", "dns_rcode", "state"]].drop_duplicates().values.tolist() == [
        ["db.live.test", 0, "udp"]
    ]
    assert elapsed <= budget
    http = got[(got["dst_port"] == 80) & (got["proto"] == 6)]
    assert http["src_ip"].eq("10.77.0.1").all() and http["src_port"].nunique() == 3
    assert (http.groupby("src_port")["bytes_in"].sum() > 5000).all()
    assert set(http.loc[http["final"], "state"]) == {"closed"}, http[["src_port", "state", "final"]]
    assert (got["node"] == "node-a").all()
    refused = got[got["dst_port"] == 81]
    assert len(refused) >= 1 and set(refused["state"]) == {"rejected"}
    m = collector.metrics
    assert m.value("flowwarden_collector_packets_total") >= 30
    assert m.value("flowwarden_collector_flows_total") >= 4
    assert m.value("flowwarden_collector_publish_errors_total") == 0


def test_missing_interface_is_one_line_listing_the_existing_ones(lab: Lab, tmp_path: Path) -> None:
    h = lab.host("solo")
    s = Settings(
        collector={"interfaces": ["eth9"], "netns": h.name, "spool_dir": str(tmp_path), "metrics_port": 0}
    )
    c = Collector(s, serve_metrics=False)
    with pytest.raises(
        ConfigError, match=r"interface 'eth9' does not exist in network namespace .*; interfaces: lo"
    ):
        c.capture.start()


def _batch(i: int, rows: int = 3) -> pd.DataFrame:
    return conform_flows(
        {
            "ts_start": [float(i)] * rows, "ts_end": [float(i) + 1] * rows, "src_ip": ["10.0.0.1"] * rows,
            "dst_ip": ["10.0.0.2"] * rows, "dst_port": list(range(rows)), "proto": [6] * rows,
            "bytes_out": [i] * rows, "pkts_out": [1] * rows, "state": ["closed"] * rows,
        }
    )  # fmt: skip


def _publisher(settings: Settings, spool_dir: Path, max_bytes: int = 10_000_000) -> Publisher:
    return Publisher(
        bus_factory=lambda: open_bus(settings),
        topic=settings.kafka.topics.flows,
        partitions=1,
        spool=Spool(spool_dir, max_bytes),
        metrics=CollectorMetrics("n"),
        batch_interval_s=0.05,
        flush_timeout_s=2.0,
        retry_s=0.3,
    )


def test_kafka_stopped_during_a_run_loses_nothing_and_replays_in_order(
    private_broker: TansuBroker, tmp_path: Path
) -> None:
    settings = kafka_settings_for(private_broker.bootstrap, partitions=1)
    pub = _publisher(settings, tmp_path / "spool")
    pub.start()
    try:
        pub.put(_batch(0))
        wait_for(lambda: pub.published_messages >= 1, timeout=30, what="first batch delivered")
        private_broker.stop()
        for i in range(1, 5):
            pub.put(_batch(i))
            wait_for(lambda: pub.spooled_messages >= i, timeout=30, what=f"batch {i} spooled")
        assert pub.metrics.value("flowwarden_collector_spool_bytes") > 0
        assert any(tmp_path.joinpath("spool").glob("*.msg"))
        private_broker.start()  # in-memory broker: batch 0 died with it; the topic is made again
        wait_for(lambda: len(pub.spool) == 0, timeout=60, what="spool replayed")
    finally:
        pub.stop()
    got = _consume(settings, want=12, timeout=30)
    assert got["ts_start"].tolist() == [float(i) for i in range(1, 5) for _ in range(3)], (
        "in order, nothing lost"
    )
    m = pub.metrics
    assert pub.replayed_messages == 4
    assert m.value("flowwarden_collector_publish_errors_total") >= 1
    assert m.value("flowwarden_collector_spool_bytes") == 0
    assert m.value("flowwarden_collector_dropped_flows_total", cause="spool_full") == 0


def test_unreachable_bus_fills_the_spool_then_counts_what_it_drops(tmp_path: Path) -> None:
    from tests.support.broker import free_port

    settings = kafka_settings_for(f"127.0.0.1:{free_port()}", partitions=1)  # nothing listens there
    settings.kafka.connect_timeout_s = 0.5
    one = len(_spool_size_probe(tmp_path))
    pub = _publisher(settings, tmp_path / "spool", max_bytes=one * 2 + 10)
    pub.start()
    try:

        def handled() -> int:
            dropped = pub.metrics.value("flowwarden_collector_dropped_flows_total", cause="spool_full")
            return pub.spooled_messages + int(dropped) // 3

        for i in range(4):  # one batch per dispatch
            pub.put(_batch(i))
            wait_for(lambda: handled() >= i + 1, timeout=30, what=f"batch {i} spooled or dropped")
        assert pub.metrics.value("flowwarden_collector_dropped_flows_total", cause="spool_full") == 6
    finally:
        pub.stop(timeout_s=10)
    assert pub.spooled_messages == 2
    assert len(list((tmp_path / "spool").glob("*.msg"))) == 2


def _spool_size_probe(tmp_path: Path) -> bytes:
    from flowwarden.wire import encode_flows

    return encode_flows(_batch(0)) + b"x" * 64


@pytest.mark.parametrize("tool", ["dumpcap", "tcpdump"])
def test_stop_right_after_traffic_meters_every_packet(lab: Lab, tmp_path: Path, tool: str) -> None:
    """dumpcap keeps the last ~0.3 s in the kernel ring on a signal: stop() drains it first."""
    from flowwarden.bus import MemoryBus

    a, b = lab.host("a"), lab.host("b")
    ia, _ = lab.link(a, "10.80.0.1/24", b, "10.80.0.2/24")
    bus = MemoryBus(default_partitions=1)
    s = Settings(
        collector={
            "interfaces": [ia], "netns": a.name, "spool_dir": str(tmp_path), "metrics_port": 0,
            "app_names": False, "capture_tool": tool,
        },
        kafka={"partitions": 1},
    )  # fmt: skip
    collector = Collector(s, bus_factory=lambda: bus, serve_metrics=False)
    collector.start()
    try:
        a.run("ping", "-c", "3", "-i", "0.2", "10.80.0.2")
    finally:
        collector.stop()  # at once: the last reply left the wire milliseconds ago
    consumer = bus.consumer([s.kafka.topics.flows], "t")
    got = pd.concat([decode_flows(m.value) for m in consumer.poll(timeout_s=1.0, max_records=100)])
    icmp = got[got["proto"] == 1]
    assert icmp[["pkts_out", "pkts_in"]].sum().tolist() == [3, 3]
