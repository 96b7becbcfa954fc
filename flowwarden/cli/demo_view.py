"""The demo's terminal view: a live rich panel on a terminal, plain log lines elsewhere."""

from __future__ import annotations

import sys
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from flowwarden.labels import Labels
from flowwarden.records import Decision

REFRESH_S = 0.25
LOG_EVERY_S = 5.0


class DemoView:
    """Shows flows/s, windows scored, alerts as they fire (with evidence) and decisions."""

    def __init__(self, *, live: bool | None, labels: Labels | None) -> None:
        self.console = Console(stderr=False)
        self.live_enabled = self.console.is_terminal if live is None else live
        self.labels = labels
        self.alerts: deque[str] = deque(maxlen=8)
        self.decisions: deque[str] = deque(maxlen=6)
        self.flows = 0
        self.rate = 0.0
        self.windows = 0
        self.alert_count = 0
        self.sim_now = 0.0
        self.fraction = 0.0
        self.model_version: str | None = None
        self._seen_alerts: set[str] = set()
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
        if d.alert_id and d.alert_id not in self._seen_alerts:
            self._seen_alerts.add(d.alert_id)
        if self._live is None:
            self._log(line)

    def alert_line(self, text: str) -> None:
        self.alerts.appendleft(text)
        if self._live is None:
            self._log(text)

    def _log(self, text: str) -> None:
        print(f"[demo] {text}", file=sys.stdout, flush=True)

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
        dec = Table(title="enforcer decisions (dry-run)", expand=True, show_header=False)
        for line in self.decisions:
            dec.add_row(line)
        return Panel(Group(head, dec), title="flowwarden demo", border_style="cyan")
