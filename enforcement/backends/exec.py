"""Exec backend: the user's own executable receives each decision as JSON on stdin.

Called as ``<exec_path> apply`` or ``<exec_path> revoke`` (argument list, no shell), with
a timeout; the exit code and the (truncated) output are recorded in the decision. A
non-zero exit or a timeout makes the decision ``failed``. The script must be idempotent:
flowwarden may call ``apply`` again for a decision at reconciliation.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flowwarden.enforcement.backends.base import BACKENDS, Backend, BackendError
from flowwarden.errors import ConfigError
from flowwarden.records import Decision
from flowwarden.settings import Settings

MAX_OUTPUT = 4000


@BACKENDS.register("exec")
class ExecBackend(Backend):
    name = "exec"

    def __init__(self, path: Path, timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s

    @classmethod
    def from_settings(cls, settings: Settings, protected: Iterable[str] = ()) -> ExecBackend:
        if settings.enforcement.exec_path is None:
            raise ConfigError("enforcement.exec_path: the exec backend needs an executable")
        return cls(settings.enforcement.exec_path, settings.enforcement.exec_timeout_s)

    def _call(self, verb: str, decision: Decision) -> dict[str, Any]:
        try:
            proc = subprocess.run(
                [str(self.path), verb],
                input=decision.to_json(),
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BackendError(f"exec: {self.path} {verb} timed out after {self.timeout_s}s") from exc
        except OSError as exc:
            raise BackendError(f"exec: cannot run {self.path}: {exc}") from exc
        result = {
            "exit_code": proc.returncode,
            "stdout": proc.stdout[-MAX_OUTPUT:],
            "stderr": proc.stderr[-MAX_OUTPUT:],
        }
        if proc.returncode != 0:
            raise BackendError(
                f"exec: {self.path} {verb} exited {proc.returncode}: {proc.stderr.strip()[-500:]}"
            )
        return result

    def apply(self, decision: Decision) -> dict[str, Any]:
        return self._call("apply", decision)

    def revoke(self, decision: Decision) -> dict[str, Any]:
        return self._call("revoke", decision)
