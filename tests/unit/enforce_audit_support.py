"""Alerts for the audit tests: the project's own detection on two kinds of traffic, plus mutated copies.

:func:`lab` is what ``detect_flows`` raises on a simulated cluster (every attack technique,
benign traffic and hard negatives); :func:`lab_capture` is what it raises on the real-traffic
lab's reporting capture (``tests/data/lab/reporting``: nmap, hydra, curl, iodine against real
servers, metered by the collector with tshark). The mutations are the adversarial inputs of
issue 16: protected and too-wide targets, protected sources, injection strings in every text
field that can reach a rule file, 100,000 targets, and a second hostile source with targets of
its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowwarden.enforcement.audit import Pod
from flowwarden.enforcement.backends.base import Backend
from flowwarden.kube import PodInventory
from flowwarden.records import Alert, Decision
from flowwarden.settings import Settings

INJECTIONS = (
    "web-1; rm -rf /",
    "$(reboot)",
    "`id`",
    'x"} ; flush ruleset ; {"',
    "a\nkind: ClusterRoleBinding",
    "ok' || true #",
    "{{.Values}}",
    "..%2f..%2fetc",
)
"""Text put in every string field of an alert that could reach a rule file."""

MARKERS = ("rm -rf", "reboot", "`id`", "flush ruleset", "ClusterRoleBinding", "|| true", "{{", "%2f")


@dataclass
class Lab:
    settings: Settings
    alerts: list[Alert]
    inventory: PodInventory
    inventory_doc: dict[str, Any]


def lab(seed: int = 7) -> Lab:
    from flowwarden.pipeline.runtime.offline import detect_flows
    from flowwarden.simulator import simulate

    s = Settings.model_validate(
        {
            "control_plane": {"api_server_ips": ["10.0.0.1"]},
            "enforcement": {"max_new_blocks_per_minute": 1000, "max_active_blocks": 1000},
        }
    )
    sim = simulate(minutes=10, pods=40, seed=seed, attacks="all", settings=s)
    inventory = PodInventory.from_dict(sim.inventory)
    res = detect_flows(sim.flows, settings=s, inventory=inventory)
    return Lab(s, list(res.alerts), inventory, sim.inventory)


LAB_CAPTURE = Path(__file__).resolve().parents[1] / "data" / "lab" / "reporting"


def lab_capture(directory: Path = LAB_CAPTURE) -> Lab:
    """The alerts of the lab's real capture, with its pods and address plan (blast limits raised)."""
    from flowwarden.collectors.offline import meter_capture
    from flowwarden.models.registry import load_default
    from flowwarden.pipeline.runtime.offline import detect_flows
    from flowwarden.settings import load_settings

    s = load_settings(directory / "lab.yaml")
    s.enforcement.max_new_blocks_per_minute = 1000
    s.enforcement.max_active_blocks = 1000
    doc = json.loads((directory / "pods.json").read_text())
    inventory = PodInventory.from_dict(doc)
    flows, _ = meter_capture(directory / "capture.pcap", s)
    res = detect_flows(flows, settings=s, inventory=inventory, model=load_default())
    return Lab(s, list(res.alerts), inventory, doc)


def copy(a: Alert, n: int, **update: Any) -> Alert:
    """A mutated copy of ``a`` with its own id (``n`` seconds later) and ``update`` applied."""
    data = json.loads(a.to_json())
    if "id" not in update:
        data.pop("id", None)
    data["window_start"] = a.window_start.timestamp() + n
    data["window_end"] = a.window_end.timestamp() + n
    for k, v in update.items():
        if k == "entity":
            data["entity"] = {**data["entity"], **v}
        else:
            data[k] = v
    return Alert.model_validate(data)


def mutations(alerts: list[Alert], s: Settings) -> list[Alert]:
    """Mutated copies of ``alerts`` (all parse as alerts; the guardrails must judge them)."""
    blockable = [a for a in alerts if a.targets]
    base = blockable[0]
    out: list[Alert] = []
    n = 1000
    protected = [*s.cluster.cluster_dns, *s.control_plane.api_server_ips, "10.0.0.7", "127.0.0.1"]
    for a in blockable:
        n += 1
        out.append(copy(a, n, targets=[*a.targets, *protected]))  # protected targets among real ones
    out.append(copy(base, n + 1, targets=protected))  # only protected targets
    out.append(copy(base, n + 2, entity={"ip": s.cluster.cluster_dns[0]}))  # a protected source
    out.append(copy(base, n + 3, entity={"namespace": "kube-system"}))  # an allowlisted source
    out.append(copy(base, n + 4, targets=[]))  # no target
    for i, text in enumerate(INJECTIONS):
        for field in ("namespace", "pod", "workload", "node"):
            out.append(copy(base, n + 10 + i * 4 + len(field), entity={field: text}))
        out.append(copy(base, n + 100 + i, id=f"{text}-{i}"))  # the alert id reaches a reason
    sweep = [f"10.{100 + i // 60000}.{(i // 250) % 240}.{i % 250 + 1}" for i in range(100_000)]
    out.append(copy(base, n + 200, targets=sweep))  # a sweep: 100,000 targets
    # A second hostile source with targets of its own: pairs must not cross between sources.
    other = next((a for a in blockable if a.entity.ip != base.entity.ip), base)
    out.append(copy(other, n + 300, targets=["10.244.3.200", "203.0.113.77"]))
    return out


def bad_lines(a: Alert) -> list[str]:
    """Alert lines that must not parse: wrong types, NaN, injection in an address."""
    data = json.loads(a.to_json())
    lines = []
    for change in (
        {"score": "high"},
        {"score": None},
        {"targets": "10.244.2.7"},
        {"targets": ["10.244.2.7; nft flush ruleset"]},
        {"entity": {**data["entity"], "ip": "10.244.1.2 || reboot"}},
        {"entity": {**data["entity"], "ip": "::ffff:10.96.0.10/200"}},
        {"window_start": "yesterday"},
        {"kind": "shell"},
        {"detector": "port_scan; rm -rf /"},
    ):
        lines.append(json.dumps({**data, **change}))
    lines.append(json.dumps(data).replace(f'"score": {json.dumps(data["score"])}', '"score": NaN'))
    lines.append("{not json")
    return lines


def pods_of(decisions: list[Decision], backend: Backend, inventory: PodInventory) -> list[Pod]:
    """Every pod of the inventory, with the labels ``backend`` patches on for ``decisions``."""
    pods: dict[tuple[str, str], Pod] = {}
    for ip, ref in inventory.pods_by_ip.items():
        pods[(ref.namespace, ref.pod)] = Pod(ref.namespace, ref.pod, ip)
    for d in decisions:
        key = (d.source.namespace, d.source.pod)
        pod = pods.setdefault(key, Pod(*key, d.source.ip))
        for call in backend.calls(d):  # type: ignore[attr-defined]
            if call.method == "patch_namespaced_pod":
                for k, v in call.kwargs["body"]["metadata"]["labels"].items():
                    if v is not None:
                        pod.labels[k] = v
    return list(pods.values())
