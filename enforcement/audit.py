"""What rule files deny, computed from the files themselves: the audit of "exactly the decided pairs".

Each backend writes rules in its own language; each checker here reads that language back,
with the semantics of the system that enforces it, and returns the denied pairs as
:data:`Pairs`: source address -> the target networks it may not reach (collapsed, so that two
ways of writing the same addresses compare equal), or ``{"*"}`` for a source cut off from
everything but protected addresses (a quarantine). :func:`decided_pairs` computes the same from
decisions. An audit is ``checker(rules) == decided_pairs(decisions)``.

A checker refuses (:class:`AuditError`) any rule it does not understand, an Allow where only
denials belong, a quarantine exception that is not a protected address: what cannot be proved
is reported, never guessed.

* :func:`nftables_pairs`: the JSON of ``nft -j list ruleset`` (or of ``list table``);
  :func:`nftables_text_pairs`: the ``rules.nft`` file the nftables backend renders.
* :func:`calico_pairs`: GlobalNetworkPolicies (and GlobalNetworkSets their selectors name).
* :func:`networkpolicy_pairs`: NetworkPolicies, with the labels the enforcer puts on pods;
  policies are additive (a pod may reach the union of what its policies allow).
* :func:`cilium_pairs`: CiliumClusterwideNetworkPolicies ``egressDeny``, with the pods' labels.
* :func:`adminnetworkpolicy_pairs`: AdminNetworkPolicies (rules in order, Deny and Pass).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flowwarden.enforcement.intervals import Ranges, span
from flowwarden.enforcement.targets import Network, parse_ip, parse_target
from flowwarden.errors import FlowwardenError
from flowwarden.records import Decision

Pairs = dict[str, frozenset[str]]
"""source address -> collapsed target networks it is denied, or ``{"*"}`` (cut off)."""

EVERYTHING = "*"
ACTIVE = ("applied", "simulated")
_MAX = {4: 2**32 - 1, 6: 2**128 - 1}


class AuditError(FlowwardenError):
    """A rule the checker cannot account for (so nothing about the file can be proved)."""


@dataclass
class Pod:
    """A pod as the policies see it: its address and labels (the enforcer's patches included)."""

    namespace: str
    name: str
    ip: str
    labels: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- building pairs


class _Collector:
    """Denied networks per source, then the canonical :data:`Pairs`."""

    def __init__(self, protected: Ranges[Any] | None = None) -> None:
        self.nets: dict[str, list[Network]] = {}
        self.everything: set[str] = set()
        self.protected = protected or Ranges()

    def deny(self, source: str, nets: Iterable[Network]) -> None:
        src = parse_ip(source)
        same = [n for n in nets if n.version == src.version]
        if same:
            self.nets.setdefault(str(src), []).extend(same)

    def cut_off(self, source: str, exceptions: Iterable[Network] = ()) -> None:
        for n in exceptions:
            if not self._inside_protected(n):
                raise AuditError(f"quarantine of {source} spares {n}, which is not a protected address")
        self.everything.add(str(parse_ip(source)))

    def denied_ranges(self, source: str, ranges: dict[int, list[tuple[int, int]]]) -> None:
        """``source`` is denied these integer ranges: a quarantine when all it may reach is protected."""
        src = parse_ip(source)
        allowed = _complement(ranges.get(src.version, []), src.version)
        if not ranges.get(src.version):
            return
        if all(self._inside_protected(n) for lo, hi in allowed for n in _nets(lo, hi, src.version)):
            self.everything.add(str(src))
            return
        for lo, hi in ranges[src.version]:
            self.deny(source, _nets(lo, hi, src.version))

    def _inside_protected(self, net: Network) -> bool:
        hit = self.protected.first_overlap(net)
        return hit is not None and net.subnet_of(hit.net)  # type: ignore[arg-type]

    def pairs(self) -> Pairs:
        out: Pairs = {src: frozenset({EVERYTHING}) for src in self.everything}
        for src, nets in self.nets.items():
            if src in out:
                continue
            out[src] = frozenset(str(n) for n in ipaddress.collapse_addresses(nets))  # type: ignore[type-var]
        return out


def decided_pairs(decisions: Iterable[Decision]) -> Pairs:
    """The pairs that the active (applied or simulated) block and quarantine decisions ask for."""
    c = _Collector()
    for d in decisions:
        if d.status not in ACTIVE:
            continue
        if d.action == "quarantine":
            c.everything.add(str(parse_ip(d.source.ip)))
        elif d.action == "block":
            c.deny(d.source.ip, (parse_target(t) for t in d.targets))
    return c.pairs()


def extra_pairs(denied: Pairs, decided: Pairs) -> int:
    """How many (source, address) pairs ``denied`` has beyond ``decided`` (addresses counted)."""
    total = 0
    for src, nets in denied.items():
        want = decided.get(src, frozenset())
        if EVERYTHING in want:
            continue
        if EVERYTHING in nets:
            return -1  # a whole source cut off that nobody decided: not countable
        mine = [ipaddress.ip_network(n) for n in want]
        for n in nets:
            net = ipaddress.ip_network(n)
            inside = sum(net_overlap(net, m) for m in mine)
            total += net.num_addresses - inside
    return total


def net_overlap(a: Network, b: Network) -> int:
    if a.version != b.version:
        return 0
    (_, a0, a1), (_, b0, b1) = span(a), span(b)
    return max(0, min(a1, b1) - max(a0, b0) + 1)


# --------------------------------------------------------------------------- nftables


def nftables_pairs(listing: Mapping[str, Any], table: str = "flowwarden") -> Pairs:
    """Pairs denied by flowwarden's table in a ``nft -j list ruleset`` listing.

    The chains must consist of the backend's rule shapes only: accept to/from ``@protected_*``,
    deny ``saddr . daddr @blocked_*``, deny ``saddr``/``daddr @quarantine_*``. Protected
    addresses are accepted before any denial, so they are taken out of every denied pair.
    """
    items = [i for i in listing.get("nftables", []) if isinstance(i, dict)]
    sets: dict[str, list[Any]] = {}
    rules: list[list[dict[str, Any]]] = []
    for item in items:
        obj = item.get("set") or item.get("rule") or item.get("chain")
        if not isinstance(obj, dict) or obj.get("table") != table or obj.get("family") != "inet":
            continue
        if "set" in item:
            sets[obj["name"]] = list(obj.get("elem", []))
        elif "rule" in item:
            rules.append(list(obj.get("expr", [])))
        elif obj.get("policy", "accept") != "accept":
            raise AuditError(f"chain {obj.get('name')} has policy {obj.get('policy')}")
    used: set[str] = set()
    for expr in rules:
        used.add(_nft_rule_kind(expr))
    protected = Ranges(
        (n, "protected") for name in ("protected_v4", "protected_v6") for n in _nft_nets(sets.get(name, []))
    )
    c = _Collector(protected)
    for fam in ("v4", "v6"):
        if f"blocked_{fam}" in used:
            for raw in sets.get(f"blocked_{fam}", []):
                src, dst = _nft_pair(raw)
                c.deny(src, _minus(dst, protected))
        if f"quarantine_{fam}" in used:
            for raw in sets.get(f"quarantine_{fam}", []):
                c.cut_off(str(_nft_value(raw)))
    return c.pairs()


def _nft_rule_kind(expr: list[dict[str, Any]]) -> str:
    """Which set a rule applies and how; AuditError for any other rule."""
    matches = [e["match"] for e in expr if "match" in e]
    verdicts = [
        k for e in expr for k in e if k in ("accept", "drop", "reject", "jump", "goto", "return", "queue")
    ]
    others = [k for e in expr for k in e if k not in ("match", "counter", "accept", "drop", "reject")]
    if others or len(verdicts) != 1:
        raise AuditError(f"unexpected rule {expr}")
    sets = [m for m in matches if isinstance(m.get("right"), str) and m["right"].startswith("@")]
    rest = [m for m in matches if m not in sets]
    if len(sets) != 1 or any(m.get("left") != {"meta": {"key": "l4proto"}} for m in rest):
        raise AuditError(f"unexpected rule {expr}")
    m = sets[0]
    name = m["right"][1:]
    if m.get("op") != "==":
        raise AuditError(f"unexpected match {m}")
    left = m["left"]
    fam = "ip6" if name.endswith("v6") else "ip"
    if name.startswith("protected_"):
        ok = verdicts[0] == "accept" and left in (_payload(fam, "saddr"), _payload(fam, "daddr"))
    elif name.startswith("blocked_"):
        ok = verdicts[0] in ("drop", "reject") and left == {
            "concat": [_payload(fam, "saddr"), _payload(fam, "daddr")]
        }
    elif name.startswith("quarantine_"):
        ok = verdicts[0] in ("drop", "reject") and left in (_payload(fam, "saddr"), _payload(fam, "daddr"))
    else:
        ok = False
    if not ok:
        raise AuditError(f"unexpected rule {expr}")
    return name


def _payload(proto: str, fieldname: str) -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": fieldname}}


def _nft_value(raw: Any) -> Any:
    elem = raw.get("elem", raw) if isinstance(raw, dict) else raw
    return elem.get("val", elem) if isinstance(elem, dict) and "val" in elem else elem


def _nft_nets(raws: Iterable[Any]) -> list[Network]:
    return [n for raw in raws for n in _nft_net(_nft_value(raw))]


def _nft_net(v: Any) -> list[Network]:
    if isinstance(v, str):
        return [ipaddress.ip_network(v)]
    if isinstance(v, dict) and "prefix" in v:
        return [ipaddress.ip_network(f"{v['prefix']['addr']}/{v['prefix']['len']}")]
    if isinstance(v, dict) and "range" in v:
        lo, hi = (ipaddress.ip_address(x) for x in v["range"])
        return list(ipaddress.summarize_address_range(lo, hi))
    raise AuditError(f"unexpected set element {v!r}")


def _nft_pair(raw: Any) -> tuple[str, list[Network]]:
    v = _nft_value(raw)
    if not (isinstance(v, dict) and isinstance(v.get("concat"), list) and len(v["concat"]) == 2):
        raise AuditError(f"unexpected pair element {raw!r}")
    src, dst = v["concat"]
    if not isinstance(src, str):
        raise AuditError(f"a blocked source must be one address: {src!r}")
    return src, _nft_net(dst)


def _minus(nets: Iterable[Network], protected: Ranges[Any]) -> list[Network]:
    out: list[Network] = []
    for n in nets:
        if not protected.overlaps(n):
            out.append(n)
            continue
        rest = [(span(n)[1], span(n)[2])]
        for t in protected.items:
            if t.net.version == n.version:
                rest = _subtract(rest, [(span(t.net)[1], span(t.net)[2])])
        out += [x for lo, hi in rest for x in _nets(lo, hi, n.version)]
    return out


_NFT_ELEMENTS = re.compile(r"^\s*elements = \{ (.*) \}$")
_NFT_SET = re.compile(r"^\s*set (\w+) \{$")
_NFT_RULES = (
    r"(ip|ip6) (daddr|saddr) @protected_v[46] accept",
    r"(meta l4proto tcp )?(ip|ip6) saddr \. (ip|ip6) daddr @blocked_v[46] counter "
    r"(reject with tcp reset|reject with icmpx admin-prohibited|drop)",
    r"(meta l4proto tcp )?(ip|ip6) (saddr|daddr) @quarantine_v[46] counter "
    r"(reject with tcp reset|reject with icmpx admin-prohibited|drop)",
    r"type filter hook (forward|output) priority -10; policy accept;",
)


def nftables_text_pairs(text: str) -> Pairs:
    """Pairs denied by a ``rules.nft`` as the nftables backend renders it (``nft -f`` syntax).

    Every line must be one of the backend's shapes (sets, elements, the rules above); the
    elements are read back into the JSON form :func:`nftables_pairs` reads.
    """
    sets: dict[str, list[Any]] = {}
    current = ""
    rules: list[str] = []
    for line in text.splitlines():
        s = line.strip()
        if m := _NFT_SET.match(line):
            current = m.group(1)
            sets[current] = []
        elif m := _NFT_ELEMENTS.match(line):
            for item in m.group(1).split(", "):
                sets[current].append(_nft_text_elem(item))
        elif s.startswith(("type ", "flags ", "table inet ", "chain ")) or s in ("}", ""):
            if s.startswith("type filter"):
                rules.append(s)
            continue
        else:
            rules.append(s)
    for r in rules:
        if not any(re.fullmatch(p, r) for p in _NFT_RULES):
            raise AuditError(f"unexpected rule line {r!r}")
    listing = {
        "nftables": [{"set": {"family": "inet", "table": "t", "name": k, "elem": v}} for k, v in sets.items()]
    }
    listing["nftables"] += [
        {"rule": {"family": "inet", "table": "t", "expr": _nft_text_rule(r)}} for r in rules if "@" in r
    ]
    return nftables_pairs(listing, table="t")


def _nft_text_elem(item: str) -> Any:
    value = item.split(" timeout ")[0].strip()
    if " . " in value:
        src, dst = value.split(" . ")
        return {"concat": [src, _nft_text_net(dst)]}
    return _nft_text_net(value)


def _nft_text_net(v: str) -> Any:
    if "/" in v:
        addr, length = v.split("/")
        return {"prefix": {"addr": addr, "len": int(length)}}
    return v


def _nft_text_rule(line: str) -> list[dict[str, Any]]:
    words = line.split()
    expr: list[dict[str, Any]] = []
    if line.startswith("meta l4proto tcp"):
        expr.append({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}})
        words = words[3:]
    if words[2] == ".":
        left: dict[str, Any] = {"concat": [_payload(words[0], words[1]), _payload(words[3], words[4])]}
        right, rest = words[5], words[6:]
    else:
        left, right, rest = _payload(words[0], words[1]), words[2], words[3:]
    expr.append({"match": {"op": "==", "left": left, "right": right}})
    expr += [{"counter": None}] if rest and rest[0] == "counter" else []
    verdict = rest[-1] if rest[-1] in ("accept", "drop") else "reject"
    expr.append({verdict: None})
    return expr


# --------------------------------------------------------------------------- Calico


_SELECTOR = re.compile(r"^([A-Za-z0-9./_-]+) == '([^']*)'$")


def calico_pairs(docs: Iterable[Mapping[str, Any]], protected: Iterable[str] = ()) -> Pairs:
    """Pairs denied by flowwarden's GlobalNetworkPolicies (tier ``flowwarden``).

    Deny rules with ``source.nets`` or a ``label == 'value'`` selector over GlobalNetworkSets
    (the former design, resolved set by set); destination ``nets`` (a block) or ``notNets``
    of protected addresses (a quarantine). Pass rules send traffic on; any Allow or other
    field is refused.
    """
    docs = [d for d in docs if isinstance(d, Mapping)]
    sets = [d for d in docs if d.get("kind") == "GlobalNetworkSet"]
    c = _Collector(Ranges((n, "protected") for n in protected))
    for doc in docs:
        if doc.get("kind") != "GlobalNetworkPolicy":
            continue
        spec = doc["spec"]
        if spec.get("tier") != "flowwarden" or spec.get("selector") != "all()":
            raise AuditError(f"{doc['metadata']['name']}: not a flowwarden policy on all()")
        for direction in ("egress", "ingress"):
            for rule in spec.get(direction, []):
                if rule.get("action") == "Pass" and set(rule) == {"action"}:
                    continue
                if rule.get("action") != "Deny" or set(rule) - {"action", "source", "destination"}:
                    raise AuditError(f"{doc['metadata']['name']}: unexpected rule {rule}")
                sources = _calico_nets(rule.get("source", {}), sets, "source")
                dst = rule.get("destination", {})
                for src in sources:
                    if src.num_addresses != 1:
                        raise AuditError(f"a source must be one address: {src}")
                    if "notNets" in dst or not dst:
                        if set(dst) - {"notNets"}:
                            raise AuditError(f"unexpected destination {dst}")
                        c.cut_off(
                            str(src.network_address),
                            (ipaddress.ip_network(n) for n in dst.get("notNets", [])),
                        )
                    else:
                        c.deny(str(src.network_address), _calico_nets(dst, sets, "destination"))
    return c.pairs()


def _calico_nets(side: Mapping[str, Any], sets: list[Mapping[str, Any]], role: str) -> list[Network]:
    if set(side) == {"nets"}:
        return [ipaddress.ip_network(n) for n in side["nets"]]
    if set(side) == {"selector"}:
        m = _SELECTOR.match(side["selector"])
        if not m:
            raise AuditError(f"{role} selector {side['selector']!r} not understood")
        key, value = m.groups()
        return [
            ipaddress.ip_network(n)
            for s in sets
            if s["metadata"].get("labels", {}).get(key) == value
            for n in s["spec"]["nets"]
        ]
    raise AuditError(f"unexpected {role} {dict(side)}")


# --------------------------------------------------------------------------- NetworkPolicy


def networkpolicy_pairs(
    docs: Iterable[Mapping[str, Any]], pods: Iterable[Pod], protected: Iterable[str] = ()
) -> Pairs:
    """Pairs denied by NetworkPolicies to ``pods``: a pod any Egress policy selects may reach
    only the union of what those policies allow (they are additive); the rest is denied."""
    policies = [d for d in docs if isinstance(d, Mapping) and d.get("kind") == "NetworkPolicy"]
    c = _Collector(Ranges((n, "protected") for n in protected))
    for pod in pods:
        mine = [p for p in policies if _selects_pod(p, pod)]
        if not mine:
            continue
        allowed: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for p in mine:
            for rule in p["spec"].get("egress", []):
                if set(rule) - {"to", "ports"} or not rule.get("to"):
                    raise AuditError(f"{p['metadata']['name']}: egress rule {rule} not understood")
                for peer in rule["to"]:
                    if set(peer) != {"ipBlock"}:
                        raise AuditError(f"{p['metadata']['name']}: peer {peer} not understood")
                    net = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                    excepts = [span(ipaddress.ip_network(x))[1:] for x in peer["ipBlock"].get("except", [])]
                    allowed[net.version] = _union(allowed[net.version] + _subtract([span(net)[1:]], excepts))
        c.denied_ranges(pod.ip, {v: _complement(r, v) for v, r in allowed.items()})
    return c.pairs()


def _selects_pod(policy: Mapping[str, Any], pod: Pod) -> bool:
    meta, spec = policy["metadata"], policy["spec"]
    if meta.get("namespace") != pod.namespace or "Egress" not in spec.get("policyTypes", []):
        return False
    selector = spec.get("podSelector", {})
    if set(selector) - {"matchLabels"}:
        raise AuditError(f"{meta['name']}: podSelector {selector} not understood")
    return all(pod.labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


# --------------------------------------------------------------------------- Cilium


def cilium_pairs(
    docs: Iterable[Mapping[str, Any]], pods: Iterable[Pod], protected: Iterable[str] = ()
) -> Pairs:
    """Pairs denied by CiliumClusterwideNetworkPolicies' ``egressDeny`` (``toCIDR``/``toCIDRSet``)
    to the ``pods`` their ``endpointSelector`` selects; any allow rule or other peer is refused."""
    policies = [
        d for d in docs if isinstance(d, Mapping) and d.get("kind") == "CiliumClusterwideNetworkPolicy"
    ]
    pods = list(pods)
    c = _Collector(Ranges((n, "protected") for n in protected))
    denied: dict[str, dict[int, list[tuple[int, int]]]] = {}
    for p in policies:
        spec = p["spec"]
        if set(spec) - {"endpointSelector", "egressDeny"}:
            raise AuditError(f"{p['metadata']['name']}: only endpointSelector and egressDeny expected")
        selector = spec["endpointSelector"]
        if set(selector) != {"matchLabels"} or not selector["matchLabels"]:
            raise AuditError(f"{p['metadata']['name']}: endpointSelector {selector} not understood")
        nets: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for rule in spec.get("egressDeny", []):
            if set(rule) - {"toCIDR", "toCIDRSet"}:
                raise AuditError(f"{p['metadata']['name']}: egressDeny rule {rule} not understood")
            for cidr in rule.get("toCIDR", []):
                n = ipaddress.ip_network(cidr)
                nets[n.version].append(span(n)[1:])
            for item in rule.get("toCIDRSet", []):
                n = ipaddress.ip_network(item["cidr"])
                excepts = [span(ipaddress.ip_network(x))[1:] for x in item.get("except", [])]
                nets[n.version] += _subtract([span(n)[1:]], excepts)
        for pod in pods:
            labels = {**pod.labels, "io.kubernetes.pod.namespace": pod.namespace}
            if all(labels.get(k) == v for k, v in selector["matchLabels"].items()):
                mine = denied.setdefault(pod.ip, {4: [], 6: []})
                for v in (4, 6):
                    mine[v] = _union(mine[v] + nets[v])
    for ip, ranges in denied.items():
        c.denied_ranges(ip, ranges)
    return c.pairs()


# --------------------------------------------------------------------------- AdminNetworkPolicy


def adminnetworkpolicy_pairs(
    docs: Iterable[Mapping[str, Any]], pods: Iterable[Pod], protected: Iterable[str] = ()
) -> Pairs:
    """Pairs denied by AdminNetworkPolicies to the ``pods`` their subject selects: rules in order,
    the first that matches an address decides (Pass hands it on to NetworkPolicy, Deny denies);
    policies of one priority with such rules add their denials up. Allow and other peers are refused."""
    policies = [d for d in docs if isinstance(d, Mapping) and d.get("kind") == "AdminNetworkPolicy"]
    pods = list(pods)
    c = _Collector(Ranges((n, "protected") for n in protected))
    denied: dict[str, dict[int, list[tuple[int, int]]]] = {}
    for p in policies:
        spec, name = p["spec"], p["metadata"]["name"]
        if set(spec) - {"priority", "subject", "egress"} or set(spec["subject"]) != {"pods"}:
            raise AuditError(f"{name}: only a pods subject and egress rules expected")
        sel = spec["subject"]["pods"]
        ns_labels = sel["namespaceSelector"].get("matchLabels", {})
        pod_labels = sel["podSelector"].get("matchLabels", {})
        if set(sel["namespaceSelector"]) - {"matchLabels"} or set(sel["podSelector"]) - {"matchLabels"}:
            raise AuditError(f"{name}: selectors other than matchLabels")
        decided: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        mine: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for rule in spec.get("egress", []):
            if rule.get("action") not in ("Deny", "Pass") or set(rule) - {"name", "action", "to"}:
                raise AuditError(f"{name}: rule {rule} not understood")
            nets: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
            for peer in rule["to"]:
                if set(peer) != {"networks"}:
                    raise AuditError(f"{name}: peer {peer} not understood")
                for n in (ipaddress.ip_network(x) for x in peer["networks"]):
                    nets[n.version].append(span(n)[1:])
            for v in (4, 6):
                fresh = _subtract(nets[v], decided[v])  # an earlier rule decided the rest
                if rule["action"] == "Deny":
                    mine[v] = _union(mine[v] + fresh)
                decided[v] = _union(decided[v] + nets[v])
        for pod in pods:
            if {NAMESPACE_KEY: pod.namespace}.items() >= ns_labels.items() and all(
                pod.labels.get(k) == v for k, v in pod_labels.items()
            ):
                acc = denied.setdefault(pod.ip, {4: [], 6: []})
                for v in (4, 6):
                    acc[v] = _union(acc[v] + mine[v])
    for ip, ranges in denied.items():
        c.denied_ranges(ip, ranges)
    return c.pairs()


NAMESPACE_KEY = "kubernetes.io/metadata.name"


# --------------------------------------------------------------------------- integer ranges


def _union(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _subtract(ranges: list[tuple[int, int]], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    holes = _union(holes)
    for lo, hi in _union(ranges):
        cur = lo
        for a, b in holes:
            if b < cur or a > hi:
                continue
            if a > cur:
                out.append((cur, a - 1))
            cur = max(cur, b + 1)
        if cur <= hi:
            out.append((cur, hi))
    return out


def _complement(ranges: list[tuple[int, int]], version: int) -> list[tuple[int, int]]:
    return _subtract([(0, _MAX[version])], ranges)


def _nets(lo: int, hi: int, version: int) -> list[Network]:
    cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    return list(ipaddress.summarize_address_range(cls(lo), cls(hi)))
