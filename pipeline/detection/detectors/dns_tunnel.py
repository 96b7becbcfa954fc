"""DNS tunnelling (T1071.004): data encoded in many random-looking subdomains of one domain.

Catches: an entity querying at least ``min_subdomains`` distinct names under one registered
domain in a window, with long (``dns_mean_len >= min_len``) or high-entropy
(``dns_mean_entropy >= min_entropy`` bits per character) leftmost labels. The counts come
from the records' DNS aggregates (a pod's one socket to the resolver carrying 300 queries
counts 300, as iodine's does), so the entity is the pod that asked.
Must not flag: the cluster DNS itself (``cluster.cluster_dns`` and the CoreDNS/kube-dns
pods: it forwards its clients' queries upstream, and blocking it would cut the cluster's
DNS), cluster-internal and reverse names (``*.cluster.local``, ``*.in-addr.arpa`` are
excluded from the count), CDN names (few distinct subdomains per window), ordinary lookups.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any

import numpy as np
import pandas as pd

from flowwarden.pipeline.detection.detectors.base import DETECTORS, Context, Detector, ratio_score
from flowwarden.pipeline.detection.detectors.common import not_resolver
from flowwarden.plugins import Interval


@DETECTORS.register("dns_tunnel")
class DnsTunnel(Detector):
    name = "dns_tunnel"
    kind = "exfiltration"
    technique = "T1071.004"
    defaults = {"min_subdomains": 15.0, "min_len": 40.0, "min_entropy": 3.2}
    constraints = {
        "min_subdomains": Interval(Integral, 1, None, closed="left"),
        "min_len": Interval(Real, 0, 253),  # characters of the leftmost label
        "min_entropy": Interval(Real, 0, 8),  # bits per character
    }
    evidence = ("dns_max_subdomains", "dns_mean_len", "dns_mean_entropy", "dns_queries")

    def score(self, ctx: Context) -> np.ndarray:
        w, p = ctx.windows, self.params
        odd = (w["dns_mean_len"].to_numpy() >= p["min_len"]) | (
            w["dns_mean_entropy"].to_numpy() >= p["min_entropy"]
        )
        odd &= not_resolver(ctx)
        return np.where(
            odd, ratio_score(w["dns_max_subdomains"].to_numpy(), p["min_subdomains"], floor=0.6), 0.0
        )

    def target_mask(self, flows: pd.DataFrame, ctx: Context) -> np.ndarray:
        """The queries under the registered domain with the most distinct names (a record's
        aggregated names count, besides distinct first names)."""
        has = (flows["dns_domain"] != "").to_numpy()
        if not has.any():
            return has
        sub = flows[has]
        names = sub.groupby("dns_domain")["dns_qname"].nunique()
        if "dns_domain_names" in sub.columns:
            names = names.add(sub.groupby("dns_domain")["dns_domain_names"].sum(), fill_value=0)
        return has & (flows["dns_domain"] == names.idxmax()).to_numpy()

    def describe(self, flows: pd.DataFrame) -> dict[str, Any]:
        names = flows["dns_qname"].drop_duplicates()
        domain = flows["dns_domain"].iloc[0] if len(flows) else ""
        return {"domain": str(domain), "example_names": [str(n) for n in names.head(3)]}
