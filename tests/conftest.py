"""Shared fixtures: real services are started by session fixtures in ``tests/support``."""

from __future__ import annotations

pytest_plugins = [
    "tests.support.broker",
    "tests.support.postgres",
]
