"""nftables backend: blocks are elements, with timeouts, of named sets in flowwarden's own table.

The table (``inet <settings.enforcement.nft_table>``) holds:

* ``blocked_v4`` / ``blocked_v6``: ``source . target`` pairs (targets may be CIDRs);
* ``quarantine_v4`` / ``quarantine_v6``: sources cut off in both directions;
* ``protected_v4`` / ``protected_v6``: control plane, nodes, DNS and protected addresses;
  traffic to and from them is accepted before any block rule, a second line behind the
  guardrails (so even a quarantined pod still reaches the API server and the DNS);
* chains on the ``forward`` and ``output`` hooks.

Every element carries a ``timeout``, so the kernel lifts a block when its TTL ends even if
flowwarden is down. A block is a change of data (set elements), never of rules; the rules
are rebuilt to their canonical form at start, which also removes anything added by hand.
Nothing outside the table is ever touched. Overlapping elements of one source are merged
into the widest network with the latest expiry (the kernel refuses overlaps in these sets).

One path, libnftables JSON, for applying and for rendering: the table is described once as
JSON commands (:meth:`NftablesBackend.ruleset_commands`); applying sends them to
libnftables in-process through the ``nftables`` binding (the PyPI package ``pip-nftables``,
the same ``nftables.py`` Debian ships as python3-nftables, over the system's libnftables1),
or through ``ip netns exec NAME nft -j -f -`` (argument list) when ``nft_netns`` names a
namespace, since the binding acts in its own process's namespace. The dry-run's
``rules.nft`` is the same JSON written in ``nft -f`` syntax by :func:`nft_text`, and
:meth:`NftablesBackend.render_json` gives the JSON itself (``nft -j -f FILE`` loads it).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flowwarden.enforcement.backends.base import BACKENDS, Backend, BackendError
from flowwarden.enforcement.intervals import Ranges, span
from flowwarden.enforcement.targets import Network, parse_ip, parse_target
from flowwarden.records import Decision
from flowwarden.settings import Settings

log = logging.getLogger(__name__)

FAMILY = "inet"
HOOKS = ("forward", "output")
PRIORITY = -10
SET_TYPES: dict[str, Any] = {
    "blocked_v4": (["ipv4_addr", "ipv4_addr"], ["interval", "timeout"]),
    "blocked_v6": (["ipv6_addr", "ipv6_addr"], ["interval", "timeout"]),
    "quarantine_v4": ("ipv4_addr", ["timeout"]),
    "quarantine_v6": ("ipv6_addr", ["timeout"]),
    "protected_v4": ("ipv4_addr", ["interval"]),
    "protected_v6": ("ipv6_addr", ["interval"]),
}
BLOCK_SETS = ("blocked_v4", "blocked_v6", "quarantine_v4", "quarantine_v6")

Key = tuple[str, str, str]  # (set, source, target or "")


# --------------------------------------------------------------------------- transport


class Transport:
    """Runs one libnftables JSON batch atomically; returns the parsed output."""

    def run(self, commands: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError


class LibNftables(Transport):
    """In-process, through the libnftables binding (fastest: no fork)."""

    def __init__(self) -> None:
        import nftables  # the PyPI package pip-nftables; needs Debian's libnftables1

        self.nft = nftables.Nftables()
        self.nft.set_json_output(True)

    def run(self, commands: list[dict[str, Any]]) -> dict[str, Any]:
        rc, out, err = self.nft.json_cmd({"nftables": commands})
        if rc != 0:
            raise BackendError(f"nftables: {str(err).strip() or rc}")
        return out if isinstance(out, dict) else {}


class NftCommand(Transport):
    """``nft -j -f -`` as an argument list, optionally inside a named network namespace."""

    def __init__(self, netns: str = "", timeout_s: float = 10.0) -> None:
        self.argv = (["ip", "netns", "exec", netns] if netns else []) + ["nft", "-j", "-f", "-"]
        self.timeout_s = timeout_s

    def run(self, commands: list[dict[str, Any]]) -> dict[str, Any]:
        try:
            proc = subprocess.run(
                self.argv,
                input=json.dumps({"nftables": commands}),
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BackendError(f"nftables: {exc}") from exc
        if proc.returncode != 0:
            raise BackendError(f"nftables: {proc.stderr.strip() or proc.returncode}")
        return json.loads(proc.stdout) if proc.stdout.strip() else {}


def make_transport(netns: str) -> Transport:
    """The binding in-process; ``nft -j -f -`` inside a namespace, or where the binding cannot load.

    Both take the same libnftables JSON, so the fallback changes the cost of a call (a fork),
    never what is applied.
    """
    if netns:
        return NftCommand(netns)
    try:
        return LibNftables()
    except (ImportError, OSError) as exc:  # no pip-nftables, or no libnftables.so.1 on the host
        log.warning("nftables binding unavailable, using nft -j instead error=%s", exc)
        return NftCommand()


# --------------------------------------------------------------------------- elements


@dataclass(frozen=True)
class Element:
    key: Key
    expires_at: float  # epoch seconds

    @property
    def set(self) -> str:
        return self.key[0]


def decision_elements(d: Decision, expires_at: float) -> tuple[list[Element], list[str]]:
    """The set elements that express ``d`` and the targets skipped (other address family)."""
    src = parse_ip(d.source.ip)
    fam = "v4" if src.version == 4 else "v6"
    if d.action == "quarantine":
        return [Element((f"quarantine_{fam}", str(src), ""), expires_at)], []
    out, skipped = [], []
    for t in d.targets:
        net = parse_target(t)
        if net.version != src.version:
            skipped.append(t)
            continue
        out.append(Element((f"blocked_{fam}", str(src), str(net)), expires_at))
    return out, skipped


def merge(elements: Iterable[Element]) -> dict[Key, float]:
    """Overlapping targets of one source collapse into the widest, with the latest expiry.

    CIDR networks either nest or do not touch, so one sort by (start, widest first) and one
    sweep per (set, source) find the outermost networks: O(n log n), not a scan per element.
    """
    merged: dict[Key, float] = {}
    groups: dict[tuple[str, str], list[tuple[Network, Element]]] = {}
    for e in elements:
        net = _net(e.key)
        if net is None:  # a quarantine: one element per source
            merged[e.key] = max(merged.get(e.key, e.expires_at), e.expires_at)
        else:
            groups.setdefault((e.key[0], e.key[1]), []).append((net, e))
    for rows in groups.values():
        rows.sort(key=lambda r: (r[0].version, int(r[0].network_address), -r[0].num_addresses))
        top: Key | None = None
        top_span: tuple[int, int, int] | None = None
        for net, e in rows:
            s = span(net)
            if top is not None and top_span is not None and s[0] == top_span[0] and s[2] <= top_span[2]:
                merged[top] = max(merged[top], e.expires_at)
                continue
            top, top_span = e.key, s
            merged[top] = max(merged.get(top, e.expires_at), e.expires_at)
    return merged


def overlapping(keys: Iterable[Key], wanted: Iterable[Key]) -> list[Key]:
    """The ``keys`` that overlap one of ``wanted`` (same set and source): one index, one lookup each."""
    index: dict[tuple[str, str], list[Network]] = {}
    exact: set[Key] = set()
    for w in wanted:
        net = _net(w)
        if net is None:
            exact.add(w)
        else:
            index.setdefault((w[0], w[1]), []).append(net)
    ranges = {k: Ranges((n, None) for n in nets) for k, nets in index.items()}
    out = []
    for k in keys:
        net = _net(k)
        if net is None:
            if k in exact:
                out.append(k)
            continue
        r = ranges.get((k[0], k[1]))
        if r is not None and r.overlaps(net):
            out.append(k)
    return out


def _net(key: Key) -> Network | None:
    return parse_target(key[2]) if key[2] else None


# --------------------------------------------------------------------------- backend


@BACKENDS.register("nftables")
class NftablesBackend(Backend):
    name = "nftables"
    kernel_expiry = True

    def __init__(
        self,
        *,
        table: str,
        protected: Iterable[str] = (),
        verdict: str = "reject",
        transport: Transport | None = None,
        netns: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        nets = [ipaddress.ip_network(p, strict=False) for p in protected]
        # The kernel refuses overlapping intervals: collapse per family first.
        self.protected = [
            str(n)
            for version in (4, 6)
            for n in ipaddress.collapse_addresses(x for x in nets if x.version == version)  # type: ignore[type-var]
        ]
        self.verdict = verdict
        self._transport = transport
        self.netns = netns
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, protected: Iterable[str] = ()) -> NftablesBackend:
        e = settings.enforcement
        return cls(table=e.nft_table, protected=protected, verdict=e.nft_verdict, netns=e.nft_netns)

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            self._transport = make_transport(self.netns)
        return self._transport

    # ------------------------------------------------------------------ table

    def start(self) -> None:
        self.ensure_table()

    def ensure_table(self) -> dict[str, Any]:
        """Create the table or bring its sets, chains and rules back to canonical form (atomic)."""
        present = self._table_objects()
        cmds: list[dict[str, Any]] = []  # the clean-up of what is there; the table comes after
        removed: list[str] = []
        for chain in present["chains"]:
            cmds.append({"flush": {"chain": self._obj(name=chain)}})
            if chain not in HOOKS:
                cmds.append({"delete": {"chain": self._obj(name=chain)}})
                removed.append(f"chain {chain}")
        for name, (stype, flags) in present["sets"].items():
            want = SET_TYPES.get(name)
            if want is None or _norm(want[0]) != _norm(stype) or sorted(want[1]) != sorted(flags):
                cmds.append({"delete": {"set": self._obj(name=name)}})
                removed.append(f"set {name}")
        self.transport.run(cmds + self.ruleset_commands({}, reset_protected=True))
        return {"removed": removed}

    def ruleset_commands(
        self, elements: dict[Key, float], *, reset_protected: bool = False
    ) -> list[dict[str, Any]]:
        """The table as libnftables JSON commands: sets, protected addresses, chains, rules,
        and ``elements`` (block elements with their expiry). The one description of the
        table: :meth:`ensure_table` applies it, :meth:`render` and :meth:`render_json` write it.
        """
        now = self.clock()
        cmds: list[dict[str, Any]] = [{"add": {"table": {"family": FAMILY, "name": self.table}}}]
        for name, (stype, flags) in SET_TYPES.items():
            cmds.append({"add": {"set": {**self._obj(name=name), "type": stype, "flags": flags}}})
        for fam in ("v4", "v6"):
            if reset_protected:
                cmds.append({"flush": {"set": self._obj(name=f"protected_{fam}")}})
            nets = [p for p in self.protected if (":" in p) == (fam == "v6")]
            if nets:
                elem = [_prefix(n) for n in nets]
                cmds.append({"add": {"element": {**self._obj(name=f"protected_{fam}"), "elem": elem}}})
        for hook in HOOKS:
            chain = {**self._obj(name=hook), "type": "filter", "hook": hook, "prio": PRIORITY}
            cmds.append({"add": {"chain": {**chain, "policy": "accept"}}})
            cmds.extend(
                {"add": {"rule": {**self._obj(chain=hook), "expr": expr}}} for expr in self._rule_exprs()
            )
        for name in SET_TYPES:
            elem = [
                {"elem": {"val": _val(k), "timeout": _timeout(exp, now)}}
                for k, exp in elements.items()
                if k[0] == name
            ]
            if elem:
                cmds.append({"add": {"element": {**self._obj(name=name), "elem": elem}}})
        return cmds

    def _rule_exprs(self) -> list[list[dict[str, Any]]]:
        rules: list[list[dict[str, Any]]] = []
        for ip, fam in (("ip", "v4"), ("ip6", "v6")):
            for side in ("daddr", "saddr"):  # to it, and its replies: a quarantine never cuts the API server
                rules.append([_match(_payload(ip, side), f"@protected_{fam}"), {"accept": None}])
        for ip, fam in (("ip", "v4"), ("ip6", "v6")):
            pair = {"concat": [_payload(ip, "saddr"), _payload(ip, "daddr")]}
            rules.extend(self._deny([_match(pair, f"@blocked_{fam}")]))
            for side in ("saddr", "daddr"):
                rules.extend(self._deny([_match(_payload(ip, side), f"@quarantine_{fam}")]))
        return rules

    def _deny(self, matches: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        if self.verdict == "drop":
            return [[*matches, {"counter": None}, {"drop": None}]]
        tcp = _match({"meta": {"key": "l4proto"}}, "tcp")
        return [
            [tcp, *matches, {"counter": None}, {"reject": {"type": "tcp reset"}}],
            [*matches, {"counter": None}, {"reject": {"type": "icmpx", "expr": "admin-prohibited"}}],
        ]

    def _obj(self, **kw: str) -> dict[str, Any]:
        return {"family": FAMILY, "table": self.table, **kw}

    def _table_objects(self) -> dict[str, Any]:
        """Chains and sets currently in our table (empty when the table does not exist)."""
        try:
            out = self.transport.run([{"list": {"table": {"family": FAMILY, "name": self.table}}}])
        except BackendError as exc:
            if "No such file" in str(exc) or "does not exist" in str(exc):
                return {"chains": [], "sets": {}}
            raise
        chains: list[str] = []
        sets: dict[str, tuple[Any, list[str]]] = {}
        for item in out.get("nftables", []):
            if "chain" in item:
                chains.append(item["chain"]["name"])
            elif "set" in item:
                sets[item["set"]["name"]] = (item["set"]["type"], list(item["set"].get("flags", [])))
        return {"chains": chains, "sets": sets}

    # ------------------------------------------------------------------ elements

    def current(self) -> dict[Key, float]:
        """Block elements in the kernel with their expiry (epoch seconds)."""
        now = self.clock()
        out = self.transport.run([{"list": {"table": {"family": FAMILY, "name": self.table}}}])
        found: dict[Key, float] = {}
        for item in out.get("nftables", []):
            s = item.get("set")
            if not s or s["name"] not in BLOCK_SETS:
                continue
            for raw in s.get("elem", []):
                elem = raw.get("elem", raw) if isinstance(raw, dict) else raw
                val = elem.get("val", elem) if isinstance(elem, dict) else elem
                expires = elem.get("expires", elem.get("timeout", 0)) if isinstance(elem, dict) else 0
                found[(s["name"], *_parse_val(val))] = now + float(expires or 0)
        return found

    def list_rules(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [
            {"set": k[0], "source": k[1], "target": k[2], "expires_in_s": round(exp - now, 1)}
            for k, exp in sorted(self.current().items())
        ]

    def apply(self, decision: Decision) -> dict[str, Any]:
        expires = _expiry(decision, self.clock())
        wanted, skipped = decision_elements(decision, expires)
        if not wanted:
            raise BackendError(f"nftables: no target of {decision.id} has the source's address family")
        try:
            current = self.current()
        except BackendError:
            self.ensure_table()  # removed behind our back: put it back, then apply
            current = self.current()
        same_src = {k: v for k, v in current.items() if k[1] == decision.source.ip}
        merged = merge([*(Element(k, v) for k, v in same_src.items()), *wanted])
        deletes = [k for k in same_src if k not in merged]
        adds = {k: v for k, v in merged.items() if k not in same_src or v > same_src[k] + 1}
        self._change(deletes, adds)
        return {
            "elements": [_show(k) for k in overlapping(merged, (w.key for w in wanted))],
            "timeout_s": _timeout(expires, self.clock()),
            "skipped_targets": skipped,
        }

    def revoke(self, decision: Decision) -> dict[str, Any]:
        wanted, _ = decision_elements(decision, 0.0)
        current = self.current()
        gone = overlapping(current, (w.key for w in wanted))
        self._change(gone, {})
        return {"removed": [_show(k) for k in gone]}

    def reconcile(self, active: list[Decision]) -> dict[str, Any]:
        table = self.ensure_table()
        now = self.clock()
        desired = merge(
            e for d in active for e in decision_elements(d, _expiry(d, now))[0] if e.expires_at > now
        )
        current = self.current()
        stray = [k for k in current if k not in desired]
        missing = {k: v for k, v in desired.items() if k not in current or current[k] + 2 < v}
        self._change(stray, missing)
        return {
            "removed": [_show(k) for k in stray] + table["removed"],
            "restored": [_show(k) for k in missing],
        }

    def _change(self, deletes: Iterable[Key], adds: dict[Key, float]) -> None:
        now = self.clock()
        cmds: list[dict[str, Any]] = []
        for k in deletes:
            cmds.append({"delete": {"element": {**self._obj(name=k[0]), "elem": [_val(k)]}}})
        for k, exp in adds.items():
            elem = {"elem": {"val": _val(k), "timeout": _timeout(exp, now)}}
            cmds.append({"add": {"element": {**self._obj(name=k[0]), "elem": [elem]}}})
        if not cmds:
            return
        try:
            self.transport.run(cmds)
        except BackendError:
            # An element may have expired in the kernel between listing and deleting: list again once.
            current = self.current()
            retry = [c for c in cmds if "add" in c or _cmd_key(c) in current]
            if retry:
                self.transport.run(retry)

    # ------------------------------------------------------------------ dry-run

    def preview(self, decision: Decision) -> Any:
        expires = _expiry(decision, self.clock())
        elements, skipped = decision_elements(decision, expires)
        now = self.clock()
        head = f"add element inet {self.table}"
        out = [
            f"{head} {e.set} {{ {_show(e.key)} timeout {_timeout(e.expires_at, now)}s }}" for e in elements
        ]
        return out + [f"skipped (address family): {t}" for t in skipped]

    def render_json(self, decisions: list[Decision]) -> dict[str, Any]:
        """The libnftables JSON document this backend would load for ``decisions`` (``nft -j -f``)."""
        now = self.clock()
        elements = merge(e for d in decisions for e in decision_elements(d, _expiry(d, now))[0])
        return {"nftables": self.ruleset_commands(elements)}

    def render(self, decisions: list[Decision]) -> str:
        """The same ruleset as :meth:`render_json`, in ``nft -f`` syntax (``rules.nft``)."""
        return nft_text(self.render_json(decisions)["nftables"])


# --------------------------------------------------------------------------- JSON helpers


def _payload(proto: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": field}}


def _match(left: dict[str, Any], right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": right}}


def _prefix(net: str) -> Any:
    n = ipaddress.ip_network(net)
    if n.num_addresses == 1:
        return str(n.network_address)
    return {"prefix": {"addr": str(n.network_address), "len": n.prefixlen}}


def _val(k: Key) -> Any:
    if not k[2]:
        return k[1]
    return {"concat": [k[1], _prefix(k[2])]}


def _parse_val(val: Any) -> tuple[str, str]:
    if isinstance(val, str):
        return (val, "")
    parts = val["concat"]
    src = parts[0]
    tgt = parts[1]
    if isinstance(tgt, dict) and "prefix" in tgt:
        tgt = f"{tgt['prefix']['addr']}/{tgt['prefix']['len']}"
    elif isinstance(tgt, dict) and "range" in tgt:
        lo, hi = tgt["range"]
        nets = list(ipaddress.summarize_address_range(ipaddress.ip_address(lo), ipaddress.ip_address(hi)))
        tgt = str(nets[0])
    return (str(src), str(ipaddress.ip_network(tgt)))


def _cmd_key(cmd: dict[str, Any]) -> Key:
    el = next(iter(cmd.values()))["element"]
    return (el["name"], *_parse_val(el["elem"][0]))


def _show(k: Key) -> str:
    return f"{k[1]} . {k[2]}" if k[2] else k[1]


def _norm(t: Any) -> list[str]:
    return list(t) if isinstance(t, list) else [t]


def _expiry(d: Decision, now: float) -> float:
    if d.expires_at is not None:
        return d.expires_at.timestamp()
    return now + d.ttl_s


def _timeout(expires_at: float, now: float) -> int:
    return max(1, math.ceil(expires_at - now))


# --------------------------------------------------------------------------- JSON -> nft -f text
# The subset of the libnftables JSON schema that ruleset_commands emits, written the way
# ``nft list`` prints it. Anything else is refused: the text must say what the JSON says.


def nft_text(commands: list[dict[str, Any]]) -> str:
    """``add`` commands of one table (libnftables JSON) as an ``nft -f`` script."""
    table = ""
    sets: dict[str, dict[str, Any]] = {}
    elems: dict[str, list[str]] = {}
    chains: dict[str, dict[str, Any]] = {}
    rules: dict[str, list[str]] = {}
    for cmd in commands:
        (verb, body), *rest = cmd.items()
        (kind, obj), *more = body.items()
        if verb != "add" or rest or more:
            raise ValueError(f"nft_text: only single add commands, not {cmd}")
        if kind == "table":
            table = f"{obj['family']} {obj['name']}"
        elif kind == "set":
            sets[obj["name"]] = obj
        elif kind == "element":
            elems.setdefault(obj["name"], []).extend(_text_elem(e) for e in obj["elem"])
        elif kind == "chain":
            chains[obj["name"]] = obj
        elif kind == "rule":
            rules.setdefault(obj["chain"], []).append(" ".join(_text_expr(e) for e in obj["expr"]))
        else:
            raise ValueError(f"nft_text: no text form for {kind}")
    lines = [f"table {table} {{"]
    for name, obj in sets.items():
        ty = " . ".join(obj["type"]) if isinstance(obj["type"], list) else obj["type"]
        lines += [f"\tset {name} {{", f"\t\ttype {ty}", f"\t\tflags {','.join(obj['flags'])}"]
        if elems.get(name):
            lines.append("\t\telements = { " + ", ".join(elems[name]) + " }")
        lines.append("\t}")
    for name, obj in chains.items():
        lines.append(f"\tchain {name} {{")
        lines.append(
            f"\t\ttype {obj['type']} hook {obj['hook']} priority {obj['prio']}; policy {obj['policy']};"
        )
        lines.extend(f"\t\t{r}" for r in rules.get(name, []))
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _text_value(v: Any) -> str:
    if isinstance(v, str | int):
        return str(v)
    if "prefix" in v:
        return f"{v['prefix']['addr']}/{v['prefix']['len']}"
    if "concat" in v:
        return " . ".join(_text_value(x) for x in v["concat"])
    if "payload" in v:
        return f"{v['payload']['protocol']} {v['payload']['field']}"
    if "meta" in v:
        return f"meta {v['meta']['key']}"
    raise ValueError(f"nft_text: no text form for {v}")


def _text_elem(e: Any) -> str:
    if isinstance(e, dict) and "elem" in e:
        inner = e["elem"]
        return f"{_text_value(inner['val'])} timeout {inner['timeout']}s"
    return _text_value(e)


def _text_expr(e: dict[str, Any]) -> str:
    (kind, arg), *rest = e.items()
    if rest:
        raise ValueError(f"nft_text: one statement per object, not {e}")
    if kind == "match" and arg["op"] == "==":
        return f"{_text_value(arg['left'])} {_text_value(arg['right'])}"
    if kind in ("counter", "accept", "drop") and arg is None:
        return kind
    if kind == "reject":
        return f"reject with {arg['type']}" + (f" {arg['expr']}" if "expr" in arg else "")
    raise ValueError(f"nft_text: no text form for {e}")
