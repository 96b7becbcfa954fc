"""Facts per address id: the same answers as parsing each address, for IPv4 and IPv6."""

from __future__ import annotations

import numpy as np
import pandas as pd

from flowwarden.pipeline.detection.addresses import (
    API_SERVER,
    API_SERVICE,
    INTERNAL,
    METADATA,
    NODE,
    AddressFacts,
)
from flowwarden.pipeline.detection.state import Vocab
from flowwarden.settings import Settings

SETTINGS = Settings.model_validate(
    {
        "cluster": {"node_ips": ["192.168.5.5"], "pod_cidrs": ["10.244.0.0/16", "fd00:10:244::/56"]},
        "control_plane": {"api_server_ips": ["10.0.0.10"]},
    }
)


def test_vectorised_ipv4_flags_match_the_parsed_answer() -> None:
    facts = AddressFacts(SETTINGS)
    rng = np.random.default_rng(7)
    strings = [
        "10.244.1.2",
        "10.0.0.10",
        "10.96.0.1",
        "169.254.169.254",
        "192.168.5.5",
        "fd00:10:244::9",
        "fd00:ec2::254",
        "010.244.1.2",  # leading zero: not canonical, parsed one by one (and refused)
        "256.1.1.1",
        "web-5d9c8f7b6-aaaaa",
        "shop",
        *(".".join(str(x) for x in rng.integers(0, 256, 4)) for _ in range(500)),
        *(f"10.{a}.{b}.{c}" for a, b, c in rng.integers(0, 256, (500, 3))),
    ]
    fast = facts._flags_of(strings)
    slow = np.array([facts._flags(s) for s in strings], dtype="uint8")
    assert (fast == slow).all()
    assert fast[0] == INTERNAL
    assert fast[1] == INTERNAL | NODE | API_SERVER
    assert fast[2] == INTERNAL | API_SERVICE
    assert fast[3] == METADATA and fast[6] == METADATA
    assert fast[4] == INTERNAL | NODE
    assert fast[5] == INTERNAL
    assert not fast[7:11].any()


def test_batch_masks_follow_the_inventory_nodes_and_a_new_vocabulary() -> None:
    facts = AddressFacts(SETTINGS)
    vocab = Vocab()
    src = pd.Series(["10.244.1.2", "172.16.0.7"], dtype="str")
    dst = pd.Series(["172.16.0.7", "8.8.8.8"], dtype="str")
    a = facts.batch(vocab, src, dst, {})
    assert a.src_in.tolist() == [True, False] and a.dst_node.tolist() == [False, False]
    a = facts.batch(vocab, src, dst, {"172.16.0.7": "node-9"})  # the inventory learned a node
    assert a.src_in.tolist() == [True, True] and a.dst_node.tolist() == [True, False]
    fresh = Vocab()  # a compacted vocabulary renumbers strings: nothing stale may leak
    fresh.encode(pd.Series(["8.8.8.8", "x", "y"], dtype="str"))
    a = facts.batch(fresh, src, dst, {"172.16.0.7": "node-9"})
    assert a.src_in.tolist() == [True, True] and a.dst_in.tolist() == [True, False]
    assert (fresh.decode(a.dst_id) == dst.to_numpy(dtype=object)).all()
