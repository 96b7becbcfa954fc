"""Webhook backend: each decision POSTed as JSON, retried by the one retry policy.

Body: ``{"event": "apply" | "revoke", "decision": {...}}``. A 2xx answer is success;
4xx (except 408/429) is final; anything else is retried ``webhook_retries`` times with the
back-off of ``settings.retry`` (:mod:`flowwarden.retry`, target ``enforcement_webhook``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import requests

from flowwarden.enforcement.backends.base import BACKENDS, Backend, BackendError
from flowwarden.errors import ConfigError
from flowwarden.records import Decision
from flowwarden.retry import RetryPolicy, attempts_of
from flowwarden.settings import RetrySettings, Settings

RETRYABLE = {408, 429}


class _Retryable(Exception):
    """A failure worth another try: no answer, a 5xx, 408 or 429."""


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
        retry: RetrySettings | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"enforcement.webhook_url: {url!r} is not an http(s) URL")
        self.url = url
        self.retries = retries
        self.timeout_s = timeout_s
        shape = retry or RetrySettings(initial_s=backoff_s, max_s=max(30.0, backoff_s))
        self.policy = RetryPolicy.from_settings(shape, "enforcement_webhook", attempts=retries + 1)
        self.sleep = sleep

    @classmethod
    def from_settings(cls, settings: Settings, protected: Iterable[str] = ()) -> WebhookBackend:
        if not settings.enforcement.webhook_url:
            raise ConfigError("enforcement.webhook_url: the webhook backend needs a URL")
        return cls(
            settings.enforcement.webhook_url,
            retries=settings.enforcement.webhook_retries,
            timeout_s=settings.notifiers.timeout_s,
            retry=settings.retry,
        )

    def _post(self, event: str, decision: Decision) -> dict[str, Any]:
        body = json.dumps({"event": event, "decision": json.loads(decision.to_json())})
        headers = {"Content-Type": "application/json"}
        try:
            for n, attempt in attempts_of(self.policy.retrying(_Retryable, sleep=self.sleep)):
                with attempt:
                    try:
                        resp = requests.post(self.url, data=body, headers=headers, timeout=self.timeout_s)
                    except requests.RequestException as exc:
                        raise _Retryable(str(exc)) from exc
                    if 200 <= resp.status_code < 300:
                        return {"status": resp.status_code, "attempts": n, "body": resp.text[:1000]}
                    if 400 <= resp.status_code < 500 and resp.status_code not in RETRYABLE:
                        raise BackendError(f"webhook: {self.url}: HTTP {resp.status_code}")
                    raise _Retryable(f"HTTP {resp.status_code}")
        except _Retryable as exc:
            raise BackendError(f"webhook: {self.url}: {exc}") from exc
        raise AssertionError("unreachable: tenacity either returns or raises")

    def apply(self, decision: Decision) -> dict[str, Any]:
        return self._post("apply", decision)

    def revoke(self, decision: Decision) -> dict[str, Any]:
        return self._post("revoke", decision)
