"""Backends: one file each, one interface (:class:`~enforcement.backends.base.Backend`)."""

from __future__ import annotations

from collections.abc import Iterable

from flowwarden.enforcement.backends.base import Backend, BackendError
from flowwarden.settings import Settings

__all__ = ["Backend", "BackendError", "make_backends"]


def make_backends(settings: Settings, protected: Iterable[str] = ()) -> list[Backend]:
    """The backends named in ``settings.enforcement.backends`` (nothing is started here)."""
    out: list[Backend] = []
    for name in settings.enforcement.backends:
        if name == "nftables":
            from flowwarden.enforcement.backends.nftables import NftablesBackend

            out.append(NftablesBackend.from_settings(settings, protected))
        elif name == "networkpolicy":
            from flowwarden.enforcement.backends.networkpolicy import NetworkPolicyBackend

            out.append(NetworkPolicyBackend(settings))
        elif name == "calico":
            from flowwarden.enforcement.backends.calico import CalicoBackend

            out.append(CalicoBackend(settings))
        elif name == "exec":
            from flowwarden.enforcement.backends.exec import ExecBackend

            out.append(ExecBackend.from_settings(settings))
        elif name == "webhook":
            from flowwarden.enforcement.backends.webhook import WebhookBackend

            out.append(WebhookBackend.from_settings(settings))
    return out
