"""Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat): ``{"text": ...}``.

One message per batch, one line per alert, capped so a burst stays readable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flowwarden.pipeline.runtime.notify.base import NOTIFIERS, Notifier
from flowwarden.records import Alert
from flowwarden.settings import NotifierSettings

MAX_LINES = 20
_ICON = {
    "low": ":information_source:",
    "medium": ":warning:",
    "high": ":rotating_light:",
    "critical": ":fire:",
}


def alert_line(a: Alert) -> str:
    who = a.entity.key() + (f" ({a.entity.workload})" if a.entity.workload else "")
    what = a.summary or f"{a.detector} score {a.score:.2f}"
    technique = f" [{a.technique}]" if a.technique else ""
    learning = " _(learning: the workload's normal is not known yet)_" if a.learning else ""
    return f"{_ICON[a.severity]} *{a.severity}* {a.kind}/{a.detector}{technique}: {who}: {what}{learning}"


@NOTIFIERS.register("slack")
class SlackNotifier(Notifier):
    name = "slack"

    @classmethod
    def from_settings(cls, cfg: NotifierSettings) -> list[Notifier]:
        return [cls(cfg.slack_webhook_url, timeout_s=cfg.timeout_s)] if cfg.slack_webhook_url else []

    def payload(self, alerts: Sequence[Alert]) -> dict[str, Any]:
        lines = [alert_line(a) for a in alerts[:MAX_LINES]]
        if len(alerts) > MAX_LINES:
            lines.append(f"... and {len(alerts) - MAX_LINES} more")
        return {"text": f"flowwarden: {len(alerts)} alert(s)\n" + "\n".join(lines)}
