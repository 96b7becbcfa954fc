"""Webhook backend: each decision POSTed as JSON, with retries and backoff.

Body: ``{"event": "apply" | "revoke", "decision": {...}}``. A 2xx answer is success;
4xx (except 408/429) is final; anything else is retried ``webhook_retries`` times.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import requests

from flowwarden.enforcement.backends.base import BACKENDS, Backend, BackendError
from flowwarden.errors import ConfigError
from flowwarden.records import Decision
from flowwarden.settings import Settings

RETRYABLE = {408, 429}


@BACKENDS.register("webhook")
class WebhookBackend(Backend):
    name = "webhook"

    def __init__(
        self,
        url: str,
        *,
        retries: int = 3,
        timeout_s: float = 5.0,
        backoff_s: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"enforcement.webhook_url: {url!r} is not an http(s) URL")
        self.url = url
        self.retries = retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.sleep = sleep

    @classmethod
    def from_settings(cls, settings: Settings, protected: Iterable[str] = ()) -> WebhookBackend:
        if not settings.enforcement.webhook_url:
            raise ConfigError("enforcement.webhook_url: the webhook backend needs a URL")
        return cls(
            settings.enforcement.webhook_url,
            retries=settings.enforcement.webhook_retries,
            timeout_s=settings.notifiers.timeout_s,
        )

    def _post(self, event: str, decision: Decision) -> dict[str, Any]:
        body = json.dumps({"event": event, "decision": json.loads(decision.to_json())})
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                resp = requests.post(
                    self.url, data=body, headers={"Content-Type": "application/json"}, timeout=self.timeout_s
                )
            except requests.RequestException as exc:
                last = str(exc)
                continue
            if 200 <= resp.status_code < 300:
                return {"status": resp.status_code, "attempts": attempt + 1, "body": resp.text[:1000]}
            last = f"HTTP {resp.status_code}"
            if 400 <= resp.status_code < 500 and resp.status_code not in RETRYABLE:
                break
        raise BackendError(f"webhook: {self.url}: {last}")

    def apply(self, decision: Decision) -> dict[str, Any]:
        return self._post("apply", decision)

    def revoke(self, decision: Decision) -> dict[str, Any]:
        return self._post("revoke", decision)
