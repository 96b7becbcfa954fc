"""The README's first command: ``flowwarden demo`` on the embedded default, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flowwarden.labels import TECHNIQUES
from flowwarden.records import Alert, Decision

pytestmark = pytest.mark.e2e


def test_demo_detects_every_injected_attack_and_leaves_its_outputs(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flowwarden.cli",
            "demo",
            "--no-live",
            "--duration",
            "0",
            "--strict",
            "--minutes",
            "12",
            "--pods",
            "60",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "attacks injected" in proc.stdout

    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert set(metrics["per_technique"]) == set(TECHNIQUES)
    missed = [e for e in metrics["episodes"] if not e["detected"]]
    assert not missed, missed

    alerts = [Alert.from_json(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    decisions = [Decision.from_json(line) for line in (out / "decisions.jsonl").read_text().splitlines()]
    assert alerts and decisions
    assert {d.mode for d in decisions} == {"dry_run"}
    assert all(d.status in ("simulated", "refused") for d in decisions)
    # The rules it would have applied: an nft script and Kubernetes manifests that parse.
    assert "table inet" in (out / "rules" / "rules.nft").read_text()
    for name in ("networkpolicies.yaml", "calico.yaml", "cilium.yaml"):
        docs = [d for d in yaml.safe_load_all((out / "rules" / name).read_text()) if d]
        assert docs, name
    assert (out / "flowwarden.db").stat().st_size > 0
    assert "<img" in (out / "report.html").read_text()
