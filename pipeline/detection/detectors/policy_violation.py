"""A flow the declared policy does not allow (:mod:`flowwarden.policy`).

Catches: egress from a declared namespace or workload to a destination or port no rule
allows (a pod reaching an undeclared SaaS, a mail relay, another namespace's database), a
source no ``ingress`` rule of the destination allows, and sources reaching a declared
cluster endpoint (etcd, the API server, the kubelet, the metadata API) they are not listed for.
Must not flag: anything when nothing is declared (an empty policy is "not declared"), a
connection to an address the pod itself resolved from an allowed name within the answer's
TTL (plus ``rules.dns_grace_s``), the cluster DNS while ``allow_cluster_dns`` holds.

Alerts are ``exfiltration`` when a finding left the cluster, else ``lateral_movement``; the
evidence names each broken rule by its key path (``namespaces.shop.egress``) and why
(``destination_not_allowed``, ``port_not_allowed``, ``source_not_allowed``).
"""

from __future__ import annotations

from numbers import Integral
from typing import Any

import numpy as np
import pandas as pd

from flowwarden.kube import PodInventory
from flowwarden.pipeline.detection.detectors.base import DETECTORS
from flowwarden.pipeline.detection.detectors.flow_rules import (
    DnsCache,
    Findings,
    FlowRuleDetector,
    entity_keys_of,
    taken,
)
from flowwarden.plugins import Interval
from flowwarden.policy import Policy
from flowwarden.policy_match import COLUMNS, BatchCodes, CompiledPolicy, Environment, Verdicts
from flowwarden.records import Direction
from flowwarden.settings import Settings

MAX_EVIDENCE = 10
_KEEP = ("entity", "ts_start", "ts_end", "direction", *COLUMNS)
_NEED = (*_KEEP[1:], "src_pod")  # what judging a finding reads (the entity is made from src_pod)


# Compiled policies shared by the detectors judging with the same policy snapshot in the same
# cluster (a worker holds one engine per assigned partition; each used to compile its own).
# Keyed by the snapshot's identity (the runtime hands over a new object on every reload, and a
# snapshot is never changed in place), which the entry keeps alive; the last few are kept.
_COMPILED: dict[tuple[int, Environment], tuple[Policy, CompiledPolicy]] = {}
_COMPILED_MAX = 4


def compiled(policy: Policy, env: Environment) -> CompiledPolicy:
    """``CompiledPolicy(policy, env)``, built once per (policy snapshot, environment)."""
    key = (id(policy), env)
    hit = _COMPILED.get(key)
    if hit is not None and hit[0] is policy:
        return hit[1]
    out = CompiledPolicy(policy, env)
    _COMPILED[key] = (policy, out)
    while len(_COMPILED) > _COMPILED_MAX:
        del _COMPILED[next(iter(_COMPILED))]
    return out


@DETECTORS.register("policy_violation")
class PolicyViolation(FlowRuleDetector):
    name = "policy_violation"
    kind = "exfiltration"
    technique = "T1048"
    defaults = {"min_flows": 1.0}
    constraints = {"min_flows": Interval(Integral, 1, None, closed="left")}
    base_score = 0.9
    evidence_key = ("rule", "reason", "dst_ip", "dst_port", "proto")
    tally_column = "rule"  # violations per rule kind

    def tally_key(self, values: np.ndarray) -> list[Any]:
        """The rule's kind: ``egress``, ``ingress``, or the cluster endpoint (``etcd``, ``kubelet``…)."""
        kinds: dict[Any, Any] = {}  # few rule paths: each split once
        out = []
        for v in values.tolist():
            k = kinds.get(v)
            if k is None and v not in kinds:
                k = kinds[v] = str(v).rsplit(".", 1)[-1] if isinstance(v, str) or not pd.isna(v) else v
            out.append(k)
        return out

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.policy = Policy()
        self.policy_version = ""
        self.dns = DnsCache()
        self._compiled: CompiledPolicy | None = None
        self._nodes: frozenset[str] | None = None

    def set_policy(self, policy: Policy, version: str = "") -> None:
        """Judge with this policy from now on (the runtime hands it over; no file is read here)."""
        self.policy = policy
        self.policy_version = version
        self._compiled = None

    @property
    def wants_flows(self) -> bool:
        return self.policy.declared

    def technique_for(self, kind: str) -> str:
        return "T1048" if kind == "exfiltration" else "T1021"

    def _compiled_for(self, settings: Settings, inventory: PodInventory | None) -> CompiledPolicy:
        nodes = frozenset(inventory.node_ips) if inventory is not None else frozenset()
        if self._compiled is None or nodes != self._nodes:
            self._compiled = compiled(self.policy, Environment.from_settings(settings, nodes))
            self._nodes = nodes
        return self._compiled

    def find(
        self,
        flows: pd.DataFrame,
        inventory: PodInventory | None,
        settings: Settings,
        codes: BatchCodes | None = None,
    ) -> Findings | None:
        r = settings.rules
        self.dns.grace_s, self.dns.max_rows = r.dns_grace_s, r.dns_cache_max
        cols = codes.of(flows) if codes is not None else BatchCodes(flows)  # shared with the feeds
        q = cols.column("dns_qname")
        self.dns.learn(flows, named=np.flatnonzero(q.filled[q.codes]))  # most flows carry no name
        if len(self.dns):  # nothing learnt: no need for the batch's earliest start
            self.dns.expire(float(flows["ts_start"].min()))
        policy = self._compiled_for(settings, inventory)
        first = policy.evaluate(flows, codes=cols)  # names on the flow itself; most flows end here
        if not first.violation.any():
            return None
        # Only the columns a finding keeps, taken from their arrays (the enriched frame is wide;
        # findings are few, and a frame-level selection costs more than the judging).
        bad = first.violation
        rows = np.flatnonzero(bad)
        sub = {c: taken(flows[c], rows) for c in _NEED}
        sub["entity"] = entity_keys_of(sub["src_pod"], sub["src_namespace"], sub["src_ip"])
        del sub["src_pod"]
        before = Verdicts(np.ones(len(rows), dtype=bool), first.rule[bad], first.reason[bad])
        return self._judge(policy, Findings(sub), before)

    def _judge(self, policy: CompiledPolicy, rows: Findings, before: Verdicts | None = None) -> Findings:
        """Findings among candidate rows, with the pod's DNS answers known so far.

        ``before``: the rows' verdicts without those answers; they stand unless an answer
        names a row's destination (then it is judged again with that name).
        """
        resolved = self.dns.resolve_rows(rows["entity"], rows["dst_ip"], rows["ts_start"], rows["ts_end"])
        named = any(resolved)
        v = (
            before
            if before is not None and not named
            else policy.evaluate(rows.frame(COLUMNS), pd.Series(resolved, dtype=object))
        )
        bad = v.violation
        # Every row a finding (the usual case: ``before`` stands): the rows as they are.
        found = rows.take(bad) if not bad.all() else rows
        # The name a finding shows: SNI / Host, else the DNS name, else one the pod resolved.
        sn, qn = found["server_name"], found["dns_qname"]
        names = np.where(sn != "", sn, qn)
        if (names == "").any():
            asked = self.dns.names_for(found["entity"], found["dst_ip"])
            names = np.where(names != "", names, asked)
        return found.with_columns(
            gen=np.full(len(found), self.dns.generation, dtype="int64"),
            rule=v.rule[bad],
            reason=v.reason[bad],
            name=names,
            egress=np.asarray(found["direction"] == Direction.EGRESS.value, dtype=bool),
        )

    def confirm(self, findings: Findings) -> Findings:
        """Judge again with the DNS answers that arrived since (the answer may trail the connection)."""
        if self._compiled is None:
            return findings
        stale = findings["gen"] < self.dns.generation
        if not stale.any():  # no answer came in since they were judged: nothing can change
            return findings
        rows = np.flatnonzero(stale)
        old = findings.take(rows)
        named = self.dns.resolve_rows(old["entity"], old["dst_ip"], old["ts_start"], old["ts_end"])
        rows = rows[named != ""]  # only a finding whose pod now has an answer may change
        if not len(rows):
            return findings
        keep = np.ones(len(findings), dtype=bool)
        keep[rows] = False
        again = self._judge(self._compiled, findings.take(rows))
        return Findings.concat(findings.take(keep), again)

    def describe(self, flows: pd.DataFrame) -> dict[str, Any]:
        """Each broken rule, why, and where to (the evidence a person reviews before a block)."""
        rows = self.round_rows(flows)  # one per distinct finding of this entity
        if not len(rows):
            return {}
        pairs = set(zip(flows["dst_ip"].tolist(), flows["dst_port"].astype(int).tolist(), strict=True))
        cols = {
            c: self.round_values(c)
            for c in ("rule", "reason", "dst_ip", "dst_port", "proto", "name", "egress")
        }
        items: list[dict[str, Any]] = []
        for i in rows.tolist():
            if (cols["dst_ip"][i], int(cols["dst_port"][i])) not in pairs:
                continue
            items.append(
                {
                    "rule": str(cols["rule"][i]),
                    "reason": str(cols["reason"][i]),
                    "destination": str(cols["dst_ip"][i]),
                    "port": int(cols["dst_port"][i]),
                    "proto": int(cols["proto"][i]),
                    "name": str(cols["name"][i]),
                    "direction": Direction.EGRESS.value if cols["egress"][i] else Direction.INTERNAL.value,
                }
            )
            if len(items) >= MAX_EVIDENCE:
                break
        return {
            "policy_rules": sorted({i["rule"] for i in items}),
            "violations": items,
            "policy_version": self.policy_version,
        }
