"""Builders shared by the enforcement unit tests (literal settings, alerts and decisions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flowwarden.records import Alert, Decision, Entity
from flowwarden.settings import Settings

T0 = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)


def settings(**enforcement: Any) -> Settings:
    return Settings.model_validate(
        {
            "cluster": {
                "pod_cidrs": ["10.244.0.0/16"],
                "service_cidrs": ["10.96.0.0/12"],
                "node_cidrs": ["10.0.0.0/24"],
                "node_ips": ["192.168.50.10"],
                "cluster_dns": ["10.96.0.10"],
            },
            "control_plane": {"api_server_ips": ["10.0.0.1"]},
            "kafka": {"bootstrap_servers": ["10.50.0.9:9092", "kafka.internal:9092"]},
            "enforcement": {"protected_ips": ["10.244.9.9"], **enforcement},
        }
    )


def alert(
    *,
    ip: str = "10.244.1.2",
    targets: list[str] | None = None,
    detector: str = "port_scan",
    kind: str = "lateral_movement",
    score: float = 0.95,
    severity: str = "high",
    namespace: str = "shop",
    pod: str = "web-1",
    workload: str = "web",
    offset_s: int = 0,
) -> Alert:
    start = T0 + timedelta(seconds=offset_s)
    return Alert(
        kind=kind,
        detector=detector,
        score=score,
        severity=severity,
        entity=Entity(ip=ip, namespace=namespace, pod=pod, workload=workload),
        window_start=start,
        window_end=start + timedelta(seconds=10),
        targets=targets if targets is not None else ["10.244.2.7"],
    )


def decision(
    *,
    ip: str = "10.244.1.2",
    targets: list[str] | None = None,
    action: str = "block",
    namespace: str = "shop",
    pod: str = "web-1",
    workload: str = "web",
    id: str = "d-test1",
    ttl_s: int = 60,
    mode: str = "enforce",
) -> Decision:
    return Decision.model_validate(
        {
            "id": id,
            "action": action,
            "source": {"ip": ip, "namespace": namespace, "pod": pod, "workload": workload},
            "targets": targets if targets is not None else ["10.244.2.7"],
            "ttl_s": ttl_s,
            "mode": mode,
            "status": "pending",
        }
    )
