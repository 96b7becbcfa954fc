"""Offline dry-run: what the enforcer would do with a file of alerts, and the rules it would write.

Used by ``flowwarden enforce --alerts alerts.jsonl --out decisions.jsonl`` and by the demo.
The same :class:`~enforcement.enforcer.Enforcer` code runs, with every mode forced to
``dry_run``, an in-memory store, and each alert's ``window_end`` as the clock (so the
per-minute guardrail sees the alerts' own pace). Nothing touches a kernel or a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from flowwarden.enforcement.backends.adminnetworkpolicy import AdminNetworkPolicyBackend
from flowwarden.enforcement.backends.calico import CalicoBackend
from flowwarden.enforcement.backends.cilium import CiliumBackend
from flowwarden.enforcement.backends.kube import KubeClient
from flowwarden.enforcement.backends.networkpolicy import NetworkPolicyBackend
from flowwarden.enforcement.backends.nftables import NftablesBackend
from flowwarden.enforcement.enforcer import Enforcer
from flowwarden.enforcement.guardrails import Guardrails
from flowwarden.errors import RecordError
from flowwarden.kube import PodInventory
from flowwarden.records import Alert, Decision
from flowwarden.settings import Settings
from flowwarden.store import Store

RULES_FILES = ("rules.nft", "networkpolicies.yaml", "calico.yaml", "cilium.yaml", "adminnetworkpolicies.yaml")


def read_alerts(path: Path) -> list[Alert]:
    """Alerts from a JSON-lines file; a bad line is an error naming the line and the field."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(Alert.from_json(line))
        except RecordError as exc:
            raise RecordError(exc.field, f"{path}:{n}: {exc.reason}") from exc
    return out


def plan_offline(
    alerts: Iterable[Alert], settings: Settings, out_dir: Path, *, inventory: PodInventory | None = None
) -> list[Decision]:
    """Decide on ``alerts`` in dry-run; write ``rules.nft``, ``networkpolicies.yaml``, ``calico.yaml``,
    ``cilium.yaml``, ``adminnetworkpolicies.yaml`` (each denies exactly the simulated decisions'
    pairs: :mod:`enforcement.audit`)."""
    e = settings.enforcement
    dry = settings.model_copy(
        update={
            "enforcement": e.model_copy(
                update={"mode": "dry_run", "mode_by_detector": {}, "apply_to_cluster": False}
            )
        }
    )
    if inventory is None:  # the file's pods as they are now, whatever the source (nothing live here)
        path = settings.kubernetes.inventory_path
        inventory = PodInventory.from_file(path) if path is not None else PodInventory.empty()
    protected = [str(n) for g in Guardrails(dry, inventory).protected for n in g.networks]
    nft = NftablesBackend(table=e.nft_table, protected=protected, verdict=e.nft_verdict)
    netpol = NetworkPolicyBackend(dry, KubeClient(enabled=False))
    calico = CalicoBackend(dry, KubeClient(enabled=False))
    cilium = CiliumBackend(dry, KubeClient(enabled=False))
    anp = AdminNetworkPolicyBackend(dry, KubeClient(enabled=False))
    clock = [0.0]
    nft.clock = lambda: clock[0]
    store = Store("sqlite://").start()
    try:
        enforcer = Enforcer(dry, store=store, backends=[nft], inventory=inventory, clock=lambda: clock[0])
        decisions: list[Decision] = []
        for alert in sorted(alerts, key=lambda a: (a.window_end, a.id)):
            clock[0] = alert.window_end.timestamp()
            d = enforcer.handle_alert(alert)
            if d is not None:
                decisions.append(d)
    finally:
        store.stop()
    would = [d for d in decisions if d.status == "simulated"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "rules.nft").write_text(nft.render(would))
    (out_dir / "networkpolicies.yaml").write_text(netpol.render(would))
    (out_dir / "calico.yaml").write_text(calico.render(would))
    (out_dir / "cilium.yaml").write_text(cilium.render(would))
    (out_dir / "adminnetworkpolicies.yaml").write_text(anp.render(would))
    return decisions


def write_decisions(decisions: Iterable[Decision], path: Path) -> int:
    lines = [d.to_json() for d in decisions]
    Path(path).write_text("".join(line + "\n" for line in lines))
    return len(lines)


def summarise(decisions: Iterable[Decision]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in decisions:
        key = d.status if d.status != "refused" else f"refused:{d.guardrail}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))
