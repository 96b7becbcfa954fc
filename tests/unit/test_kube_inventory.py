"""flowwarden.kube: one parser, one inventory with two views that agree, and the file source.

Enrichment's view (who owned an address at a time) and the guardrails' view (who owns it
now, how many live replicas a workload has) read the same parsed pods; the watch's slimming
keeps exactly what the parser reads. The list-then-watch source is in
tests/integration/test_inventory_watch.py (a real client against a loopback API server).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from flowwarden.errors import ConfigError
from flowwarden.kube import DELETION_GRACE_S, FileSource, PodInventory, PodRef, parse_pod
from flowwarden.kube.pods import slim_pod
from flowwarden.settings import Settings
from tests.unit.flowkit import pod


def ts(text: str) -> float:
    return pd.Timestamp(text).timestamp()


def cluster() -> list[dict[str, Any]]:
    """A Deployment mid-rollout, a CronJob's run, a finished Job, a bare pod, a node agent, a reused IP."""
    finished = pod("backup-29383920-abcde", "10.244.1.9", owner=("Job", "backup-29383920"))
    finished["status"] |= {
        "phase": "Succeeded",
        "containerStatuses": [{"state": {"terminated": {"finishedAt": "2027-01-15T08:02:00Z"}}}],
    }
    return [
        pod("web-5d9c8f7b6-x2k4p", "10.244.1.5", created="2027-01-15T08:00:00Z"),
        pod(  # terminating: still owns its address for the grace period, no longer a replica
            "web-5d9c8f7b6-b7x9q",
            "10.244.1.6",
            created="2027-01-15T07:00:00Z",
            deleted="2027-01-15T08:01:00Z",
        ),
        pod("report-29383920-fghij", "10.244.1.7", owner=("Job", "report-29383920")),  # a CronJob's run
        pod("bare", "10.244.1.8", owner=None),
        pod("agent-x7k2p", "10.0.0.11", ns="kube-system", owner=("DaemonSet", "agent"), host_network=True),
        finished,
        pod(  # the address of a pod deleted long ago, taken by a new replica
            "api-7f8c9d6b5-old00",
            "10.244.2.1",
            owner=("ReplicaSet", "api-7f8c9d6b5"),
            created="2027-01-15T06:00:00Z",
            deleted="2027-01-15T06:30:00Z",
        ),
        pod(
            "api-7f8c9d6b5-new00",
            "10.244.2.1",
            owner=("ReplicaSet", "api-7f8c9d6b5"),
            created="2027-01-15T07:00:00Z",
        ),
    ]


def test_one_parser_gives_lifetimes_workloads_and_ending_pods() -> None:
    pods = {p.name: p for p in (parse_pod(item, i) for i, item in enumerate(cluster()))}
    web, leaving = pods["web-5d9c8f7b6-x2k4p"], pods["web-5d9c8f7b6-b7x9q"]
    assert (web.workload, web.owned, web.ending, web.end) == ("web", True, False, math.inf)
    assert web.start == ts("2027-01-15T08:00:00Z") and web.ips == ("10.244.1.5",)
    assert leaving.ending and leaving.end == ts("2027-01-15T08:01:00Z") + DELETION_GRACE_S
    assert pods["report-29383920-fghij"].workload == "report", "CronJob -> Job -> Pod"
    done = pods["backup-29383920-abcde"]
    assert done.ending and done.end == ts("2027-01-15T08:02:00Z") + DELETION_GRACE_S
    bare = pods["bare"]
    assert (bare.workload, bare.owned, bare.ending) == ("bare", False, False)
    agent = pods["agent-x7k2p"]
    assert agent.host_network and agent.ips == () and (agent.host_ip, agent.node) == ("10.0.0.11", "node-1")


def test_enrichment_and_the_guardrails_read_the_same_pods() -> None:
    inv = PodInventory.from_dict({"items": cluster()})
    # Lifetimes: enrichment's rows carry the parsed pods' start and end.
    for p in inv.records:
        for ip in p.ips:
            rows = inv.pods[(inv.pods["ip"] == ip) & (inv.pods["pod"] == p.name)]
            assert rows[["start", "end"]].values.tolist() == [[p.start, p.end]]
    at = ts("2027-01-15T08:00:30Z")
    ips = ["10.244.1.5", "10.244.1.6", "10.244.1.7", "10.244.1.8", "10.244.1.9", "10.244.2.1"]
    seen = inv.lookup(pd.Series(ips), pd.Series([at] * len(ips)))
    for ip, pod_name, workload in zip(ips, seen["pod"], seen["workload"], strict=True):
        ref = inv.pods_by_ip[ip]
        assert ref.pod == pod_name, f"{ip}: the same pod in both views"
        # The one difference, kept on purpose: a bare pod is its own workload for enrichment
        # (its own baseline) and no workload's replica for the guardrails.
        assert ref.workload == ("" if pod_name == "bare" else workload)
    assert inv.pods_by_ip["10.244.2.1"] == PodRef("shop", "api-7f8c9d6b5-new00", "api")
    # Workload sizes count live replicas only: not the terminating web pod, not the finished Job's.
    assert inv.workload_pods == {"shop/web": 1, "shop/report": 1, "shop/api": 1}
    assert inv.pod_count("shop", "web") == 1 and inv.pod_count("shop", "bare") is None
    # Ending pods still own their address (a block of one is still checked) while alive to enrichment.
    assert inv.pods_by_ip["10.244.1.6"].workload == "web"
    assert seen["workload"].tolist()[1] == "web", "within its deletion grace"
    # A host-network pod makes its address a node's, in both views.
    assert inv.node_ips["10.0.0.11"] == "node-1" and "10.0.0.11" not in inv.pods_by_ip
    assert inv.lookup(pd.Series(["10.0.0.11"]), pd.Series([at]))["pod"].tolist() == [""]


def test_the_watch_keeps_exactly_what_the_parser_reads() -> None:
    for i, item in enumerate(cluster()):
        item["metadata"] |= {"uid": f"u-{i}", "managedFields": [{"manager": "kubelet"}]}
        item["spec"] |= {"containers": [{"name": "app", "image": "app:1"}]}
        slim = slim_pod(item)
        assert slim is not None and "managedFields" not in json.dumps(slim)
        assert parse_pod(slim, i) == parse_pod(item, i)


def test_the_file_source_reloads_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "pods.json"
    with pytest.raises(ConfigError, match="no such inventory file"):
        FileSource(path).start()
    path.write_text(json.dumps({"items": [pod("a-5d9c8f7b6-aaaaa", "10.244.1.1")]}))
    source = FileSource(path)  # no I/O yet
    assert source.stats.rebuilds == 0
    first = source.start().current()
    assert source.current() is first and source.stats.rebuilds == 1, "unchanged: the same snapshot"
    path.write_text(json.dumps({"items": [pod("b-5d9c8f7b6-bbbbb", "10.244.1.2")]}))
    os.utime(path, ns=(1, 1))
    second = source.current()
    assert second is not first and second.pods["pod"].tolist() == ["b-5d9c8f7b6-bbbbb"]
    assert source.current() is second and source.stats.rebuilds == 2
    # A broken rewrite (half-written) keeps the last good snapshot, once per change.
    path.write_text("{not json")
    os.utime(path, ns=(2, 2))
    assert source.current() is second and source.current() is second
    assert source.stats.failures == 1
    path.unlink()
    assert source.current() is second, "a file that disappeared keeps the last snapshot"
    path.write_text(json.dumps({"items": [pod("c-5d9c8f7b6-ccccc", "10.244.1.3")]}))
    os.utime(path, ns=(3, 3))
    assert source.current().pods["pod"].tolist() == ["c-5d9c8f7b6-ccccc"]


def test_the_pipeline_stage_and_the_enforcer_follow_the_same_file(tmp_path: Path) -> None:
    """Both users own a source from the same settings; the runtime hands snapshots to the engine."""
    from flowwarden.bus import MemoryBus, publish_flows
    from flowwarden.enforcement.enforcer import Enforcer
    from flowwarden.pipeline.detection.engine import DetectionEngine
    from flowwarden.pipeline.runtime.notify import NotifierHub
    from flowwarden.pipeline.runtime.stage import PipelineStage, StageOptions, build_stage
    from flowwarden.store import Store
    from tests.support.netns import wait_for
    from tests.unit.flowkit import T0, flows

    path = tmp_path / "pods.json"
    path.write_text(json.dumps({"items": [pod("web-5d9c8f7b6-aaaaa", "10.244.1.1")]}))
    settings = Settings.model_validate(
        {"kubernetes": {"inventory_path": str(path)}, "kafka": {"partitions": 1}}
    )
    assert isinstance(build_stage(settings, bus=MemoryBus()).inventory_source, FileSource)
    bus = MemoryBus(default_partitions=1)
    engine = DetectionEngine(settings)
    with Store(f"sqlite:///{tmp_path / 'fw.db'}") as store:
        stage = PipelineStage(
            settings,
            bus=bus,
            store=store,
            engine=engine,
            notifiers=NotifierHub([]),
            inventory_source=FileSource(path),
            options=StageOptions(poll_timeout_s=0.0, align_idle_s=0.0, idle_tick_s=1.0),
            wall=lambda: T0,  # flowkit's flows are dated January 2027: not from the future here
        )
        enforcer = Enforcer(settings, store=store, backends=[])
        stage.start()
        enforcer.start(consume=False)
        try:
            assert engine.inventory is not None and engine.inventory.pods["pod"].tolist() == [
                "web-5d9c8f7b6-aaaaa"
            ]
            assert enforcer.inventory.pod_count("shop", "web") == 1
            two = [pod(f"web-5d9c8f7b6-{c * 5}", f"10.244.1.{i}") for i, c in enumerate("bc", start=2)]
            path.write_text(json.dumps({"items": two}))
            os.utime(path, ns=(1, 1))
            batch = flows([{"ts_start": T0, "src_ip": "10.244.1.2", "dst_ip": "10.244.1.3"}])
            publish_flows(bus.producer(), settings.kafka.topics.flows, batch, 1)

            def fed() -> bool:
                stage.step()
                return stage.stats.flows >= 1

            wait_for(fed, timeout=30, what="the stage to feed the batch to the engine")
            assert engine.inventory.pods["pod"].tolist() == ["web-5d9c8f7b6-bbbbb", "web-5d9c8f7b6-ccccc"]
            enforcer.housekeeping()
            assert enforcer.inventory.pod_count("shop", "web") == 2
            assert enforcer.guardrails.inventory is enforcer.inventory
        finally:
            stage.stop()
            enforcer.stop()
