"""The rule detectors' cheap helpers agree with the pandas forms they replace."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flowwarden.pipeline.detection.detectors.flow_rules import entity_keys, first_entity, group_codes


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
