"""The wheel holds one top-level package, ``flowwarden``, with every stage and its data inside.

The stages live in the repository's top-level folders and are linked into the package
(``flowwarden/pipeline -> ../pipeline``); this builds the real wheel from the checkout, as
``pip install .`` does, and reads what it would put into site-packages.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("collectors", "pipeline", "models", "enforcement", "simulator", "dashboards")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = out.glob("flowwarden-*.whl")
    with zipfile.ZipFile(built) as z:
        return z.namelist()


def test_the_wheel_installs_exactly_one_top_level_package(wheel: list[str]) -> None:
    top = {name.split("/", 1)[0] for name in wheel}
    packages = {t for t in top if not t.endswith((".dist-info", ".data"))}
    assert packages == {"flowwarden"}


def test_every_stage_is_a_subpackage_with_its_data(wheel: list[str]) -> None:
    names = set(wheel)
    for stage in STAGES:
        assert f"flowwarden/{stage}/__init__.py" in names, stage
    assert "flowwarden/pipeline/detection/engine.py" in names
    assert "flowwarden/pipeline/runtime/stage.py" in names
    for shipped in ("estimator.skops", "metadata.json", "threshold.json", "state.bin"):
        assert f"flowwarden/models/default/{shipped}" in names, shipped
    assert any(n.startswith("flowwarden/dashboards/json/") and n.endswith(".json") for n in names)
    assert not any(n.startswith(("tests/", "benchmarks/", "scripts/")) for n in names)
