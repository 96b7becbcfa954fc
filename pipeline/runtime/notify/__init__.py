"""Notifiers: a generic JSON webhook, a Slack-compatible webhook and Alertmanager's v2 API.

Importing this package registers them on :data:`NOTIFIERS` (the plugin mechanism every
family shares, :mod:`flowwarden.plugins`); :func:`build_hub` asks each registered notifier
which receivers ``settings.notifiers`` configures and turns them into a :class:`NotifierHub`
(empty when nothing is configured, which is the embedded default).
"""

from __future__ import annotations

from flowwarden.alert_formats import AlertExporter
from flowwarden.pipeline.runtime.notify.alertmanager import AlertmanagerNotifier
from flowwarden.pipeline.runtime.notify.base import (
    NOTIFIERS,
    DeliveryError,
    Notifier,
    NotifierHub,
    OnResult,
)
from flowwarden.pipeline.runtime.notify.slack import SlackNotifier
from flowwarden.pipeline.runtime.notify.webhook import WebhookNotifier
from flowwarden.settings import NotifierSettings, RetrySettings

__all__ = [
    "NOTIFIERS",
    "AlertmanagerNotifier",
    "DeliveryError",
    "Notifier",
    "NotifierHub",
    "SlackNotifier",
    "WebhookNotifier",
    "build_hub",
]


def build_hub(
    cfg: NotifierSettings,
    *,
    on_result: OnResult | None = None,
    exporter: AlertExporter | None = None,
    retry: RetrySettings | None = None,
) -> NotifierHub:
    """One notifier per configured receiver, from every registered notifier.

    ``exporter`` (:meth:`AlertExporter.from_settings`): the format (``alerts.format``) and
    cluster name of what the notifiers send; None: native alerts. ``retry``: the back-off
    of every delivery (``settings.retry``; None: its defaults).
    """
    retry = retry or RetrySettings()
    notifiers = [n for _, cls in NOTIFIERS.items() for n in cls.from_settings(cfg)]
    for n in notifiers:
        n.exporter = exporter
    return NotifierHub(
        notifiers,
        min_severity=cfg.min_severity,
        retries=cfg.retries,
        backoff_s=retry.initial_s,
        max_backoff_s=retry.max_s,
        jitter=retry.jitter,
        queue_max=cfg.queue_max,
        on_result=on_result,
    )
