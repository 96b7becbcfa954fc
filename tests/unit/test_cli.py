"""The scriptable CLI: exit codes, ``--output json``, logging from the settings, progress off a terminal.

Commands run in-process through :func:`flowwarden.cli.run`, the function ``main()`` exits
with, so a status here is the status a shell sees. The one "unreachable service" case uses
a real socket that nothing listens on (no mock of PostgreSQL or Kafka).
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from flowwarden.cli import run
from flowwarden.cli.common import JsonFormatter, configure_logging
from flowwarden.errors import ExitCode
from tests.unit.flowkit import T0, flows, pod

SCANNER = "10.244.1.9"
VICTIM = "10.244.2.3"
PCAP = Path(__file__).resolve().parents[1] / "data" / "pcaps" / "scan_vlan.pcap"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """run() configures the root logger as a command does; put it back for the next test."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _scan_files(tmp_path: Path) -> tuple[Path, Path]:
    scan = flows(
        [
            {
                "ts_start": T0 + 1 + i * 0.01,
                "src_ip": SCANNER,
                "dst_ip": VICTIM,
                "dst_port": 1 + i,
                "state": "rejected",
                "bytes_out": 60,
                "bytes_in": 0,
            }
            for i in range(40)
        ]
        + [{"ts_start": T0 + 30, "src_ip": SCANNER, "dst_ip": VICTIM, "dst_port": 5432}]
    )
    pq = tmp_path / "flows.parquet"
    scan.to_parquet(pq)
    inv = tmp_path / "pods.json"
    inv.write_text(json.dumps({"items": [pod("web-5d9c8f7b6-aaaaa", SCANNER)]}))
    return pq, inv


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_exit_codes_are_distinct_and_documented() -> None:
    codes = {c.name: int(c) for c in ExitCode}
    assert codes == {
        "OK": 0,
        "FAILED": 1,
        "BAD_INPUT": 2,
        "CONFIG": 3,
        "UNAVAILABLE": 4,
        "FOUND": 5,
        "INTERRUPTED": 130,
    }
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for code in codes.values():
        assert f"| {code} |" in readme, f"exit code {code} is not in the README's table"


def test_a_configuration_error_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipeline:\n  windw_s: 5\n")
    assert run(["config", "check", str(bad)]) == ExitCode.CONFIG
    err = capsys.readouterr().err
    assert "unknown key 'pipeline.windw_s'; did you mean 'pipeline.window_s'?" in err


def test_bad_input_exits_2_whether_click_or_flowwarden_finds_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.parquet"
    assert run(["detect", "--flows", str(missing), "--out", str(tmp_path / "a.jsonl")]) == ExitCode.BAD_INPUT
    assert f"--flows: {missing}: no such file" in capsys.readouterr().err
    assert run(["detect", "--no-such-option"]) == ExitCode.BAD_INPUT
    assert "No such option" in capsys.readouterr().err
    not_parquet = tmp_path / "x.parquet"
    not_parquet.write_text("not parquet")
    assert run(["detect", "--flows", str(not_parquet), "--out", str(tmp_path / "a.jsonl")]) == 2


def test_an_unreachable_service_exits_4(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWWARDEN_STORE__URL", f"postgresql+psycopg://fw@127.0.0.1:{_closed_port()}/fw")
    assert run(["blocks", "list"]) == ExitCode.UNAVAILABLE
    assert "is not reachable" in capsys.readouterr().err


def test_replay_refuses_the_in_memory_bus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pq, _ = _scan_files(tmp_path)
    assert run(["replay", str(pq)]) == ExitCode.CONFIG
    err = capsys.readouterr().err
    assert "bus.kind is memory, so the flows would go nowhere" in err and "bus.kind: kafka" in err


def test_detect_strict_exits_5_when_it_finds_something(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pq, inv = _scan_files(tmp_path)
    args = ["detect", "--flows", str(pq), "--inventory", str(inv), "--out", str(tmp_path / "a.jsonl")]
    assert run([*args, "--no-model"]) == ExitCode.OK
    assert run([*args, "--no-model", "--strict"]) == ExitCode.FOUND
    quiet = tmp_path / "quiet.parquet"
    flows([{"ts_start": T0, "src_ip": SCANNER, "dst_ip": VICTIM, "dst_port": 5432}]).to_parquet(quiet)
    args = ["detect", "--flows", str(quiet), "--out", str(tmp_path / "b.jsonl"), "--no-model", "--strict"]
    assert run(args) == ExitCode.OK


def test_detect_output_json_is_one_document_and_no_progress_bar_off_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pq, inv = _scan_files(tmp_path)
    out = tmp_path / "a.jsonl"
    args = ["detect", "--flows", str(pq), "--inventory", str(inv), "--out", str(out), "--no-model"]
    assert run([*args, "--output", "json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)  # exactly one JSON document: nothing else on stdout
    assert doc["alerts"] == 1 and doc["by_detector"] == {"port_scan": 1} and doc["out"] == str(out)
    assert doc["flows"] == 41 and doc["format"] == "native"
    assert "━" not in captured.err and "%" not in captured.err  # stderr is not a terminal here


def test_an_error_under_output_json_is_a_json_document_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.parquet"
    code = run(["detect", "--output", "json", "--flows", str(missing), "--out", str(tmp_path / "a.jsonl")])
    assert code == ExitCode.BAD_INPUT
    doc = json.loads(capsys.readouterr().out)
    assert doc["error"]["type"] == "InputError" and doc["error"]["exit_code"] == 2


def test_config_check_and_blocks_list_in_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "fw.yaml"
    cfg.write_text(f"store:\n  url: sqlite:///{tmp_path / 'fw.db'}\nlog_level: warning\n")
    assert run(["config", "check", str(cfg), "--output", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["valid"] is True and doc["settings"]["log_level"] == "warning"
    assert doc["settings"]["retry"] == {"initial_s": 0.5, "max_s": 30.0, "jitter": True}
    assert run(["blocks", "list", "--config", str(cfg), "--output", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"decisions": [], "count": 0}


def test_collect_pcap_json_and_the_stage_reports_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flowwarden.collectors.offline import meter_capture
    from flowwarden.settings import Settings

    settings = Settings.model_validate({"collector": {"app_names": False}})
    seen: list[tuple[int, int, int]] = []
    df, report = meter_capture(PCAP, settings, progress=lambda *p: seen.append(p))
    assert seen and seen[-1][0] == report.packets and seen[-1][2] == PCAP.stat().st_size
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(seen))  # bytes only grow
    cfg = tmp_path / "fw.yaml"
    cfg.write_text("collector:\n  app_names: false\n")
    out = tmp_path / "f.parquet"
    assert (
        run(["collect", "--pcap", str(PCAP), "--out", str(out), "--config", str(cfg), "--output", "json"])
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["packets"] == report.packets and doc["flows"] == len(df) == len(pd.read_parquet(out))
    # Without --out the flows would go to the bus: on the in-memory bus they would vanish.
    assert run(["collect", "--pcap", str(PCAP), "--config", str(cfg)]) == ExitCode.CONFIG


def test_log_level_and_log_format_come_from_the_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "fw.yaml"
    cfg.write_text("log_level: error\nlog_format: json\n")
    assert run(["config", "check", str(cfg)]) == 0
    assert logging.getLogger().level == logging.ERROR
    handlers = [h for h in logging.getLogger().handlers if h.get_name() == "flowwarden-cli"]
    assert len(handlers) == 1 and isinstance(handlers[0].formatter, JsonFormatter)
    # Commands without --config take them from the environment.
    monkeypatch.setenv("FLOWWARDEN_LOG_LEVEL", "debug")
    assert run(["models", "show", "--model", str(tmp_path / "none")]) != 0
    assert logging.getLogger().level == logging.DEBUG
    capsys.readouterr()
    configure_logging("info", "json")
    logging.getLogger("flowwarden.test").warning("disk %s", "full")
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert (
        line["level"] == "warning" and line["logger"] == "flowwarden.test" and line["message"] == "disk full"
    )


def test_the_demo_summary_has_a_json_form(tmp_path: Path) -> None:
    from flowwarden.cli.demo_run import DemoSummary

    (tmp_path / "alerts.jsonl").write_text("")
    summary = DemoSummary(
        source="simulated cluster, seed 7",
        flows=10,
        sim_minutes=3.0,
        alerts=[],
        decisions=[],
        metrics={"episodes": [{"technique": "port_scan", "detected": False}]},
        out=tmp_path,
        files=[tmp_path / "alerts.jsonl"],
    )
    doc = json.loads(json.dumps(summary.to_dict(1.5)))
    assert doc["missed"] == ["port_scan"] and doc["files"] == ["alerts.jsonl"] and doc["wall_s"] == 1.5
