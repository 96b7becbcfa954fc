"""The pod inventory kept current by a list-then-watch: the real ``kubernetes`` client talking
real HTTP to a Kubernetes-API-compatible server on loopback (tests/support/kube_api.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pandas as pd
import pytest

from flowwarden.errors import ServiceUnavailable
from flowwarden.kube import PodInventory, inventory_source_from_settings
from flowwarden.kube.watch import WatchSource
from flowwarden.settings import Settings
from tests.support.kube_api import FakeKubeApi
from tests.support.netns import wait_for

pytestmark = pytest.mark.integration

NOW = float(int(time.time()))  # pods are created relative to now, as in a live cluster
WHO_NOBODY = ("", "", "", "")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(
    name: str,
    ip: str | None,
    *,
    uid: str,
    ns: str = "shop",
    owner: tuple[str, str] | None = ("ReplicaSet", "web-5d9c8f7b6"),
    created: float = NOW - 600,
    node: str = "node-1",
) -> dict[str, Any]:
    """A pod as the API server serves it (the parts enrichment ignores included)."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": ns,
        "uid": uid,
        "creationTimestamp": iso(created),
        "labels": {"app": name.split("-")[0]},
        "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsType": "FieldsV1"}],
    }
    if owner:
        meta["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": owner[0],
                "name": owner[1],
                "uid": f"{uid}-owner",
                "controller": True,
            }
        ]
    status: dict[str, Any] = {"phase": "Pending" if ip is None else "Running", "hostIP": "10.0.0.11"}
    if ip is not None:
        status |= {"podIP": ip, "podIPs": [{"ip": ip}], "startTime": iso(created + 1)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.example/app:1.2.3"}]},
        "status": status,
    }


class Engine:
    """The runtime's side of the contract: ask the source for ``current()`` per batch, look up."""

    def __init__(self, source: WatchSource) -> None:
        self.source = source
        self.inventory: PodInventory = source.current()

    def who(self, ip: str, t: float) -> tuple[str, str, str, str]:
        self.inventory = self.source.current()
        row = self.inventory.lookup_rows(pd.Series([ip]), pd.Series([t]))
        ns, name, workload, node = (
            self.inventory.column(c, row)[0] for c in ("namespace", "pod", "workload", "node")
        )
        return ns, name, workload, node

    def until(self, ip: str, t: float, expected: tuple[str, ...], timeout: float = 10.0) -> None:
        wait_for(lambda: self.who(ip, t) == expected, timeout=timeout, what=f"{ip}@{t} -> {expected}")


class Clock:
    """A wall clock the test moves: deletion times and retention, without waiting."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[FakeKubeApi]:
    api = FakeKubeApi().start()
    yield api
    api.stop()


@pytest.fixture
def core_api(server: FakeKubeApi) -> Iterator[Any]:
    from kubernetes import client

    api_client = client.ApiClient(client.Configuration(host=server.url))
    yield client.CoreV1Api(api_client)
    api_client.close()


@pytest.fixture
def make_watch(core_api: Any) -> Iterator[Any]:
    started: list[WatchSource] = []

    def make(**kw: Any) -> WatchSource:
        opts: dict[str, Any] = {"min_refresh_s": 0.0, "backoff_initial_s": 0.05, "backoff_max_s": 0.2}
        watched = WatchSource(api=core_api, **(opts | kw))
        started.append(watched)
        return watched

    yield make
    for watched in started:
        watched.stop()


def test_listed_and_added_pods_map_to_namespace_pod_workload_node(
    server: FakeKubeApi, make_watch: Any
) -> None:
    server.add(pod("web-5d9c8f7b6-aaaaa", "10.244.1.5", uid="u-web"))
    server.add(pod("db-0", "10.244.1.6", uid="u-db", ns="data", owner=("StatefulSet", "db"), node="node-2"))
    server.add(
        pod("backup-29383920-bbbbb", "10.244.1.7", uid="u-job", ns="ops", owner=("Job", "backup-29383920"))
    )
    engine = Engine(make_watch(page_size=2).start())
    listed_rv = server.resource_version
    assert server.lists == 1 and server.pages == 2, "the list is paged (limit/continue)"
    assert engine.who("10.244.1.5", NOW) == ("shop", "web-5d9c8f7b6-aaaaa", "web", "node-1")
    assert engine.who("10.244.1.6", NOW) == ("data", "db-0", "db", "node-2")
    assert engine.who("10.244.1.7", NOW) == ("ops", "backup-29383920-bbbbb", "backup", "node-1")
    assert engine.who("10.244.1.8", NOW) == WHO_NOBODY
    # A pod added after the list arrives through the watch.
    server.add(
        pod("agent-x7k2p", "10.244.1.8", uid="u-agent", ns="kube-system", owner=("DaemonSet", "agent"))
    )
    engine.until("10.244.1.8", NOW, ("kube-system", "agent-x7k2p", "agent", "node-1"))
    assert server.lists == 1, "changes come from the watch, not from listing again"
    assert server.watch_rvs[0] == listed_rv, "the watch starts at the list's resourceVersion"


def test_ip_assigned_later_is_picked_up_and_irrelevant_changes_cost_nothing(
    server: FakeKubeApi, make_watch: Any
) -> None:
    watched = make_watch().start()
    engine = Engine(watched)
    server.add(pod("api-7f8c9d6b5-ccccc", None, uid="u-api", owner=("ReplicaSet", "api-7f8c9d6b5")))
    wait_for(lambda: watched.stats.events >= 1, timeout=10, what="the ADDED event")
    assert engine.who("10.244.2.9", NOW) == WHO_NOBODY, "a pending pod has no address yet"
    running = pod("api-7f8c9d6b5-ccccc", "10.244.2.9", uid="u-api", owner=("ReplicaSet", "api-7f8c9d6b5"))
    server.modify(running)
    engine.until("10.244.2.9", NOW, ("shop", "api-7f8c9d6b5-ccccc", "api", "node-1"))
    # A status change enrichment does not read: no new snapshot.
    current, rebuilds = engine.inventory, watched.stats.rebuilds
    running["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    server.modify(running)
    server.bookmark()
    wait_for(lambda: watched.stats.events >= 4, timeout=10, what="the MODIFIED and BOOKMARK events")
    assert watched.current() is current, "the snapshot is up to date: the same object"
    assert watched.stats.rebuilds == rebuilds


def test_deleted_pod_maps_late_flows_until_retention_and_reused_ip_maps_to_the_new_pod(
    server: FakeKubeApi, make_watch: Any
) -> None:
    ip = "10.244.3.4"
    t_created, t_deleted, t_new = NOW - 900, NOW - 300, NOW - 180
    server.add(
        pod(
            "cart-6c5d4f8b7-ddddd", ip, uid="u-old", owner=("ReplicaSet", "cart-6c5d4f8b7"), created=t_created
        )
    )
    clock = Clock(NOW)
    watched = make_watch(deleted_retention_s=120.0, clock=clock).start()
    engine = Engine(watched)
    old = ("shop", "cart-6c5d4f8b7-ddddd", "cart", "node-1")
    assert engine.who(ip, t_deleted - 10) == old
    server.delete("u-old", deletion_timestamp=iso(t_deleted))
    server.add(
        pod("cart-6c5d4f8b7-eeeee", ip, uid="u-new", owner=("ReplicaSet", "cart-6c5d4f8b7"), created=t_new)
    )
    new = ("shop", "cart-6c5d4f8b7-eeeee", "cart", "node-1")
    engine.until(ip, t_new + 10, new)
    assert engine.who(ip, t_deleted - 10) == old, (
        "a late flow from before the deletion maps to the deleted pod"
    )
    assert engine.who(ip, t_deleted + 45) == WHO_NOBODY, "between the old pod's end (+30 s) and the new pod"
    # Past the retention the deleted pod is forgotten; the new one stays.
    clock.now = NOW + 121
    engine.until(ip, t_deleted - 10, WHO_NOBODY)
    assert engine.who(ip, t_new + 10) == new


def test_deleted_without_deletion_timestamp_ends_when_the_watch_saw_it(
    server: FakeKubeApi, make_watch: Any
) -> None:
    ip = "10.244.3.5"
    server.add(pod("worker-0", ip, uid="u-w", owner=("StatefulSet", "worker")))
    clock = Clock(NOW - 100)
    watched = make_watch(clock=clock).start()
    engine = Engine(watched)
    alive = ("shop", "worker-0", "worker", "node-1")
    assert engine.who(ip, NOW - 100 + 40) == alive
    server.delete("u-w")  # no deletionTimestamp (a forced deletion)
    engine.until(ip, NOW - 100 + 40, WHO_NOBODY)  # ended at the event (the clock) + 30 s
    assert engine.who(ip, NOW - 100 + 20) == alive, "within the termination grace after the event"


def test_410_gone_lists_again_and_keeps_pods_deleted_meanwhile(server: FakeKubeApi, make_watch: Any) -> None:
    ip_a, ip_b = "10.244.4.1", "10.244.4.2"
    server.add(pod("a-0", ip_a, uid="u-a", owner=None))
    watched = make_watch().start()
    engine = Engine(watched)
    wait_for(lambda: server.open_watches == 1, timeout=10, what="the watch to open")
    # Changes the open watch never sees (compacted away), then 410 Gone on the stream.
    server.delete("u-a", announce=False)
    server.add(pod("b-0", ip_b, uid="u-b", owner=None), announce=False)
    server.gone()
    engine.until(ip_b, NOW, ("shop", "b-0", "b-0", "node-1"))
    assert server.lists == 2, "410 made it list again"
    wait_for(lambda: len(server.watch_rvs) == 2, timeout=10, what="the watch after the list")
    assert watched.stats.lists == 2 and watched.stats.failures == 1
    assert server.watch_rvs[-1] == server.resource_version, "the new watch starts at the new list's version"
    assert engine.who(ip_a, NOW - 5) == ("shop", "a-0", "a-0", "node-1"), (
        "gone from the list: kept, ended now"
    )
    assert engine.who(ip_a, NOW + 3600) == WHO_NOBODY


def test_410_on_resume_after_a_lost_connection_lists_again(server: FakeKubeApi, make_watch: Any) -> None:
    watched = make_watch().start()
    engine = Engine(watched)
    wait_for(lambda: server.open_watches == 1, timeout=10, what="the watch to open")
    server.stop()
    server.add(pod("c-0", "10.244.4.3", uid="u-c", owner=None), announce=False)
    server.gone()  # the history the client would resume from is gone
    server.start()
    engine.until("10.244.4.3", NOW, ("shop", "c-0", "c-0", "node-1"))
    assert server.lists == 2
    assert server.watch_rvs.count(server.watch_rvs[0]) >= 2, (
        "it first resumed from its resourceVersion (got 410)"
    )


def test_connection_loss_backs_off_then_resumes_from_its_resource_version(
    server: FakeKubeApi, make_watch: Any
) -> None:
    watched = make_watch(backoff_initial_s=0.05, backoff_max_s=0.2).start()
    engine = Engine(watched)
    server.add(pod("d-0", "10.244.5.1", uid="u-d", owner=None))
    engine.until("10.244.5.1", NOW, ("shop", "d-0", "d-0", "node-1"))
    server.stop()  # the stream is cut, then every connection is refused
    wait_for(lambda: watched.stats.failures >= 3, timeout=10, what="reconnects to fail")
    assert watched.running, "the thread survives connection errors"
    server.add(pod("e-0", "10.244.5.2", uid="u-e", owner=None))  # while it is down: in the history
    server.start()
    engine.until("10.244.5.2", NOW, ("shop", "e-0", "e-0", "node-1"))
    assert server.lists == 1, "resumed from its resourceVersion: nothing listed again"
    assert engine.who("10.244.5.1", NOW) == ("shop", "d-0", "d-0", "node-1")


def test_reconnects_back_off_exponentially_up_to_the_cap(server: FakeKubeApi, make_watch: Any) -> None:
    watched = make_watch(backoff_initial_s=0.1, backoff_max_s=0.2).start()
    wait_for(lambda: server.open_watches == 1, timeout=10, what="the watch to open")
    server.stop()
    stamps: dict[int, float] = {}
    for n in (1, 3, 8):
        wait_for(partial(lambda k: watched.stats.failures >= k, n), timeout=20, what=f"{n} failed attempts")
        stamps[n] = time.monotonic()
    assert stamps[3] - stamps[1] >= 0.2, "0.1 s then 0.2 s between attempts, not a spin"
    assert 0.9 <= stamps[8] - stamps[3] < 5.0, "capped at 0.2 s (doubling on would take 12 s)"
    assert watched.running


def test_stop_returns_promptly_from_an_open_watch_and_from_a_back_off(
    server: FakeKubeApi, make_watch: Any
) -> None:
    watched = make_watch(watch_timeout_s=300).start()
    wait_for(lambda: server.open_watches == 1, timeout=10, what="the watch to open")
    t0 = time.monotonic()
    watched.stop()
    assert time.monotonic() - t0 < 2.0
    assert not watched.running
    wait_for(lambda: server.open_watches == 0, timeout=10, what="the server to see the stream closed")

    backing_off = make_watch(backoff_initial_s=60.0, backoff_max_s=60.0).start()
    wait_for(lambda: server.open_watches == 1, timeout=10, what="the second watch to open")
    server.stop()
    wait_for(lambda: backing_off.stats.failures >= 1, timeout=10, what="a failure and its 60 s back-off")
    t0 = time.monotonic()
    backing_off.stop()
    assert time.monotonic() - t0 < 2.0
    assert not backing_off.running


def test_snapshots_are_rebuilt_at_most_every_min_refresh_s(server: FakeKubeApi, make_watch: Any) -> None:
    watched = make_watch(min_refresh_s=3600.0).start()
    engine = Engine(watched)
    server.add(pod("f-0", "10.244.6.1", uid="u-f", owner=None))
    wait_for(lambda: watched.stats.events >= 1, timeout=10, what="the ADDED event")
    assert engine.who("10.244.6.1", NOW) == WHO_NOBODY, "within min_refresh_s the snapshot is kept"
    assert watched.snapshot().lookup_rows(pd.Series(["10.244.6.1"]), pd.Series([NOW]))[0] >= 0


def test_start_without_rbac_fails_naming_the_permission(server: FakeKubeApi, make_watch: Any) -> None:
    server.forbidden = True
    with pytest.raises(ServiceUnavailable, match=r"403 .*list and watch on pods"):
        make_watch().start()


def test_inventory_source_from_settings_feeds_the_detection_engine(
    server: FakeKubeApi, core_api: Any
) -> None:
    from flowwarden.pipeline.detection.engine import DetectionEngine
    from tests.unit.flowkit import flows

    server.add(pod("web-5d9c8f7b6-aaaaa", "10.244.7.1", uid="u-1"))
    settings = Settings.model_validate({"kubernetes": {"inventory_source": "kubernetes"}})
    source = inventory_source_from_settings(settings, api=core_api)
    assert isinstance(source, WatchSource) and not source.running, "no I/O before start()"
    source.start()
    try:
        first = source.current()
        engine = DetectionEngine(settings, inventory=first)
        server.add(pod("db-0", "10.244.7.2", uid="u-2", ns="data", owner=("StatefulSet", "db")))
        batch = flows([{"ts_start": NOW, "src_ip": "10.244.7.1", "dst_ip": "10.244.7.2"}])

        def enriched() -> bool:
            engine.set_inventory(source.current())  # what the runtime does before each batch
            out = engine.process(batch, now=NOW).enriched
            return out[["src_pod", "dst_pod", "dst_workload"]].iloc[0].tolist() == [
                "web-5d9c8f7b6-aaaaa",
                "db-0",
                "db",
            ]

        wait_for(enriched, timeout=10, what="the engine to enrich with the watched pods")
        assert engine.inventory is not first
    finally:
        source.stop()
    assert not source.running


def test_a_stage_counts_the_watch_and_stops_it(server: FakeKubeApi, core_api: Any, tmp_path: Any) -> None:
    """The watch's counters reach /metrics through the stage, and stopping the stage ends the watch."""
    from flowwarden.bus import MemoryBus, publish_flows
    from flowwarden.pipeline.detection.engine import DetectionEngine
    from flowwarden.pipeline.runtime.metrics import PipelineMetrics
    from flowwarden.pipeline.runtime.notify import NotifierHub
    from flowwarden.pipeline.runtime.stage import PipelineStage, StageOptions
    from flowwarden.store import Store
    from tests.unit.flowkit import flows

    server.add(pod("web-5d9c8f7b6-aaaaa", "10.244.7.1", uid="u-1"))
    settings = Settings.model_validate(
        {"kubernetes": {"inventory_source": "kubernetes"}, "kafka": {"partitions": 1}}
    )
    source = inventory_source_from_settings(settings, api=core_api)
    assert isinstance(source, WatchSource)
    engine = DetectionEngine(settings)
    bus = MemoryBus(default_partitions=1)
    store = Store(f"sqlite:///{tmp_path / 'fw.db'}").start()
    metrics = PipelineMetrics()
    stage = PipelineStage(
        settings,
        bus=bus,
        store=store,
        engine=engine,
        notifiers=NotifierHub([]),
        metrics=metrics,
        inventory_source=source,
        options=StageOptions(poll_timeout_s=0.0, align_idle_s=1.0, idle_tick_s=1.0),
    )
    try:
        stage.start()
        assert source.running, "the stage starts its source"
        assert engine.inventory is not None and len(engine.inventory) == 1, "listed before any flow"
        server.add(pod("db-0", "10.244.7.2", uid="u-2", ns="data", owner=("StatefulSet", "db")))
        wait_for(lambda: source.stats.events >= 1, timeout=10, what="a watch event")
        batch = flows([{"ts_start": NOW, "src_ip": "10.244.7.1", "dst_ip": "10.244.7.2"}])
        publish_flows(bus.producer(), settings.kafka.topics.flows, batch, 1)
        stage.drain(idle_polls=2, max_seconds=30)

        def counted(what: str) -> float:
            name = "flowwarden_pipeline_inventory_watch_total"
            return metrics.registry.get_sample_value(name, {"what": what}) or 0.0

        assert counted("lists") == 1 and counted("watches") >= 1 and counted("events") >= 1
        assert counted("failures") == 0
    finally:
        stage.stop()
        store.stop()
    assert not source.running  # stop() ended the watch


def test_the_enforcer_s_guardrails_follow_the_watched_pods(
    server: FakeKubeApi, make_watch: Any, tmp_path: Any
) -> None:
    """With ``kubernetes.inventory_source: kubernetes`` the enforcer knows workload sizes and target owners.

    Without it (as before in a cluster) a block of a one-pod workload's only pod passed the
    share cap, and a block toward a kube-system pod passed the namespace allowlist.
    """
    from flowwarden.enforcement.backends.networkpolicy import NetworkPolicyBackend
    from flowwarden.enforcement.enforcer import Enforcer
    from flowwarden.records import Entity
    from flowwarden.store import Store
    from tests.unit.enforcement_support import settings

    server.add(pod("web-5d9c8f7b6-aaaaa", "10.244.1.2", uid="u-a"))
    server.add(pod("coredns-6d4b75cb6d-k8s9x", "10.244.3.3", uid="u-dns", ns="kube-system"))
    s = settings(
        gitops_dir=str(tmp_path / "gitops"),
        backends=["networkpolicy"],
        mode="enforce",
        max_workload_share=0.5,
    ).model_copy(
        update={"kubernetes": settings().kubernetes.model_copy(update={"inventory_source": "kubernetes"})}
    )
    source = Entity(ip="10.244.1.2", namespace="shop", pod="web-5d9c8f7b6-aaaaa", workload="web")
    with Store("sqlite://") as store:
        by_settings = Enforcer(s, store=store, backends=[])
        assert isinstance(by_settings.inventory_source, WatchSource), "the setting makes a watch"
        assert not by_settings.inventory_source.running, "no I/O before start()"
        e = Enforcer(s, store=store, backends=[NetworkPolicyBackend(s)], inventory_source=make_watch())
        e.start(consume=False)
        try:
            assert e.inventory.pod_count("shop", "web") == 1  # listed before any decision
            assert e.manual(source=source, targets=["10.244.2.7"]).guardrail == "max_workload_share"
            assert e.manual(source=source, targets=["10.244.3.3"]).guardrail == "allow_namespace"
            server.add(pod("web-5d9c8f7b6-bbbbb", "10.244.1.3", uid="u-b"))
            server.add(pod("web-5d9c8f7b6-ccccc", "10.244.1.4", uid="u-c"))

            def three_replicas() -> bool:
                e.housekeeping()
                return e.inventory.pod_count("shop", "web") == 3

            wait_for(three_replicas, timeout=15, what="the enforcer to see three web replicas")
            assert e.manual(source=source, targets=["10.244.2.7"]).status == "applied"  # 1 of 3
            server.delete("u-c", deletion_timestamp=iso(time.time()))

            def two_replicas() -> bool:
                e.housekeeping()
                return e.inventory.pod_count("shop", "web") == 2

            wait_for(two_replicas, timeout=15, what="a terminating replica to leave the workload's size")
            assert "10.244.1.4" in e.inventory.pods_by_ip, "its address is still its own for a while"
        finally:
            e.stop()
        assert isinstance(e.inventory_source, WatchSource) and not e.inventory_source.running


def test_a_kubeconfig_watch_retries_on_its_own_schedule_without_urllib3_noise(
    server: FakeKubeApi, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Credentials from a kubeconfig (``kubernetes.in_cluster: false``); while the API is down
    each attempt is one request and one failure, not urllib3's three retries and warnings."""
    import yaml

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "lab", "cluster": {"server": server.url}}],
                "users": [{"name": "me", "user": {"token": "t0ken"}}],
                "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "me"}}],
                "current-context": "lab",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    server.add(pod("a-0", "10.244.6.1", uid="u-a", owner=None))
    watched = WatchSource(in_cluster=False, backoff_initial_s=0.05, backoff_max_s=0.1, min_refresh_s=0.0)
    try:
        watched.start()
        assert Engine(watched).who("10.244.6.1", NOW) == ("shop", "a-0", "a-0", "node-1")
        wait_for(lambda: server.open_watches == 1, timeout=10, what="the watch to open")
        caplog.clear()
        server.stop()
        wait_for(lambda: watched.stats.failures >= 3, timeout=10, what="three failed attempts")
        retried = [r for r in caplog.records if r.name.startswith("urllib3") and "Retrying" in r.getMessage()]
        assert retried == []
    finally:
        watched.stop()
