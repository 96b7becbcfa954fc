"""Models saved before the stages moved into the ``flowwarden`` package still load.

flowwarden < 0.2 installed ``models`` as a top-level package, so a skops archive it wrote
names ``models.estimators.WindowAnomalyDetector``. The registry verifies the file's hash
first, then reads the archive with the module renamed; nothing else is trusted more.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from flowwarden.models.estimators import WindowAnomalyDetector
from flowwarden.models.registry import DEFAULT_DIR, ESTIMATOR_FILE, METADATA_FILE, ModelError, load_model


def _rewrite_schema(model_dir: Path, old: str, new: str) -> None:
    """Rename a module in the archive's schema and record the new file hash in the metadata."""
    path = model_dir / ESTIMATOR_FILE
    src = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            body = src.read(info.filename)
            if info.filename == "schema.json":
                assert old.encode() in body
                body = body.replace(old.encode(), new.encode())
            z.writestr(info, body)
    path.write_bytes(out.getvalue())
    meta = json.loads((model_dir / METADATA_FILE).read_text())
    meta["files"][ESTIMATOR_FILE] = hashlib.sha256(out.getvalue()).hexdigest()
    (model_dir / METADATA_FILE).write_text(json.dumps(meta))


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    d = tmp_path / "legacy-1"
    shutil.copytree(DEFAULT_DIR, d)
    _rewrite_schema(d, '"flowwarden.models.estimators"', '"models.estimators"')
    return d


def test_a_model_saved_under_the_old_module_name_loads(legacy: Path) -> None:
    model = load_model(legacy)
    assert isinstance(model.estimator, WindowAnomalyDetector)
    shipped = load_model(DEFAULT_DIR)
    assert model.feature_names == shipped.feature_names and model.threshold == shipped.threshold


def test_only_the_known_rename_is_applied_other_modules_stay_untrusted(legacy: Path) -> None:
    _rewrite_schema(legacy, '"models.estimators"', '"evil.estimators"')
    with pytest.raises(ModelError, match=r"untrusted types evil\.estimators\.WindowAnomalyDetector"):
        load_model(legacy)
