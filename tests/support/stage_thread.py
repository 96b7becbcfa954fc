"""A stage's run loop in a thread, for tests that run several stages (group members) at once.

Each stage has its own consumer, so each thread is its own consumer-group member; the
thread keeps the first error the loop raised, and :meth:`StageThread.halt` fails the test
with it.
"""

from __future__ import annotations

import threading
from typing import Protocol, Self


class Loop(Protocol):
    def run(self, stop_event: threading.Event, *, max_seconds: float | None = None) -> None: ...


class StageThread:
    """``stage.run`` in a daemon thread, bounded by ``max_seconds``."""

    def __init__(self, stage: Loop, name: str, *, max_seconds: float = 240) -> None:
        self.loop = stage
        self.max_seconds = max_seconds
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self.loop.run(self.stop_event, max_seconds=self.max_seconds)
        except BaseException as exc:
            self.error = exc
            raise

    def start(self) -> Self:
        self.thread.start()
        return self

    def running(self) -> bool:
        """True while the loop runs; fails the test with the loop's error once it has raised."""
        assert self.error is None and self.thread.is_alive(), self.error
        return True

    def halt(self) -> None:
        """Stop the loop and wait for it; fail the test if it did not stop or had failed."""
        self.stop_event.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), f"{self.thread.name} did not stop"
        assert self.error is None, self.error

    def abandon(self) -> None:
        """Stop the loop after a failure elsewhere: no checks, a bounded wait."""
        self.stop_event.set()
        self.thread.join(timeout=30)
