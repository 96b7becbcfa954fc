"""Backends: one file each, one interface (:class:`~enforcement.backends.base.Backend`).

Importing this package registers the built-in backends on :data:`BACKENDS` (the plugin
mechanism every family shares, :mod:`flowwarden.plugins`).
"""

from __future__ import annotations

from collections.abc import Iterable

from flowwarden.enforcement.backends import (  # noqa: F401 - importing registers them
    adminnetworkpolicy,
    calico,
    cilium,
    exec,
    networkpolicy,
    nftables,
    webhook,
)
from flowwarden.enforcement.backends.base import BACKENDS, Backend, BackendError
from flowwarden.settings import Settings

__all__ = ["BACKENDS", "Backend", "BackendError", "check_backend_settings", "make_backends"]


def check_backend_settings(settings: Settings) -> None:
    """Every name in ``enforcement.backends`` is a registered backend (ConfigError naming the nearest)."""
    BACKENDS.check(settings.enforcement.backends, "enforcement.backends")


def make_backends(settings: Settings, protected: Iterable[str] = ()) -> list[Backend]:
    """The backends named in ``settings.enforcement.backends`` (nothing is started here)."""
    check_backend_settings(settings)
    return [BACKENDS.get(name).from_settings(settings, protected) for name in settings.enforcement.backends]
