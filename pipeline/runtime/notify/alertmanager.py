"""Alertmanager v2 API: ``POST {url}/api/v2/alerts``.

Labels identify an alert to Alertmanager (it deduplicates and groups on them), so they carry
the flowwarden alert id plus the fields a route would match on; ``endsAt`` is left out so
that Alertmanager resolves the alert itself after its ``resolve_timeout`` unless we resend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import requests

from flowwarden.pipeline.runtime.notify.base import Notifier
from flowwarden.records import Alert


def _label(value: str) -> str:
    return value if value else "-"


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

    def payload(self, alerts: Sequence[Alert]) -> list[dict[str, Any]]:
        out = []
        for a in alerts:
            doc: dict[str, Any] = {
                "labels": {
                    "alertname": f"flowwarden_{a.detector}",
                    "flowwarden_id": a.id,
                    "kind": a.kind,
                    "detector": a.detector,
                    "severity": a.severity,
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
                },
                "startsAt": (a.first_seen or a.window_start).isoformat(),
            }
            if self.generator_url:
                doc["generatorURL"] = self.generator_url
            out.append(doc)
        return out
