"""The one interface every backend implements.

``apply`` and ``revoke`` are idempotent (doing either twice changes nothing the second
time) and return what the backend answered, which the enforcer stores in the decision's
``backend_result``. ``reconcile`` makes the backend's rules match the active decisions
(the store is the truth). A backend that cannot list its rules (exec, webhook) says so.
Each backend registers itself on :data:`BACKENDS` (``@BACKENDS.register("nftables")``) and is
built from the settings by :meth:`Backend.from_settings`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

from flowwarden.errors import FlowwardenError
from flowwarden.plugins import Registry
from flowwarden.records import Decision
from flowwarden.settings import Settings


class BackendError(FlowwardenError):
    """A backend could not apply or revoke a decision; the decision becomes ``failed``."""


class Backend(ABC):
    name: str = ""
    kernel_expiry: bool = False
    """True when the rules expire by themselves (nftables element timeouts)."""

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Settings, protected: Iterable[str] = ()) -> Backend:
        """This backend as ``settings.enforcement`` describes it; ``protected``: networks never blocked."""

    def start(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Prepare (create the table, the directory); no-op by default."""

    @abstractmethod
    def apply(self, decision: Decision) -> dict[str, Any]: ...

    @abstractmethod
    def revoke(self, decision: Decision) -> dict[str, Any]: ...

    def list_rules(self) -> list[dict[str, Any]] | None:
        """The rules in place, or None when this backend cannot tell."""
        return None

    def reconcile(self, active: list[Decision]) -> dict[str, Any]:
        """Make the rules match ``active``; returns what was removed and restored."""
        return {"skipped": f"{self.name} cannot list its rules"}

    def preview(self, decision: Decision) -> Any:
        """What :meth:`apply` would do, short enough to keep in a dry-run decision."""
        return f"{self.name}: would apply {decision.action} of {decision.source.ip}"

    def render(self, decisions: list[Decision]) -> str:
        """What this backend would write for ``decisions`` (dry-run output); "" when nothing."""
        return ""


BACKENDS: Registry[type[Backend]] = Registry("backend", "enforcement.backends")
