"""The HTML report renders in a real browser: headless Chromium, no console message, plots drawn.

The console check is proven able to fail on a control page that logs an error.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from flowwarden.labels import Episode, Labels
from flowwarden.models.estimators import BudgetThreshold, WindowAnomalyDetector
from flowwarden.models.evaluation import evaluate
from flowwarden.models.registry import save_model
from flowwarden.models.report import write_report
from flowwarden.models.workflow import write_evaluation
from flowwarden.records import Alert, Entity

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
W = 10.0
FEATURES = ["flows", "bytes_out_ext", "bytes_out_int", "int_peers", "dns_max_subdomains"]


def chromium(page: Path, tmp: Path) -> tuple[str, Path]:
    """Render ``page``; returns the browser's log and the screenshot."""
    shot = tmp / f"{page.stem}.png"
    profile = tmp / f"profile-{page.stem}"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
         "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", "--window-size=1280,2000",
         page.resolve().as_uri()],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.is_file(), proc.stderr[-2000:]
    return proc.stderr, shot


def console_messages(log: str) -> list[str]:
    return [line for line in log.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def _report(tmp: Path) -> Path:
    rng = np.random.default_rng(4)
    ips = [f"10.244.1.{i}" for i in range(1, 21)]
    rows = []
    for k, ws in enumerate(T0.timestamp() + np.arange(0, 1800, W)):
        for ip in ips:
            attack = ip == ips[0] and 600 <= k * W < 900
            rows.append(
                {"window_start": ws, "window_end": ws + W, "entity": f"shop/{ip}", "src_ip": ip,
                 "namespace": "shop", "pod": f"web-{ip}", "workload": "web",
                 "flows": rng.poisson(300 if attack else 20),
                 "bytes_out_ext": rng.lognormal(12 if attack else 7, 1),
                 "bytes_out_int": rng.lognormal(8, 1), "int_peers": rng.poisson(40 if attack else 3),
                 "dns_max_subdomains": 0.0}
            )  # fmt: skip
    windows = pd.DataFrame(rows)
    benign = windows[windows["src_ip"] != ips[0]]
    est = WindowAnomalyDetector(n_estimators=50, random_state=0).fit(benign[FEATURES])
    thr = BudgetThreshold.fit(est.anomaly_score(benign[FEATURES]), hours=0.5, pods=20)
    model = save_model(
        tmp / "reg" / "v1", estimator=est, threshold=thr, state=None,
        metadata={"window_s": W, "budget_false_alerts_per_hour_per_100_pods": 1.0},
    )  # fmt: skip
    windows["score_isolation_forest"] = model.score(windows)
    windows["score_fan_out"] = (windows["int_peers"] > 20).astype(float)
    source = Entity(ip=ips[0], namespace="shop", pod=f"web-{ips[0]}", workload="web")
    labels = Labels(
        episodes=[
            Episode(id="ep-1", technique="fan_out", kind="lateral_movement", source=source,
                    start=T0 + timedelta(seconds=600), end=T0 + timedelta(seconds=900)),
        ]
    )  # fmt: skip
    alerts = [
        Alert(kind="lateral_movement", detector="fan_out", score=0.9, severity="high", entity=source,
              window_start=T0 + timedelta(seconds=600), window_end=T0 + timedelta(seconds=900)),
    ]  # fmt: skip
    metrics = evaluate(alerts, labels, windows, window_s=W, hours=0.5, pods=20)
    write_evaluation(tmp / "reg" / "v1" / "evaluation", metrics, windows, alerts, labels, W, model)
    return write_report(model, tmp / "reg" / "v1" / "evaluation", tmp / "report.html")


def test_the_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    report = _report(tmp_path)
    html = report.read_text()
    assert html.count("data:image/png;base64,") >= 5 and "<script" not in html
    log, shot = chromium(report, tmp_path)
    assert console_messages(log) == []
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1280)
    # Not blank: plenty of non-white pixels and real variation (plots, not a plain page).
    non_white = float((pixels.mean(axis=2) < 0.95).mean())
    assert non_white > 0.05, non_white
    assert float(pixels.std()) > 0.1
    colourful = float((pixels.max(axis=2) - pixels.min(axis=2) > 0.2).mean())
    assert colourful > 0.005, colourful  # coloured curves and bars, not only black text


def test_the_console_check_catches_an_error(tmp_path: Path) -> None:
    page = tmp_path / "control.html"
    page.write_text(
        '<!DOCTYPE html><html><body><script>console.error("report-broken")</script></body></html>'
    )
    log, shot = chromium(page, tmp_path)
    assert any("report-broken" in line for line in console_messages(log))
    assert float(imread(shot)[..., :3].std()) < 0.01  # and a blank page is seen as blank
