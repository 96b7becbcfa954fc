"""Evaluation against labelled episodes: matching, rates, time to detect, curves."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowwarden.labels import TECHNIQUES, Episode, Labels
from flowwarden.models.evaluation import (
    IGNORED,
    NEGATIVE,
    POSITIVE,
    TechniqueTally,
    evaluate,
    label_windows,
    match_episodes,
    write_metrics,
)
from flowwarden.records import Alert, Entity

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
W = 10.0


def _ep(ep_id: str, technique: str, ip: str, pod: str, start_s: float, end_s: float) -> Episode:
    kind = "exfiltration" if technique in {"bulk_exfiltration", "dns_tunnel"} else "lateral_movement"
    return Episode(
        id=ep_id,
        technique=technique,
        kind=kind,
        source=Entity(ip=ip, namespace="shop", pod=pod, workload="web"),
        start=T0 + timedelta(seconds=start_s),
        end=T0 + timedelta(seconds=end_s),
    )


def _alert(detector: str, kind: str, ip: str, pod: str, start_s: float, end_s: float) -> Alert:
    return Alert(
        kind=kind,
        detector=detector,
        score=0.9,
        severity="high",
        entity=Entity(ip=ip, namespace="shop", pod=pod),
        window_start=T0 + timedelta(seconds=start_s),
        window_end=T0 + timedelta(seconds=end_s),
    )


LABELS = Labels(
    episodes=[
        _ep("scan", "port_scan", "10.0.0.1", "web-1", 105, 170),
        _ep("exfil", "bulk_exfiltration", "10.0.0.2", "web-2", 300, 360),
        _ep("missed", "dns_tunnel", "10.0.0.3", "web-3", 500, 560),
    ]
)


def test_matching_by_kind_entity_and_time() -> None:
    alerts = [
        _alert("port_scan", "lateral_movement", "10.0.0.1", "web-1", 100, 130),  # detects "scan"
        _alert("bulk_egress", "exfiltration", "10.0.0.99", "web-2", 370, 380),  # same pod, new IP, grace
        _alert("bulk_egress", "lateral_movement", "10.0.0.3", "web-3", 500, 510),  # wrong kind: false
        _alert("port_scan", "lateral_movement", "10.0.0.1", "web-1", 200, 210),  # after end+2w: false
        _alert("fan_out", "lateral_movement", "10.0.0.7", "web-7", 10, 20),  # no episode: false
    ]
    m = evaluate(alerts, LABELS, pd.DataFrame(), window_s=W, hours=2.0, pods=50)
    o = m["overall"]
    assert (o["episodes"], o["detected"], o["alerts"], o["true_alerts"], o["false_alerts"]) == (3, 2, 5, 2, 3)
    assert o["recall"] == pytest.approx(2 / 3) and o["precision"] == pytest.approx(2 / 5)
    assert o["false_alerts_per_hour"] == pytest.approx(1.5)
    assert o["false_alerts_per_hour_per_100_pods"] == pytest.approx(3.0)
    # "scan" starts at 105 s; the first window in its span closes at 110 s; "exfil" at 380 s.
    ttd = {e["id"]: e["time_to_detect_s"] for e in m["episodes"]}
    assert ttd == {"scan": pytest.approx(5.0), "exfil": pytest.approx(80.0), "missed": None}
    assert m["per_technique"]["port_scan"]["recall"] == 1.0
    assert m["per_technique"]["dns_tunnel"]["recall"] == 0.0
    assert m["per_technique"]["bulk_exfiltration"]["detectors"] == ["bulk_egress"]
    assert m["per_detector"]["port_scan"]["false_alerts"] == 1
    assert m["per_detector"]["fan_out"]["recall"] == 0.0
    assert o["time_to_detect_s"]["median"] == pytest.approx(42.5)


def test_match_episodes_counts_only_the_right_kind_entity_and_span() -> None:
    # "scan" is 10.0.0.1/web-1 from 105 s to 170 s: its span is [105, 190] with 10 s windows.
    hit = _alert("port_scan", "lateral_movement", "10.0.0.1", "web-1", 120, 130)
    at_span_end = _alert("fan_out", "lateral_movement", "10.0.0.1", "web-1", 190, 200)
    grace = _alert("bulk_egress", "exfiltration", "10.0.0.99", "web-2", 370, 380)  # "exfil", same pod
    wrong_kind = _alert("bulk_egress", "exfiltration", "10.0.0.1", "web-1", 140, 150)
    other_entity = _alert("port_scan", "lateral_movement", "10.0.0.8", "web-8", 120, 130)
    after = _alert("port_scan", "lateral_movement", "10.0.0.1", "web-1", 191, 200)
    before = _alert("port_scan", "lateral_movement", "10.0.0.1", "web-1", 80, 95)
    alerts = [hit, at_span_end, grace, wrong_kind, other_entity, after, before]

    m = match_episodes(alerts, LABELS.episodes, W)

    assert m.ttd_s == {"scan": pytest.approx(25.0), "exfil": pytest.approx(80.0)}
    assert m.true_alerts == {hit.id, at_span_end.id, grace.id}
    # Each false alert once, though it detects none of the three episodes.
    assert [a.id for a in m.false_alerts] == [wrong_kind.id, other_entity.id, after.id, before.id]
    # The attacker's alert of the wrong kind detects nothing but is about the attack.
    assert [a.id for a in m.unexplained] == [other_entity.id, after.id, before.id]
    scan = m.tallies["port_scan"]
    assert (scan.episodes, scan.detected, scan.missed) == (1, 1, [])
    assert scan.ttd_s == [pytest.approx(25.0)] and dict(scan.detectors) == {"port_scan": 1, "fan_out": 1}
    tunnel = m.tallies["dns_tunnel"]
    assert (tunnel.episodes, tunnel.detected, [e.id for e in tunnel.missed]) == (1, 0, ["missed"])
    assert m.tallies["ip_sweep"].episodes == 0 and list(m.tallies) == list(TECHNIQUES)

    total = TechniqueTally()
    total.add(scan)
    total.add(scan)
    assert (total.episodes, total.detected, dict(total.detectors)) == (2, 2, {"port_scan": 2, "fan_out": 2})


def _windows() -> pd.DataFrame:
    rows = []
    for ws in T0.timestamp() + np.arange(0, 600, W):
        for ip, pod in (("10.0.0.1", "web-1"), ("10.0.0.8", "web-8")):
            rows.append(
                {
                    "window_start": ws,
                    "window_end": ws + W,
                    "entity": f"shop/{pod}",
                    "src_ip": ip,
                    "namespace": "shop",
                    "pod": pod,
                }
            )
    return pd.DataFrame(rows)


def test_window_labels_and_curves() -> None:
    w = _windows()
    y = label_windows(w, LABELS, W)
    scan = (w["src_ip"] == "10.0.0.1").to_numpy()
    ws = w["window_start"].to_numpy() - T0.timestamp()
    assert set(np.unique(y[scan & (ws >= 100) & (ws < 170)])) == {POSITIVE}
    assert set(np.unique(y[scan & (ws >= 170) & (ws < 190)])) == {IGNORED}
    assert set(np.unique(y[~scan])) == {NEGATIVE}
    perfect = w.assign(score_port_scan=(y == POSITIVE).astype(float), score_fan_out=0.0)
    m = evaluate([], LABELS, perfect, window_s=W, hours=0.2, pods=2)
    assert m["per_detector"]["port_scan"]["roc_auc"] == 1.0
    assert m["per_detector"]["port_scan"]["pr_auc"] == 1.0
    assert m["per_detector"]["fan_out"]["roc_auc"] == 0.5
    assert m["attack_windows"] == int((y == POSITIVE).sum()) and m["windows"] == len(w)
    assert m["overall"]["recall"] == 0.0 and m["overall"]["precision"] is None


def test_metrics_json_has_no_nan(tmp_path: Path) -> None:
    m = evaluate([], Labels(), pd.DataFrame(), window_s=W, hours=0.0, pods=0)
    assert math.isinf(m["overall"]["false_alerts_per_hour"])
    path = write_metrics(m | {"x": float("nan"), "y": np.float64(2.5)}, tmp_path / "m" / "metrics.json")
    data = json.loads(path.read_text())
    assert data["x"] is None and data["y"] == 2.5
    assert data["overall"]["false_alerts_per_hour"] is None


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.9"]),
            st.sampled_from(["lateral_movement", "exfiltration"]),
            st.integers(min_value=0, max_value=80),
            st.integers(min_value=1, max_value=10),
        ),
        max_size=12,
    )
)
def test_counts_add_up_and_more_alerts_never_lower_recall(raw: list[tuple[str, str, int, int]]) -> None:
    alerts = [_alert("fan_out", kind, ip, "", start * W, (start + span) * W) for ip, kind, start, span in raw]
    # The id is (entity, detector, window): the engine emits one alert per id, never two kinds.
    alerts = list({a.id: a for a in alerts}.values())
    m = evaluate(alerts, LABELS, pd.DataFrame(), window_s=W, hours=1.0, pods=100)["overall"]
    assert m["true_alerts"] + m["false_alerts"] == m["alerts"] == len({a.id for a in alerts})
    assert 0 <= m["detected"] <= m["episodes"]
    fewer = evaluate(alerts[:-1], LABELS, pd.DataFrame(), window_s=W, hours=1.0, pods=100)["overall"]
    assert fewer["detected"] <= m["detected"]
