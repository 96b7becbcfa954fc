"""The loop every stage runs: start, step until told to stop, stop (also as a context manager)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Self


class SteppedStage:
    """A stage is driven one :meth:`step` at a time, so tests and benchmarks can drive it too."""

    clock: Callable[[], float]

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def step(self) -> int:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run(self, stop_event: threading.Event, *, max_seconds: float | None = None) -> None:
        """Loop until ``stop_event`` is set (or ``max_seconds`` have passed)."""
        deadline = None if max_seconds is None else self.clock() + max_seconds
        while not stop_event.is_set():
            if deadline is not None and self.clock() >= deadline:
                break
            self.step()
