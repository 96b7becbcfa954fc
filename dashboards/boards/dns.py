"""DNS: who asks how much, what fails (NXDOMAIN, unanswered), and the odd names (tunnels).

Reads the DNS aggregates the flow records carry (``dns_queries``, ``dns_nxdomain`` in
``flow_rollups``): a DNS flow's destination is its resolver, so failing resolutions are the
rejected or unanswered flows to port 53 and resolvers other than the cluster DNS stand out.
The names come from ``dns_rollups`` (per asking workload and registered domain: queries,
distinct names, longest name, label entropy, unanswered queries), for every workload, and
from the ``dns_tunnel`` alerts, whose evidence carries example names.
"""

from __future__ import annotations

from flowwarden.dashboards.model import Json, Row, dashboard, scope, sql, stat, table, timeseries
from flowwarden.settings import ClusterSettings

UID = "flowwarden-dns"

ROLLUP_SCOPE = scope("src_namespace", "src_workload")
ALERT_SCOPE = scope("namespace", "workload")
WORKLOAD = "src_namespace || '/' || src_workload"
DNS_FLOWS = "dst_port = 53"
TOP = 8


def _cluster_dns() -> str:
    return ", ".join(f"'{ip}'" for ip in ClusterSettings().cluster_dns)


def queries_per_workload_sql() -> str:
    return (
        f"SELECT minute AS time, {WORKLOAD} AS workload, sum(dns_queries) AS queries FROM flow_rollups"
        f" WHERE $__timeFilter(minute) AND {ROLLUP_SCOPE} AND {WORKLOAD} IN (SELECT {WORKLOAD}"
        " FROM flow_rollups WHERE $__timeFilter(minute) AND src_workload <> '' GROUP BY 1"
        f" HAVING sum(dns_queries) > 0 ORDER BY sum(dns_queries) DESC LIMIT {TOP}) GROUP BY 1, 2 ORDER BY 1"
    )


def nxdomain_rate_sql() -> str:
    return (
        "SELECT minute AS time, sum(dns_nxdomain)::float / greatest(sum(dns_queries), 1) AS nxdomain_rate"
        f" FROM flow_rollups WHERE $__timeFilter(minute) AND {ROLLUP_SCOPE} GROUP BY 1 ORDER BY 1"
    )


def per_workload_sql() -> str:
    return (
        f"SELECT {WORKLOAD} AS workload, sum(dns_queries) AS queries, sum(dns_nxdomain) AS nxdomain,"
        " round((sum(dns_nxdomain)::numeric / greatest(sum(dns_queries), 1)), 3) AS nxdomain_rate,"
        f" sum(CASE WHEN {DNS_FLOWS} THEN rejected ELSE 0 END) AS failed_flows"
        f" FROM flow_rollups WHERE $__timeFilter(minute) AND src_workload <> '' AND {ROLLUP_SCOPE}"
        " GROUP BY 1 HAVING sum(dns_queries) > 0 ORDER BY nxdomain DESC, queries DESC LIMIT 50"
    )


def resolvers_sql() -> str:
    """Resolvers asked (the destinations of DNS flows): unanswered ones, others than the cluster DNS."""
    return (
        "SELECT CASE WHEN dst_external <> '' THEN dst_external ELSE dst_namespace || '/' || dst_workload END"
        f" AS resolver, CASE WHEN dst_external IN ({_cluster_dns()})"
        " OR dst_workload IN ('coredns', 'kube-dns')"
        " THEN 'cluster DNS' ELSE 'other' END AS kind, sum(flows) AS flows, sum(rejected) AS failed,"
        " sum(dns_queries) AS queries, sum(dns_nxdomain) AS nxdomain, count(DISTINCT src_namespace || '/' ||"
        f" src_workload) AS clients FROM flow_rollups WHERE $__timeFilter(minute) AND {DNS_FLOWS}"
        f" AND {ROLLUP_SCOPE} GROUP BY 1, 2 ORDER BY failed DESC, queries DESC LIMIT 30"
    )


def failing_sql() -> str:
    return (
        f"SELECT minute AS time, sum(rejected) AS failed, sum(dns_nxdomain) AS nxdomain FROM flow_rollups"
        f" WHERE $__timeFilter(minute) AND {DNS_FLOWS} AND {ROLLUP_SCOPE} GROUP BY 1 ORDER BY 1"
    )


def odd_names_sql() -> str:
    return (
        "SELECT window_start AS time, namespace || '/' || workload AS workload,"
        " evidence->>'domain' AS domain, (evidence->'example_names')::text AS example_names,"
        " round(((evidence->'dns_mean_len'->>'value')::numeric), 1) AS mean_label_len,"
        " round(((evidence->'dns_mean_entropy'->>'value')::numeric), 2) AS entropy_bits,"
        " (evidence->'dns_max_subdomains'->>'value')::numeric AS names, severity FROM alerts"
        f" WHERE detector = 'dns_tunnel' AND $__timeFilter(window_start) AND {ALERT_SCOPE}"
        " ORDER BY window_start DESC LIMIT 100"
    )


def top_domains_sql() -> str:
    """Registered domains of the DNS alerts and threat-feed name hits, by alerts."""
    return (
        "SELECT coalesce(evidence->>'domain', evidence->>'name', summary) AS name, detector,"
        " count(*) AS alerts, count(DISTINCT namespace || '/' || workload) AS workloads,"
        " max(last_seen) AS last_seen FROM alerts WHERE $__timeFilter(window_start)"
        f" AND detector IN ('dns_tunnel', 'threat_feed') AND {ALERT_SCOPE} GROUP BY 1, 2"
        " ORDER BY alerts DESC LIMIT 20"
    )


DNS_SCOPE = scope("src_namespace", "src_workload")
ASKER = "CASE WHEN src_namespace <> '' THEN src_namespace || '/' || src_workload ELSE src_external END"


def top_asked_domains_sql() -> str:
    """Registered domains every workload asked (``dns_rollups``), busiest first."""
    return (
        "SELECT domain, sum(queries) AS queries, sum(names) AS names, sum(nxdomain) AS nxdomain,"
        f" sum(unanswered) AS unanswered, count(DISTINCT {ASKER}) AS askers,"
        f" string_agg(DISTINCT {ASKER}, ', ') AS asked_by FROM dns_rollups"
        f" WHERE $__timeFilter(minute) AND {DNS_SCOPE} GROUP BY 1 ORDER BY queries DESC LIMIT 30"
    )


def odd_domains_sql() -> str:
    """Per asker and domain: many distinct names, long names or random-looking labels, whether
    or not a detector alerted (the rollups see every DNS record)."""
    return (
        f"SELECT {ASKER} AS asker, domain, max(max_record_names) AS names_in_one_flow,"
        " max(max_name_len) AS longest_name,"
        " round((sum(entropy_sum) / greatest(sum(names), 1))::numeric, 2) AS mean_entropy_bits,"
        " sum(queries) AS queries FROM dns_rollups"
        f" WHERE $__timeFilter(minute) AND {DNS_SCOPE} AND left(domain, 1) <> '(' GROUP BY 1, 2"
        " ORDER BY names_in_one_flow DESC, longest_name DESC LIMIT 30"
    )


def unanswered_sql() -> str:
    return (
        "SELECT minute AS time, sum(unanswered) AS unanswered, sum(nxdomain) AS nxdomain FROM dns_rollups"
        f" WHERE $__timeFilter(minute) AND {DNS_SCOPE} GROUP BY 1 ORDER BY 1"
    )


def resolution_time_sql() -> str:
    return (
        "SELECT minute AS time, sum(rtt_ms_sum) / greatest(sum(rtt_n), 1) AS mean_ms,"
        " max(rtt_ms_max) AS slowest_ms FROM dns_rollups"
        f" WHERE $__timeFilter(minute) AND {DNS_SCOPE} AND rtt_n > 0 GROUP BY 1 ORDER BY 1"
    )


def slow_resolutions_sql() -> str:
    """Per asker and domain, the slowest resolutions (queries paired with their responses)."""
    return (
        f"SELECT {ASKER} AS asker, domain, max(rtt_ms_max) AS slowest_ms,"
        " round((sum(rtt_ms_sum) / greatest(sum(rtt_n), 1))::numeric, 1) AS mean_ms,"
        " sum(rtt_n) AS timed, sum(unanswered) AS unanswered, sum(nxdomain) AS nxdomain FROM dns_rollups"
        f" WHERE $__timeFilter(minute) AND {DNS_SCOPE} AND (rtt_n > 0 OR unanswered > 0) GROUP BY 1, 2"
        " ORDER BY slowest_ms DESC, unanswered DESC LIMIT 30"
    )


def build() -> Json:
    head = [
        stat(
            "DNS queries in range",
            [
                sql(
                    "SELECT sum(dns_queries) AS queries FROM flow_rollups"
                    f" WHERE $__timeFilter(minute) AND {ROLLUP_SCOPE}"
                )
            ],
            w=8,
        ),
        stat(
            "NXDOMAIN share",
            [
                sql(
                    "SELECT sum(dns_nxdomain)::float / greatest(sum(dns_queries), 1) AS nxdomain_share"
                    f" FROM flow_rollups WHERE $__timeFilter(minute) AND {ROLLUP_SCOPE}"
                )
            ],
            unit="percentunit",
            w=8,
        ),
        stat(
            "Failed DNS flows",
            [
                sql(
                    f"SELECT sum(rejected) AS failed FROM flow_rollups WHERE $__timeFilter(minute)"
                    f" AND {DNS_FLOWS} AND {ROLLUP_SCOPE}"
                )
            ],
            w=8,
            description="DNS flows (port 53) that were rejected or never answered.",
        ),
    ]
    volume = [
        timeseries(
            f"Queries per workload (top {TOP})",
            [sql(queries_per_workload_sql(), fmt="time_series")],
            w=12,
        ),
        timeseries("NXDOMAIN rate", [sql(nxdomain_rate_sql(), fmt="time_series")], unit="percentunit", w=12),
    ]
    failing = [
        table("Workloads: queries, NXDOMAIN, failures", [sql(per_workload_sql())], w=12, h=9),
        timeseries(
            "Failing resolutions",
            [sql(failing_sql(), fmt="time_series")],
            w=12,
            h=9,
            description="Rejected or unanswered DNS flows and NXDOMAIN answers per minute.",
        ),
        table(
            "Resolvers asked",
            [sql(resolvers_sql())],
            w=24,
            h=8,
            description="Every resolver the pods asked; 'other' bypasses the cluster DNS.",
        ),
    ]
    names = [
        table(
            "Long or high-entropy names (DNS tunnel alerts)",
            [sql(odd_names_sql())],
            w=14,
            h=9,
            description="The dns_tunnel detector's findings: many distinct long or random-looking "
            "names under one domain.",
        ),
        table("Top alerted names and domains", [sql(top_domains_sql())], w=10, h=9),
        table(
            "Top domains asked",
            [sql(top_asked_domains_sql())],
            w=12,
            h=9,
            description="Registered domains every workload asked, from the DNS rollups: queries, "
            "distinct names, NXDOMAIN answers, UDP queries left unanswered, who asked.",
        ),
        table(
            "Many, long or random-looking names per domain",
            [sql(odd_domains_sql())],
            w=12,
            h=9,
            description="Every asker and domain by the most distinct names one flow carried, with "
            "the longest name and the mean label entropy (a tunnel: hundreds of names on one socket, "
            "50+ characters, 4+ bits), alert or not.",
        ),
        timeseries(
            "Unanswered queries and NXDOMAIN",
            [sql(unanswered_sql(), fmt="time_series")],
            w=24,
            h=7,
            description="UDP queries that got no response packet, and NXDOMAIN answers, per minute.",
        ),
    ]
    slow = [
        timeseries(
            "Resolution time",
            [sql(resolution_time_sql(), fmt="time_series")],
            unit="ms",
            w=12,
            h=8,
            description="Mean and slowest time from a query to its response (paired by DNS ID "
            "in the same flow), per minute.",
        ),
        table(
            "Slow or failing resolutions",
            [sql(slow_resolutions_sql())],
            w=12,
            h=8,
            description="Per asker and domain: the slowest and mean resolution, queries timed, "
            "UDP queries never answered, NXDOMAIN answers.",
        ),
    ]
    return dashboard(
        UID,
        "flowwarden / DNS",
        "DNS queries per workload, NXDOMAIN rate, failing resolutions and resolvers, long and "
        "high-entropy names.",
        [
            Row("Volume", head + volume),
            Row("Failures and resolvers", failing),
            Row("Names", names),
            Row("Resolution time", slow),
        ],
        tags=["dns"],
    )
