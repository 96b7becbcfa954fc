"""One line per figure, so that ``run_all.py`` can gather every harness into one table.

A harness prints its own human-readable table and, for each headline figure, calls
:func:`emit`, which prints ``RESULT {json}``. Figures are printed, never asserted.
"""

from __future__ import annotations

import json
import resource
import sys

PREFIX = "RESULT "


def emit(
    stage: str, figure: str, value: float | str, unit: str = "", *, peer: str = "", note: str = ""
) -> None:
    """Print one figure: ``stage`` (collector, bus, pipeline…), what it is, its value and unit."""
    row = {"stage": stage, "figure": figure, "value": value, "unit": unit, "peer": peer, "note": note}
    print(PREFIX + json.dumps(row), flush=True)


def peak_rss_mib() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def compact(value: float, unit: str = "") -> str:
    """A short figure for the ``peer`` column: ``52k``, ``4.2M``, ``850``, ``0.21`` (then the unit)."""
    a = abs(value)
    if a >= 1e7:
        text = f"{value / 1e6:.0f}M"
    elif a >= 1e6:
        text = f"{value / 1e6:.2g}M"
    elif a >= 1e4:
        text = f"{value / 1e3:.0f}k"
    elif a >= 1e3:
        text = f"{value / 1e3:.2g}k"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def parse(lines: list[str]) -> list[dict[str, object]]:
    return [json.loads(line[len(PREFIX) :]) for line in lines if line.startswith(PREFIX)]


if __name__ == "__main__":  # pragma: no cover - a tiny self-check
    emit("demo", "figure", 1.0, "x")
    print(parse(sys.stdin.readlines()) if not sys.stdin.isatty() else "")
