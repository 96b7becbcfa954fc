"""DNS names as detectors read them: registered domain (Public Suffix List), length, entropy.

Shared by the collector (per-record DNS aggregates) and the pipeline (features), so both
split a name the same way. The registered domain is the zone a party controls: the public
suffix (ICANN and private sections of the PSL, e.g. ``co.uk``, ``github.io``) plus one
label. Tunnels (iodine, dnscat2) put their data in the labels left of it, so those labels'
length and character entropy are the signal.

The PSL comes from ``tldextract``'s bundled snapshot, never fetched at run time: a
collector or pipeline must start the same way on an air-gapped node.

Names that are not on the public Internet are handled before the PSL:

* cluster-internal names (``*.cluster.local`` and the short form ``*.svc``) belong to
  :data:`CLUSTER_DOMAIN`;
* reverse lookups (``*.in-addr.arpa``, ``*.ip6.arpa``) belong to their arpa zone, with
  entropy 0 (their labels are address digits, not chosen text);
* a name whose last label is no public suffix (``corp.internal``, ``t.attacker.example``)
  is split as if that label were one: its last two labels are the registered domain;
* an IPv4 literal is its own registered domain.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from functools import lru_cache

import tldextract

CLUSTER_DOMAIN = "cluster.local"
REVERSE_ZONES = ("in-addr.arpa", "ip6.arpa")
CACHE_NAMES = 65_536  # distinct names kept (a tunnel makes every name new; a cluster repeats)
_ESCAPE = re.compile(r"\\(\d{3})")

# No suffix_list_urls: the bundled snapshot only, no network, no cache directory.
_EXTRACT = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, include_psl_private_domains=True)


def normalize(name: str) -> str:
    """Lower case, no trailing dot (DNS names compare case-insensitively, RFC 4343)."""
    return name.rstrip(".").lower()


def _split(name: str) -> tuple[str, str]:
    """(labels left of the registered domain, registered domain) of a normalized name."""
    if not name:
        return "", ""
    if name == CLUSTER_DOMAIN or name.endswith("." + CLUSTER_DOMAIN):
        return name[: -len(CLUSTER_DOMAIN) - 1] if name != CLUSTER_DOMAIN else "", CLUSTER_DOMAIN
    labels = name.split(".")
    if labels[-1] == "svc":  # "web.shop.svc": the cluster's short form
        return ".".join(labels[:-1]), CLUSTER_DOMAIN
    for zone in REVERSE_ZONES:
        if name == zone or name.endswith("." + zone):
            return name[: -len(zone) - 1] if name != zone else "", zone
    if len(labels) == 4 and all(x.isdigit() for x in labels):
        return "", name  # an address given as a name
    ext = _EXTRACT(name)
    if ext.suffix and ext.domain:
        return ext.subdomain, f"{ext.domain}.{ext.suffix}"
    if ext.suffix:  # the name is itself a public suffix ("co.uk")
        return "", ext.suffix
    if len(labels) >= 2:  # no public suffix: the last label acts as one
        return ".".join(labels[:-2]), ".".join(labels[-2:])
    return "", name


def registered_domain(name: str) -> str:
    """The registered domain (PSL-aware, see the module docstring) of a DNS name."""
    return _stats(normalize(name))[2]


def entropy(text: str) -> float:
    """Shannon entropy of the characters of ``text``, in bits per character (0 when empty)."""
    if not text:
        return 0.0
    n = len(text)
    return 0.0 - sum(c / n * math.log2(c / n) for c in Counter(text).values())


def _octets(text: str) -> str:
    """Master-file escapes (``\\DDD``, as the collector writes binary labels) back to one char each."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1)) & 0xFF), text) if "\\" in text else text


@lru_cache(maxsize=CACHE_NAMES)
def _stats(name: str) -> tuple[int, float, str]:
    sub, reg = _split(name)
    length = len(_octets(name))
    if reg in REVERSE_ZONES:
        return length, 0.0, reg
    return length, entropy(_octets(sub.replace(".", ""))), reg


def label_stats(name: str) -> tuple[int, float, str]:
    """(length, entropy of the labels left of the registered domain, registered domain).

    Length counts the normalized name's octets (a ``\\DDD`` escape is one); the entropy is
    over the octets of the labels left of the registered domain, dots left out (0.0 when
    there are none).
    Cached per distinct name: a cluster asks for the same few names all day.
    """
    return _stats(normalize(name))
