"""Alerts in the formats other tools read: flowwarden's own, ECS and OCSF. No I/O.

* ``native``: the :class:`~flowwarden.records.Alert` JSON, with the cluster's name.
* ``ecs``: an Elastic Common Schema document (ECS :data:`ECS_VERSION`): ``event.*`` (kind
  ``alert``), ``rule.*`` (the detector), ``source.*`` and ``destination.*`` (the entity and
  its first target; every target in ``related.ip``), ``threat.*`` (MITRE ATT&CK tactic and
  technique, the sub-technique when there is one), ``orchestrator.*`` (the cluster, the pod's
  namespace and name) and the rest under ``flowwarden.*``.
* ``ocsf``: an OCSF Detection Finding (class 2004, OCSF :data:`OCSF_VERSION`):
  ``finding_info`` (title, the detector as the analytic, ``attacks`` with tactic and
  technique), ``severity_id``, ``risk_score``, ``resources`` (the cluster and the pod),
  ``evidences`` (source and destination endpoints) and the rest under ``unmapped``.

Every export carries the cluster's name (``settings.cluster.name``): two clusters' alerts
stay apart in one SIEM. Severity: an alert's ``low | medium | high | critical`` maps to ECS
``event.severity`` 21/47/73/99 (Elastic's rule severities), to OCSF ``severity_id``
2/3/4/5 (Low, Medium, High, Critical) and, for Alertmanager routes, to
:data:`ALERTMANAGER_SEVERITY` (``critical | warning | info``).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from flowwarden import attack
from flowwarden.records import Alert
from flowwarden.settings import Settings

AlertFormat = Literal["native", "ecs", "ocsf"]
FORMATS: tuple[AlertFormat, ...] = ("native", "ecs", "ocsf")

ECS_VERSION = "9.4.0"
OCSF_VERSION = "1.5.0"
PRODUCT = "flowwarden"
VENDOR = "flowwarden"

# Alertmanager routes match critical / warning / info: high and critical page someone,
# medium is a warning, low is information.
ALERTMANAGER_SEVERITY: dict[str, str] = {
    "critical": "critical",
    "high": "critical",
    "medium": "warning",
    "low": "info",
}
ECS_SEVERITY: dict[str, int] = {"low": 21, "medium": 47, "high": 73, "critical": 99}
OCSF_SEVERITY_ID: dict[str, int] = {"low": 2, "medium": 3, "high": 4, "critical": 5}
_OCSF_SEVERITY_NAME = {2: "Low", 3: "Medium", 4: "High", 5: "Critical"}


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat().replace("+00:00", "Z") if ts is not None else None


def _ms(ts: datetime | None) -> int | None:
    return int(ts.timestamp() * 1000) if ts is not None else None


def _drop_empty(doc: dict[str, Any]) -> dict[str, Any]:
    """Leave out empty strings, lists, mappings and None (a SIEM should not index "")."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            value = _drop_empty(value)
        if value is None or value == "" or value == [] or value == {}:
            continue
        out[key] = value
    return out


def _with_cluster(alert: Alert, cluster: str) -> Alert:
    return alert if alert.cluster or not cluster else alert.model_copy(update={"cluster": cluster})


def to_native(alert: Alert, *, cluster: str = "") -> dict[str, Any]:
    """The alert's own JSON document, naming the cluster."""
    return _with_cluster(alert, cluster).model_dump(mode="json")


def _ecs_threat(technique_id: str) -> dict[str, Any]:
    tech = attack.technique(technique_id)
    if tech is None:
        return {}
    tactics = attack.tactics_of(technique_id)
    parent = attack.technique(tech.parent) if tech.parent != tech.id else None
    top = parent or tech
    threat: dict[str, Any] = {
        "framework": "MITRE ATT&CK",
        "tactic": {
            "id": [t.id for t in tactics],
            "name": [t.name for t in tactics],
            "reference": [t.reference for t in tactics],
        },
        "technique": {"id": [top.id], "name": [top.name], "reference": [top.reference]},
    }
    if parent is not None:
        threat["technique"]["subtechnique"] = {
            "id": [tech.id],
            "name": [tech.name],
            "reference": [tech.reference],
        }
    return threat


def to_ecs(alert: Alert, *, cluster: str = "") -> dict[str, Any]:
    """An Elastic Common Schema document for the alert (see the module docstring)."""
    e = alert.entity
    cluster = alert.cluster or cluster
    doc: dict[str, Any] = {
        "@timestamp": _iso(alert.last_seen or alert.window_end),
        "ecs": {"version": ECS_VERSION},
        "message": alert.summary or f"{alert.detector} on {e.key()}",
        "event": {
            "kind": "alert",
            "category": ["network", "intrusion_detection"],
            "type": ["info", "connection"],
            "id": alert.id,
            "module": PRODUCT,
            "dataset": f"{PRODUCT}.alert",
            "provider": alert.detector,
            "action": alert.kind,
            "severity": ECS_SEVERITY[alert.severity],
            "risk_score": round(alert.score * 100, 2),
            "start": _iso(alert.first_seen or alert.window_start),
            "end": _iso(alert.last_seen or alert.window_end),
            "created": _iso(alert.created_at),
            "reason": alert.summary,
        },
        "rule": {
            "id": alert.detector,
            "name": alert.detector,
            "category": alert.kind,
            "ruleset": PRODUCT,
            "version": alert.model_version,
        },
        "observer": {"type": "ids", "vendor": VENDOR, "product": PRODUCT},
        "source": {"ip": e.ip, "address": e.ip},
        "destination": ({"ip": alert.targets[0], "address": alert.targets[0]} if alert.targets else {}),
        "related": {"ip": list(dict.fromkeys([e.ip, *alert.targets]))},
        "threat": _ecs_threat(alert.technique),
        "orchestrator": {
            "type": "kubernetes",
            "cluster": {"name": cluster},
            "namespace": e.namespace,
            "resource": {"type": "pod", "name": e.pod} if e.pod else {},
        },
        "host": {"name": e.node},
        "labels": {"cluster": cluster, "workload": e.workload, "detector": alert.detector},
        # A learning alert (raised before the engine knew the workload's normal) is tagged, so
        # a SIEM rule can route or mute it; the flag is also under flowwarden.learning.
        "tags": ["learning"] if alert.learning else [],
        "flowwarden": {
            "kind": alert.kind,
            "severity": alert.severity,
            "learning": alert.learning,
            "score": alert.score,
            "technique": alert.technique,
            "tactic": alert.tactic,
            "workload": e.workload,
            "targets": list(alert.targets),
            "target_ports": list(alert.target_ports),
            "window_start": _iso(alert.window_start),
            "window_end": _iso(alert.window_end),
            "evidence": alert.evidence,
        },
    }
    if alert.targets and alert.target_ports:
        doc["destination"]["port"] = alert.target_ports[0]
    return _drop_empty(doc)


def _ocsf_attacks(technique_id: str) -> list[dict[str, Any]]:
    tech = attack.technique(technique_id)
    if tech is None:
        return []
    parent = attack.technique(tech.parent) if tech.parent != tech.id else None
    top = parent or tech
    out = []
    for tactic in attack.tactics_of(technique_id):
        item: dict[str, Any] = {
            "tactic": {"uid": tactic.id, "name": tactic.name, "src_url": tactic.reference},
            "technique": {"uid": top.id, "name": top.name, "src_url": top.reference},
        }
        if parent is not None:
            item["sub_technique"] = {"uid": tech.id, "name": tech.name, "src_url": tech.reference}
        out.append(item)
    return out


def _endpoint(ip: str, *, port: int | None = None, name: str = "") -> dict[str, Any]:
    return _drop_empty({"ip": ip, "port": port, "name": name})


def to_ocsf(alert: Alert, *, cluster: str = "", product_version: str = "") -> dict[str, Any]:
    """An OCSF Detection Finding (class 2004) for the alert (see the module docstring)."""
    e = alert.entity
    cluster = alert.cluster or cluster
    severity_id = OCSF_SEVERITY_ID[alert.severity]
    # activity: 1 Create on the first window of an alert, 2 Update when it grew since.
    activity_id = 2 if int(alert.evidence.get("windows", 1) or 1) > 1 else 1
    src = _endpoint(e.ip, name=e.pod)
    evidences = []
    ports = list(alert.target_ports)
    for i, target in enumerate(alert.targets or [""]):
        ev: dict[str, Any] = {"src_endpoint": src}
        if target:
            ev["dst_endpoint"] = _endpoint(target, port=ports[i] if i < len(ports) else None)
        evidences.append(ev)
    doc: dict[str, Any] = {
        "category_uid": 2,
        "category_name": "Findings",
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "activity_id": activity_id,
        "activity_name": "Create" if activity_id == 1 else "Update",
        "type_uid": 2004 * 100 + activity_id,
        "type_name": f"Detection Finding: {'Create' if activity_id == 1 else 'Update'}",
        "time": _ms(alert.last_seen or alert.window_end),
        "start_time": _ms(alert.first_seen or alert.window_start),
        "end_time": _ms(alert.last_seen or alert.window_end),
        "severity_id": severity_id,
        "severity": _OCSF_SEVERITY_NAME[severity_id],
        "risk_score": round(alert.score * 100),
        "confidence_score": round(alert.score * 100),
        "status_id": 1,
        "status": "New",
        "is_alert": True,
        "message": alert.summary or f"{alert.detector} on {e.key()}",
        "metadata": {
            "version": OCSF_VERSION,
            "uid": alert.id,
            "product": {"name": PRODUCT, "vendor_name": VENDOR, "version": product_version},
            "labels": [f"cluster:{cluster}"] if cluster else [],
        },
        "finding_info": {
            "uid": alert.id,
            "title": f"{alert.kind.replace('_', ' ')}: {alert.detector} on {e.key()}",
            "desc": alert.summary,
            "types": [alert.kind],
            "analytic": {
                "uid": alert.detector,
                "name": alert.detector,
                # 1 Rule; 4 Learning (ML/DL) for the model-based detector
                "type_id": 4 if alert.model_version else 1,
                "type": "Learning (ML/DL)" if alert.model_version else "Rule",
                "version": alert.model_version,
            },
            "attacks": _ocsf_attacks(alert.technique),
            "created_time": _ms(alert.created_at),
            "first_seen_time": _ms(alert.first_seen or alert.window_start),
            "last_seen_time": _ms(alert.last_seen or alert.window_end),
            "product": {"name": PRODUCT, "vendor_name": VENDOR, "version": product_version},
        },
        "resources": [
            {"type": "Kubernetes Cluster", "name": cluster, "uid": cluster},
            {
                "type": "Kubernetes Pod" if e.pod else "IP Address",
                "name": e.pod or e.ip,
                "namespace": e.namespace,
                "ip": e.ip,
                "hostname": e.node,
                "labels": [f"workload:{e.workload}"] if e.workload else [],
            },
        ],
        "evidences": evidences,
        "unmapped": {
            "cluster": {"name": cluster},
            "kind": alert.kind,
            "detector": alert.detector,
            "severity": alert.severity,
            "learning": alert.learning,
            "score": alert.score,
            "targets": list(alert.targets),
            "target_ports": ports,
            "evidence": alert.evidence,
        },
    }
    doc["resources"] = [_drop_empty(r) for r in doc["resources"] if r.get("name")]
    doc["evidences"] = [_drop_empty(ev) for ev in evidences]
    return _drop_empty(doc)


def export(alert: Alert, fmt: AlertFormat, *, cluster: str = "", product_version: str = "") -> dict[str, Any]:
    """The alert as a document of format ``fmt`` (native, ecs or ocsf)."""
    if fmt == "ecs":
        return to_ecs(alert, cluster=cluster)
    if fmt == "ocsf":
        return to_ocsf(alert, cluster=cluster, product_version=product_version)
    if fmt == "native":
        return to_native(alert, cluster=cluster)
    raise ValueError(f"unknown alert format {fmt!r} (one of {', '.join(FORMATS)})")


class AlertExporter:
    """One format and one cluster name: what the topic, the webhook and the file sink write."""

    def __init__(self, fmt: AlertFormat = "native", *, cluster: str = "", product_version: str = "") -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown alert format {fmt!r} (one of {', '.join(FORMATS)})")
        self.format: AlertFormat = fmt
        self.cluster = cluster
        self.product_version = product_version

    @classmethod
    def from_settings(cls, settings: Settings, fmt: AlertFormat | None = None) -> AlertExporter:
        from importlib.metadata import PackageNotFoundError, version

        try:
            product_version = version("flowwarden")
        except PackageNotFoundError:  # a source tree that was never installed
            product_version = ""
        return cls(
            fmt or settings.alerts.format, cluster=settings.cluster.name, product_version=product_version
        )

    def document(self, alert: Alert) -> dict[str, Any]:
        return export(alert, self.format, cluster=self.cluster, product_version=self.product_version)

    def native(self, alert: Alert) -> Alert:
        """The alert itself, naming the cluster (what the alerts topic carries)."""
        return _with_cluster(alert, self.cluster)

    def encode(self, alert: Alert) -> bytes:
        """One JSON document (a line of the file sink, a message of the export topic)."""
        return json.dumps(self.document(alert), separators=(",", ":"), sort_keys=False).encode()
