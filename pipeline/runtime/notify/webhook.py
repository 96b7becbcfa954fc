"""Generic JSON webhook: ``POST url`` with ``{"source": "flowwarden", "format": …, "alerts": [...]}``.

The alerts are in the format ``alerts.format`` names (:mod:`flowwarden.alert_formats`): by
default (``native``) the exact JSON of :class:`~flowwarden.records.Alert`, so a receiver can
parse them with the same model; ``ecs`` or ``ocsf`` documents for a SIEM. Each names the
cluster (``cluster.name``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flowwarden.alert_formats import AlertExporter
from flowwarden.pipeline.runtime.notify.base import NOTIFIERS, Notifier
from flowwarden.records import Alert
from flowwarden.settings import NotifierSettings


@NOTIFIERS.register("webhook")
class WebhookNotifier(Notifier):
    name = "webhook"

    @classmethod
    def from_settings(cls, cfg: NotifierSettings) -> list[Notifier]:
        return [cls(u, timeout_s=cfg.timeout_s) for u in cfg.webhook_urls]

    def payload(self, alerts: Sequence[Alert]) -> dict[str, Any]:
        exporter = self.exporter or AlertExporter()
        return {
            "source": "flowwarden",
            "format": exporter.format,
            "alerts": [exporter.document(a) for a in alerts],
        }
