"""Strict validation of every address and name before it can reach a backend.

A decision's fields end up in nft commands, Kubernetes manifests, an executable's stdin
and a webhook body. Each is checked here against a narrow grammar (``ipaddress`` for
addresses, the Kubernetes name regexes for names) so that shell or nft metacharacters,
IPv4-mapped IPv6 tricks, zone ids and stray whitespace are refused, never escaped.
"""

from __future__ import annotations

import functools
import ipaddress
import re

from flowwarden.errors import RecordError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_ADDRESS_CHARS = re.compile(r"^[0-9A-Fa-f.:/]{2,49}$")
# RFC 1123 label (namespaces) and subdomain (pods, workloads, nodes), as Kubernetes checks them.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def parse_target(value: str, field: str = "targets") -> Network:
    """An IP address or CIDR as a network (a host is a /32 or /128); refuses anything ambiguous.

    Cached: a decision's targets are parsed by the guardrails and by every backend, and the
    result is an immutable value (a refusal raises, which is never cached)."""
    if not isinstance(value, str):
        raise RecordError(field, f"{value!r} is not an IP address or CIDR")
    return _parse_target(value, field)


@functools.lru_cache(maxsize=1 << 16)
def _parse_target(value: str, field: str) -> Network:
    if not _ADDRESS_CHARS.fullmatch(value):
        raise RecordError(
            field, f"{value!r} is not an IP address or CIDR (allowed characters: hex digits . : /)"
        )
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise RecordError(field, f"{value!r} is not a valid IP address or CIDR: {exc}") from exc
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None:
        raise RecordError(field, f"{value!r} is an IPv4-mapped IPv6 address; give the IPv4 form")
    return net


def parse_ip(value: str, field: str = "source.ip") -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A single IP address (no prefix), with the same refusals as :func:`parse_target`."""
    net = parse_target(value, field)
    if net.num_addresses != 1 or "/" in value:
        raise RecordError(field, f"{value!r} must be a single IP address, not a network")
    return net.network_address


def check_namespace(value: str, field: str = "source.namespace") -> str:
    """A Kubernetes namespace name ("" means unknown)."""
    if value and not _DNS_LABEL.fullmatch(value):
        raise RecordError(field, f"{value!r} is not a valid Kubernetes namespace name")
    return value


def check_name(value: str, field: str) -> str:
    """A Kubernetes object name: pod, workload or node ("" means unknown)."""
    if value and not _DNS_SUBDOMAIN.fullmatch(value):
        raise RecordError(field, f"{value!r} is not a valid Kubernetes object name")
    return value


def check_token(value: str, field: str) -> str:
    """A word that reaches a rule file's text (detector, alert id): letters, digits, ``_ . -`` only."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{0,64}", value or ""):
        raise RecordError(field, f"{value!r} is not a valid {field} (letters, digits, '_', '.', '-')")
    return value


def check_decision_id(value: str, field: str = "id") -> str:
    """Decision ids become object names and nft comments: lowercase alphanumerics and dashes only."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", value or ""):
        raise RecordError(field, f"{value!r} is not a valid decision id (lowercase letters, digits, '-')")
    return value
