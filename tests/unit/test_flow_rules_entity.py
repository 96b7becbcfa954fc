"""The rule detectors' cheap helpers agree with the pandas forms they replace."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flowwarden.pipeline.detection.detectors.flow_rules import (
    entity_keys,
    entity_keys_vectorised,
    first_entity,
    group_codes,
)


@pytest.mark.parametrize(
    ("pod", "namespace", "ip"),
    [("web-1", "shop", "10.0.0.1"), ("", "", "10.0.0.2"), ("", "shop", "192.0.2.7")],
)
def test_first_entity_is_the_entity_key_of_the_first_flow(pod: str, namespace: str, ip: str) -> None:
    for ns_values in ([namespace, "other"], pd.Categorical([namespace, "other"])):
        flows = pd.DataFrame(
            {
                "src_pod": pd.array([pod, "x"], dtype="string[pyarrow]"),
                "src_namespace": ns_values,
                "src_ip": [ip, "10.9.9.9"],
            }
        )
        assert first_entity(flows) == str(entity_keys(flows.iloc[:1])[0])


def test_group_codes_dedupe_like_duplicated_and_count_like_groupby_size() -> None:
    rng = np.random.default_rng(3)
    n = 500
    frame = pd.DataFrame(
        {
            "entity": rng.choice(["shop/web-1", "shop/web-2", "10.0.0.9"], n),
            "ws": rng.choice([0.0, 10.0, 20.0], n),
            "dst_ip": pd.array(rng.choice(["192.0.2.1", "192.0.2.2"], n), dtype="string[pyarrow]"),
            "dst_port": rng.choice([80, 443], n),
            "proto": rng.choice([6, 17], n),
        },
        index=rng.permutation(n),
    )
    key = ["entity", "ws", "dst_ip", "dst_port", "proto"]
    want = frame.assign(n=frame.groupby(key, sort=False)["ws"].transform("size").to_numpy())
    want = want[~want.duplicated(key).to_numpy()]
    group = group_codes(frame, key)
    first = np.unique(group, return_index=True)[1]
    got = frame.iloc[first].assign(n=np.bincount(group)[group[first]])
    pd.testing.assert_frame_equal(got, want)


@pytest.mark.parametrize("pods", [["web-1", "", "api-0"], ["", "", ""]])
def test_entity_keys_of_a_few_rows_match_the_vectorised_form(pods: list[str]) -> None:
    for dtype in ("str", "string[pyarrow]", object):
        flows = pd.DataFrame(
            {
                "src_pod": pd.array(pods, dtype=dtype),
                "src_namespace": pd.Categorical(["shop", "", "pay"]),
                "src_ip": pd.array(["10.0.0.1", "192.0.2.7", "10.0.0.3"], dtype=dtype),
            }
        )
        got = entity_keys(flows)
        assert got.dtype == object
        assert got.tolist() == entity_keys_vectorised(flows).tolist()


def test_policy_tally_key_splits_each_rule_path_like_the_string_accessor() -> None:
    from flowwarden.pipeline.detection.detectors.policy_violation import PolicyViolation

    for values in (
        pd.Series(
            ["namespaces.a.egress", "cluster.etcd", "namespaces.a.workloads.w.ingress", np.nan], dtype="str"
        ),
        pd.Series(np.array(["namespaces.a.egress", None, np.nan, "x", "cluster.etcd"], dtype=object)),
    ):
        want = values.astype(str).str.rsplit(".", n=1).str[-1]
        got = PolicyViolation().tally_key(values.to_numpy(dtype=object))
        assert len(got) == len(values)
        assert [None if pd.isna(v) else v for v in got] == [None if pd.isna(v) else v for v in want]


def test_first_of_groups_matches_group_codes_missing_values_included() -> None:
    from flowwarden.pipeline.detection.detectors.flow_rules import Findings, _first_of_groups, group_codes

    rows = Findings(
        {
            "entity": np.array(["a/p", "a/p", "b/q", "a/p", np.nan, None, "b/q"], dtype=object),
            "ws": np.array([10.0, 10.0, 10.0, 20.0, np.nan, np.nan, 10.0]),
            "dst_ip": np.array(
                ["1.1.1.1", "1.1.1.1", "2.2.2.2", "1.1.1.1", "3.3.3.3", "3.3.3.3", np.nan], dtype=object
            ),
            "dst_port": np.array([443, 443, 53, 443, 80, 80, 53]),
        }
    )
    columns = ("entity", "ws", "dst_ip", "dst_port")
    first, counts = _first_of_groups([rows[c] for c in columns])
    codes = group_codes(rows, columns)
    want_first = np.unique(codes, return_index=True)[1]
    assert first.tolist() == want_first.tolist()
    assert counts.tolist() == np.bincount(codes)[codes[want_first]].tolist()


def test_a_policy_snapshot_is_compiled_once_per_environment() -> None:
    from flowwarden.pipeline.detection.detectors.policy_violation import compiled
    from flowwarden.policy import parse_policy
    from flowwarden.policy_match import Environment

    raw = {
        "namespaces": {
            "shop": {"egress": [{"name": "web", "to": {"cidrs": ["0.0.0.0/0"]}, "ports": ["443/tcp"]}]}
        }
    }
    p1, p2 = parse_policy(raw), parse_policy(raw)
    env = Environment(node_ips=frozenset({"10.0.0.1"}))
    assert compiled(p1, env) is compiled(p1, Environment(node_ips=frozenset({"10.0.0.1"})))
    assert compiled(p2, env) is not compiled(p1, env)  # another snapshot: its own compile
    assert compiled(p1, Environment()) is not compiled(p1, env)  # another cluster: its own
