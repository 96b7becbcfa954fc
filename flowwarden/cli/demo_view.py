"""The demo's terminal view: a live rich panel on a terminal, plain log lines elsewhere."""

from __future__ import annotations

import sys
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from flowwarden.records import SEVERITY_ORDER, Alert, Decision

REFRESH_S = 0.25
LOG_EVERY_S = 5.0


class DemoView:
    """Shows flows/s, windows scored, alerts as they fire (with evidence) and decisions."""

    def __init__(self, *, live: bool | None, to_stderr: bool = False) -> None:
        # to_stderr: stdout carries a JSON document (--output json); the view keeps out of it.
        self.stream = sys.stderr if to_stderr else sys.stdout
        self.console = Console(stderr=to_stderr)
        self.live_enabled = self.console.is_terminal if live is None else live
        self.alerts: deque[str] = deque(maxlen=8)
        self.decisions: deque[str] = deque(maxlen=6)
        self.flows = 0
        self.rate = 0.0
        self.windows = 0
        self.alert_count = 0
        self.sim_now = 0.0
        self.fraction = 0.0
        self.model_version: str | None = None
        self._shown: dict[str, int] = {}  # alert id -> severity rank shown (updates are not news)
        self._live: Live | None = None
        self._t0 = time.monotonic()
        self._last_log = 0.0

    def __enter__(self) -> DemoView:
        if self.live_enabled:
            self._live = Live(self._render(), console=self.console, refresh_per_second=1 / REFRESH_S)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(None, None, None)

    def model(self, version: str | None) -> None:
        self.model_version = version
        self._log(f"model {version or 'none (isolation_forest inactive)'}")

    def progress(self, sim_now: float, t0: float, t1: float, n: int, stats: Any, alerts: int) -> None:
        self.flows += n
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        self.rate = self.flows / elapsed
        self.sim_now = sim_now
        self.fraction = (sim_now - t0) / max(t1 - t0, 1e-9)
        self.windows = int(getattr(stats, "windows", 0) or 0)
        self.alert_count = alerts
        if self._live is not None:
            self._live.update(self._render())
        elif time.monotonic() - self._last_log >= LOG_EVERY_S:
            self._last_log = time.monotonic()
            self._log(f"{self.fraction:4.0%} flows {self.flows:,} ({self.rate:,.0f}/s) alerts {alerts}")

    def decision(self, d: Decision) -> None:
        clock = datetime.fromtimestamp(self.sim_now, UTC).strftime("%H:%M:%S")
        who = d.source.key()
        tgt = ", ".join(d.targets[:3]) + (" …" if len(d.targets) > 3 else "") or "everything (quarantine)"
        why = f" [{d.guardrail}]" if d.guardrail else ""
        line = f"{clock} {d.status}{why}: {d.action} {who} -> {tgt} ttl {d.ttl_s}s ({d.detector})"
        self.decisions.appendleft(line)
        if self._live is None:
            self._log(line)

    def alert(self, a: Alert) -> None:
        """A new alert (or one whose severity rose), with its strongest evidence."""
        rank = SEVERITY_ORDER[a.severity]
        if self._shown.get(a.id, -1) >= rank:
            return
        self._shown[a.id] = rank
        clock = (a.last_seen or a.window_end).strftime("%H:%M:%S")
        facts = [f"{k}={_short(v)}" for k, v in a.evidence.items() if k != "windows"][:3]
        line = f"{clock} {a.severity:<8} {a.kind:<16} {a.summary} [{', '.join(facts)}] score {a.score:.2f}"
        self.alerts.appendleft(line)
        if self._live is None:
            self._log(line)

    def _log(self, text: str) -> None:
        print(f"[demo] {text}", file=self.stream, flush=True)

    def _render(self) -> Panel:
        head = Table.grid(padding=(0, 2))
        clock = datetime.fromtimestamp(self.sim_now, UTC).strftime("%H:%M:%S") if self.sim_now else "--"
        head.add_row(
            f"[bold]traffic clock[/] {clock}",
            f"[bold]replayed[/] {self.fraction:4.0%}",
            f"[bold]flows[/] {self.flows:,} ({self.rate:,.0f}/s)",
            f"[bold]alerts[/] {self.alert_count}",
            f"[bold]model[/] {self.model_version or '-'}",
        )
        alerts = Table(title="alerts as they fire", expand=True, show_header=False)
        for line in self.alerts:
            alerts.add_row(escape(line))
        dec = Table(title="enforcer decisions (dry-run)", expand=True, show_header=False)
        for line in self.decisions:
            dec.add_row(escape(line))
        return Panel(Group(head, alerts, dec), title="flowwarden demo", border_style="cyan")


def _short(value: Any) -> str:
    """One evidence entry, compactly: ``{"value": 42, "baseline": 3}`` -> ``42 (base 3)``."""
    if isinstance(value, dict):
        v, base = value.get("value"), value.get("baseline")
        text = _short(v)
        return f"{text} (base {_short(base)})" if base is not None else text
    if isinstance(value, float):
        return f"{value:,.3g}"
    return str(value)
