#!/usr/bin/env python3
"""Figures for docs/policy-recommend.md: a policy learned on one lab capture, judged on another.

    .venv/bin/python scripts/policy_recommend_lab.py \
        --train tests/data/lab/tuning --test tests/data/lab/reporting

Each capture is metered like ``flowwarden detect --pcap`` does. A flow is an attack flow when
the labelled attacker sends it during one of its episodes to a (destination, port) it never
used outside the episodes of that capture (the compromised pod also does its own frontend work
meanwhile); every other flow is benign. The policy is learned from the training capture's
benign flows (as if the alerts of the attack had been excluded), or from all its flows minus
the edges of the alerts ``flowwarden detect`` raises (``--alerts-from-detect``); it is then
replayed on the test capture: benign flows allowed, attack edges denied.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowwarden.enforcement.recommend.evaluate import PolicySet
from flowwarden.enforcement.recommend.flows import Edge, read_edges
from flowwarden.enforcement.recommend.recommend import recommend, side_name
from flowwarden.kube import PodInventory
from flowwarden.settings import Settings, load_settings


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def labelled_flows(lab: Path) -> tuple[pd.DataFrame, Settings, PodInventory]:
    """The capture's flows with an ``attack`` column (see the module)."""
    from flowwarden.collectors.offline import meter_capture

    labels = json.loads((lab / "labels.json").read_text())
    settings = load_settings(lab / "lab.yaml")
    flows, _ = meter_capture(lab / labels["lab"].get("capture", "capture.pcap"), settings)
    attacker = labels["lab"]["attacker"]["ip"]
    during = pd.Series(False, index=flows.index)
    for e in labels["episodes"]:
        during |= (flows["ts_start"] >= _ts(e["start"]) - 1) & (flows["ts_start"] <= _ts(e["end"]) + 2)
    mine = flows["src_ip"] == attacker
    key = flows["dst_ip"].astype(str) + ":" + flows["dst_port"].astype(str)
    usual = set(key[mine & ~during])
    flows = flows.assign(attack=(mine & during & ~key.isin(usual)).to_numpy())
    return flows, settings, PodInventory.from_file(lab / "pods.json")


def edges_of(flows: pd.DataFrame, inv: PodInventory, tmp: Path, name: str) -> list[Edge]:
    path = tmp / f"{name}.parquet"
    flows.drop(columns=["attack"]).to_parquet(path)
    return read_edges(path, inv)


def alert_edges_from_detect(flows: pd.DataFrame, settings: Settings, inv: PodInventory) -> list[Any]:
    from flowwarden.enforcement.recommend.alerts import alert_edges
    from flowwarden.pipeline.detection.alerts import MAX_TARGETS
    from flowwarden.pipeline.runtime.offline import default_model, detect_flows

    res = detect_flows(
        flows.drop(columns=["attack"]), settings=settings, inventory=inv, model=default_model()
    )
    by_ip = {ip: f"{r.namespace}/{r.workload}" for ip, r in inv.pods_by_ip.items() if r.workload}
    forbidden, _ = alert_edges(res.alerts, {}, by_ip, MAX_TARGETS)
    return forbidden


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--test", type=Path, required=True)
    ap.add_argument("--alerts-from-detect", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        train, settings, train_inv = labelled_flows(args.train)
        test, _, test_inv = labelled_flows(args.test)
        if args.alerts_from_detect:
            forbidden = alert_edges_from_detect(train, settings, train_inv)
            rec = recommend(edges_of(train, train_inv, tmp, "train"), settings, alerts=forbidden)
        else:
            rec = recommend(edges_of(train[~train["attack"]], train_inv, tmp, "train"), settings)
        ps = PolicySet([doc for docs in rec.manifests.values() for doc in docs])
        benign = edges_of(test[~test["attack"]], test_inv, tmp, "benign")
        attack = edges_of(test[test["attack"]], test_inv, tmp, "attack")
    b_total = sum(e.flows for e in benign)
    b_ok = sum(e.flows for e in benign if ps.evaluate(e.src, e.dst, e.proto, e.port).allowed)
    denied_benign = sorted(
        {
            f"{side_name(e.src)} -> {side_name(e.dst)}:{e.port}/{e.proto}"
            for e in benign
            if not ps.evaluate(e.src, e.dst, e.proto, e.port).allowed
        }
    )
    a_keys = {(e.dst.ip, e.port, e.proto): ps.evaluate(e.src, e.dst, e.proto, e.port).allowed for e in attack}
    a_denied = sum(not ok for ok in a_keys.values())
    allowed_attacks = sorted(f"{ip}:{port}/{proto}" for (ip, port, proto), ok in a_keys.items() if ok)
    print(
        json.dumps(
            {
                "train": str(args.train),
                "test": str(args.test),
                "rules_per_namespace": rec.rules,
                "skipped_workloads": rec.skipped,
                "excluded_alert_edges": len(rec.dropped),
                "benign_flows": b_total,
                "benign_allowed_pct": round(100 * b_ok / b_total, 3) if b_total else None,
                "benign_denied_edges": denied_benign,
                "attack_edges": len(a_keys),
                "attack_edges_denied": a_denied,
                "attack_edges_allowed": allowed_attacks,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
