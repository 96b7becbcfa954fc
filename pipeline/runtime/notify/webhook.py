"""Generic JSON webhook: ``POST url`` with ``{"source": "flowwarden", "alerts": [Alert, ...]}``.

The alerts are the exact JSON of :class:`~flowwarden.records.Alert`, so a receiver can
parse them with the same model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flowwarden.pipeline.runtime.notify.base import Notifier
from flowwarden.records import Alert


class WebhookNotifier(Notifier):
    name = "webhook"

    def payload(self, alerts: Sequence[Alert]) -> dict[str, Any]:
        return {"source": "flowwarden", "alerts": [a.model_dump(mode="json") for a in alerts]}
