"""The engine over literal streams: windows close by watermark and clock, alerts update, state survives."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from flowwarden.kube import PodInventory
from flowwarden.pipeline.detection.engine import DetectionEngine
from flowwarden.pipeline.runtime.offline import detect_flows
from flowwarden.records import Alert
from flowwarden.settings import Settings
from tests.unit.flowkit import T0, flows, pod

SCANNER = "10.244.1.9"
VICTIM = "10.244.2.3"
INV = PodInventory.from_dict(
    {"items": [pod("web-5d9c8f7b6-aaaaa", SCANNER), pod("db-0", VICTIM, owner=("StatefulSet", "db"))]}
)


def _scan(t: float, n: int = 40) -> pd.DataFrame:
    return flows(
        [
            {
                "ts_start": t + i * 0.01,
                "src_ip": SCANNER,
                "dst_ip": VICTIM,
                "dst_port": 1 + i,
                "state": "rejected",
                "bytes_out": 60,
                "bytes_in": 0,
            }
            for i in range(n)
        ]
    )


def _quiet(t: float) -> pd.DataFrame:
    return flows([{"ts_start": t, "src_ip": SCANNER, "dst_ip": VICTIM, "dst_port": 5432}])


def test_window_closes_on_watermark_or_clock() -> None:
    eng = DetectionEngine(Settings(pipeline={"early_alerts": False}), inventory=INV)
    r = eng.process(_scan(T0 + 1))
    assert r.alerts == [] and eng.open_window_floor() == T0
    assert len(r.enriched) == 40 and set(r.enriched["src_workload"]) == {"web"}
    r = eng.process(_quiet(T0 + 13))  # watermark T0+13.1 - lateness < T0+20: the first window closes
    assert [a.detector for a in r.alerts] == ["port_scan"]
    assert r.alerts[0].kind == "lateral_movement" and r.alerts[0].technique == "T1046"
    assert r.alerts[0].entity.pod == "web-5d9c8f7b6-aaaaa" and r.alerts[0].targets == [VICTIM]
    assert eng.open_window_floor() == T0 + 10
    r = eng.process(flows([]) if False else _quiet(T0 + 14).iloc[0:0], now=T0 + 100)
    assert len(r.windows) == 1 and eng.open_window_floor() is None
    assert eng.windows_scored == 2


def test_a_conclusive_scan_fires_from_the_open_window_and_its_close_updates_the_same_alert() -> None:
    eng = DetectionEngine(Settings(), inventory=INV)
    assert eng.process(_scan(T0 + 1, n=5)).alerts == [], "five refused ports are not a scan yet"
    early = eng.process(_scan(T0 + 2, n=40)).alerts
    assert [a.detector for a in early] == ["port_scan"] and eng.open_window_floor() == T0
    assert early[0].targets == [VICTIM] and early[0].evidence["windows"] == 1
    assert eng.windows_scored == 0 and eng.early_alerts == 1, "nothing learned from the open window"
    closed = eng.process(_quiet(T0 + 13)).alerts
    assert [a.id for a in closed] == [early[0].id], "the window's close updates the early alert"
    assert closed[0].evidence["windows"] == 1 and closed[0].window_end == early[0].window_end
    quiet = DetectionEngine(Settings(), inventory=INV)
    assert quiet.process(_quiet(T0 + 1)).alerts == [], "rows no early detector looks at: no early scoring"


def test_an_open_window_that_fired_early_is_scored_again_only_once_its_evidence_grew_by_half() -> None:
    eng = DetectionEngine(Settings(), inventory=INV)
    first = eng.process(_scan(T0 + 1, n=40)).alerts
    assert [a.detector for a in first] == ["port_scan"] and eng.early_alerts == 1
    assert eng.process(_scan(T0 + 3, n=10)).alerts == [], "50 probes after 40: more of the same"
    assert eng.early_alerts == 1
    again = eng.process(_scan(T0 + 5, n=10)).alerts
    assert [a.id for a in again] == [first[0].id] and eng.early_alerts == 2, "60 probes: scored again"
    closed = eng.process(_quiet(T0 + 13)).alerts
    assert [a.id for a in closed] == [first[0].id], "the close has the final word, as before"


class _Counting(DetectionEngine):
    """Counts the early passes over novelty readers."""

    novelty_passes = 0

    def _early_pass(self, flows: pd.DataFrame, dets: list[Any], *, novelty: bool) -> list[Alert]:
        self.novelty_passes += novelty
        return super()._early_pass(flows, dets, novelty=novelty)


class _NeverQuiet(_Counting):
    def _novelty_quiet(self, dets: list[Any]) -> bool:
        return False


def _upload(t: float, dst: str) -> pd.DataFrame:
    rows = [{"ts_start": t + i * 0.1, "src_ip": SCANNER, "dst_ip": dst, "dst_port": 443} for i in range(5)]
    return flows([r | {"bytes_out": 5_000_000, "bytes_in": 2000} for r in rows])


def test_the_novelty_pass_is_skipped_only_while_no_reader_can_fire() -> None:
    stream = [_quiet(T0 + 1), _upload(T0 + 20, "203.0.113.66"), _quiet(T0 + 45)]
    stream += [_upload(T0 + 85, "198.51.100.7"), _upload(T0 + 87, "198.51.100.7"), _quiet(T0 + 100)]
    skip, full = _Counting(Settings(), inventory=INV), _NeverQuiet(Settings(), inventory=INV)
    got: list[Alert] = []
    want: list[Alert] = []
    for batch in stream:
        got += skip.process(batch).alerts
        want += full.process(batch).alerts
    got += skip.flush().alerts
    want += full.flush().alerts

    def canonical(alerts: list[Alert]) -> list[str]:
        return [a.model_dump_json(exclude={"created_at"}) for a in alerts]

    assert canonical(got) == canonical(want), "the same alerts, evidence and all"
    assert skip.novelty_passes < full.novelty_passes, "no pass in the first minute of memory"
    early = [a for a in got if a.detector == "new_destination_volume" and a.evidence["detected_at"] < T0 + 90]
    assert early, "after it, an upload to a new address still fires from its open window"


def test_offline_detection_fed_by_the_second_fires_early_as_live_would() -> None:
    flows = pd.concat([_scan(T0 + 1), _quiet(T0 + 25)], ignore_index=True)
    chunked = detect_flows(flows, settings=Settings(), inventory=INV).alerts
    fed = detect_flows(flows, settings=Settings(), inventory=INV, feed_s=1.0).alerts
    assert [a.id for a in chunked] == [a.id for a in fed] and len(fed) == 1
    # One call over everything: raised when the window closed; fed by the second: at the scan.
    assert chunked[0].evidence["detected_at"] >= T0 + 10
    assert T0 + 1 < fed[0].evidence["detected_at"] < T0 + 3


def test_ongoing_behaviour_updates_one_alert_and_late_flows_are_counted() -> None:
    eng = DetectionEngine(Settings(), inventory=INV)
    first = eng.process(pd.concat([_scan(T0 + 1), _scan(T0 + 11), _quiet(T0 + 25)], ignore_index=True))
    assert len(first.alerts) == 1
    a = first.alerts[0]
    assert a.window_start.timestamp() == T0 and a.window_end.timestamp() == T0 + 20
    assert a.evidence["windows"] == 2
    eng.process(_scan(T0 + 2, n=3))  # its window already closed: folded into the open one
    assert eng.late_flows == 3
    later = eng.process(_scan(T0 + 301)).alerts + eng.flush().alerts
    # The late probes extend the open alert; after a quiet spell the scan is a new alert,
    # raised early from its open window and updated when that window closes.
    assert [x.id == a.id for x in later] == [True, False, False]
    assert later[0].evidence["windows"] == 3 and later[1].window_start.timestamp() == T0 + 300
    assert later[1].id == later[2].id and later[2].evidence["windows"] == 1


def test_allowlist_suppresses_and_counts() -> None:
    s = Settings()
    s.pipeline.allowlist_sources = ["shop/web"]
    eng = DetectionEngine(s, inventory=INV)
    eng.process(_scan(T0 + 1))
    assert eng.flush().alerts == [] and eng.alerts.suppressed["allowlist"] == 1
    s.pipeline.allowlist_sources = ["10.244.1.0/24"]
    eng = DetectionEngine(s, inventory=INV)
    eng.process(_scan(T0 + 1))
    assert eng.flush().alerts == [] and eng.alerts.suppressed["allowlist"] == 1


def test_state_round_trip_gives_the_same_alerts() -> None:
    """A restarted engine that imported the state behaves like the one that never stopped."""
    rng = np.random.default_rng(5)
    benign = flows(
        [
            {
                "ts_start": T0 + t,
                "src_ip": SCANNER,
                "dst_ip": "203.0.113.5",
                "dst_port": 443,
                "bytes_out": int(b),
            }
            for t, b in zip(np.arange(0, 600, 5), rng.integers(1000, 5000, 120), strict=True)
        ]
    )
    burst = flows(
        [
            {
                "ts_start": T0 + 700 + i,
                "src_ip": SCANNER,
                "dst_ip": "198.51.100.9",
                "dst_port": 443,
                "bytes_out": 60_000_000,
            }
            for i in range(3)
        ]
    )
    one = DetectionEngine(Settings(), inventory=INV)
    one.process(benign)
    saved, floor = one.export_state(), one.open_window_floor()
    assert floor is not None
    a1 = one.process(burst).alerts + one.flush().alerts
    two = DetectionEngine(Settings(), inventory=INV)
    two.import_state(saved)
    # The runtime replays what was not committed: the flows of windows still open at export.
    two.process(benign[benign["ts_end"] >= floor])
    a2 = two.process(burst).alerts + two.flush().alerts
    assert {a.detector for a in a1} >= {"bulk_egress"}
    assert sorted((a.id, a.score) for a in a1) == sorted((a.id, a.score) for a in a2)
    assert two.windows_scored == one.windows_scored


def test_warm_start_history_makes_novelty_detectors_ready() -> None:
    """History from another run (a model's state) counts as learned: no learning pause."""
    old = DetectionEngine(Settings(), inventory=INV)
    old.process(
        flows(
            [
                {"ts_start": T0 - 86400 + i, "src_ip": SCANNER, "dst_ip": VICTIM, "dst_port": 5432}
                for i in range(0, 300, 5)
            ]
        )
    )
    old.flush()
    peers = [f"10.244.3.{i}" for i in range(2, 30)]
    fan = flows(
        [
            {"ts_start": T0 + 1 + i * 0.1, "src_ip": SCANNER, "dst_ip": ip, "dst_port": 22}
            for i, ip in enumerate(peers)
        ]
    )
    cold = detect_flows(fan, settings=Settings(), inventory=INV)
    warm = detect_flows(fan, settings=Settings(), inventory=INV, state=old.export_state())
    assert "fan_out" not in {a.detector for a in cold.alerts}
    assert "fan_out" in {a.detector for a in warm.alerts}


def test_detect_flows_sets_invalid_rows_aside_with_reason() -> None:
    df = pd.concat([_scan(T0 + 1), _quiet(T0 + 2)], ignore_index=True)
    df.loc[0, "src_ip"] = "bogus"
    res = detect_flows(df, settings=Settings(), inventory=INV)
    assert res.invalid is not None and res.invalid["reason"].tolist() == ["src_ip: not an IP address"]
    assert [a.detector for a in res.alerts] == ["port_scan"]
    assert {"score_port_scan", "flows", "entity"} <= set(res.windows.columns)


def test_detect_command_writes_alerts_jsonl(tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from flowwarden.cli import app
    from flowwarden.records import Alert

    pq = tmp_path / "flows.parquet"
    pd.concat([_scan(T0 + 1), _quiet(T0 + 30)], ignore_index=True).to_parquet(pq)
    inv = tmp_path / "pods.json"
    inv.write_text(json.dumps({"items": [pod("web-5d9c8f7b6-aaaaa", SCANNER)]}))
    out = tmp_path / "alerts.jsonl"
    res = CliRunner().invoke(
        app, ["detect", "--flows", str(pq), "--inventory", str(inv), "--out", str(out), "--no-model"]
    )
    assert res.exit_code == 0, res.output
    alerts = [Alert.from_json(line) for line in out.read_text().splitlines()]
    assert [a.detector for a in alerts] == ["port_scan"] and alerts[0].entity.workload == "web"
    assert "port_scan=1" in res.output
    res = CliRunner().invoke(app, ["detect", "--out", str(out)])
    assert res.exit_code != 0 and "exactly one of --flows" in str(res.exception)


def test_detect_command_on_a_capture(tmp_path) -> None:
    """Collector metering then the same engine: a real nmap-style scan capture raises a port scan."""
    from pathlib import Path

    from typer.testing import CliRunner

    from flowwarden.cli import app
    from flowwarden.records import Alert

    pcap = Path(__file__).resolve().parents[1] / "data" / "pcaps" / "scan_vlan.pcap"
    assert pcap.exists()
    cfg = tmp_path / "lab.yaml"
    cfg.write_text('cluster:\n  pod_cidrs: ["10.9.0.0/24"]\n')
    out = tmp_path / "alerts.jsonl"
    res = CliRunner().invoke(
        app, ["detect", "--pcap", str(pcap), "--config", str(cfg), "--out", str(out), "--no-model"]
    )
    assert res.exit_code == 0, res.output
    alerts = [Alert.from_json(line) for line in out.read_text().splitlines()]
    assert [(a.detector, a.entity.ip, a.targets) for a in alerts] == [("port_scan", "10.9.0.1", ["10.9.0.2"])]


def test_vocabulary_is_bounded_without_losing_buffered_flows() -> None:
    settings = Settings()
    settings.pipeline.max_vocabulary = 3
    eng = DetectionEngine(settings, inventory=INV)
    eng.process(_scan(T0 + 1))  # buffered, window still open; the vocabulary is rebuilt
    assert "vocabulary" in eng.evicted  # it was rebuilt from the buffered flows
    alerts = eng.flush().alerts
    assert [a.detector for a in alerts] == ["port_scan"] and alerts[0].targets == [VICTIM]
    assert alerts[0].entity.pod == "web-5d9c8f7b6-aaaaa"


def test_an_alerted_fan_out_is_not_learned_so_the_next_pod_still_stands_out() -> None:
    second = "10.244.1.10"
    inv = PodInventory.from_dict(
        {
            "items": [
                pod("web-5d9c8f7b6-aaaaa", SCANNER),
                pod("web-5d9c8f7b6-bbbbb", second),
                pod("db-0", VICTIM, owner=("StatefulSet", "db")),
            ]
        }
    )
    history = flows(
        [
            {"ts_start": T0 + t, "src_ip": ip, "dst_ip": VICTIM, "dst_port": 5432}
            for t in range(0, 150, 5)
            for ip in (SCANNER, second)
        ]
    )
    peers = [f"10.244.3.{i}" for i in range(2, 14)]

    def fan(src: str, t: float) -> pd.DataFrame:
        return flows(
            [
                {"ts_start": t + i * 0.2, "src_ip": src, "dst_ip": ip, "dst_port": 22}
                for i, ip in enumerate(peers)
            ]
        )

    res = detect_flows(
        pd.concat(
            [
                history,
                fan(SCANNER, T0 + 200),
                fan(second, T0 + 600),
                fan(SCANNER, T0 + 1000),
                fan(SCANNER, T0 + 5000),
            ]
        ),
        settings=Settings(),
        inventory=inv,
    )
    fan_outs = sorted(
        (a.entity.pod, a.window_start.timestamp()) for a in res.alerts if a.detector == "fan_out"
    )
    # The first pod repeating itself soon after is not news (its alert said it); hours later it is.
    assert fan_outs == [
        ("web-5d9c8f7b6-aaaaa", T0 + 200),
        ("web-5d9c8f7b6-aaaaa", T0 + 5000),
        ("web-5d9c8f7b6-bbbbb", T0 + 600),
    ]
