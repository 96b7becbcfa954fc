"""Per-minute DNS rollups: which workload asks which registered domain, how often, how oddly.

One row per (minute, node, asking workload or address, registered domain) with the records'
DNS aggregates summed (queries, distinct names per record, NXDOMAIN answers, UDP queries that
got no response packet, label entropy weighted by names, resolution times), the longest name,
the most names one record carried (a tunnel's single socket carries hundreds; a resolver
client a few) and the slowest resolution. The DNS dashboard
reads them for its top domains and odd names of every workload, where ``flow_rollups`` only
knows the resolver (a DNS flow's destination) and the alerts only the domains they named.

Why the registered domain and not the name: a tunnel sends thousands of distinct names under
one domain, and one row per name would let it write thousands of rows a minute. A source
that asks more than ``max_domains_per_source`` domains in a minute (a DGA) keeps its busiest
ones and rolls the rest up as :data:`OTHER_DOMAINS`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from flowwarden.errors import RecordError
from flowwarden.store_schema import (
    DNS_ROLLUP_COLUMNS,
    DNS_ROLLUP_DIMENSIONS,
    DNS_ROLLUP_MAXES,
    DNS_ROLLUP_SUMS,
)

OTHER_DOMAINS = "(other domains)"
NO_NAME = "(no name)"  # DNS records whose messages carried no parsable question
MAX_DOMAINS_PER_SOURCE = 50
_INPUT = (
    "ts_end",
    "node",
    "src_ip",
    "proto",
    "pkts_in",
    "src_namespace",
    "src_workload",
    "src_pod",
    "dns_queries",
    "dns_names",
    "dns_nxdomain",
    "dns_name_max_len",
    "dns_label_entropy",
    "dns_top_domain",
    "dns_qname",
    "dns_rtt_n",
    "dns_rtt_mean_ms",
    "dns_rtt_max_ms",
)
_FLOAT = ("entropy_sum", "rtt_ms_sum", "rtt_ms_max")
_UDP = 17


def empty_dns_rollups() -> pd.DataFrame:
    return dns_rollup_dtypes(pd.DataFrame({c: [] for c in DNS_ROLLUP_COLUMNS}))


def dns_rollup_dtypes(df: pd.DataFrame) -> pd.DataFrame:
    out = df.loc[:, list(DNS_ROLLUP_COLUMNS)].copy()
    out["minute"] = pd.to_datetime(out["minute"], utc=True).astype("datetime64[us, UTC]")
    for c in DNS_ROLLUP_DIMENSIONS[1:]:
        out[c] = out[c].astype("str")
    for c in (*DNS_ROLLUP_SUMS, *DNS_ROLLUP_MAXES):
        out[c] = out[c].astype("float64" if c in _FLOAT else "int64")
    return out


def _domain(flows: pd.DataFrame) -> pd.Series:
    """The record's registered domain; its first name, lower-cased, when the collector gave none."""
    top = flows["dns_top_domain"].astype("str")
    name = flows["dns_qname"].astype("str").str.lower().str.rstrip(".")
    out = top.where(top != "", name)
    return out.where(out != "", NO_NAME)


def rollup_dns(flows: pd.DataFrame, *, max_domains_per_source: int = MAX_DOMAINS_PER_SOURCE) -> pd.DataFrame:
    """Aggregate the DNS records of an *enriched* flow batch into ``dns_rollups`` rows.

    A record counts in the minute of its ``ts_end``; records without queries are left out.
    A source with no namespace is no known pod: its IP goes to ``src_external``.
    """
    missing = [c for c in _INPUT if c not in flows.columns]
    if missing:
        raise RecordError(missing[0], "required column is missing for DNS rollups")
    dns = flows[flows["dns_queries"].to_numpy() > 0]
    if dns.empty:
        return empty_dns_rollups()
    ts_end = dns["ts_end"].to_numpy(dtype="float64")
    if not np.isfinite(ts_end).all():
        raise RecordError("ts_end", "not a finite number")
    ns = dns["src_namespace"].astype("str")
    workload = dns["src_workload"].astype("str")
    queries = dns["dns_queries"].to_numpy(dtype="int64")
    names = dns["dns_names"].to_numpy(dtype="int64")
    answered = np.minimum(dns["pkts_in"].to_numpy(dtype="int64"), queries)
    frame = pd.DataFrame(
        {
            "minute": (np.floor(ts_end / 60.0) * 60).astype("int64"),
            "node": dns["node"].astype("str").to_numpy(),
            "src_namespace": ns.to_numpy(),
            "src_workload": workload.where(workload != "", dns["src_pod"].astype("str")).to_numpy(),
            "src_external": dns["src_ip"].astype("str").where(ns == "", "").to_numpy(),
            "domain": _domain(dns).to_numpy(),
            "records": 1,
            "queries": queries,
            "names": names,
            "nxdomain": dns["dns_nxdomain"].to_numpy(dtype="int64"),
            # One response packet per UDP query; over TCP the count says nothing.
            "unanswered": np.where(dns["proto"].to_numpy() == _UDP, queries - answered, 0),
            "entropy_sum": dns["dns_label_entropy"].to_numpy(dtype="float64") * names,
            "max_name_len": dns["dns_name_max_len"].to_numpy(dtype="int64"),
            "max_record_names": names,
            "rtt_n": dns["dns_rtt_n"].to_numpy(dtype="int64"),
            "rtt_ms_sum": dns["dns_rtt_mean_ms"].to_numpy(dtype="float64") * dns["dns_rtt_n"].to_numpy(),
            "rtt_ms_max": dns["dns_rtt_max_ms"].to_numpy(dtype="float64"),
        }
    )
    dims = list(DNS_ROLLUP_DIMENSIONS)
    agg = {**{c: "sum" for c in DNS_ROLLUP_SUMS}, **{c: "max" for c in DNS_ROLLUP_MAXES}}
    out = frame.groupby(dims, sort=False, as_index=False).agg(agg)
    source = ["minute", "node", "src_namespace", "src_workload", "src_external"]
    rank = out.groupby(source, sort=False)["queries"].rank(method="first", ascending=False)
    if (rank > max_domains_per_source).any():
        out.loc[rank > max_domains_per_source, "domain"] = OTHER_DOMAINS
        out = out.groupby(dims, sort=False, as_index=False).agg(agg)
    out["minute"] = pd.to_datetime(out["minute"], unit="s", utc=True)
    return dns_rollup_dtypes(out)


def conform_dns_rollups(df: pd.DataFrame) -> pd.DataFrame:
    """Validate a DNS rollup frame: one row per key, store dtypes, no NUL in text."""
    missing = [c for c in DNS_ROLLUP_COLUMNS if c not in df.columns]
    if missing:
        raise RecordError(missing[0], "required DNS rollup column is missing")
    if df.empty:
        return df
    for c in (*DNS_ROLLUP_SUMS, *DNS_ROLLUP_MAXES):
        values = pd.to_numeric(df[c], errors="coerce")
        if values.isna().any() or (values < 0).any():
            raise RecordError(c, "not a non-negative number")
    dims = list(DNS_ROLLUP_DIMENSIONS)
    if df.duplicated(dims).any():
        agg = {**{c: "sum" for c in DNS_ROLLUP_SUMS}, **{c: "max" for c in DNS_ROLLUP_MAXES}}
        df = df.groupby(dims, sort=False, as_index=False).agg(agg)
    df = dns_rollup_dtypes(df)
    for c in DNS_ROLLUP_DIMENSIONS[1:]:
        if df[c].str.contains("\x00", regex=False).any():
            df[c] = df[c].str.replace("\x00", "\ufffd", regex=False)
    return df
