"""The inventory source settings, and what the watch keeps of a pod (no API server needed).

The watch itself, over real HTTP, is in tests/integration/test_inventory_watch.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from flowwarden.errors import ConfigError, ServiceUnavailable
from flowwarden.kube import FileSource, FixedSource, PodInventory, inventory_source_from_settings
from flowwarden.kube.pods import DELETED_AT, slim_pod
from flowwarden.kube.watch import WatchSource, _ended
from flowwarden.settings import Settings, load_settings
from tests.unit.flowkit import T0, pod


@pytest.fixture(autouse=True)
def _no_ambient_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own FLOWWARDEN_* and in-cluster variables must not change these tests."""
    import os

    for name in list(os.environ):
        if name.startswith("FLOWWARDEN_") or name.startswith("KUBERNETES_SERVICE_"):
            monkeypatch.delenv(name)


def settings(retry: dict[str, Any] | None = None, **kubernetes: Any) -> Settings:
    return Settings.model_validate({"kubernetes": kubernetes, "retry": retry or {}})


def test_default_source_keeps_todays_behaviour(tmp_path: Path) -> None:
    assert Settings().kubernetes.inventory_source == "file"
    assert Settings().kubernetes.in_cluster is True
    none = inventory_source_from_settings(settings())
    assert isinstance(none, FixedSource) and len(none.start().current()) == 0, "file without a path: no pods"
    path = tmp_path / "pods.json"
    path.write_text(json.dumps({"items": [pod("web-5d9c8f7b6-x2k4p", "10.244.1.5")]}))
    source = inventory_source_from_settings(settings(inventory_path=str(path)))
    assert isinstance(source, FileSource) and source.path == path
    inv = source.start().current()
    assert isinstance(inv, PodInventory)
    assert inv.lookup(pd.Series(["10.244.1.5"]), pd.Series([T0]))["workload"].tolist() == ["web"]
    skipped = inventory_source_from_settings(settings(inventory_path=str(path), inventory_source="none"))
    assert isinstance(skipped, FixedSource) and len(skipped.current()) == 0


def test_the_watch_takes_its_knobs_from_the_kubernetes_section() -> None:
    source = inventory_source_from_settings(
        settings(
            inventory_source="kubernetes",
            in_cluster=False,
            deleted_retention_s=60,
            min_refresh_s=5,
            watch_timeout_s=120,
            page_size=100,
            retry={"initial_s": 1, "max_s": 10},  # the one retry policy's back-off (settings.retry)
        )
    )
    assert isinstance(source, WatchSource) and not source.running
    assert (source.in_cluster, source.deleted_retention_s, source.min_refresh_s) == (False, 60.0, 5.0)
    assert (source.watch_timeout_s, source.page_size) == (120, 100)
    assert (source.backoff_initial_s, source.backoff_max_s) == (1.0, 10.0)


def test_bad_source_is_a_clear_config_error(tmp_path: Path) -> None:
    path = tmp_path / "flowwarden.yaml"
    path.write_text("kubernetes:\n  inventory_source: kubectl\n")
    with pytest.raises(
        ConfigError, match=r"'kubernetes\.inventory_source': Input should be 'file', 'kubernetes'"
    ):
        load_settings(path)


def test_kubernetes_source_outside_a_cluster_fails_at_start_not_in_the_constructor() -> None:
    watched = WatchSource(in_cluster=True)  # no I/O: nothing is read or dialled yet
    assert not watched.running
    with pytest.raises(ServiceUnavailable, match="no cluster credentials"):
        watched.start()
    with pytest.raises(ServiceUnavailable, match="in-cluster service account"):
        inventory_source_from_settings(settings(inventory_source="kubernetes")).start()


def _full(name: str, ip: str, **kw: Any) -> dict[str, Any]:
    """A pod with the bulk the API server adds (the inventory must not need any of it)."""
    item = pod(name, ip, **kw)
    item["metadata"] |= {
        "uid": f"uid-{name}",
        "resourceVersion": "42",
        "labels": {"app": name},
        "annotations": {"kubectl.kubernetes.io/restartedAt": "2027-01-15T08:00:00Z"},
        "managedFields": [{"manager": "kubelet", "operation": "Update"}],
    }
    item["spec"] |= {
        "containers": [{"name": "app", "image": "app:1.0", "env": [{"name": "A", "value": "1"}]}]
    }
    item["status"] |= {"phase": "Running", "podIPs": [{"ip": ip}, {"ip": "fd00:10:244::5"}], "conditions": []}
    return item


def test_slim_pods_give_the_same_inventory_as_full_ones() -> None:
    full = [
        _full("web-5d9c8f7b6-x2k4p", "10.244.1.5", created="2027-01-15T08:00:00Z"),
        _full("db-0", "10.244.1.6", ns="data", owner=("StatefulSet", "db"), deleted="2027-01-15T09:00:00Z"),
        _full(
            "kube-proxy-abc",
            "10.0.0.11",
            ns="kube-system",
            owner=("DaemonSet", "kube-proxy"),
            host_network=True,
        ),
        _full("bare", "10.244.1.7", owner=None),
    ]
    slim = [slim_pod(p) for p in full]
    assert all(s is not None for s in slim)
    a, b = PodInventory.from_dict({"items": full}), PodInventory.from_dict({"items": slim})
    pd.testing.assert_frame_equal(a.pods, b.pods)
    assert a.node_ips == b.node_ips == {"10.0.0.11": "node-1"}
    kept = json.dumps(slim)
    for bulk in ("managedFields", "containers", "conditions", "resourceVersion", "restartedAt"):
        assert bulk not in kept, f"{bulk} is not for enrichment"
    # A change enrichment does not read leaves the slim pod equal (no rebuild).
    changed = _full("web-5d9c8f7b6-x2k4p", "10.244.1.5", created="2027-01-15T08:00:00Z")
    changed["metadata"]["resourceVersion"] = "43"
    changed["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    assert slim_pod(changed) == slim[0]
    assert slim_pod({"metadata": {"namespace": "x"}}) is None, "no name: not a pod"


def test_a_slim_finished_pod_keeps_when_its_containers_finished() -> None:
    """The one container field enrichment reads: a Job pod's end, so its IP is free after it."""
    job = _full("backup-29383920-abcde", "10.244.1.9", owner=("Job", "backup-29383920"))
    job["status"] |= {
        "phase": "Succeeded",
        "containerStatuses": [
            {
                "name": "app",
                "image": "app:1.0",
                "state": {"terminated": {"exitCode": 0, "finishedAt": "2027-01-15T08:02:00Z"}},
            }
        ],
    }
    slim = slim_pod(job)
    assert slim is not None
    assert slim["status"]["containerStatuses"] == [
        {"state": {"terminated": {"finishedAt": "2027-01-15T08:02:00Z"}}}
    ]
    a, b = PodInventory.from_dict({"items": [job]}), PodInventory.from_dict({"items": [slim]})
    pd.testing.assert_frame_equal(a.pods, b.pods)
    assert a.pods["end"].iloc[0] == pd.Timestamp("2027-01-15T08:02:30Z").timestamp()
    running = _full("web-5d9c8f7b6-x2k4p", "10.244.1.5")
    assert "containerStatuses" not in (slim_pod(running) or {})["status"], (
        "a running pod's statuses change often"
    )


def test_an_ended_pod_keeps_its_deletion_timestamp_or_gets_the_time_it_was_seen_gone() -> None:
    slim = slim_pod(_full("web-5d9c8f7b6-x2k4p", "10.244.1.5", created="2027-01-15T08:00:00Z"))
    assert slim is not None
    ended = _ended(slim, pd.Timestamp("2027-01-15T08:10:00Z").timestamp())
    assert ended["metadata"]["annotations"] == {DELETED_AT: "2027-01-15T08:10:00Z"}
    assert "annotations" not in slim["metadata"], "the stored pod is never changed in place"
    inv = PodInventory.from_dict({"items": [ended]})
    t = pd.Series([pd.Timestamp(s).timestamp() for s in ("2027-01-15T08:09:00Z", "2027-01-15T08:11:00Z")])
    assert inv.lookup(pd.Series(["10.244.1.5"] * 2), t)["pod"].tolist() == ["web-5d9c8f7b6-x2k4p", ""]
    terminating = slim_pod(
        _full("db-0", "10.244.1.6", owner=("StatefulSet", "db"), deleted="2027-01-15T09:00:00Z")
    )
    assert terminating is not None and _ended(terminating, 0.0) is terminating
