"""The model registry: versioned model directories, an ``ACTIVE`` pointer, promote and roll back.

A model directory holds ``estimator.skops`` (skops, never pickle; loaded only with an
explicit list of trusted types), ``threshold.json``, an optional ``state.bin`` (the
pipeline's warm-start baselines and seen edges, from ``DetectionEngine.export_state``) and
``metadata.json`` (features, training range, sha256 of the training data, library versions,
evaluation metrics, parent version, and the sha256 of every other file). Loading refuses a
directory whose files do not match their hashes, or whose metadata does not match the
estimator, with a message naming the file.

A registry is a directory of model directories (the directory name is the version), an
``ACTIVE`` file naming the live version and a ``HISTORY`` file (the promotions, oldest
first) that ``rollback`` walks back. Both are written atomically (temp file + rename), so a
pipeline polling :func:`active_version` never reads half a pointer.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import skops.io as sio

from flowwarden.errors import FlowwardenError
from flowwarden.models.estimators import BudgetThreshold, WindowAnomalyDetector, finite_features

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ESTIMATOR_FILE = "estimator.skops"
THRESHOLD_FILE = "threshold.json"
STATE_FILE = "state.bin"
METADATA_FILE = "metadata.json"
ACTIVE_FILE = "ACTIVE"
HISTORY_FILE = "HISTORY"
DEFAULT_DIR = Path(__file__).resolve().parent / "default"
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# The only types skops may build besides its built-in safe set: our estimator and the
# scikit-learn internals of its three inner detectors.
TRUSTED_TYPES: tuple[str, ...] = (
    "flowwarden.models.estimators.WindowAnomalyDetector",
    "sklearn.tree._tree.Tree",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
)
LIBRARIES = ("scikit-learn", "numpy", "pandas", "skops", "pyarrow")


class ModelError(FlowwardenError):
    """A model directory or registry that cannot be used as it is."""


@dataclass
class LoadedModel:
    """A verified model, as the pipeline's isolation_forest detector uses it."""

    version: str
    feature_names: list[str]
    estimator: WindowAnomalyDetector
    threshold: float
    state: bytes | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def window_s(self) -> float | None:
        value = self.metadata.get("window_s")
        return float(value) if value is not None else None

    def score(self, features: pd.DataFrame) -> np.ndarray:
        """Anomaly score per window in [0, 1], higher = more anomalous."""
        missing = [f for f in self.feature_names if f not in features.columns]
        if missing:
            raise ModelError(f"model {self.version}: features missing from the windows: {', '.join(missing)}")
        X = finite_features(features, self.feature_names)
        if not len(X):
            return np.zeros(0)
        return np.asarray(self.estimator.anomaly_score(X), dtype="float64")


# ---------------------------------------------------------------------- hashing and bytes
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_frame(df: pd.DataFrame) -> str:
    """Content hash of a frame (row order and values, not its file encoding)."""
    h = hashlib.sha256(",".join(map(str, df.columns)).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()


def canonical_skops(data: bytes) -> bytes:
    """Re-pack a skops archive so the same estimator always gives the same bytes.

    skops names array files and shared-object ids after ``id()`` and stamps the wall clock;
    renumber both in order of first mention in the schema and use a fixed timestamp.
    """
    src = zipfile.ZipFile(io.BytesIO(data))
    schema = src.read("schema.json").decode()
    names = [n for n in src.namelist() if n != "schema.json"]
    order = sorted(names, key=lambda n: (schema.find(f'"{n}"') if f'"{n}"' in schema else len(schema), n))
    rename = {old: f"{i:06d}{Path(old).suffix}" for i, old in enumerate(order)}
    schema = re.sub(r'"([^"/]+\.npy)"', lambda m: f'"{rename.get(m.group(1), m.group(1))}"', schema)
    ids: dict[str, int] = {}  # object ids (for shared references): consistent small numbers
    schema = re.sub(
        r'"__id__": (\d+)', lambda m: f'"__id__": {ids.setdefault(m.group(1), len(ids) + 1)}', schema
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for name, payload in [("schema.json", schema.encode())] + [(rename[n], src.read(n)) for n in order]:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            dst.writestr(info, payload, compresslevel=6)
    return out.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def library_versions() -> dict[str, str]:
    out = {"python": ".".join(map(str, sys.version_info[:3]))}
    for lib in LIBRARIES:
        try:
            out[lib] = importlib_metadata.version(lib)
        except importlib_metadata.PackageNotFoundError:
            out[lib] = ""
    return out


def check_version_name(version: str) -> str:
    if not VERSION_RE.match(version):
        raise ModelError(f"version: {version!r} must be letters, digits, '.', '_' or '-' (at most 64)")
    return version


# ---------------------------------------------------------------------- one model directory
def save_model(
    directory: str | Path,
    *,
    estimator: WindowAnomalyDetector,
    threshold: BudgetThreshold,
    state: bytes | None = None,
    metadata: dict[str, Any] | None = None,
    version: str | None = None,
) -> LoadedModel:
    """Write a model directory; ``metadata`` adds training facts (range, data hash, parent...)."""
    out = Path(directory)
    version = check_version_name(version or out.name)
    features = [str(f) for f in getattr(estimator, "feature_names_in_", [])]
    if not features:
        raise ModelError("estimator: fit it on a DataFrame so the feature names travel with the model")
    out.mkdir(parents=True, exist_ok=True)
    payloads = {
        ESTIMATOR_FILE: canonical_skops(sio.dumps(estimator)),
        THRESHOLD_FILE: (json.dumps(threshold.to_dict(), indent=1, sort_keys=True) + "\n").encode(),
    }
    if state is not None:
        payloads[STATE_FILE] = state
    else:
        (out / STATE_FILE).unlink(missing_ok=True)
    for name, data in payloads.items():
        _write_atomic(out / name, data)
    meta: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "version": version,
        "parent": None,
        "feature_names": features,
        "method": estimator.method,
        "params": estimator.get_params(),
        "threshold": threshold.value,
        "libraries": library_versions(),
        "evaluation": {},
        **(metadata or {}),
    }
    meta["version"] = version
    meta["files"] = {name: sha256_bytes(data) for name, data in sorted(payloads.items())}
    write_metadata(out, meta)
    return load_model(out)


def write_metadata(directory: Path, meta: dict[str, Any]) -> None:
    _write_atomic(
        directory / METADATA_FILE, (json.dumps(meta, indent=1, sort_keys=True, default=str) + "\n").encode()
    )


def read_metadata(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / METADATA_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: missing; {directory} is not a model directory") from exc
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise ModelError(f"{path}: not a JSON object")
    for key in ("format", "version", "feature_names", "files", "threshold"):
        if key not in meta:
            raise ModelError(f"{path}: metadata field {key!r} is missing")
    if meta["format"] != FORMAT_VERSION:
        raise ModelError(f"{path}: format {meta['format']!r} is not supported (expected {FORMAT_VERSION})")
    return meta


def verify_model(directory: str | Path) -> dict[str, Any]:
    """Metadata of a model directory whose every file matches its recorded sha256."""
    d = Path(directory)
    meta = read_metadata(d)
    files = meta["files"]
    if ESTIMATOR_FILE not in files or THRESHOLD_FILE not in files:
        raise ModelError(f"{d / METADATA_FILE}: files must list {ESTIMATOR_FILE} and {THRESHOLD_FILE}")
    for name, expected in sorted(files.items()):
        if Path(name).name != name:
            raise ModelError(f"{d / METADATA_FILE}: file name {name!r} is not a plain name")
        path = d / name
        if not path.is_file():
            raise ModelError(f"{path}: listed in metadata but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelError(
                f"{path}: sha256 {actual[:16]}… does not match metadata {str(expected)[:16]}…; "
                "the model directory was modified after training, refusing to load it"
            )
    return meta


# Modules renamed since a model could have been saved: flowwarden < 0.2 installed its stages
# as top-level packages. The file's hash is verified before this rewrite, so a model still
# loads only with the exact bytes its metadata names.
LEGACY_MODULES = {'"models.estimators"': '"flowwarden.models.estimators"'}


def _renamed_legacy_modules(data: bytes) -> bytes:
    """The skops archive with its schema's legacy module names replaced (same bytes if none)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        schema = archive.read("schema.json").decode()
        if not any(old in schema for old in LEGACY_MODULES):
            return data
        for old, new in LEGACY_MODULES.items():
            schema = schema.replace(old, new)
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as renamed:
            for info in archive.infolist():
                body = schema.encode() if info.filename == "schema.json" else archive.read(info.filename)
                renamed.writestr(info, body)
    return out.getvalue()


def load_model(directory: str | Path) -> LoadedModel:
    """Verify then load a model directory (skops with the explicit trusted types only)."""
    d = Path(directory)
    meta = verify_model(d)
    data = _renamed_legacy_modules((d / ESTIMATOR_FILE).read_bytes())
    untrusted = sorted(set(sio.get_untrusted_types(data=data)) - set(TRUSTED_TYPES))
    if untrusted:
        raise ModelError(f"{d / ESTIMATOR_FILE}: refusing untrusted types {', '.join(untrusted)}")
    estimator = sio.loads(data, trusted=list(TRUSTED_TYPES))
    if not isinstance(estimator, WindowAnomalyDetector):
        raise ModelError(
            f"{d / ESTIMATOR_FILE}: holds a {type(estimator).__name__}, not a WindowAnomalyDetector"
        )
    names = [str(f) for f in getattr(estimator, "feature_names_in_", [])]
    if names != list(meta["feature_names"]):
        raise ModelError(
            f"{d / METADATA_FILE}: feature_names do not match the estimator's ({len(names)} features)"
        )
    threshold = BudgetThreshold.from_dict(json.loads((d / THRESHOLD_FILE).read_text()))
    if abs(threshold.value - float(meta["threshold"])) > 1e-12:
        raise ModelError(
            f"{d / METADATA_FILE}: threshold {meta['threshold']} does not match {THRESHOLD_FILE}"
        )
    state = (d / STATE_FILE).read_bytes() if STATE_FILE in meta["files"] else None
    libs = meta.get("libraries", {})
    now = library_versions()
    if libs.get("scikit-learn") and libs["scikit-learn"] != now["scikit-learn"]:
        log.warning(
            "model trained with scikit-learn %s, running %s version=%s",
            libs["scikit-learn"],
            now["scikit-learn"],
            meta["version"],
        )
    return LoadedModel(
        version=str(meta["version"]),
        feature_names=names,
        estimator=estimator,
        threshold=threshold.value,
        state=state,
        metadata=meta,
        path=d,
    )


def load_default() -> LoadedModel | None:
    """The model shipped in the package (verified), or None when none is shipped."""
    if not (DEFAULT_DIR / METADATA_FILE).is_file():
        return None
    return load_model(DEFAULT_DIR)


# ---------------------------------------------------------------------- the registry
def _version_dir(registry: Path, version: str) -> Path:
    d = Path(registry) / check_version_name(version)
    if not (d / METADATA_FILE).is_file():
        known = ", ".join(m["version"] for m in list_models(registry)) or "none"
        raise ModelError(f"version {version!r} not found in registry {registry} (known: {known})")
    return d


def active_version(registry: str | Path) -> str | None:
    """The promoted version, or None (cheap: the pipeline polls it)."""
    path = Path(registry) / ACTIVE_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


def load_version(registry: str | Path, version: str) -> LoadedModel:
    return load_model(_version_dir(Path(registry), version))


def history(registry: str | Path) -> list[str]:
    path = Path(registry) / HISTORY_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, list) or not all(isinstance(v, str) for v in data):
        raise ModelError(f"{path}: must be a JSON list of versions")
    return data


def list_models(registry: str | Path) -> list[dict[str, Any]]:
    """One summary per model directory, sorted by version name."""
    root = Path(registry)
    if not root.is_dir():
        raise ModelError(f"registry {root}: no such directory")
    active = active_version(root)
    rows: list[dict[str, Any]] = []
    for d in sorted(p for p in root.iterdir() if (p / METADATA_FILE).is_file()):
        try:
            meta = verify_model(d)
            status = "ok"
        except ModelError as exc:
            meta, status = {}, f"refused: {exc}"
        ev = meta.get("evaluation", {}).get("overall", {})
        rows.append(
            {
                "version": d.name,
                "active": d.name == active,
                "parent": meta.get("parent"),
                "method": meta.get("method", ""),
                "threshold": meta.get("threshold"),
                "window_s": meta.get("window_s"),
                "training": meta.get("training", {}),
                "recall": ev.get("recall"),
                "false_alerts_per_hour_per_100_pods": ev.get("false_alerts_per_hour_per_100_pods"),
                "status": status,
            }
        )
    return rows


def promote(registry: str | Path, version: str) -> LoadedModel:
    """Make ``version`` live (after verifying it loads); remembered for :func:`rollback`."""
    root = Path(registry)
    model = load_version(root, version)
    past = history(root)
    if active_version(root) == version:
        return model
    _write_atomic(root / HISTORY_FILE, (json.dumps([*past, version]) + "\n").encode())
    _write_atomic(root / ACTIVE_FILE, (version + "\n").encode())
    log.info("model promoted version=%s registry=%s", version, root)
    return model


def rollback(registry: str | Path) -> str | None:
    """Return to the version promoted before the active one; None when that was the first."""
    root = Path(registry)
    past = history(root)
    current = active_version(root)
    if not past or current is None:
        raise ModelError(f"registry {root}: nothing to roll back (no promotion recorded)")
    if past[-1] != current:
        past.append(current)  # ACTIVE was edited by hand: roll back from it anyway
    past = past[:-1]
    previous = past[-1] if past else None
    if previous is not None:
        load_version(root, previous)  # refuse to roll back onto a tampered model
    _write_atomic(root / HISTORY_FILE, (json.dumps(past) + "\n").encode())
    if previous is None:
        (root / ACTIVE_FILE).unlink(missing_ok=True)
    else:
        _write_atomic(root / ACTIVE_FILE, (previous + "\n").encode())
    log.info("model rolled back from=%s to=%s registry=%s", current, previous, root)
    return previous


def record_evaluation(directory: str | Path, summary: dict[str, Any]) -> None:
    """Store evaluation metrics in the metadata (metadata is not among the hashed files)."""
    d = Path(directory)
    meta = verify_model(d)
    meta["evaluation"] = summary
    write_metadata(d, meta)
