"""The record contracts: flow batches (schema, validation naming the field), entity-windows,
alerts, decisions."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from flowwarden.errors import RecordError
from flowwarden.models.registry import load_default
from flowwarden.pipeline.detection.engine import DetectionEngine
from flowwarden.pipeline.detection.state import pack_state, unpack_state
from flowwarden.records import (
    FLOW_SCHEMA,
    REQUIRED_COLUMNS,
    WINDOW_COLUMNS,
    WINDOW_FEATURES,
    WINDOW_KEY_COLUMNS,
    WINDOW_OLD_NAMES,
    WINDOW_SCHEMA,
    Alert,
    Decision,
    Entity,
    FlowState,
    alert_id,
    conform_flows,
    conform_windows,
    empty_flows,
    empty_windows,
    split_invalid_flows,
    validate_flows,
)
from flowwarden.settings import Settings


def base(n: int = 3) -> dict:
    return {
        "ts_start": [1_700_000_000.0 + i for i in range(n)],
        "ts_end": [1_700_000_001.5 + i for i in range(n)],
        "src_ip": ["10.244.0.5", "fd00:10:244::7", "10.244.0.6"][:n],
        "dst_ip": ["10.96.0.10", "2001:db8::1", "8.8.8.8"][:n],
        "dst_port": [53, 443, 53][:n],
        "proto": [17, 6, 17][:n],
        "bytes_out": [80, 1500, 90][:n],
        "pkts_out": [1, 3, 1][:n],
    }


def dtypes(df: pd.DataFrame) -> dict[str, str]:
    return {str(c): str(t) for c, t in df.dtypes.items()}


def test_empty_and_conformed_batches_have_exactly_the_schema():
    assert list(empty_flows().columns) == list(FLOW_SCHEMA)
    assert dtypes(empty_flows(4)) == FLOW_SCHEMA
    df = conform_flows({**base(), "extra": [1, 2, 3]})
    assert list(df.columns) == list(FLOW_SCHEMA), "extra columns dropped, order fixed"
    assert dtypes(df) == FLOW_SCHEMA
    assert df["final"].tolist() == [True] * 3 and df["dns_rcode"].tolist() == [-1] * 3
    assert df["src_pod"].tolist() == [""] * 3, "missing text is the empty string, never NaN"


def test_missing_strings_become_empty_not_nan():
    df = conform_flows({**base(2), "dns_qname": ["example.com", None]})
    assert df["dns_qname"].tolist() == ["example.com", ""]


@pytest.mark.parametrize("column", REQUIRED_COLUMNS)
def test_missing_required_column_is_named(column: str):
    data = base()
    data.pop(column)
    with pytest.raises(RecordError) as err:
        conform_flows(data)
    assert err.value.field == column
    assert "missing" in err.value.reason


@pytest.mark.parametrize(
    ("column", "values"),
    [
        ("bytes_out", ["a lot", "1", "2"]),
        ("dst_port", [1.0, np.nan, 3.0]),
        ("final", [True, None, False]),
    ],
)
def test_uncastable_column_is_named(column: str, values: list):
    with pytest.raises(RecordError) as err:
        conform_flows({**base(), column: values})
    assert err.value.field == column


@pytest.mark.parametrize(
    ("column", "value", "field"),
    [
        ("bytes_out", -1, "bytes_out"),
        ("pkts_in", -3, "pkts_in"),
        ("src_ip", "10.0.0.256", "src_ip"),
        ("dst_ip", "not-an-ip", "dst_ip"),
        ("src_ip", "", "src_ip"),
        ("dst_port", 70000, "dst_port"),
        ("src_port", -1, "src_port"),
        ("proto", 300, "proto"),
        ("state", "half-open", "state"),
        ("direction", "sideways", "direction"),
        ("ts_start", float("inf"), "ts_start/ts_end"),
    ],
)
def test_invalid_row_values_name_the_field(column: str, value: object, field: str):
    data = base()
    data[column] = [data.get(column, [0] * 3)[0], value, data.get(column, [0] * 3)[2]]
    if column in ("pkts_in", "src_port", "state", "direction"):
        data[column] = [{"state": "udp", "direction": "egress"}.get(column, 0), value, 0]
        if column in ("state", "direction"):
            data[column][2] = ""
    with pytest.raises(RecordError) as err:
        validate_flows(pd.DataFrame(data))
    assert err.value.field == field
    assert "row 1" in err.value.reason


def test_missing_timestamp_is_a_row_error_naming_the_timestamps():
    with pytest.raises(RecordError) as err:
        validate_flows(pd.DataFrame({**base(), "ts_start": [None, 1.0, 2.0]}))
    assert err.value.field == "ts_start/ts_end" and "row 0" in err.value.reason


def test_end_before_start_is_named():
    data = base()
    data["ts_end"] = [data["ts_start"][0] - 1, *data["ts_end"][1:]]
    with pytest.raises(RecordError, match=r"^ts_end: earlier than ts_start"):
        validate_flows(pd.DataFrame(data))


def test_split_invalid_flows_keeps_good_rows_and_gives_reasons():
    df = conform_flows(base())
    df.loc[0, "bytes_in"] = -5
    df.loc[2, "dst_ip"] = "300.1.1.1"
    good, bad = split_invalid_flows(df)
    assert good["src_ip"].tolist() == ["fd00:10:244::7"]
    assert bad["reason"].tolist() == ["bytes_in: negative", "dst_ip: not an IP address"]
    assert dtypes(good) == FLOW_SCHEMA


def test_split_of_a_clean_batch_returns_it_whole():
    df = conform_flows(base())
    good, bad = split_invalid_flows(df)
    assert len(good) == 3 and len(bad) == 0 and "reason" in bad.columns


def test_validate_accepts_every_state_and_ipv6():
    states = [s.value for s in FlowState]
    n = len(states)
    data = {
        "ts_start": [1.0] * n,
        "ts_end": [2.0] * n,
        "src_ip": [f"fd00::{i + 1:x}" for i in range(n)],
        "dst_ip": [f"10.0.0.{i + 1}" for i in range(n)],
        "proto": [6] * n,
        "bytes_out": [0] * n,
        "pkts_out": [0] * n,
        "state": states,
    }
    assert len(validate_flows(pd.DataFrame(data))) == n


ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ips = st.one_of(ipv4, ipv6)


@st.composite
def flow_rows(draw: st.DrawFn) -> dict:
    start = draw(st.floats(min_value=0, max_value=4e9, allow_nan=False))
    return {
        "ts_start": start,
        "ts_end": start + draw(st.floats(min_value=0, max_value=86_400, allow_nan=False)),
        "src_ip": draw(ips),
        "dst_ip": draw(ips),
        "src_port": draw(st.integers(0, 65535)),
        "dst_port": draw(st.integers(0, 65535)),
        "proto": draw(st.sampled_from([1, 6, 17, 58, 132])),
        "bytes_out": draw(st.integers(0, 2**62)),
        "bytes_in": draw(st.integers(0, 2**62)),
        "pkts_out": draw(st.integers(0, 2**40)),
        "pkts_in": draw(st.integers(0, 2**40)),
        "state": draw(st.sampled_from(sorted(s.value for s in FlowState))),
        "dns_qname": draw(st.text(max_size=40)),
        "final": draw(st.booleans()),
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(flow_rows(), min_size=1, max_size=25))
def test_property_valid_rows_always_validate(rows: list[dict]):
    df = validate_flows(pd.DataFrame(rows))
    assert len(df) == len(rows)
    good, bad = split_invalid_flows(df)
    assert len(bad) == 0 and len(good) == len(rows)
    for ip in df["src_ip"]:
        ipaddress.ip_address(ip)


@settings(max_examples=60, deadline=None)
@given(st.lists(flow_rows(), min_size=1, max_size=20), st.data())
def test_property_one_corrupted_row_is_caught_and_only_it(rows: list[dict], data: st.DataObject):
    i = data.draw(st.integers(0, len(rows) - 1))
    field = data.draw(st.sampled_from(["src_ip", "dst_ip", "bytes_out", "pkts_in"]))
    rows[i][field] = "999.1.1.1" if field.endswith("_ip") else -data.draw(st.integers(1, 2**40))
    good, bad = split_invalid_flows(conform_flows(pd.DataFrame(rows)))
    assert len(bad) == 1 and len(good) == len(rows) - 1
    assert bad["reason"].iloc[0].startswith(f"{field}: ")


# --------------------------------------------------------------------------- entity-windows


def _engine_flows() -> pd.DataFrame:
    """Two windows of a pod-network source: calls, a failed probe, an upload, a DNS query."""
    t0 = 1_800_000_000.0
    rows: list[dict[str, Any]] = []
    for k in range(2):
        t = t0 + 10 * k
        rows += [
            {"ts_start": t + 1, "src_ip": "10.244.1.9", "dst_ip": "10.244.2.3", "dst_port": 5432},
            {"ts_start": t + 2, "src_ip": "10.244.1.9", "dst_ip": "10.244.7.7", "dst_port": 22,
             "state": "rejected"},
            {"ts_start": t + 3, "src_ip": "10.244.1.9", "dst_ip": "93.184.216.34", "dst_port": 443,
             "bytes_out": 50_000},
            {"ts_start": t + 4, "src_ip": "10.244.1.10", "dst_ip": "10.96.0.10", "dst_port": 53, "proto": 17,
             "state": "udp", "dns_qname": "api.example.com"},
        ]  # fmt: skip
    for r in rows:
        r["ts_end"] = r["ts_start"] + 0.1
        r.setdefault("proto", 6)
        r.setdefault("state", "closed")
        r.setdefault("bytes_out", 1000)
        r.setdefault("pkts_out", 5)
    return conform_flows(pd.DataFrame(rows))


def _scored_windows(engine: DetectionEngine, flows: pd.DataFrame) -> pd.DataFrame:
    frames = [engine.process(flows).windows, engine.flush().windows]
    return pd.concat([f for f in frames if len(f)], ignore_index=True)


def test_entity_window_schema_is_the_keys_then_the_shipped_models_features():
    assert (*WINDOW_KEY_COLUMNS, *WINDOW_FEATURES) == WINDOW_COLUMNS
    assert list(WINDOW_SCHEMA) == list(WINDOW_COLUMNS)
    assert {WINDOW_SCHEMA[f] for f in WINDOW_FEATURES} == {"float64"}
    assert {"window_start", "window_end", "workload_key"} <= set(WINDOW_KEY_COLUMNS)
    assert not {"ws", "we", "wl_key"} & set(WINDOW_COLUMNS)
    # A trained model names its columns: the shipped one must keep loading and scoring.
    model = load_default()
    assert model is not None and list(WINDOW_FEATURES) == model.feature_names
    assert list(empty_windows().columns) == list(WINDOW_COLUMNS)
    assert dtypes(empty_windows(3)) == WINDOW_SCHEMA


def test_pipeline_computes_exactly_the_declared_entity_windows():
    windows = _scored_windows(DetectionEngine(Settings()), _engine_flows())
    scores = [c for c in windows.columns if c.startswith("score_")]
    assert scores and list(windows.columns) == [*WINDOW_COLUMNS, *scores]
    assert dtypes(windows[list(WINDOW_COLUMNS)]) == WINDOW_SCHEMA
    assert sorted(windows["entity"]) == ["10.244.1.10", "10.244.1.10", "10.244.1.9", "10.244.1.9"]
    assert (windows["window_end"] - windows["window_start"] == 10.0).all()
    assert windows.loc[windows["entity"] == "10.244.1.9", "failed_conns"].tolist() == [1.0, 1.0]
    conformed = conform_windows(windows)
    pd.testing.assert_frame_equal(conformed, windows)


def test_conform_windows_reads_the_old_key_names_and_names_what_is_missing():
    old = empty_windows(2).rename(columns={v: k for k, v in WINDOW_OLD_NAMES.items()})
    old = old.assign(score_port_scan=[0.0, 0.5])
    assert {"ws", "we", "wl_key"} <= set(old.columns)
    out = conform_windows(old)
    assert list(out.columns) == [*WINDOW_COLUMNS, "score_port_scan"]
    assert dtypes(out[list(WINDOW_COLUMNS)]) == WINDOW_SCHEMA
    with pytest.raises(RecordError) as err:
        conform_windows(empty_windows(1).drop(columns=["beacon_score"]))
    assert err.value.field == "beacon_score"
    with pytest.raises(RecordError) as err:
        conform_windows(empty_windows(1).assign(flows=["many"]))
    assert err.value.field == "flows"


def _with_old_names(state: bytes) -> bytes:
    """The same checkpoint as the version before the record named its columns wrote it."""
    doc = json.loads(state)
    tables, meta = unpack_state(state)
    old = {k: t.rename(columns={v: o for o, v in WINDOW_OLD_NAMES.items()}) for k, t in tables.items()}
    old_doc = json.loads(pack_state(old, meta))
    assert old_doc["version"] == doc["version"]
    return json.dumps(old_doc).encode()


def test_a_checkpoint_with_the_old_column_names_restores():
    flows = _engine_flows()
    first, later = flows[flows["ts_start"] < 1_800_000_010.0], flows[flows["ts_start"] >= 1_800_000_010.0]
    engine = DetectionEngine(Settings())
    engine.process(first)
    engine.process(later.iloc[:0], now=1_800_000_013.0)  # the first window closes
    state = engine.export_state()
    assert len(engine.recent.table) and "window_start" in engine.recent.table.columns
    old_state = _with_old_names(state)
    tables, _ = unpack_state(old_state)
    assert "ws" in tables["recent"].columns and "window_start" not in tables["recent"].columns

    restored = {}
    for name, data in (("new", state), ("old", old_state)):
        e = DetectionEngine(Settings())
        e.import_state(data)
        pd.testing.assert_frame_equal(e.recent.table, engine.recent.table)
        restored[name] = _scored_windows(e, later)
    pd.testing.assert_frame_equal(restored["old"], restored["new"])


def test_the_shipped_state_written_with_the_old_names_restores_whole():
    model = load_default()
    state = model.state if model is not None else None
    assert state is not None
    tables, _ = unpack_state(state)
    engine = DetectionEngine(Settings())
    engine.import_state(state)  # with the clocks: every table, as a checkpoint restores
    assert list(engine.recent.table.columns) == ["entity", "kind", "dst", "port", "window_start"]
    assert len(engine.recent.table) == len(tables["recent"])
    recent_start = "ws" if "ws" in tables["recent"].columns else "window_start"
    np.testing.assert_array_equal(
        engine.recent.table["window_start"].to_numpy(), tables["recent"][recent_start].to_numpy()
    )


# --------------------------------------------------------------------------- alerts, decisions

WINDOW = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)


def alert(**kw: object) -> Alert:
    fields: dict = {
        "kind": "lateral_movement",
        "detector": "port_scan",
        "score": 0.9,
        "severity": "high",
        "entity": Entity(ip="10.244.1.5", namespace="shop", pod="cart-1", workload="cart"),
        "window_start": WINDOW,
        "window_end": WINDOW + timedelta(seconds=10),
        "targets": ["10.244.2.1", "fd00::1"],
    }
    fields.update(kw)
    return Alert(**fields)


def test_alert_id_is_deterministic_from_the_evidence():
    a, b = alert(), alert(score=0.95)
    assert a.id == b.id == alert_id("port_scan", "shop/cart-1", WINDOW)
    assert alert(window_start=WINDOW + timedelta(seconds=10)).id != a.id
    assert alert(detector="ip_sweep").id != a.id
    assert a.first_seen == WINDOW and a.last_seen == WINDOW + timedelta(seconds=10)


def test_alert_json_round_trip_and_errors_name_the_field():
    a = alert()
    assert Alert.from_json(a.to_json()) == a
    with pytest.raises(RecordError) as err:
        Alert.from_json(a.to_json().replace('"high"', '"apocalyptic"'))
    assert err.value.field == "severity"
    with pytest.raises(RecordError):
        Alert.from_json(b"{not json")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"score": 1.5}, "score"),
        ({"targets": ["10.0.0.300"]}, "targets"),
        ({"target_ports": [70000]}, "target_ports"),
        ({"detector": "Port Scan!"}, "detector"),
        ({"kind": "ddos"}, "kind"),
    ],
)
def test_alert_validation_names_the_field(change: dict, field: str):
    with pytest.raises(ValidationError) as err:
        alert(**change)
    assert err.value.errors()[0]["loc"][0] == field


def test_entity_key_prefers_the_pod_and_checks_the_ip():
    assert Entity(ip="10.0.0.1").key() == "10.0.0.1"
    assert Entity(ip="fd00::1", namespace="a", pod="b").key() == "a/b"
    with pytest.raises(ValidationError, match="ip"):
        Entity(ip="10.0.0.999")


def test_decision_round_trip_and_validation():
    d = Decision(
        id="d1",
        alert_id=alert().id,
        action="block",
        source=Entity(ip="10.244.1.5"),
        targets=["203.0.113.0/24"],
        ttl_s=3600,
        mode="dry_run",
        status="simulated",
        backend="nftables",
    )
    assert Decision.from_json(d.to_json()) == d
    with pytest.raises(RecordError) as err:
        Decision.from_json(d.to_json().replace('"dry_run"', '"yolo"'))
    assert err.value.field == "mode"
    with pytest.raises(ValidationError):
        Decision(
            id="x", action="block", source=Entity(ip="10.0.0.1"), ttl_s=-1, mode="enforce", status="applied"
        )
