"""Notifiers: a generic JSON webhook, a Slack-compatible webhook and Alertmanager's v2 API.

:func:`build_hub` turns ``settings.notifiers`` into a :class:`NotifierHub` (empty when
nothing is configured, which is the embedded default).
"""

from __future__ import annotations

from flowwarden.pipeline.runtime.notify.alertmanager import AlertmanagerNotifier
from flowwarden.pipeline.runtime.notify.base import DeliveryError, Notifier, NotifierHub, OnResult
from flowwarden.pipeline.runtime.notify.slack import SlackNotifier
from flowwarden.pipeline.runtime.notify.webhook import WebhookNotifier
from flowwarden.settings import NotifierSettings

__all__ = [
    "AlertmanagerNotifier",
    "DeliveryError",
    "Notifier",
    "NotifierHub",
    "SlackNotifier",
    "WebhookNotifier",
    "build_hub",
]


def build_hub(cfg: NotifierSettings, *, on_result: OnResult | None = None) -> NotifierHub:
    """One notifier per configured receiver."""
    notifiers: list[Notifier] = [WebhookNotifier(u, timeout_s=cfg.timeout_s) for u in cfg.webhook_urls]
    if cfg.slack_webhook_url:
        notifiers.append(SlackNotifier(cfg.slack_webhook_url, timeout_s=cfg.timeout_s))
    if cfg.alertmanager_url:
        notifiers.append(AlertmanagerNotifier(cfg.alertmanager_url, timeout_s=cfg.timeout_s))
    return NotifierHub(
        notifiers,
        min_severity=cfg.min_severity,
        retries=cfg.retries,
        backoff_s=cfg.backoff_s,
        queue_max=cfg.queue_max,
        on_result=on_result,
    )
