"""``flowwarden_build_info``: which build every component runs, on its own /metrics.

The usual Prometheus idiom (a gauge of value 1 whose labels are the facts), so a dashboard
or an alert can join on the version, and a mixed roll-out shows as two series.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge

# Set by the image build (deploy/Dockerfile), where no .git directory is copied in.
COMMIT_ENV = "FLOWWARDEN_GIT_COMMIT"


@functools.cache
def build_facts() -> dict[str, str]:
    """Version, Python version and git commit ("unknown" when neither the environment nor git says)."""
    try:
        version = metadata.version("flowwarden")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"version": version, "python": platform.python_version(), "commit": _commit()}


def _commit() -> str:
    from_env = os.environ.get(COMMIT_ENV, "").strip()
    if from_env:
        return from_env
    repo = Path(__file__).resolve().parent.parent
    if not (repo / ".git").exists():
        return "unknown"
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def register_build_info(registry: CollectorRegistry) -> Gauge:
    """Add ``flowwarden_build_info{version,python,commit} 1`` to ``registry``."""
    facts = build_facts()
    gauge = Gauge(
        "flowwarden_build_info",
        "The build this process runs (value 1): version, Python version, git commit.",
        list(facts),
        registry=registry,
    )
    gauge.labels(**facts).set(1)
    return gauge
