"""The error types every stage shares.

Only :class:`ConfigError` and start-up failures stop a process; a :class:`RecordError`
is data: the record goes to the dead-letter topic with ``str(error)`` as its reason.
"""

from __future__ import annotations


class FlowwardenError(Exception):
    """Base class: the CLI prints these as one line instead of a traceback."""


class ConfigError(FlowwardenError):
    """A setting is wrong; the message names the key and the fix."""


class RecordError(FlowwardenError):
    """A record or batch breaks its schema; ``field`` names the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ServiceUnavailable(FlowwardenError):
    """A broker, database or tool this process needs is not reachable or not installed."""
