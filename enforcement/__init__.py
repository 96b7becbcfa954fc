"""flowwarden enforcement stage: alerts become guarded, audited, expiring firewall rules.

``policy`` (alert -> proposal), ``guardrails`` (named refusals; the allowlist always wins),
``targets`` (strict address and name validation), ``backends/`` (nftables, NetworkPolicy,
Calico, Cilium, AdminNetworkPolicy, exec, webhook), ``enforcer`` (the stage), ``offline``
(dry-run over a file), ``audit`` (the pairs a rule file denies).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from flowwarden.records import Alert, Decision
    from flowwarden.settings import Settings

__all__ = ["plan_offline"]


def plan_offline(alerts: Any, settings: Settings, out_dir: Path, **kw: Any) -> list[Decision]:
    """Dry-run ``alerts``; write ``rules.nft`` and each Kubernetes backend's manifests into ``out_dir``."""
    from flowwarden.enforcement.offline import plan_offline as _plan

    alert_list: list[Alert] = list(alerts)
    return _plan(alert_list, settings, out_dir, **kw)
