"""Every dashboard query, run for real: SQL against PostgreSQL, PromQL against Prometheus.

There is no Grafana here, so the test does what Grafana would: it expands the panel's
macros and variables (``dashboards.queries``) and runs the text. The data comes from the
product itself: the simulator's traffic (attacks included) goes through the embedded
pipeline stage (memory bus) into PostgreSQL, its alerts through the enforcer (dry-run) into
the decision log; a real Prometheus (Debian's ``prometheus``, on loopback) scrapes the
running pipeline's and enforcer's ``/metrics``. Each dashboard, panel and row count is printed.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import yaml
from prometheus_client import start_http_server

from flowwarden.dashboards.catalog import load_committed
from flowwarden.dashboards.model import POSTGRES_TYPE, PROMETHEUS_TYPE
from flowwarden.dashboards.queries import (
    PanelQuery,
    QueryContext,
    interpolate_promql,
    interpolate_sql,
    label_values_query,
    panel_queries,
)
from flowwarden.store import Store
from tests.support.netns import Lab, netns_available, wait_for
from tests.support.postgres import truncate_store

pytestmark = pytest.mark.integration

MINUTES = 20
SCRAPE_S = 1
RATE_INTERVAL = "15s"
CLUSTER = "lab-1"  # the cluster label the scrape gives every series, as a deployment's does

# Present exactly when the pipeline runs with a model (the models stage ships a default
# model; a deployment may run without one): asserted both ways below.
MODEL_INFO = "flowwarden_pipeline_model_info"


@dataclass
class Seeded:
    pg_url: str
    time_from: datetime
    time_to: datetime
    scrape_targets: dict[str, str]  # job -> host:port
    namespace: str
    workload: str
    model_version: str | None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _declare_rules(sim: Any, tmp: Any) -> dict[str, Any]:
    """A feed listing an external address an attack reaches, and a policy for that attacker's
    namespace that allows only the cluster: threat_feed and policy_violation alerts follow."""
    import numpy as np

    external = ~sim.flows["dst_ip"].astype(str).str.startswith("10.").to_numpy()
    first = int(np.flatnonzero((sim.flow_episode > 0) & external)[0])  # episode 0 is allowlisted
    (tmp / "feed.txt").write_text(f"# seeded\n{sim.flows['dst_ip'].iloc[first]}\n")
    namespace = sim.labels.episodes[int(sim.flow_episode[first])].source.namespace
    policy = {"namespaces": {namespace: {"egress": [{"name": "cluster", "to": {"namespaces": ["*"]}}]}}}
    (tmp / "policy.yaml").write_text(yaml.safe_dump(policy))
    return {
        "policy_file": str(tmp / "policy.yaml"),
        "feeds": [{"name": "seeded", "url": str(tmp / "feed.txt")}],
        "feed_cache_dir": str(tmp / "feeds"),
    }


@pytest.fixture(scope="module")
def seeded(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """Simulator -> memory bus -> pipeline stage -> PostgreSQL; alerts -> enforcer (dry-run)."""
    from flowwarden.bus import open_bus, publish_flows
    from flowwarden.enforcement.enforcer import Enforcer
    from flowwarden.enforcement.metrics import EnforcerMetrics
    from flowwarden.pipeline.runtime.metrics import PipelineMetrics
    from flowwarden.pipeline.runtime.stage import build_stage
    from flowwarden.settings import load_settings
    from flowwarden.simulator import simulate

    tmp = tmp_path_factory.mktemp("seed")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = now - timedelta(minutes=MINUTES)
    sim = simulate(minutes=MINUTES, pods=60, seed=3, attacks="all", start=start)
    inventory = tmp / "inventory.json"
    inventory.write_text(json.dumps(sim.inventory))
    allowed = sim.labels.episodes[0].source  # one attacker allowlisted: its hits are suppressed
    rules = _declare_rules(sim, tmp)  # a feed and a policy: the rule panels have alerts to show
    settings = load_settings(
        None,
        bus={"kind": "memory"},
        store={"url": pg_url},
        kubernetes={"inventory_path": str(inventory)},
        pipeline={
            "metrics_port": 0,
            "allowlist_sources": [f"{allowed.namespace}/{allowed.workload}"],
        },
        rules=rules,
        # Low bars and a tight rate limit: some alerts become blocks, some are refused.
        enforcement={"min_severity": "low", "min_score": 0.0, "max_new_blocks_per_minute": 3},
        # A webhook nobody answers: the notifier panel (and its alert) has failures to show.
        notifiers={
            "webhook_urls": [f"http://127.0.0.1:{_free_port()}/nobody"],
            "min_severity": "low",
            "retries": 0,
            "timeout_s": 1.0,
        },
    )
    store = Store(pg_url).start()
    truncate_store(store)
    bus = open_bus(settings)
    pipeline_metrics = PipelineMetrics()
    pipeline_port = pipeline_metrics.serve(0, addr="127.0.0.1")
    stage = build_stage(settings, bus=bus, store=store, metrics=pipeline_metrics)
    stage.start()
    producer = bus.producer()
    publish_flows(producer, settings.kafka.topics.flows, sim.flows, settings.kafka.partitions)
    producer.send(settings.kafka.topics.flows, b"not a flow batch", partition=0)  # -> dead letter
    stage.drain(max_seconds=120)
    assert stage.stats.alerts > 0, "the simulated attacks raised no alert"

    enforcer_metrics = EnforcerMetrics()
    enforcer_server, _ = start_http_server(0, addr="127.0.0.1", registry=enforcer_metrics.registry)
    enforcer = Enforcer(settings, store=store, bus=bus, metrics=enforcer_metrics)
    enforcer.start()
    for _ in range(100):  # bounded: one poll per batch of alerts
        if not enforcer.poll_once(0.2):
            break

    # Both stages keep running (idle) while Prometheus scrapes them.
    stop = threading.Event()
    threads = [
        threading.Thread(target=stage.run, args=(stop,), kwargs={"max_seconds": 300}, daemon=True),
        threading.Thread(target=enforcer.run, args=(stop,), daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        yield Seeded(
            pg_url=pg_url,
            time_from=start - timedelta(minutes=1),
            time_to=datetime.now(UTC) + timedelta(minutes=2),
            scrape_targets={
                "flowwarden-pipeline": f"127.0.0.1:{pipeline_port}",
                "flowwarden-enforcer": f"127.0.0.1:{enforcer_server.server_address[1]}",
            },
            namespace=allowed.namespace,
            workload=allowed.workload,
            model_version=stage.model_watcher.version if stage.model_watcher else None,
        )
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        enforcer.stop()
        stage.stop()
        enforcer_server.shutdown()
        pipeline_metrics.close()
        store.stop()


@pytest.fixture(scope="module")
def collector_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live collector capturing pings in a namespace pair, its Kafka down and no spool room."""
    from flowwarden.collectors.collector import Collector
    from flowwarden.settings import load_settings

    assert netns_available(), "this test creates network namespaces: run it as root"
    tmp = tmp_path_factory.mktemp("collector")
    with Lab() as lab:
        cli, srv = lab.host("cli"), lab.host("srv")
        iface, _ = lab.link(cli, "10.78.0.1/24", srv, "10.78.0.2/24")
        settings = load_settings(
            None,
            bus={"kind": "kafka"},
            kafka={"bootstrap_servers": [f"127.0.0.1:{_free_port()}"], "connect_timeout_s": 1},
            collector={
                "node": "node-a",
                "interfaces": [iface],
                "netns": cli.name,
                "active_timeout_s": 1,
                "idle_timeout_s": 2,
                "batch_interval_ms": 200,
                "spool_dir": str(tmp / "spool"),
                "spool_max_bytes": 0,
                "metrics_port": 0,
                "app_names": False,
            },
        )
        collector = Collector(settings, serve_metrics=False)
        server = collector.metrics.serve(0, addr="127.0.0.1")
        collector.start()
        try:
            cli.run("ping", "-c", "5", "-i", "0.2", "10.78.0.2", check=False)

            def dropped() -> bool:
                v = collector.metrics.registry.get_sample_value(
                    "flowwarden_collector_dropped_flows_total", {"node": "node-a", "cause": "spool_full"}
                )
                return bool(v)

            wait_for(
                dropped, timeout=30, what="the collector to drop flows with Kafka down and the spool full"
            )
            yield f"127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
        finally:
            collector.stop(timeout_s=10)
            server.shutdown()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def prometheus(
    seeded: Seeded, collector_target: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real Prometheus on loopback scraping the running stages every second."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: run scripts/install-system-deps.sh"
    tmp = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target], "labels": {"cluster": CLUSTER}}]}
            for job, target in {**seeded.scrape_targets, "flowwarden-collector": collector_target}.items()
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "prometheus.log").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, (tmp / "prometheus.log").read_text()
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    try:
        wait_for(ready, timeout=30, what="prometheus to be ready", interval=0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _queries(kind: str) -> list[PanelQuery]:
    """Every query whose data source (a template variable) is of this type."""
    return [
        q for name, b in load_committed().items() for q in panel_queries(name, b) if q.datasource_type == kind
    ]


def _run_sql(store: Store, text: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    with store.engine.connect() as conn:
        result = conn.exec_driver_sql(text)
        return list(result.keys()), [tuple(r) for r in result.fetchall()]


def _numeric(v: Any) -> bool:
    return isinstance(v, int | float | Decimal) and not isinstance(v, bool)


def _check_shape(q: PanelQuery, cols: list[str], rows: list[tuple[Any, ...]], panel: dict[str, Any]) -> None:
    """The columns and types the panel's visualisation needs."""
    where = f"{q.dashboard} / {q.panel} [{q.ref}]"
    first = dict(zip(cols, rows[0], strict=True))
    if q.panel_type == "variable":
        assert len(cols) == 1 and all(isinstance(r[0], str) and r[0] for r in rows), where
    elif q.panel_type == "annotation":
        assert {"time", "timeend", "text", "tags"} <= set(cols), where
        assert isinstance(first["time"], datetime) and isinstance(first["text"], str), where
    elif q.fmt == "time_series":
        assert cols[0] == "time", f"{where}: a time series needs its first column named time"
        assert isinstance(first["time"], datetime) or _numeric(first["time"]), where
        assert any(_numeric(v) for c, v in first.items() if c != "time"), f"{where}: no value column"
    elif q.panel_type == "stat":
        assert any(_numeric(v) for v in first.values()), f"{where}: a stat needs a number"
    elif q.panel_type in ("bargauge", "barchart"):
        assert any(isinstance(v, str) for v in first.values()), f"{where}: needs a label column"
        assert any(_numeric(v) for v in first.values()), f"{where}: needs a value column"
    elif q.panel_type == "nodeGraph":
        need = {"edges": {"id", "source", "target", "mainstat"}, "nodes": {"id", "title", "mainstat"}}[q.ref]
        assert need <= set(cols), f"{where}: missing {need - set(cols)}"
    for t in panel.get("transformations", []):
        if t["id"] == "groupingToMatrix":
            o = t["options"]
            assert {o["rowField"], o["columnField"], o["valueField"]} <= set(cols), where
    if "time" in cols and q.panel_type == "table":
        assert isinstance(first["time"], datetime), f"{where}: time column is not a timestamp"


def _panel(q: PanelQuery) -> dict[str, Any]:
    board = load_committed()[q.dashboard]
    return next((p for p in board["panels"] if p["title"] == q.panel), {})


def test_every_sql_panel_returns_rows(seeded: Seeded) -> None:
    store = Store(seeded.pg_url).start()
    try:
        everything = QueryContext(seeded.time_from, seeded.time_to, {"namespace": None, "workload": None})
        narrowed = QueryContext(
            seeded.time_from, seeded.time_to, {"namespace": [seeded.namespace], "workload": [seeded.workload]}
        )
        report, empty = [], []
        edges_nodes: dict[str, set[str]] = {}  # per node graph: "<dashboard> nodes" / "<dashboard> ends"
        for q in _queries(POSTGRES_TYPE):
            cols, rows = _run_sql(store, interpolate_sql(q.text, everything))
            report.append(f"{q.dashboard:18} {q.panel[:55]:55} {q.ref:7} rows={len(rows)}")
            if not rows:
                empty.append(f"{q.dashboard} / {q.panel} [{q.ref}]")
                continue
            _check_shape(q, cols, rows, _panel(q))
            if q.panel_type == "nodeGraph":
                if q.ref == "nodes":
                    edges_nodes[f"{q.dashboard} nodes"] = {r[cols.index("id")] for r in rows}
                else:
                    ends = {r[cols.index(c)] for r in rows for c in ("source", "target")}
                    edges_nodes[f"{q.dashboard} ends"] = ends
            # The same query narrowed to one namespace and workload must run too.
            _run_sql(store, interpolate_sql(q.text, narrowed))
        print("\nSQL panels (dashboard, panel, query, rows):\n" + "\n".join(report))
        assert not empty, f"panels with no rows on the seeded data: {empty}"
        for board in {k.split()[0] for k in edges_nodes}:
            lacking = edges_nodes[f"{board} ends"] - edges_nodes[f"{board} nodes"]
            assert not lacking, f"{board}: edges point at nodes the graph lacks: {lacking}"
        assert len(report) >= 30
        _check_new_edges(store, seeded)
    finally:
        store.stop()


def _check_new_edges(store: Store, seeded: Seeded) -> None:
    """Edges are new when the lookback before the range lacks them: all of them when the store
    starts inside the range, only some when the range starts halfway through the data."""
    (edges,) = [
        q
        for q in _queries(POSTGRES_TYPE)
        if q.panel_type == "nodeGraph" and q.ref == "edges" and q.dashboard == "lateral-movement"
    ]
    every: dict[str, list[str] | None] = {"namespace": None, "workload": None}
    cols, rows = _run_sql(
        store, interpolate_sql(edges.text, QueryContext(seeded.time_from, seeded.time_to, every))
    )
    assert rows and all(r[cols.index("highlighted")] for r in rows), "before the data every edge is new"
    half = seeded.time_from + (seeded.time_to - seeded.time_from) / 2
    cols, rows = _run_sql(store, interpolate_sql(edges.text, QueryContext(half, seeded.time_to, every)))
    known = [r for r in rows if not r[cols.index("highlighted")]]
    assert known, "edges already seen in the first half must not be marked new in the second"
    assert {r[cols.index("color")] for r in known} == {"gray"}


def test_rule_panels_show_feed_hits_and_policy_violations_per_workload(seeded: Seeded) -> None:
    """The seeded feed and policy (issue 17) show up per workload, with the feed and rule named."""
    ctx = QueryContext(seeded.time_from, seeded.time_to, {"namespace": None, "workload": None})
    title = "Feed hits and policy violations per workload"
    panels = {q.dashboard: q for q in _queries(POSTGRES_TYPE) if q.panel == title}
    assert set(panels) == {"overview", "exfiltration"}
    store = Store(seeded.pg_url).start()
    try:
        cols, rows = _run_sql(store, interpolate_sql(panels["overview"].text, ctx))
        per = [dict(zip(cols, r, strict=True)) for r in rows]
        assert sum(r["feed_hit_alerts"] for r in per) > 0
        assert sum(r["policy_violation_alerts"] for r in per) > 0
        cols, rows = _run_sql(store, interpolate_sql(panels["exfiltration"].text, ctx))
        named = {(r[cols.index("detector")], r[cols.index("feeds_or_rules")]) for r in rows}
        assert any(d == "threat_feed" and "seeded" in n for d, n in named), named
        assert any(d == "policy_violation" and ".egress" in n for d, n in named), named
    finally:
        store.stop()


def _prom(url: str, expr: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def _label_values(url: str, selector: str, label: str) -> list[str]:
    query = urllib.parse.urlencode({"match[]": selector})
    with urllib.request.urlopen(f"{url}/api/v1/label/{label}/values?{query}", timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return list(body["data"])


def test_cluster_variable_lists_the_scraped_cluster(seeded: Seeded, prometheus: str) -> None:
    variables = [q for q in _queries(PROMETHEUS_TYPE) if q.panel_type == "variable"]
    assert {q.panel for q in variables} == {"variable: cluster"}
    assert len({q.text for q in variables}) == 1, "every dashboard lists clusters alike"
    selector, label = label_values_query(variables[0].text)

    def listed() -> bool:
        return _label_values(prometheus, selector, label) == [CLUSTER]

    wait_for(listed, timeout=60, what="the cluster variable to list the scraped cluster", interval=0.5)


def test_every_promql_panel_returns_series(seeded: Seeded, prometheus: str) -> None:
    ctx = QueryContext(seeded.time_from, seeded.time_to, {}, rate_interval=RATE_INTERVAL)
    panels = [q for q in _queries(PROMETHEUS_TYPE) if q.panel_type != "variable"]
    queries = [(q, interpolate_promql(q.text, ctx)) for q in panels]
    # The same panels narrowed to this cluster answer too; to another cluster, nothing.
    mine = QueryContext(seeded.time_from, seeded.time_to, {"cluster": [CLUSTER]}, rate_interval=RATE_INTERVAL)
    queries += [(q, interpolate_promql(q.text, mine)) for q in panels]
    other = QueryContext(
        seeded.time_from, seeded.time_to, {"cluster": ["other"]}, rate_interval=RATE_INTERVAL
    )
    model_loaded = seeded.model_version is not None
    expected = [(q, e) for q, e in queries if model_loaded or MODEL_INFO not in e]
    counts: dict[str, int] = {}

    def all_answer() -> bool:
        for _q, expr in expected:
            counts[expr] = len(_prom(prometheus, expr))
        return all(counts[e] > 0 for _, e in expected)

    # rate() needs two scrapes inside its window: wait for them, never for a fixed time.
    try:
        wait_for(all_answer, timeout=120, what="every PromQL panel to return series", interval=1.0)
    finally:
        lines = []
        for q, e in queries:
            note = ""
            if MODEL_INFO in e and not model_loaded:
                note = "  (the pipeline runs without a model: none shipped yet)"
            n = counts.get(e, len(_prom(prometheus, e)))
            lines.append(f"{q.dashboard:18} {q.panel[:50]:50} {q.ref:3} series={n}{note}")
        print("\nPromQL panels (dashboard, panel, query, series):\n" + "\n".join(lines))
    for q in panels:
        assert _prom(prometheus, interpolate_promql(q.text, other)) == [], (q.dashboard, q.panel)
    info = _prom(prometheus, MODEL_INFO)
    if model_loaded:
        assert [s["metric"]["version"] for s in info] == [seeded.model_version]
    else:
        assert info == [], "model_info must stay absent while no model is loaded"
    assert len(expected) >= 10
