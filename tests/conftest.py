"""Shared fixtures: real services are started by session fixtures in ``tests/support``."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from flowwarden.cli.common import LOG_HANDLER_NAME

pytest_plugins = [
    "tests.support.broker",
    "tests.support.postgres",
]


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """Undo what a CLI test's ``configure_logging`` did to the root logger (level INFO and a
    handler on that test's captured stderr). Inherited, every later INFO record of every
    library is built and formatted: the reference Community ID package logs six lines per
    ID, which made its test 50 s instead of 1 s in a full run."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in [h for h in root.handlers if h.get_name() == LOG_HANDLER_NAME]:
        root.removeHandler(handler)
    root.setLevel(level)
