"""The declared firewall policy: the file a person keeps in git, and its validation.

One format for the pipeline (``policy_violation``), the enforcer and the recommender
(``policy recommend/diff`` writes this same YAML). An example::

    version: 1
    namespaces:
      shop:
        egress:                        # absent: egress of "shop" is not declared (not checked)
          - name: payments
            to: {domains: ["api.stripe.com", "*.stripe.com"]}
            ports: ["443/tcp"]
          - to: {namespaces: [catalog]}
            ports: ["8080/tcp"]
        ingress:
          - from: {namespaces: [frontend]}
            ports: ["8080/tcp"]
        workloads:
          mailer:                      # a workload's own list replaces its namespace's
            egress:
              - to: {cidrs: ["198.51.100.25/32"]}
                ports: ["587/tcp"]
    cluster:
      etcd: {}                         # declared with no sources: only the control-plane nodes
      metadata_api: {from: {namespaces: [kube-system]}}

Semantics, chosen to fail safe for a person reading the file:

* An empty policy (or a namespace without ``egress``/``ingress``) is *not declared*: nothing
  is checked. ``egress: []`` is declared and allows nothing (like a NetworkPolicy with
  ``policyTypes: [Egress]`` and no rules), except the cluster's DNS while
  ``allow_cluster_dns`` is true (the default), so a declared namespace can still resolve.
* A rule allows a flow when its destination (``to``) *and* its port (``ports``) match;
  an omitted ``to``/``from`` means any peer, an omitted or empty ``ports`` any port.
* Peers: ``cidrs``; ``domains`` (``api.example.com`` exactly, ``*.example.com`` any name
  below it, not the apex) matched on the flow's DNS name, TLS SNI / HTTP Host, and the
  addresses the pod itself resolved from such a name; ``namespaces`` (``"*"``: any
  namespace); ``workloads`` (``namespace/workload``); in ``cluster`` only, ``nodes``
  (any node address) and ``control_plane`` (``control_plane.api_server_ips``, else any node).
* Ports: ``"443"`` (TCP and UDP), ``"443/tcp"``, ``"8000-8100/udp"``, ``"icmp"`` (any ICMP).

Errors name the key path and the nearest valid name (``namespaces.shop.egress.0.too:
unknown key; did you mean 'to'?``), like the settings do.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flowwarden.errors import ConfigError

POLICY_VERSION: Literal[1] = 1
PROTOCOLS: dict[str, int] = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmpv6": 58}
ANY_PROTO = 0  # a port without a protocol: TCP and UDP
_PORT = re.compile(r"^(?:(?P<lo>\d{1,5})(?:-(?P<hi>\d{1,5}))?)?(?:/?(?P<proto>[a-z0-9]+))?$")
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
_K8S_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
_NAMESPACE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class PortRange(NamedTuple):
    """Ports ``lo``..``hi`` of protocol ``proto`` (IANA number; 0: TCP and UDP)."""

    lo: int
    hi: int
    proto: int

    def text(self) -> str:
        name = next((k for k, v in PROTOCOLS.items() if v == self.proto), "")
        if self.proto in (1, 58):
            return name
        ports = str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"
        return f"{ports}/{name}" if name else ports


def parse_port(text: str) -> PortRange:
    """``"443"``, ``"443/tcp"``, ``"8000-8100/udp"``, ``"icmp"``; ValueError naming what is wrong."""
    raw = str(text).strip().lower()
    m = _PORT.match(raw)
    if not raw or not m:
        raise ValueError(f"{text!r} is not a port: write 443, 443/tcp, 8000-8100/udp or icmp")
    proto_s = m.group("proto")
    if proto_s is not None and proto_s not in PROTOCOLS:
        close = difflib.get_close_matches(proto_s, list(PROTOCOLS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"{text!r}: unknown protocol '{proto_s}'{hint} (valid: {', '.join(PROTOCOLS)})")
    proto = PROTOCOLS[proto_s] if proto_s else ANY_PROTO
    if m.group("lo") is None:
        if proto not in (1, 58):
            raise ValueError(f"{text!r}: a {proto_s} rule needs a port (e.g. 443/{proto_s})")
        return PortRange(0, 65535, proto)
    if proto in (1, 58):
        raise ValueError(f"{text!r}: {proto_s} has no ports; write '{proto_s}'")
    lo = int(m.group("lo"))
    hi = int(m.group("hi")) if m.group("hi") else lo
    if not 0 < lo <= hi <= 65535:
        raise ValueError(f"{text!r}: ports must be 1-65535 and the range low-high")
    return PortRange(lo, hi, proto)


def check_domain(value: str) -> str:
    """A DNS name or ``*.``-wildcard, normalised (lower case, no trailing dot); ValueError if not."""
    name = str(value).strip().rstrip(".").lower()
    labels = name.split(".")
    wildcard = labels[0] == "*"
    if wildcard:
        labels = labels[1:]
    if not labels or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{value!r} is not a domain name (e.g. api.example.com or *.example.com)")
    if wildcard and len(labels) < 2:
        raise ValueError(f"{value!r}: a wildcard needs a domain under it (e.g. *.example.com)")
    if "*" in name[1:]:
        raise ValueError(f"{value!r}: '*' is allowed only as the whole first label")
    return name


def check_namespace(value: str) -> str:
    if value != "*" and not _NAMESPACE.match(value):
        raise ValueError(f"{value!r} is not a namespace name (DNS label, or '*' for any)")
    return value


def check_workload(value: str) -> str:
    ns, sep, wl = value.partition("/")
    if not sep or not _NAMESPACE.match(ns) or not _K8S_NAME.match(wl):
        raise ValueError(f"{value!r} is not 'namespace/workload'")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Peers(_Model):
    """Who is at the other end: addresses, names, namespaces, workloads."""

    cidrs: list[str] = []
    domains: list[str] = []
    namespaces: list[str] = []
    workloads: list[str] = []

    @field_validator("cidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        out = []
        for c in v:
            try:
                out.append(str(ipaddress.ip_network(str(c).strip(), strict=False)))
            except ValueError as exc:
                raise ValueError(f"{c!r} is not a CIDR or address") from exc
        return out

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        return [check_domain(d) for d in v]

    @field_validator("namespaces")
    @classmethod
    def _namespaces(cls, v: list[str]) -> list[str]:
        return [check_namespace(str(n)) for n in v]

    @field_validator("workloads")
    @classmethod
    def _workloads(cls, v: list[str]) -> list[str]:
        return [check_workload(str(w)) for w in v]

    def size(self) -> int:
        return len(self.cidrs) + len(self.domains) + len(self.namespaces) + len(self.workloads)


class NodePeers(Peers):
    """Peers of a cluster endpoint: also node addresses."""

    nodes: bool = False  # any node's own address (kubelets, host-network pods)
    control_plane: bool = False  # control_plane.api_server_ips, else any node

    def size(self) -> int:
        return super().size() + int(self.nodes) + int(self.control_plane)


def _ports(v: list[Any]) -> list[str]:
    return [parse_port(str(p)).text() for p in v]


class EgressRule(_Model):
    """Allowed when the destination is in ``to`` (omitted: anywhere) on one of ``ports``."""

    name: str = Field("", max_length=63)
    to: Peers | None = None
    ports: list[str] = []

    _v_ports = field_validator("ports", mode="before")(classmethod(lambda cls, v: _ports(v)))


class IngressRule(_Model):
    """Allowed when the source is in ``from`` (omitted: any in-cluster source) on one of ``ports``."""

    name: str = Field("", max_length=63)
    from_: Peers | None = Field(None, alias="from")
    ports: list[str] = []

    _v_ports = field_validator("ports", mode="before")(classmethod(lambda cls, v: _ports(v)))


class Scope(_Model):
    """What one namespace (or one workload) may send and receive."""

    egress: list[EgressRule] | None = None  # None: not declared
    ingress: list[IngressRule] | None = None
    allow_cluster_dns: bool = True  # declared egress still reaches cluster.cluster_dns on the DNS port


class NamespacePolicy(Scope):
    workloads: dict[str, Scope] = {}

    @field_validator("workloads")
    @classmethod
    def _names(cls, v: dict[str, Scope]) -> dict[str, Scope]:
        for name in v:
            if not _K8S_NAME.match(name):
                raise ValueError(f"{name!r} is not a workload name")
        return v


class Endpoint(_Model):
    """Who may reach one control-plane endpoint; declared with no ``from``: the control-plane nodes."""

    from_: NodePeers = Field(default_factory=lambda: NodePeers(control_plane=True), alias="from")


class ClusterPolicy(_Model):
    """Cluster-wide endpoints (None: not declared). Ports come from the ``control_plane`` settings."""

    etcd: Endpoint | None = None
    api_server: Endpoint | None = None
    kubelet: Endpoint | None = None
    metadata_api: Endpoint | None = None


ENDPOINTS: tuple[str, ...] = ("etcd", "api_server", "kubelet", "metadata_api")


class Policy(_Model):
    """The whole declared policy. ``Policy()`` declares nothing."""

    version: Literal[1] = POLICY_VERSION
    namespaces: dict[str, NamespacePolicy] = {}
    cluster: ClusterPolicy = ClusterPolicy()

    @field_validator("namespaces")
    @classmethod
    def _names(cls, v: dict[str, NamespacePolicy]) -> dict[str, NamespacePolicy]:
        for name in v:
            check_namespace(name)
            if name == "*":
                raise ValueError("'*' is not a namespace here: list each namespace")
        return v

    @property
    def declared(self) -> bool:
        """Whether anything is checked at all (an empty policy is "not declared", not "deny all")."""
        return self.rule_count() > 0 or any(
            s.egress is not None or s.ingress is not None for _, s in self.scopes()
        )

    def scopes(self) -> list[tuple[str, Scope]]:
        """Every namespace and workload scope with its key path (``namespaces.shop.workloads.api``)."""
        out: list[tuple[str, Scope]] = []
        for ns, pol in self.namespaces.items():
            out.append((f"namespaces.{ns}", pol))
            out.extend((f"namespaces.{ns}.workloads.{wl}", s) for wl, s in pol.workloads.items())
        return out

    def rule_count(self) -> int:
        """Rules, counting each cluster endpoint declared as one."""
        n = sum(len(s.egress or ()) + len(s.ingress or ()) for _, s in self.scopes())
        return n + sum(getattr(self.cluster, e) is not None for e in ENDPOINTS)

    def to_yaml(self) -> str:
        """The policy as YAML a person can keep (defaults left out; ``from`` spelled as in the file)."""
        data = self.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        data = {"version": POLICY_VERSION, **data}
        return yaml.safe_dump(data, sort_keys=False)


# --------------------------------------------------------------------------- loading


def _known_keys(loc: list[str]) -> list[str]:
    """Valid keys at ``loc`` (a path into the policy), walking dicts and lists of models."""
    node: Any = Policy
    i = 0
    while i < len(loc):
        node = _unwrap(node)
        fields = getattr(node, "model_fields", None)
        if fields is not None:
            name = next((f for f, info in fields.items() if loc[i] in (f, info.alias)), None)
            if name is None:
                return []
            node = fields[name].annotation
            i += 1
            continue
        origin = typing.get_origin(node)
        if origin in (dict, list):
            node = typing.get_args(node)[-1]
            i += 1
            continue
        return []
    fields = getattr(_unwrap(node), "model_fields", None)
    return [info.alias or f for f, info in fields.items()] if fields else []


def _unwrap(node: Any) -> Any:
    """``X | None`` to ``X``."""
    if typing.get_origin(node) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(node) if a is not type(None)]
        return args[0] if len(args) == 1 else node
    return node


def explain(exc: ValidationError, source: str) -> ConfigError:
    """A pydantic error as one line per problem: the key path, what is wrong, the nearest name."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            candidates = _known_keys(loc[:-1])
            close = difflib.get_close_matches(loc[-1], candidates, n=1)
            hint = f"; did you mean '{'.'.join([*loc[:-1], close[0]])}'?" if close else ""
            lines.append(f"unknown key '{key}'{hint} (valid here: {', '.join(candidates)})")
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            lines.append(f"'{key}': {msg}")
    return ConfigError(f"{source}: " + "; ".join(lines))


def parse_policy(data: Any, source: str = "policy") -> Policy:
    """Validate already-parsed YAML; ``None`` or ``{}`` is the empty (undeclared) policy."""
    if data is None:
        return Policy()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping (version, namespaces, cluster)")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise explain(exc, source) from exc


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; :class:`ConfigError` names the file, the key path and the fix."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: no such policy file") from exc
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the policy file: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
    return parse_policy(data, str(p))
