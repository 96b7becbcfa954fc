"""The error types every stage shares, and the exit status each one gives the CLI.

Only :class:`ConfigError` and start-up failures stop a process; a :class:`RecordError`
is data: the record goes to the dead-letter topic with ``str(error)`` as its reason.
Each class carries its :class:`ExitCode`, so a script can tell a typo in the settings
from a broker that is down without parsing the message (README, "Exit codes").
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The ``flowwarden`` command's exit statuses; the README's table lists the same."""

    OK = 0
    FAILED = 1  # the work ran and failed: undelivered messages, a refused block, a missed attack
    BAD_INPUT = 2  # command line or input file (click's usage errors exit 2 as well)
    CONFIG = 3  # the settings: unknown key, bad value, missing section
    UNAVAILABLE = 4  # a broker, database, API or tool that is not reachable or not installed
    FOUND = 5  # --strict: detection found something (alerts, blocks that would be applied)
    INTERRUPTED = 130  # SIGINT, as shells report it


class FlowwardenError(Exception):
    """Base class: the CLI prints these as one line instead of a traceback."""

    exit_code: ExitCode = ExitCode.FAILED


class ConfigError(FlowwardenError):
    """A setting is wrong; the message names the key and the fix."""

    exit_code = ExitCode.CONFIG


class InputError(FlowwardenError):
    """A command-line argument or an input file is wrong (missing, unreadable, malformed)."""

    exit_code = ExitCode.BAD_INPUT


class RecordError(FlowwardenError):
    """A record or batch breaks its schema; ``field`` names the offending field."""

    exit_code = ExitCode.BAD_INPUT

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ServiceUnavailable(FlowwardenError):
    """A broker, database or tool this process needs is not reachable or not installed."""

    exit_code = ExitCode.UNAVAILABLE
