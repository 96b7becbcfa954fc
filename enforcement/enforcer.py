"""The enforcement stage: alerts in, guarded decisions out, rules applied, an audit trail kept.

One :class:`Enforcer` consumes ``alerts``, asks the policy for a proposal, passes it through
every guardrail, then according to the mode records it (``dry_run``), waits for a person
(``approval``) or applies it on every backend (``enforce``). Every decision, refusals
included, goes to the store and to the ``decisions`` topic. The store is the truth: at
start (and every ``reconcile_interval_s``) each backend is made to match the active
decisions, which removes stray rules and restores missing ones. Blocks whose TTL ended are
lifted on backends without kernel timeouts and marked ``expired``.

An alert's decisions: the first names the alert (a replay decides nothing); while the alert
stays open the pipeline re-emits it with more targets, and the targets no earlier decision
on it covers get a decision of their own (named by the alert and that target set). Automatic
decisions drop protected targets (node, DNS, control plane, ``protected_ips``) and block the
rest; a person's decision is refused whole.

Ordering: rules are applied *before* the decision is recorded as ``applied``. A crash in
between leaves a rule without a decision, which reconciliation removes: the failure mode
unblocks, it never blocks without a record.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from flowwarden.bus import Bus, Consumer, Message, Producer, send_dlq
from flowwarden.enforcement import policy
from flowwarden.enforcement.backends import Backend, BackendError, make_backends
from flowwarden.enforcement.feeds_export import FeedExportLoop, feed_export_enabled
from flowwarden.enforcement.guardrails import Context, DroppedTarget, Guardrails
from flowwarden.enforcement.metrics import EnforcerMetrics
from flowwarden.errors import FlowwardenError, RecordError
from flowwarden.kube import FixedSource, InventorySource, PodInventory, inventory_source_from_settings
from flowwarden.records import Alert, Decision, Entity
from flowwarden.settings import Settings
from flowwarden.store import BLOCK_ACTIONS, WAS_APPLIED, Store

log = logging.getLogger("flowwarden.enforcement")

OFFENCE_STATUSES = ("applied", "expired", "revoked", "simulated", "pending")


class UnknownBlock(FlowwardenError):
    """No decision with that id in the store."""


class Enforcer:
    """The stage: construct, :meth:`start`, :meth:`run` (or :meth:`poll_once` in a loop), :meth:`stop`."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        bus: Bus | None = None,
        backends: Sequence[Backend] | None = None,
        inventory: PodInventory | None = None,
        inventory_source: InventorySource | None = None,
        metrics: EnforcerMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.cfg = settings.enforcement
        self.store = store
        self.bus = bus
        # Who owns an address: a given inventory (tests, offline), else the source
        # kubernetes.inventory_source names, as the pipeline's; started in start() (no pods until then).
        if inventory_source is None:
            inventory_source = (
                FixedSource(inventory) if inventory is not None else inventory_source_from_settings(settings)
            )
        self.inventory_source = inventory_source
        self.inventory = inventory if inventory is not None else PodInventory.empty()
        self.guardrails = Guardrails(settings, self.inventory)
        self.backends = (
            list(backends) if backends is not None else make_backends(settings, self.protected_networks())
        )
        self.metrics = metrics or EnforcerMetrics()
        self.clock = clock
        # Threat feeds as nftables sets / Calico network sets, refreshed on the feeds' schedule
        # (enforcement.feed_export) while the enforcer runs as the stage; see start().
        self.feed_export: FeedExportLoop | None = None
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self._last_reconcile = 0.0
        self._last_expire = 0.0
        # Views of the store kept in step with every decision this enforcer takes and reloaded at
        # each reconciliation, so that a decision costs no scan of the decisions table.
        # source key -> (when decided, alert id) of each decision that counts as an offence
        self._offences: dict[str, list[tuple[datetime, str]]] | None = None
        self._active: dict[str, Decision] = {}  # applied blocks and quarantines
        self._simulated: dict[str, Decision] = {}  # dry-run blocks "in force"
        # Per view ("applied", "simulated"): (expiry, id) as a heap, so that context() drops ended
        # entries in O(log n), and the sorted start times of the blocks of the last minute (the
        # rate guardrail), so that a decision costs neither a scan of the view nor a query.
        self._expiry: dict[str, list[tuple[datetime, str]]] = {"applied": [], "simulated": []}
        self._started: dict[str, list[datetime]] = {"applied": [], "simulated": []}
        self._started_backends = False

    # ------------------------------------------------------------------ lifecycle

    def protected_networks(self) -> list[str]:
        """Everything the guardrails protect, for the backends' own second line (nft accept set)."""
        return [str(n) for group in self.guardrails.protected for n in group.networks]

    def _feed_protected(self) -> list[str]:
        """What no exported feed entry may cover: the guardrails' networks and the known nodes."""
        return [*self.protected_networks(), *self.inventory.node_ips]

    @property
    def backend_name(self) -> str:
        return ",".join(b.name for b in self.backends)

    def may_apply(self) -> bool:
        """False when every mode is dry-run: then not even the nft table is created."""
        modes = {self.cfg.mode, *self.cfg.mode_by_detector.values()}
        return modes != {"dry_run"}

    def start(self, *, consume: bool = True) -> dict[str, Any]:
        """List the pods (when watched), start backends, reconcile them with the store, start the
        feed export (``consume`` and ``enforcement.feed_export``), then join the consumer group."""
        result: dict[str, Any] = {}
        self.inventory_source.start()  # the first list or read is complete before any decision
        self.refresh_inventory()
        if self.may_apply():
            for b in self.backends:
                b.start()
            self._started_backends = True
            result = self.reconcile()
        if consume and feed_export_enabled(self.settings):
            # The running stage only: a one-shot command (``blocks add``) exports no feed.
            # The guardrails' protected addresses are never exported.
            self.feed_export = FeedExportLoop(self.settings, self.metrics, protected=self._feed_protected)
            self.feed_export.start()
        if self.bus is not None:
            t = self.settings.kafka.topics
            self.producer = self.bus.producer()
            if consume:
                self.bus.ensure_topics([t.alerts, t.decisions, t.alerts_dlq])
                self.consumer = self.bus.consumer([t.alerts], self.cfg.group_id)
        return result

    def stop(self) -> None:
        self.inventory_source.stop()
        if self.feed_export is not None:
            self.feed_export.stop()
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
        if self.producer is not None:
            self.producer.close()
            self.producer = None

    def run(self, stop: threading.Event, poll_timeout_s: float = 0.5) -> None:
        """Consume until ``stop`` is set; housekeeping (expiry, reconciliation) between polls."""
        while not stop.is_set():
            self.poll_once(poll_timeout_s)

    def poll_once(self, timeout_s: float = 0.5) -> list[Decision]:
        """One poll of the alerts topic; returns the decisions taken."""
        out: list[Decision] = []
        if self.consumer is not None:
            messages = self.consumer.poll(timeout_s=timeout_s, max_records=100)
            for m in messages:
                d = self.handle_message(m)
                if d is not None:
                    out.append(d)
            if messages:
                self.consumer.commit(messages)
        self.housekeeping()
        return out

    def refresh_inventory(self) -> bool:
        """Give the guardrails the source's newest pod snapshot; True if it was a new one.

        The source rebuilds at most every ``kubernetes.min_refresh_s`` (a rebuild reads every pod).
        """
        inventory = self.inventory_source.current()
        if inventory is self.inventory:
            return False
        self.inventory = inventory
        self.guardrails.inventory = inventory
        return True

    def housekeeping(self) -> None:
        self.refresh_inventory()
        now = self.clock()
        if now - self._last_expire >= self.cfg.expire_interval_s:
            self.expire()
        if now - self._last_reconcile >= self.cfg.reconcile_interval_s:
            if self._started_backends:
                self.reconcile()
            else:  # dry-run: no rules to reconcile, but the views must not grow without end
                self._last_reconcile = now
                cutoff = self._now_dt()
                self._simulated = {
                    k: d for k, d in self._simulated.items() if d.expires_at is None or d.expires_at > cutoff
                }

    # ------------------------------------------------------------------ alerts

    def handle_message(self, m: Message) -> Decision | None:
        """One message of the alerts topic; one that is not a valid alert goes to the dead-letter
        topic (``kafka.topics.alerts_dlq``) with its reason, and the enforcer goes on."""
        try:
            alert = Alert.from_json(m.value)
            return self.handle_alert(alert)
        except RecordError as exc:
            log.error(
                "bad alert topic=%s partition=%d offset=%d error=%s", m.topic, m.partition, m.offset, exc
            )
            self.metrics.dead_letters.labels(exc.field or "record").inc()
            if self.producer is not None:
                send_dlq(
                    self.producer,
                    self.settings.kafka.topics.alerts_dlq,
                    m.value,
                    str(exc),
                    m.topic,
                    field=exc.field,
                    source_partition=m.partition,
                    source_offset=m.offset,
                )
            return None

    def handle_alert(self, alert: Alert) -> Decision | None:
        """The decision taken on ``alert`` (None when the policy ignores it or nothing in it is new).

        The first delivery of an alert gets a decision; a re-delivery decides only on targets
        that no earlier decision on this alert covers (an open alert that gained targets), so a
        replay never decides twice.
        """
        if alert.learning:
            # Its severity is capped (medium) while learning: judge it on its score alone; the
            # ``learning`` guardrail then refuses it with the reason (recorded, not silently
            # ignored) unless ``enforcement.act_on_learning``.
            alert = alert.model_copy(update={"severity": "critical"})
        if policy.ineligible_reason(alert, self.cfg):
            return None
        action = self.cfg.action
        earlier = [d for d in self.store.list_decisions(alert_id=alert.id) if d.action == action]
        prior = self.prior_offences(alert.entity, alert_id=alert.id)
        if not earlier:
            proposal = policy.propose(alert, self.cfg, prior_offences=prior)
        else:
            new = policy.new_targets(alert, earlier) if action == "block" else []
            if not new:
                return None  # a replay: the earlier decisions cover every target
            proposal = policy.propose(alert, self.cfg, prior_offences=prior, targets=new)
        assert proposal is not None
        wide = proposal.backend_result.get(policy.WIDE_ALERT)
        if self.store.get_decision(proposal.id) is not None:
            return None  # never two decisions under one id (the store would keep only the first)
        if isinstance(wide, dict):
            over = int(wide["targets"]) - int(wide["limit"])
            self.metrics.targets_over_limit.inc(over)
            log.warning(
                "alert too wide to block id=%s targets=%d limit=%d: quarantine proposed for approval",
                alert.id,
                wide["targets"],
                wide["limit"],
            )
        return self.decide(proposal, drop_protected_targets=True, learning=alert.learning)

    def prior_offences(self, source: Entity, *, alert_id: str = "") -> int:
        """Earlier decisions on this source within ``ttl_max_s`` (for TTL escalation).

        Decisions on ``alert_id`` itself do not count: new targets of an open alert are the
        same offence, not a repeat.
        """
        if self._offences is None:
            self.load_views()
        assert self._offences is not None
        since = self._now_dt() - timedelta(seconds=self.cfg.ttl_max_s)
        times = [(t, a) for t, a in self._offences.get(source.key(), []) if t >= since]
        self._offences[source.key()] = times  # older offences no longer count: forget them
        return sum(1 for _, a in times if not (alert_id and a == alert_id))

    def load_views(self) -> None:
        """(Re)load the in-memory views from the store: it is the truth."""
        now = self._now_dt()
        since = now - timedelta(seconds=self.cfg.ttl_max_s)
        recent = self.store.list_decisions(status=OFFENCE_STATUSES, since=since)
        self._offences = {}
        for d in recent:
            if d.action != "unblock":
                self._offences.setdefault(d.source.key(), []).append((d.created_at, d.alert_id))
        self._simulated = {d.id: d for d in recent if d.status == "simulated"}
        self._active = {d.id: d for d in self.store.active_blocks(now)}
        self.metrics.active_blocks.set(len(self._active))
        minute_ago = now - timedelta(seconds=60)
        for kind, view, statuses in (
            ("applied", self._active, WAS_APPLIED),
            ("simulated", self._simulated, ("simulated",)),
        ):
            self._expiry[kind] = sorted((d.expires_at, d.id) for d in view.values() if d.expires_at)  # a heap
            self._started[kind] = sorted(
                d.created_at
                for d in recent
                if d.action in BLOCK_ACTIONS and d.status in statuses and d.created_at >= minute_ago
            )

    def _remember(self, d: Decision, *, new: bool) -> None:
        if self._offences is None:
            self.load_views()
        assert self._offences is not None
        if new and d.status in OFFENCE_STATUSES and d.action != "unblock":
            self._offences.setdefault(d.source.key(), []).append((d.created_at, d.alert_id))
        for view, status in ((self._active, "applied"), (self._simulated, "simulated")):
            if d.status == status:
                view[d.id] = d
                if d.expires_at is not None:
                    heapq.heappush(self._expiry[status], (d.expires_at, d.id))
            else:
                view.pop(d.id, None)
        self.metrics.active_blocks.set(len(self._active))
        # A block counts for the rate guardrail when it starts: decided, or approved later.
        kind = "simulated" if d.status == "simulated" else "applied" if d.status == "applied" else ""
        if kind and d.action in BLOCK_ACTIONS and (new or kind == "applied"):
            bisect.insort(self._started[kind], d.created_at)

    # ------------------------------------------------------------------ deciding

    def decide(
        self,
        proposal: Decision,
        *,
        force: bool = False,
        drop_protected_targets: bool = False,
        learning: bool = False,
    ) -> Decision:
        """Guardrails, then record / wait / apply according to the proposal's mode.

        ``drop_protected_targets`` (automatic decisions): protected targets are dropped and
        recorded (``backend_result["dropped_targets"]``, the reason, one
        ``flowwarden_enforcer_refusals_total`` per target) instead of refusing the whole decision.
        """
        now = self._now_dt()
        d = proposal.model_copy(update={"created_at": now, "backend": self.backend_name})
        review = self.guardrails.review(
            d,
            self.context(d.mode, force=force, learning=learning),
            drop_protected_targets=drop_protected_targets,
        )
        d, refusal = review.decision, review.refusal
        if review.dropped:
            d = self._with_dropped(d, review.dropped)
        if refusal is not None:
            d = d.model_copy(
                update={
                    "status": "refused",
                    "guardrail": refusal.guardrail,
                    "reason": f"{refusal.reason}; {d.reason}",
                }
            )
            self.metrics.refusals.labels(refusal.guardrail).inc()
            log.warning(
                "decision refused id=%s guardrail=%s reason=%s", d.id, refusal.guardrail, refusal.reason
            )
        elif d.mode == "dry_run":
            d = d.model_copy(
                update={
                    "status": "simulated",
                    "expires_at": now + timedelta(seconds=d.ttl_s),
                    "backend_result": {**d.backend_result, "would_apply": self.preview(d)},
                }
            )
        elif d.mode == "approval":
            d = d.model_copy(update={"status": "pending"})
        else:
            d = self._apply(d, now)
        self.store.insert_decisions([d])
        self._remember(d, new=True)
        self._publish(d)
        self._count(d)
        return d

    def _with_dropped(self, d: Decision, dropped: Sequence[DroppedTarget]) -> Decision:
        """Record the targets a guardrail dropped: in the decision, the log and the refusal counter."""
        for x in dropped:
            self.metrics.refusals.labels(x.guardrail).inc()
        listed = ", ".join(f"{x.target} ({x.guardrail})" for x in dropped)
        log.warning("protected targets dropped id=%s dropped=%s kept=%d", d.id, listed, len(d.targets))
        return d.model_copy(
            update={
                "reason": f"{d.reason}; dropped protected target(s) {listed}",
                "backend_result": {
                    **d.backend_result,
                    policy.DROPPED_TARGETS: [x.as_dict() for x in dropped],
                },
            }
        )

    def context(self, mode: str, *, force: bool = False, learning: bool = False) -> Context:
        """Blast-radius bookkeeping: real blocks for enforce/approval, simulated ones in dry-run."""
        now = self._now_dt()
        minute_ago = now - timedelta(seconds=60)
        if self._offences is None:
            self.load_views()
        kind = "simulated" if mode == "dry_run" else "applied"
        view = self._simulated if kind == "simulated" else self._active
        heap = self._expiry[kind]
        while heap and heap[0][0] <= now:  # ended blocks leave the view (the store keeps them)
            _, ended = heapq.heappop(heap)
            d = view.get(ended)
            if d is not None and d.expires_at is not None and d.expires_at <= now:
                del view[ended]
        started = self._started[kind]
        del started[: bisect.bisect_left(started, minute_ago)]
        # The view itself, not a copy: the guardrails count it and look up ids in O(1). Blocks that
        # another process started are in both views from the next reconciliation on.
        return Context(active=view, new_last_minute=len(started), force=force, learning=learning)

    def preview(self, d: Decision) -> dict[str, Any]:
        """Per backend, what applying ``d`` would do (kept in the dry-run decision)."""
        return {b.name: b.preview(d) for b in self.backends}

    def _apply(self, d: Decision, now: datetime) -> Decision:
        expires = now + timedelta(seconds=d.ttl_s)
        d = d.model_copy(update={"expires_at": expires})
        results: dict[str, Any] = dict(d.backend_result)  # e.g. the dropped targets
        done: list[Backend] = []
        t0 = time.perf_counter()
        for b in self.backends:
            try:
                results[b.name] = b.apply(d)
                done.append(b)
            except (BackendError, RecordError, OSError) as exc:
                results[b.name] = {"error": str(exc)}
                log.error("apply failed id=%s backend=%s error=%s", d.id, b.name, exc)
                for ok in done:  # all or nothing: roll back what went in
                    try:
                        results[ok.name] = {**results[ok.name], "rolled_back": ok.revoke(d)}
                    except (BackendError, OSError) as undo_exc:
                        results[ok.name]["rollback_error"] = str(undo_exc)
                results["applied_at"] = self.clock()
                return d.model_copy(update={"status": "failed", "backend_result": results})
        self.metrics.apply_seconds.observe(time.perf_counter() - t0)
        results["applied_at"] = self.clock()
        return d.model_copy(update={"status": "applied", "backend_result": results})

    # ------------------------------------------------------------------ people

    def manual(
        self,
        *,
        source: Entity,
        targets: list[str],
        action: str = "block",
        ttl_s: int | None = None,
        decided_by: str = "cli",
        reason: str = "",
        force: bool = False,
    ) -> Decision:
        """A block a person asks for: same guardrails; ``force`` overrides only the allowlist."""
        proposal = policy.manual(
            source=source,
            targets=targets,
            action=action,  # type: ignore[arg-type]
            ttl_s=ttl_s or self.cfg.ttl_s,
            mode="enforce",
            decided_by=decided_by,
            reason=reason + (" (forced over the allowlist)" if force else ""),
            now=self._now_dt(),
        )
        return self.decide(proposal, force=force)

    def approve(self, decision_id: str, *, by: str = "cli", force: bool = False) -> Decision:
        d = self._get(decision_id)
        if d.status != "pending":
            raise FlowwardenError(f"decision {decision_id} is {d.status}, not pending approval")
        refusal = self.guardrails.check(d, self.context("enforce", force=force))
        now = self._now_dt()
        if refusal is not None:
            self.metrics.refusals.labels(refusal.guardrail).inc()
            out = self.store.update_decision(
                d.id,
                status="refused",
                guardrail=refusal.guardrail,
                reason=f"{refusal.reason}; at approval by {by}",
            )
        else:
            applied = self._apply(d, now)
            out = self.store.update_decision(
                d.id,
                status=applied.status,
                backend_result=applied.backend_result,
                expires_at=applied.expires_at,
                reason=f"{d.reason}; approved by {by}",
                backend=self.backend_name,
            )
        self._remember(out, new=False)
        self._publish(out)
        self._count(out)
        return out

    def revoke(self, decision_id: str, *, by: str = "cli") -> Decision:
        d = self._get(decision_id)
        if d.status not in ("applied", "pending", "simulated"):
            raise FlowwardenError(f"decision {decision_id} is {d.status}: nothing to revoke")
        results: dict[str, Any] = dict(d.backend_result)
        if d.status == "applied":
            for b in self.backends:
                try:
                    results[f"revoke_{b.name}"] = b.revoke(d)
                except (BackendError, OSError) as exc:
                    results[f"revoke_{b.name}"] = {"error": str(exc)}
        out = self.store.update_decision(
            d.id, status="revoked", backend_result=results, reason=f"{d.reason}; revoked by {by}"
        )
        self._remember(out, new=False)
        if d.status == "applied":
            self._reconcile_kernel()  # overlapping blocks of other decisions come back
        self._publish(out)
        self._count(out)
        return out

    # ------------------------------------------------------------------ TTL and reconciliation

    def expire(self) -> list[Decision]:
        """Mark ended blocks ``expired``, lifting them where the kernel does not do it itself."""
        self._last_expire = self.clock()
        now = self._now_dt()
        ended = [
            d
            for d in self.store.list_decisions(status="applied")
            if d.expires_at is not None and d.expires_at <= now
        ]
        out = []
        for d in ended:
            results = dict(d.backend_result)
            for b in self.backends:
                if not b.kernel_expiry:
                    try:
                        results[f"expire_{b.name}"] = b.revoke(d)
                    except (BackendError, OSError) as exc:
                        results[f"expire_{b.name}"] = {"error": str(exc)}
            e = self.store.update_decision(d.id, status="expired", backend_result=results)
            self._remember(e, new=False)
            self._publish(e)
            self._count(e)
            out.append(e)
        return out

    def reconcile(self) -> dict[str, Any]:
        """Make every backend match the store's active blocks."""
        self._last_reconcile = self.clock()
        self.load_views()
        active = list(self._active.values())
        out: dict[str, Any] = {}
        for b in self.backends:
            try:
                out[b.name] = b.reconcile(active)
            except (BackendError, OSError) as exc:
                out[b.name] = {"error": str(exc)}
                log.error("reconcile failed backend=%s error=%s", b.name, exc)
        for name, r in out.items():
            removed, restored = r.get("removed") or [], r.get("restored") or []
            if removed or restored:
                log.warning(
                    "reconciled backend=%s with the store removed=%d restored=%d first=%s",
                    name,
                    len(removed),
                    len(restored),
                    (removed + restored)[:5],
                )
        return out

    def _reconcile_kernel(self) -> None:
        now = self._now_dt()
        active = [d for d in self._active.values() if d.expires_at is None or d.expires_at > now]
        for b in self.backends:
            if b.kernel_expiry:
                b.reconcile(active)

    # ------------------------------------------------------------------ helpers

    def _get(self, decision_id: str) -> Decision:
        d = self.store.get_decision(decision_id)
        if d is None:
            raise UnknownBlock(f"no decision with id {decision_id!r}")
        return d

    def _publish(self, d: Decision) -> None:
        if self.producer is not None:
            self.producer.send(
                self.settings.kafka.topics.decisions, d.to_json().encode(), key=d.source.ip.encode()
            )

    def _count(self, d: Decision) -> None:
        self.metrics.decisions.labels(d.mode, d.backend or self.backend_name, d.status).inc()

    def _now_dt(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)
