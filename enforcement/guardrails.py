"""Guardrails: small named checks that every decision passes before any backend sees it.

They read only the settings and the enforcer's own bookkeeping, never the alert's content,
so an alert cannot talk its way past them; the one exception can only refuse: whether the
alert was raised while its entity was still learning (``learning``). The allowlist always
wins: it is checked first and only a person's ``--force`` on a manual decision overrides
it; nothing overrides the control-plane, node, DNS and protected-address checks, the prefix
limit or the blast radius.
A refusal is a :class:`Refusal` that the enforcer records as a ``refused`` decision.

Automatic (policy) decisions may instead *drop* the targets that the protected-address checks
(``control_plane``, ``node_address``, ``cluster_dns``, ``protected_ip``) refuse and go ahead with
the rest (:meth:`Guardrails.review` with ``drop_protected_targets``): a scan of a whole subnet
that also touched the node's address is still blocked, the node never is. Every other check
still judges the whole decision, and only a decision with no target left is refused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from flowwarden.enforcement.intervals import HostIndex, Ranges
from flowwarden.enforcement.targets import (
    Network,
    check_decision_id,
    check_name,
    check_namespace,
    check_token,
    parse_ip,
    parse_target,
)
from flowwarden.errors import RecordError
from flowwarden.kube import PodInventory
from flowwarden.records import Decision
from flowwarden.settings import Settings

ALLOWLIST_GUARDRAILS = frozenset({"allow_cidr", "allow_namespace", "allow_workload"})
"""The only guardrails a person may override with ``--force``."""


@dataclass(frozen=True)
class Refusal:
    guardrail: str
    reason: str


@dataclass(frozen=True)
class DroppedTarget:
    """A target removed from an automatic decision, and the guardrail that removed it."""

    target: str
    guardrail: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"target": self.target, "guardrail": self.guardrail, "reason": self.reason}


@dataclass(frozen=True)
class Review:
    """What the guardrails made of a decision.

    ``decision`` is what may go ahead (the proposal less any ``dropped`` targets); ``refusal``
    is set when it may not go ahead at all.
    """

    decision: Decision
    refusal: Refusal | None = None
    dropped: tuple[DroppedTarget, ...] = ()


@dataclass
class Context:
    """What the blast-radius checks need from the enforcer's bookkeeping."""

    # Blocks in force (or simulated in force, in dry-run); the enforcer passes its view by id.
    active: Sequence[Decision] | Mapping[str, Decision] = ()
    new_last_minute: int = 0  # decisions of this mode started in the last 60 s
    force: bool = False
    learning: bool = False  # the decision's alert was raised while its entity was still learning


@dataclass(frozen=True)
class Protected:
    name: str  # the guardrail's name
    networks: tuple[Network, ...]


def _nets(values: Sequence[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def kafka_addresses(bootstrap_servers: Sequence[str]) -> list[str]:
    """Kafka brokers given as literal IPs ("10.0.0.5:9092", "[fd00::5]:9092")."""
    out = []
    for server in bootstrap_servers:
        host = server.rsplit(":", 1)[0] if server.count(":") == 1 or server.startswith("[") else server
        host = host.strip("[]")
        try:
            out.append(str(ipaddress.ip_address(host)))
        except ValueError:
            continue  # a DNS name: list its addresses in enforcement.protected_ips
    return out


@dataclass
class Guardrails:
    settings: Settings
    inventory: PodInventory = field(default_factory=PodInventory.empty)

    def __post_init__(self) -> None:
        s = self.settings
        api = list(s.control_plane.api_server_ips)
        # The first address of each service CIDR is the `kubernetes` Service: the API server too.
        api += [str(ipaddress.ip_network(c).network_address + 1) for c in s.cluster.service_cidrs]
        self.protected: tuple[Protected, ...] = (
            Protected("control_plane", _nets(api)),
            Protected("node_address", _nets([*s.cluster.node_ips, *s.cluster.node_cidrs])),
            Protected("cluster_dns", _nets(s.cluster.cluster_dns)),
            Protected(
                "protected_ip",
                _nets([*s.enforcement.protected_ips, *kafka_addresses(s.kafka.bootstrap_servers)]),
            ),
        )
        self.allow_cidrs = _nets(s.enforcement.allow_cidrs)
        # One interval structure each: a target costs one binary search, however many ranges.
        self.protected_ranges: Ranges[str] = Ranges(
            (n, group.name) for group in self.protected for n in group.networks
        )
        self.allow_ranges: Ranges[None] = Ranges((n, None) for n in self.allow_cidrs)
        self._pod_index: tuple[object, HostIndex] | None = None
        self.checks: tuple[Callable[[Decision, Context], Refusal | None], ...] = (
            self.malformed,
            self.allowlist,
            self.still_learning,
            self.target_too_wide,
            self.protected_addresses,
            self.reserved_address,
            self.no_targets,
            self.max_targets_per_block,
            self.max_active_blocks,
            self.max_new_blocks_per_minute,
            self.max_workload_share,
        )

    def check(self, decision: Decision, ctx: Context | None = None) -> Refusal | None:
        """The first guardrail that refuses ``decision``, or None when it may go ahead."""
        return self.review(decision, ctx).refusal

    def review(
        self, decision: Decision, ctx: Context | None = None, *, drop_protected_targets: bool = False
    ) -> Review:
        """Every check in order; the first refusal wins.

        With ``drop_protected_targets`` (automatic decisions only: a person's decision is refused
        whole, so that they see exactly what was refused) the targets that a protected-address
        check refuses are dropped instead, and the remaining checks judge what is left. The
        whole decision is still refused when its source is protected or no target is left;
        the checks before (``malformed``, the allowlist, ``target_too_wide``) always judge the
        whole decision.
        """
        ctx = ctx or Context()
        if decision.action == "unblock":
            return Review(decision)  # lifting a block never harms
        d = decision
        dropped: tuple[DroppedTarget, ...] = ()
        for check in self.checks:
            if drop_protected_targets and check == self.protected_addresses:
                d, dropped, refusal = self._drop_protected_targets(d)
            else:
                refusal = check(d, ctx)
            if refusal is not None:
                return Review(d, refusal, dropped)
        return Review(d, None, dropped)

    # ------------------------------------------------------------------ the checks

    def malformed(self, d: Decision, ctx: Context) -> Refusal | None:
        try:
            check_decision_id(d.id)
            check_token(d.detector, "detector")  # both reach the reason, which rule files carry
            check_token(d.alert_id, "alert_id")
            parse_ip(d.source.ip)
            check_namespace(d.source.namespace)
            check_name(d.source.pod, "source.pod")
            check_name(d.source.workload, "source.workload")
            check_name(d.source.node, "source.node")
            for t in d.targets:
                parse_target(t)
        except RecordError as exc:
            return Refusal("malformed", str(exc))
        return None

    def still_learning(self, d: Decision, ctx: Context) -> Refusal | None:
        """An alert raised while learning may be the cluster's normal, not yet learned: no
        automatic action on it unless ``enforcement.act_on_learning`` (a person's ``--force``
        on a manual decision is not about an alert)."""
        if not ctx.learning or ctx.force or self.settings.enforcement.act_on_learning:
            return None
        return Refusal(
            "learning",
            f"alert {d.alert_id} was raised while {d.source.ip} was still learning; "
            "set enforcement.act_on_learning: true to act on such alerts",
        )

    def allowlist(self, d: Decision, ctx: Context) -> Refusal | None:
        if ctx.force:
            return None
        cfg = self.settings.enforcement
        for role, ns, wl, ip in self._parties(d):
            if ns and ns in cfg.allow_namespaces:
                return Refusal("allow_namespace", f"{role} {ip} is in allowlisted namespace {ns}")
            if ns and wl and f"{ns}/{wl}" in cfg.allow_workloads:
                return Refusal("allow_workload", f"{role} {ip} belongs to allowlisted workload {ns}/{wl}")
        if not self.allow_ranges:
            return None
        for role, net in self._networks(d):
            hit = self.allow_ranges.first_overlap(net)
            if hit is not None:
                return Refusal("allow_cidr", f"{role} {net} overlaps allowlisted {hit.net}")
        return None

    def target_too_wide(self, d: Decision, ctx: Context) -> Refusal | None:
        cfg = self.settings.enforcement
        for t in d.targets:
            net = parse_target(t)
            limit = cfg.min_prefix_v4 if net.version == 4 else cfg.min_prefix_v6
            if net.prefixlen < limit:
                return Refusal("target_too_wide", f"target {net} is wider than /{limit}")
        return None

    def protected_addresses(self, d: Decision, ctx: Context) -> Refusal | None:
        for role, net in self._networks(d):
            refusal = self._protected(role, net)
            if refusal is not None:
                return refusal
        return None

    def _protected(self, role: str, net: Network) -> Refusal | None:
        hit = self.protected_ranges.first_overlap(net)
        if hit is None:
            return None
        return Refusal(hit.tag, f"{role} {net} overlaps protected {hit.net} ({hit.tag})")

    def _drop_protected_targets(
        self, d: Decision
    ) -> tuple[Decision, tuple[DroppedTarget, ...], Refusal | None]:
        """``protected_addresses`` for automatic decisions: drop protected targets, keep the rest.

        Returns the decision to go on with, the dropped targets and a refusal when the source
        is protected or every target is (then the decision is returned unchanged, as refused
        whole, naming the first target's guardrail).
        """
        refusal = self._protected("source", parse_target(d.source.ip))
        if refusal is not None:
            return d, (), refusal
        kept: list[str] = []
        dropped: list[DroppedTarget] = []
        for t in d.targets:
            hit = self._protected("target", parse_target(t))
            if hit is None:
                kept.append(t)
            else:
                dropped.append(DroppedTarget(t, hit.guardrail, hit.reason))
        if not dropped:
            return d, (), None
        if not kept:
            first = dropped[0]
            if len(dropped) == 1:
                return d, (), Refusal(first.guardrail, first.reason)
            every = "; ".join(x.reason for x in dropped)
            return d, (), Refusal(first.guardrail, f"every target is protected: {every}")
        return d.model_copy(update={"targets": kept}), tuple(dropped), None

    def reserved_address(self, d: Decision, ctx: Context) -> Refusal | None:
        for role, net in self._networks(d):
            a = net.network_address
            if a.is_loopback or a.is_unspecified or a.is_multicast or net.broadcast_address.is_loopback:
                return Refusal(
                    "reserved_address", f"{role} {net} is a loopback, unspecified or multicast address"
                )
        return None

    def no_targets(self, d: Decision, ctx: Context) -> Refusal | None:
        if d.action == "block" and not d.targets:
            return Refusal("no_targets", "a block needs at least one target (use quarantine to isolate)")
        return None

    def max_targets_per_block(self, d: Decision, ctx: Context) -> Refusal | None:
        limit = self.settings.enforcement.max_targets_per_block
        if len(d.targets) > limit:
            return Refusal(
                "max_targets_per_block",
                f"{len(d.targets)} targets (limit {limit}): quarantine the source instead",
            )
        return None

    def max_active_blocks(self, d: Decision, ctx: Context) -> Refusal | None:
        limit = self.settings.enforcement.max_active_blocks
        if isinstance(ctx.active, Mapping):
            others = len(ctx.active) - (d.id in ctx.active)
        else:
            others = sum(1 for a in ctx.active if a.id != d.id)
        if others + 1 > limit:
            return Refusal("max_active_blocks", f"{others} blocks already active (limit {limit})")
        return None

    def max_new_blocks_per_minute(self, d: Decision, ctx: Context) -> Refusal | None:
        limit = self.settings.enforcement.max_new_blocks_per_minute
        if ctx.new_last_minute + 1 > limit:
            return Refusal(
                "max_new_blocks_per_minute",
                f"{ctx.new_last_minute} new blocks in the last minute (limit {limit})",
            )
        return None

    def max_workload_share(self, d: Decision, ctx: Context) -> Refusal | None:
        src = d.source
        if not (src.namespace and src.workload):
            return None
        total = self.inventory.pod_count(src.namespace, src.workload)
        if not total:
            return None  # size unknown: the other blast-radius limits still hold
        active = ctx.active.values() if isinstance(ctx.active, Mapping) else ctx.active
        pods = {(a.source.pod or a.source.ip) for a in active if a.id != d.id and _same_workload(a, d)}
        pods.add(src.pod or src.ip)
        share = len(pods) / total
        limit = self.settings.enforcement.max_workload_share
        if share > limit:
            return Refusal(
                "max_workload_share",
                f"{len(pods)} of {total} pods of {src.namespace}/{src.workload} would be blocked "
                f"({share:.0%} > {limit:.0%})",
            )
        return None

    # ------------------------------------------------------------------ helpers

    def _parties(self, d: Decision) -> list[tuple[str, str, str, str]]:
        """(role, namespace, workload, ip) of the source and of every target the inventory knows."""
        out = [("source", d.source.namespace, d.source.workload, d.source.ip)]
        ref = self.inventory.pods_by_ip.get(d.source.ip)
        if ref is not None:
            out.append(("source", ref.namespace, ref.workload, d.source.ip))
        for t in d.targets:
            net = parse_target(t)
            if net.num_addresses == 1:
                ref = self.inventory.pods_by_ip.get(str(net.network_address))
                if ref is not None:
                    out.append(("target", ref.namespace, ref.workload, str(net.network_address)))
                continue
            for ip in self._pods_inside(net):
                ref = self.inventory.pods_by_ip[ip]
                out.append(("target", ref.namespace, ref.workload, ip))
        return out

    def _pods_inside(self, net: Network) -> list[str]:
        """Pod addresses inside ``net``: the inventory's addresses sorted once per snapshot."""
        if self._pod_index is None or self._pod_index[0] is not self.inventory:
            self._pod_index = (self.inventory, HostIndex(self.inventory.pods_by_ip))
        return self._pod_index[1].inside(net)

    def _networks(self, d: Decision) -> list[tuple[str, Network]]:
        return [("source", parse_target(d.source.ip)), *(("target", parse_target(t)) for t in d.targets)]


def _same_workload(a: Decision, b: Decision) -> bool:
    return (a.source.namespace, a.source.workload) == (b.source.namespace, b.source.workload)
