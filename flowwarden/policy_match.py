"""The declared policy compiled for batches of flows: which flows it does not allow, and why.

Pure and vectorised: a :class:`CompiledPolicy` is built once per policy (address sets, name
sets, port ranges per rule) and :meth:`CompiledPolicy.evaluate` judges a whole enriched flow
frame with numpy masks, one pass per *declared* scope over that scope's rows only, so a
cluster where little is declared pays little. Within a scope a rule asks for its peer (address
intervals, name and namespace sets) only on the rows its ports allow, and why a row was refused
(its port, or no peer matched) is worked out for the refused rows only. The pipeline's
``policy_violation`` detector and the recommender's ``policy diff`` both judge flows here.

A flow is judged by up to three parts of the policy, and violates the first that refuses it:
its source's ``egress`` (the workload's list if declared, else the namespace's), its
destination's ``ingress`` (same precedence), and the ``cluster`` endpoint it reaches.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from flowwarden.feeds_index import AddressSet, NameSet, ParsedAddresses, parse_distinct, parse_network
from flowwarden.policy import ANY_PROTO, ENDPOINTS, NodePeers, Peers, Policy, PortRange, Scope, parse_port
from flowwarden.settings import Settings

REASON_DESTINATION = "destination_not_allowed"
REASON_PORT = "port_not_allowed"
REASON_SOURCE = "source_not_allowed"
COLUMNS: tuple[str, ...] = (
    "src_ip",
    "dst_ip",
    "dst_port",
    "proto",
    "src_namespace",
    "src_workload",
    "dst_namespace",
    "dst_workload",
    "dns_qname",
    "server_name",
)
_SPARSE = frozenset({"dns_qname", "server_name"})  # text columns most flows leave empty


def _blank(n: int) -> np.ndarray:
    """``np.full(n, "", dtype=object)``, several times faster (``np.full`` copies an object
    scalar element by element; ``fill`` stores the one reference)."""
    out = np.empty(n, dtype=object)
    out.fill("")
    return out


@dataclass(frozen=True)
class Environment:
    """What the policy's words mean in this cluster (from the settings and the pod inventory)."""

    cluster_dns: frozenset[str] = frozenset()
    dns_port: int = 53
    node_ips: frozenset[str] = frozenset()
    api_server_ips: frozenset[str] = frozenset()
    metadata_api: frozenset[str] = frozenset()
    api_server_port: int = 6443
    etcd_ports: tuple[int, ...] = (2379, 2380)
    kubelet_port: int = 10250

    @classmethod
    def from_settings(cls, settings: Settings, node_ips: Iterable[str] = ()) -> Environment:
        cp, cl = settings.control_plane, settings.cluster
        return cls(
            cluster_dns=frozenset(cl.cluster_dns),
            dns_port=cp.dns_port,
            node_ips=frozenset([*cl.node_ips, *node_ips]),
            api_server_ips=frozenset(cp.api_server_ips),
            metadata_api=frozenset(cl.metadata_api),
            api_server_port=cp.api_server_port,
            etcd_ports=tuple(cp.etcd_ports),
            kubelet_port=cp.kubelet_port,
        )


class _Peers:
    """One rule's peers, compiled."""

    def __init__(self, peers: Peers | None) -> None:
        self.any = peers is None
        p = peers or Peers()
        nets = [parse_network(c) for c in p.cidrs]
        self.cidrs = AddressSet((n[0], n[1], n[2], 0) for n in nets if n is not None) if nets else None
        # Rules that list the same networks (every scope's "HTTPS anywhere") share their verdicts.
        self.cidr_key = frozenset(n for n in nets if n is not None)
        self.names = NameSet()
        for d in p.domains:
            self.names.add(d, 0, subdomains=False)
        self.any_namespace = "*" in p.namespaces
        self.namespaces = frozenset(n for n in p.namespaces if n != "*")
        self.workloads = frozenset(p.workloads)
        self.nodes = isinstance(p, NodePeers) and p.nodes
        self.control_plane = isinstance(p, NodePeers) and p.control_plane


_SEEN_MAX = 200_000  # addresses whose verdict a list of networks keeps (then it starts over)
_FEW_ROWS = 256  # rows left to judge below which a rule's ports are checked per distinct port first


class _Ports:
    def __init__(self, ports: list[str]) -> None:
        self.ranges: list[PortRange] = [parse_port(p) for p in ports]
        self._seen: dict[tuple[int, int], bool] = {}  # (port, protocol) -> allowed, across batches

    def allows_any(self, keys: set[tuple[int, int]]) -> bool:
        """Whether any (port, protocol) of ``keys`` is allowed: :meth:`match` for a few distinct
        pairs in plain Python (the rows left after a scope's first rules are few; a dozen numpy
        calls per rule cost more than the look-ups)."""
        seen = self._seen
        for key in keys:
            ok = seen.get(key)
            if ok is None:
                if len(seen) > 65_536:
                    seen.clear()
                ok = seen[key] = bool(self.match(np.array([key[0]]), np.array([key[1]]))[0])
            if ok:
                return True
        return False

    def match(self, port: np.ndarray, proto: np.ndarray) -> np.ndarray:
        if not self.ranges:
            return np.ones(len(port), dtype=bool)
        out = np.zeros(len(port), dtype=bool)
        for r in self.ranges:
            if r.proto in (1, 58):
                out |= proto == r.proto
                continue
            p_ok = (proto == r.proto) if r.proto != ANY_PROTO else ((proto == 6) | (proto == 17))
            out |= p_ok & (port >= r.lo) & (port <= r.hi)
        return out


@dataclass
class _Rules:
    path: str  # "namespaces.shop.egress"
    rules: list[tuple[str, _Peers, _Ports]]
    allow_dns: bool = False


@dataclass
class Verdicts:
    """Per flow: ``violation``, and for those the rule path broken and the reason."""

    violation: np.ndarray
    rule: np.ndarray  # object: "namespaces.shop.egress", "" when allowed or not declared
    reason: np.ndarray  # object
    matched_name: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))


def _filled_rows(values: pd.Series) -> np.ndarray | None:
    """The rows of an Arrow text column that hold a non-empty value (None: not Arrow text).

    A string length per row is a read of the offsets, no hashing of the text."""
    if not isinstance(values.array, pd.arrays.ArrowStringArray):
        return None
    lengths = pc.fill_null(pc.binary_length(pa.array(values.array)), 0)
    return np.flatnonzero(lengths.to_numpy(zero_copy_only=False) > 0)


class _Col:
    """A column as codes into its distinct values: rules are judged per distinct value."""

    def __init__(self, values: pd.Series | np.ndarray, *, sparse: bool = False) -> None:
        """``sparse``: the column is mostly empty (a DNS name, an SNI): only its filled rows are
        factorised (empty and missing rows get the code of a trailing "")."""
        rows = _filled_rows(values) if sparse and isinstance(values, pd.Series) else None
        # Factorised as they come (Arrow strings, categoricals): no Python object per row.
        if rows is not None and isinstance(values, pd.Series):
            taken_codes, taken_u = pd.factorize(values.array.take(rows))
            u = np.append(np.asarray(taken_u, dtype=object), "")
            codes = np.full(len(values), len(u) - 1, dtype="int64")
            codes[rows] = taken_codes
        elif isinstance(values, pd.Series) and isinstance(values.dtype, pd.CategoricalDtype):
            codes = values.cat.codes.to_numpy(dtype="int64")  # already codes: nothing to hash
            u = np.asarray(values.cat.categories, dtype=object)
        else:
            codes, uniques = pd.factorize(values)
            codes = np.asarray(codes, dtype="int64")
            u = np.asarray(uniques, dtype=object)
        if len(codes) and codes.min() < 0:  # missing text reads as ""
            codes = np.where(codes < 0, len(u), codes)
            u = np.append(u, "")
        self.codes = codes
        self.uniques = u
        self._member: dict[frozenset[str], np.ndarray] = {}
        self._filled: np.ndarray | None = None
        # Per rule (its peers' id): which distinct values its names cover (-1: not asked yet).
        self._names: dict[int, np.ndarray] = {}

    @classmethod
    def _of(cls, codes: np.ndarray, uniques: np.ndarray) -> _Col:
        out = cls.__new__(cls)
        out.codes = codes
        out.uniques = uniques
        out._member = {}
        out._filled = None
        out._names = {}
        return out

    @classmethod
    def of_ids(cls, ids: np.ndarray, strings: Sequence[str]) -> _Col:
        """A column given as ids into ``strings`` (the engine's vocabulary: id 0 is "", as a
        missing value reads here): factorising the integers is cheaper than the text."""
        codes, uniq = pd.factorize(ids)
        u = np.array([strings[i] for i in np.asarray(uniq, dtype="int64").tolist()], dtype=object)
        return cls._of(np.asarray(codes, dtype="int64"), u)

    @classmethod
    def pairs(cls, a: _Col, b: _Col, sep: str = "/") -> _Col:
        """``a + sep + b`` per row, built once per distinct pair."""
        codes, uniq = pd.factorize(a.codes * max(len(b.uniques), 1) + b.codes)
        uniq = np.asarray(uniq, dtype="int64")
        n = max(len(b.uniques), 1)
        return cls._of(
            np.asarray(codes, dtype="int64"),
            np.array([f"{a.uniques[k // n]}{sep}{b.uniques[k % n]}" for k in uniq.tolist()], dtype=object),
        )

    def member(self, allowed: frozenset[str]) -> np.ndarray:
        """Per distinct value: in ``allowed``; worked out once per batch and set (every scope asks)."""
        u = self._member.get(allowed)
        if u is None:
            u = np.fromiter(
                (v in allowed for v in self.uniques.tolist()), dtype=bool, count=len(self.uniques)
            )
            self._member[allowed] = u
        return u

    def isin(self, allowed: frozenset[str], sel: np.ndarray) -> np.ndarray:
        return self.member(allowed)[self.codes[sel]]

    @property
    def filled(self) -> np.ndarray:
        """Per distinct value: not empty."""
        if self._filled is None:
            self._filled = np.fromiter(
                (bool(v) for v in self.uniques.tolist()), dtype=bool, count=len(self.uniques)
            )
        return self._filled

    def nonempty(self, sel: np.ndarray) -> np.ndarray:
        return self.filled[self.codes[sel]]

    def names_hit(self, key: int, names: NameSet, present: np.ndarray) -> np.ndarray:
        """Per distinct value in ``present``: covered by ``names`` (the rule ``key``'s). Asked once
        per batch and value: both passes of a scope ask the same rules about the same rows."""
        known = self._names.get(key)
        if known is None:
            known = self._names[key] = np.full(len(self.uniques), -1, dtype="int8")
        ask = present[known[present] < 0]
        if len(ask):
            known[ask] = [names.lookup(str(v)) is not None for v in self.uniques[ask].tolist()]
        return known


class BatchCodes:
    """One flow batch's text columns as codes into their distinct values, worked out once and
    shared by every judge of the batch (the policy and the threat feeds both read the
    destination, the DNS name and the SNI; factorising a 50,000-row column costs ~0.5 ms)."""

    def __init__(
        self, flows: pd.DataFrame, ids: Mapping[str, tuple[np.ndarray, Sequence[str]]] | None = None
    ) -> None:
        """``ids``: per column, its rows as ids into a list of strings when the caller has them
        (the engine encodes the destination into its vocabulary anyway)."""
        self.flows = flows
        self._ids = dict(ids) if ids else {}
        self._cols: dict[str, _Col] = {}
        self._parsed: dict[str, ParsedAddresses] = {}

    def column(self, name: str) -> _Col:
        """The column as codes (a missing value reads as ""), factorised the first time it is asked."""
        col = self._cols.get(name)
        if col is None:
            given = self._ids.get(name)
            col = _Col.of_ids(*given) if given is not None else _Col(self.flows[name], sparse=name in _SPARSE)
            self._cols[name] = col
        return col

    def parsed(self, name: str) -> ParsedAddresses:
        """An address column's distinct values (:meth:`column`'s uniques), parsed once per batch:
        the policy's networks and the feeds' are both matched against them."""
        out = self._parsed.get(name)
        if out is None:
            out = self._parsed[name] = parse_distinct(self.column(name).uniques.tolist())
        return out

    def of(self, flows: pd.DataFrame) -> BatchCodes:
        """These codes when ``flows`` is the batch they were made from, else fresh ones."""
        return self if flows is self.flows else BatchCodes(flows)


class _Batch:
    """The columns a judgement reads, factorised once per batch."""

    def __init__(
        self,
        flows: pd.DataFrame,
        resolved: pd.Series | None,
        codes: BatchCodes | None = None,
        seen: dict[frozenset[tuple[int, int, int]], dict[str, bool]] | None = None,
    ) -> None:
        """``seen``: the compiled policy's verdicts of addresses in its lists of networks."""
        self.n = len(flows)
        self._seen = seen if seen is not None else {}
        self.port = flows["dst_port"].to_numpy().astype("int64")
        self.proto = flows["proto"].to_numpy().astype("int64")
        self._flows = flows
        self._resolved = resolved
        self._codes = codes.of(flows) if codes is not None else BatchCodes(flows)
        self._full: dict[str, _Col] = {}
        self._cidrs: dict[tuple[frozenset[tuple[int, int, int]], str], np.ndarray] = {}
        self._names: list[_Col] | None = None
        self._name_offsets: list[int] = []
        self._name_table: np.ndarray | None = None

    def col(self, name: str) -> _Col:
        """A column, factorised the first time a rule reads it (most batches need few)."""
        return self._codes.column(name)

    @property
    def names(self) -> list[_Col]:
        """The names a domain rule matches: DNS name, SNI / Host, what the pod resolved."""
        if self._names is None:
            cols = [self.col("dns_qname"), self.col("server_name")]
            if self._resolved is not None:
                cols.append(_Col(self._resolved.reset_index(drop=True)))
            self._names = cols
            self._name_offsets = np.cumsum([0, *(len(c.uniques) for c in cols)]).tolist()[:-1]
        return self._names

    def name_ids(self) -> list[tuple[_Col, int]]:
        """The name columns with the offset of their distinct values in :meth:`name_table`:
        a matched name is carried as an int id (no object array per rule)."""
        cols = self.names
        return list(zip(cols, self._name_offsets, strict=True))

    def name_table(self) -> np.ndarray:
        """Every name column's distinct values, one after the other (what a name id points at)."""
        if self._name_table is None:
            self._name_table = (
                np.concatenate([c.uniques for c in self.names]) if self.names else np.zeros(0, dtype=object)
            )
        return self._name_table

    def workloads(self, end: str) -> _Col:
        """``namespace/workload`` of one end (built when a rule names workloads)."""
        if end not in self._full:
            wl = _Col(self._flows[f"{end}_workload"])
            self._full[end] = _Col.pairs(self.col(f"{end}_namespace"), wl)
        return self._full[end]

    def in_cidrs(self, peers: _Peers, end: str, codes: np.ndarray) -> np.ndarray:
        """Per row of ``codes`` (one end's address codes): in the rule's CIDRs.

        A distinct address is looked up once per batch and list of networks (every scope's rules
        may list the same ones), and only once a rule asks about it: a scope's later rules see
        the few rows its first rules left."""
        assert peers.cidrs is not None
        key = (peers.cidr_key, end)
        known = self._cidrs.get(key)
        if known is None:
            known = self._cidrs[key] = np.full(len(self.col(f"{end}_ip").uniques), -1, dtype="int8")
        row = known[codes]
        unknown = row < 0
        if unknown.any():
            ask = np.unique(codes[unknown])
            known[ask] = self._cidr_verdicts(peers, end, ask)
            row = known[codes]
        return row > 0

    def _cidr_verdicts(self, peers: _Peers, end: str, ask: np.ndarray) -> np.ndarray:
        """Whether the distinct addresses ``ask`` of one end are in the rule's networks. A
        cluster's flows go to the same addresses batch after batch: a verdict is kept across
        batches (per list of networks), and only addresses never seen are searched."""
        assert peers.cidrs is not None
        seen = self._seen.setdefault(peers.cidr_key, {})
        values = self.col(f"{end}_ip").uniques[ask].tolist()
        got = [seen.get(v) for v in values]
        new = [i for i, g in enumerate(got) if g is None]
        if new:
            found = peers.cidrs.contains(self._codes.parsed(f"{end}_ip").at(ask[new])).tolist()
            for i, f in zip(new, found, strict=True):
                got[i] = f
            if len(seen) + len(new) > _SEEN_MAX:
                seen.clear()
            seen.update(zip([values[i] for i in new], found, strict=True))
        return np.array(got, dtype=bool)


class CompiledPolicy:
    """A :class:`~flowwarden.policy.Policy` ready to judge flow frames."""

    def __init__(self, policy: Policy, env: Environment | None = None) -> None:
        self.policy = policy
        self.env = env or Environment()
        self.declared = policy.declared
        self.egress: dict[str, _Rules] = {}  # "ns" or "ns/workload" -> rules
        self.ingress: dict[str, _Rules] = {}
        for ns, pol in policy.namespaces.items():
            self._add(ns, f"namespaces.{ns}", pol)
            for wl, scope in pol.workloads.items():
                self._add(f"{ns}/{wl}", f"namespaces.{ns}.workloads.{wl}", scope)
        # Per list of networks: address -> in it (kept across batches; see _Batch.in_cidrs).
        self._seen: dict[frozenset[tuple[int, int, int]], dict[str, bool]] = {}
        self.endpoints: dict[str, _Peers] = {
            e: _Peers(ep.from_) for e in ENDPOINTS if (ep := getattr(policy.cluster, e)) is not None
        }

    def _add(self, key: str, path: str, scope: Scope) -> None:
        if scope.egress is not None:
            self.egress[key] = _Rules(
                f"{path}.egress",
                [(r.name, _Peers(r.to), _Ports(r.ports)) for r in scope.egress],
                scope.allow_cluster_dns,
            )
        if scope.ingress is not None:
            self.ingress[key] = _Rules(
                f"{path}.ingress", [(r.name, _Peers(r.from_), _Ports(r.ports)) for r in scope.ingress]
            )

    # ------------------------------------------------------------------ judging
    def evaluate(
        self, flows: pd.DataFrame, resolved: pd.Series | None = None, codes: BatchCodes | None = None
    ) -> Verdicts:
        """Judge every row of an enriched flow frame (columns :data:`COLUMNS`).

        ``resolved``: per row, a name the source pod resolved to the destination address
        (its own DNS answers, "" when none): a domain rule matches it like the flow's SNI.
        ``codes``: the frame's columns already factorised (shared with the threat feeds).
        """
        n = len(flows)
        violation = np.zeros(n, dtype=bool)
        rule = _blank(n)
        reason = _blank(n)
        if not n or not self.declared:
            return Verdicts(violation, rule, reason, _blank(n))
        matched_id = np.full(n, -1, dtype="int64")  # into batch.name_table()
        batch = _Batch(flows, resolved, codes, self._seen)
        for direction, table, end in (("egress", self.egress, "src"), ("ingress", self.ingress, "dst")):
            if not table:
                continue
            keys = list(table)
            scope = self._scope_index(keys, batch, end)
            present = np.bincount(scope[scope >= 0], minlength=len(keys))  # no hash of every row
            for i in np.flatnonzero(present).tolist():
                sel = np.flatnonzero((scope == i) & ~violation)
                if not len(sel):
                    continue
                rules = table[keys[i]]
                bad, peer_ok, name = self._judge(rules, batch, sel, direction)
                hit = sel[bad]
                violation[hit] = True
                rule[hit] = rules.path
                other = REASON_DESTINATION if direction == "egress" else REASON_SOURCE
                reason[hit] = np.where(peer_ok[bad], REASON_PORT, other)
                if len(name):
                    matched_id[sel] = np.where(name >= 0, name, matched_id[sel])
        if self.endpoints:
            self._judge_endpoints(batch, violation, rule, reason)
        matched = _blank(n)
        has = matched_id >= 0
        if has.any():
            matched[has] = batch.name_table()[matched_id[has]]
        return Verdicts(violation, rule, reason, matched)

    @staticmethod
    def _scope_index(keys: list[str], b: _Batch, end: str) -> np.ndarray:
        """Per row: the declared scope judging it (workload first, then namespace), -1 for none."""
        index = {k: i for i, k in enumerate(keys)}
        ns = b.col(f"{end}_namespace")
        out = np.array([index.get(v, -1) for v in ns.uniques.tolist()], dtype="int64")[ns.codes]
        if any("/" in k for k in keys):
            full = b.workloads(end)
            by_wl = np.array([index.get(v, -1) for v in full.uniques.tolist()], dtype="int64")[full.codes]
            out = np.where(by_wl >= 0, by_wl, out)
        return out

    def _peer_mask(
        self, peers: _Peers, b: _Batch, sel: np.ndarray, end: str
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Whether the ``end`` ("dst"/"src") of the selected rows is in ``peers``; the ids of the
        names that matched (-1: none; None when the rule has no domains)."""
        m = len(sel)
        if peers.any:
            return np.ones(m, dtype=bool), None
        ok = np.zeros(m, dtype=bool)
        if peers.cidrs is not None:
            ok |= b.in_cidrs(peers, end, b.col(f"{end}_ip").codes[sel])
        if peers.any_namespace:
            ok |= b.col(f"{end}_namespace").nonempty(sel)
        elif peers.namespaces:
            ok |= b.col(f"{end}_namespace").isin(peers.namespaces, sel)
        if peers.workloads:
            ok |= b.workloads(end).isin(peers.workloads, sel)
        name: np.ndarray | None = None
        if end == "dst" and len(peers.names):
            name = np.full(m, -1, dtype="int64")  # ids into b.name_table()
            for col, offset in b.name_ids():
                codes = col.codes[sel]
                filled = col.filled[codes]
                if not filled.any():  # most flows carry no name in this column
                    continue
                present = np.unique(codes[filled])
                hit = (col.names_hit(id(peers), peers.names, present) > 0)[codes] & filled
                fresh = hit & ~ok
                name[fresh] = codes[fresh] + offset
                ok |= hit
        if peers.nodes or peers.control_plane:
            cp = self.env.api_server_ips if (peers.control_plane and self.env.api_server_ips) else None
            ok |= b.col(f"{end}_ip").isin(cp if cp is not None else self.env.node_ips, sel)
        return ok, name

    def _judge(
        self, rules: _Rules, b: _Batch, sel: np.ndarray, direction: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per selected row: not allowed, whether some rule's peer matched (then the port was
        wrong), and the id of the name that allowed it (-1: none; empty when no domain rule allowed any)."""
        port, proto = b.port[sel], b.proto[sel]
        allowed = np.zeros(len(sel), dtype=bool)
        name: np.ndarray | None = None
        if rules.allow_dns:
            allowed |= b.col("dst_ip").isin(self.env.cluster_dns, sel) & (port == self.env.dns_port)
        end = "dst" if direction == "egress" else "src"
        todo = np.flatnonzero(~allowed)  # each rule looks only at what no earlier rule allowed
        keys: set[tuple[int, int]] | None = None  # distinct (port, protocol) of few rows left
        for _name, peers, ports in rules.rules:
            if not len(todo):
                break
            if keys is None and len(todo) <= _FEW_ROWS:
                keys = set(zip(port[todo].tolist(), proto[todo].tolist(), strict=True))
            if keys is not None and not ports.allows_any(keys):
                continue
            # The port first (plain integer compares): the peer, which costs set and interval
            # look-ups, is only asked for the rows whose port this rule allows.
            cand = todo[ports.match(port[todo], proto[todo])]
            if not len(cand):
                continue
            ok, nm = self._peer_mask(peers, b, sel[cand], end)
            allowed[cand[ok]] = True
            if ok.any():
                todo = todo[~allowed[todo]]
                keys = None
            if nm is not None:
                named = ok & (nm >= 0)
                if named.any():
                    if name is None:
                        name = np.full(len(sel), -1, dtype="int64")
                    name[cand[named]] = nm[named]
        # Why each refused row was refused: a rule's peer matched it (then its port was wrong) or
        # none did. Asked only for those rows (few), not for every row and rule.
        bad = np.flatnonzero(~allowed)
        peer_ok = np.zeros(len(sel), dtype=bool)
        for _name, peers, _ports in rules.rules:
            todo = bad[~peer_ok[bad]]
            if not len(todo):
                break
            ok, _ = self._peer_mask(peers, b, sel[todo], end)
            peer_ok[todo[ok]] = True
        return ~allowed, peer_ok, name if name is not None else np.zeros(0, dtype="int64")

    def _judge_endpoints(
        self, b: _Batch, violation: np.ndarray, rule: np.ndarray, reason: np.ndarray
    ) -> None:
        env = self.env
        dst, every = b.col("dst_ip"), np.arange(b.n)
        port, proto = b.port, b.proto
        tcp = proto == 6
        to_node = dst.isin(env.node_ips | env.api_server_ips, every)
        to_api = dst.isin(env.api_server_ips, every) if env.api_server_ips else to_node
        reach = {
            "etcd": to_node & tcp & np.isin(port, env.etcd_ports),
            "api_server": to_api & tcp & (port == env.api_server_port),
            "kubelet": to_node & tcp & (port == env.kubelet_port),
            "metadata_api": dst.isin(env.metadata_api, every),
        }
        for endpoint, peers in self.endpoints.items():
            sel = np.flatnonzero(reach[endpoint] & ~violation)
            if not len(sel):
                continue
            ok, _ = self._peer_mask(peers, b, sel, "src")
            bad = sel[~ok]
            violation[bad] = True
            rule[bad] = f"cluster.{endpoint}"
            reason[bad] = REASON_SOURCE
