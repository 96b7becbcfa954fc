"""DNS rollups: per asking workload and registered domain, a tunnel in one row, a DGA capped."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flowwarden.dns_rollups import NO_NAME, OTHER_DOMAINS, rollup_dns
from flowwarden.errors import RecordError
from flowwarden.records import empty_flows
from tests.unit.test_store_sqlite import make_dns_flows


def test_one_row_per_workload_and_domain_with_the_records_aggregates() -> None:
    out = rollup_dns(make_dns_flows()).set_index("domain")
    assert set(out.index) == {"example.com", "t.example.org", "repo.example.net"}
    tunnel = out.loc["t.example.org"]
    assert (tunnel["records"], tunnel["queries"], tunnel["names"]) == (2, 600, 600)
    assert (tunnel["max_name_len"], tunnel["max_record_names"]) == (63, 400)
    assert tunnel["entropy_sum"] / tunnel["names"] == pytest.approx((200 * 4.0 + 400 * 4.5) / 600)
    assert tunnel["unanswered"] == 10  # 400 queries, 390 answers in the second record
    assert (tunnel["src_namespace"], tunnel["src_workload"], tunnel["src_external"]) == ("shop", "cart", "")
    # No registered domain from the collector: the first name, lower-cased, without the root dot.
    node = out.loc["repo.example.net"]
    assert (node["src_namespace"], node["src_external"], node["unanswered"]) == ("", "10.0.0.5", 1)
    assert out.loc["example.com", "nxdomain"] == 1
    # Resolution times: pairs summed, the slowest kept.
    assert (tunnel["rtt_n"], tunnel["rtt_ms_max"]) == (590, 40.0)
    assert tunnel["rtt_ms_sum"] == pytest.approx(200 * 2.0 + 390 * 3.0)


def test_records_without_queries_are_left_out_and_tcp_is_never_unanswered() -> None:
    flows = make_dns_flows()
    flows.loc[0, "dns_queries"] = 0
    flows["proto"] = 6
    flows["pkts_in"] = 0
    out = rollup_dns(flows)
    assert "example.com" not in set(out["domain"]) and (out["unanswered"] == 0).all()
    assert rollup_dns(empty_flows(0)).empty


def test_a_pod_without_workload_is_named_by_its_pod_and_no_name_is_named_so() -> None:
    flows = make_dns_flows().iloc[:1].copy()
    flows["src_workload"] = ""
    flows["dns_top_domain"] = ""
    flows["dns_qname"] = ""
    (row,) = rollup_dns(flows).to_dict("records")
    assert (row["src_workload"], row["domain"]) == ("cart-1", NO_NAME)


def test_a_source_asking_many_domains_keeps_its_busiest_and_rolls_up_the_rest() -> None:
    n = 300
    flows = empty_flows(n)
    flows["ts_end"] = np.linspace(0, 59, n)
    flows["node"] = "n1"
    flows["src_ip"] = "10.244.1.9"
    flows["proto"] = 17
    flows["dns_queries"] = np.arange(n) + 1  # domain i asked i + 1 times
    flows["dns_names"] = 1
    flows["dns_top_domain"] = pd.Series([f"dga{i}.example" for i in range(n)], dtype="str")
    flows["src_namespace"] = "shop"
    flows["src_workload"] = "implant"
    out = rollup_dns(flows, max_domains_per_source=10)
    assert len(out) == 11
    kept = set(out["domain"]) - {OTHER_DOMAINS}
    assert kept == {f"dga{i}.example" for i in range(n - 10, n)}
    assert int(out["queries"].sum()) == int(flows["dns_queries"].sum())  # nothing lost
    other = out[out["domain"] == OTHER_DOMAINS]
    assert other["records"].tolist() == [n - 10]


def test_missing_columns_name_the_column() -> None:
    with pytest.raises(RecordError, match="dns_top_domain"):
        rollup_dns(make_dns_flows().drop(columns=["dns_top_domain"]))
