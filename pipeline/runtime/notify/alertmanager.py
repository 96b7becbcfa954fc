"""Alertmanager v2 API: ``POST {url}/api/v2/alerts``.

Labels identify an alert to Alertmanager (it deduplicates and groups on them), so they carry
the flowwarden alert id plus the fields a route would match on: ``severity`` as routes
expect it (high and critical: ``critical``, medium: ``warning``, low: ``info``; the alert's
own in ``flowwarden_severity``), the ``cluster``, the ATT&CK ``technique`` and ``tactic``;
``endsAt`` is left out so that Alertmanager resolves the alert itself after its
``resolve_timeout`` unless we resend. Whether the alert was raised while learning is the
``learning`` annotation (a label would make it another alert once the learning period ends).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import requests

from flowwarden.alert_formats import ALERTMANAGER_SEVERITY
from flowwarden.pipeline.runtime.notify.base import NOTIFIERS, Notifier
from flowwarden.records import Alert
from flowwarden.settings import NotifierSettings


def _label(value: str) -> str:
    return value if value else "-"


@NOTIFIERS.register("alertmanager")
class AlertmanagerNotifier(Notifier):
    name = "alertmanager"
    wants_updates = True  # resending keeps the alert active; silence it there, not here

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 5.0,
        generator_url: str = "",
        session: requests.Session | None = None,
    ) -> None:
        super().__init__(base_url.rstrip("/") + "/api/v2/alerts", timeout_s=timeout_s, session=session)
        self.generator_url = generator_url

    @classmethod
    def from_settings(cls, cfg: NotifierSettings) -> list[Notifier]:
        return [cls(cfg.alertmanager_url, timeout_s=cfg.timeout_s)] if cfg.alertmanager_url else []

    def payload(self, alerts: Sequence[Alert]) -> list[dict[str, Any]]:
        out = []
        for a in alerts:
            doc: dict[str, Any] = {
                "labels": {
                    "alertname": f"flowwarden_{a.detector}",
                    "flowwarden_id": a.id,
                    "kind": a.kind,
                    "detector": a.detector,
                    # Alertmanager routes match critical / warning / info (alert_formats).
                    "severity": ALERTMANAGER_SEVERITY[a.severity],
                    "flowwarden_severity": a.severity,
                    "cluster": _label(a.cluster or (self.exporter.cluster if self.exporter else "")),
                    "tactic": _label(a.tactic),
                    "technique": _label(a.technique),
                    "src_ip": a.entity.ip,
                    "namespace": _label(a.entity.namespace),
                    "pod": _label(a.entity.pod),
                    "workload": _label(a.entity.workload),
                },
                "annotations": {
                    "summary": a.summary or f"{a.detector} on {a.entity.key()}",
                    "score": f"{a.score:.3f}",
                    "window": f"{a.window_start.isoformat()} .. {a.window_end.isoformat()}",
                    "targets": ",".join(a.targets[:20]),
                    "model_version": a.model_version,
                    # An annotation, not a label: labels identify the alert to Alertmanager, and
                    # an alert that outgrows its learning period must stay the same alert.
                    "learning": "true" if a.learning else "false",
                },
                "startsAt": (a.first_seen or a.window_start).isoformat(),
            }
            if self.generator_url:
                doc["generatorURL"] = self.generator_url
            out.append(doc)
        return out
