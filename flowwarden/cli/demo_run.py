"""The demo's wiring: traffic -> bus -> pipeline stage -> alerts -> enforcer (dry-run) -> outputs.

Everything runs in one thread, step by step, so the live view and the summary see one
consistent state; the stages are the production classes, fed by the same bus interface.
The enforcer is given the traffic's clock, so TTLs and rate limits behave as they would
have at the time the (simulated) traffic happened.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from flowwarden.cli.common import settings_from
from flowwarden.errors import InputError
from flowwarden.labels import Labels
from flowwarden.records import Alert, Decision
from flowwarden.settings import Settings

if TYPE_CHECKING:
    from flowwarden.kube import PodInventory
    from flowwarden.models.registry import LoadedModel
    from flowwarden.pipeline.detection.engine import DetectionEngine, EngineResult
    from flowwarden.pipeline.detection.stats import EngineStats

log = logging.getLogger("flowwarden.demo")

BATCH_S = 5.0  # simulated seconds of traffic per published batch (a collector sends every 1 s per node)
ALIGN_IDLE_S = 0.05  # the demo publishes every partition in step: no need to wait for stragglers


@dataclass
class DemoOptions:
    config: Path | None = None
    minutes: float = 20.0
    pods: int = 80
    seed: int = 7
    pcap: Path | None = None
    inventory: Path | None = None
    out: Path = Path("flowwarden-demo")
    duration: float = 15.0
    bus: str = "memory"
    bootstrap: str | None = None
    store: str | None = None
    live: bool | None = None
    json_output: bool = False  # --output json: the view writes to stderr, stdout is the summary


@dataclass
class Traffic:
    flows: pd.DataFrame
    labels: Labels | None
    inventory_path: Path | None
    pods: int
    source: str


@dataclass
class DemoSummary:
    """What the demo found, against what was injected."""

    source: str
    flows: int
    sim_minutes: float
    alerts: list[Alert]
    decisions: list[Decision]
    metrics: dict[str, Any] | None
    out: Path
    files: list[Path] = field(default_factory=list)

    @property
    def missed(self) -> list[str]:
        if not self.metrics:
            return []
        return [e["technique"] for e in self.metrics["episodes"] if not e["detected"]]

    def to_dict(self, wall_s: float) -> dict[str, Any]:
        """The summary for ``--output json``: what ``render`` says, as data."""
        by_status: dict[str, int] = {}
        for d in self.decisions:
            key = d.status if d.status != "refused" else f"refused:{d.guardrail}"
            by_status[key] = by_status.get(key, 0) + 1
        return {
            "source": self.source,
            "flows": self.flows,
            "sim_minutes": self.sim_minutes,
            "wall_s": round(wall_s, 3),
            "alerts": len(self.alerts),
            "missed": self.missed,
            "metrics": self.metrics,
            "decisions": dict(sorted(by_status.items())),
            "out": str(self.out),
            "files": [str(p.relative_to(self.out)) for p in self.files],
        }

    def render(self, wall_s: float) -> str:
        lines = [
            "",
            f"flowwarden demo: {self.flows:,} flows ({self.source}, "
            f"{self.sim_minutes:.0f} simulated minutes) in {wall_s:.1f} s",
        ]
        if self.metrics:
            o = self.metrics["overall"]
            lines.append(
                f"attacks injected {o['episodes']}, detected {o['detected']}, missed {len(self.missed)}; "
                f"alerts {o['alerts']} ({o['false_alerts']} false, "
                f"{o['false_alerts_per_hour_per_100_pods']:.2f} per hour per 100 pods)"
            )
            ttd = o["time_to_detect_s"]
            if ttd.get("median") is not None:
                lines.append(f"time to detect: median {ttd['median']:.0f} s, p90 {ttd['p90']:.0f} s")
            lines.append(f"{'technique':<22}{'injected':>9}{'detected':>9}{'median ttd':>12}  detectors")
            for tech, row in self.metrics["per_technique"].items():
                med = row["time_to_detect_s"].get("median")
                med_s = f"{med:.0f} s" if med is not None else "-"
                detectors = ", ".join(row["detectors"])
                lines.append(f"{tech:<22}{row['episodes']:>9}{row['detected']:>9}{med_s:>12}  {detectors}")
        else:
            lines.append(f"alerts {len(self.alerts)} (no labels: nothing to score them against)")
        by_status: dict[str, int] = {}
        for d in self.decisions:
            key = d.status if d.status != "refused" else f"refused ({d.guardrail})"
            by_status[key] = by_status.get(key, 0) + 1
        lines.append(
            "enforcer (dry-run): "
            + (", ".join(f"{k} {v}" for k, v in sorted(by_status.items())) or "no decisions")
        )
        lines.append(f"outputs in {self.out}/:")
        lines.extend(f"  {p.relative_to(self.out)}" for p in self.files)
        return "\n".join(lines)


def demo_settings(opts: DemoOptions, inventory_path: Path | None) -> Settings:
    """The user's settings (if any) with what makes this run the demo: dry-run, its own store."""
    if opts.bus not in ("memory", "kafka"):
        raise InputError(f"--bus: {opts.bus!r} is not one of memory, kafka")
    overrides: dict[str, Any] = {
        "bus": {"kind": opts.bus},
        "store": {"url": opts.store or f"sqlite:///{(opts.out / 'flowwarden.db').resolve()}"},
        # The demo's own pods, for enrichment and the guardrails alike (never a live cluster's).
        "kubernetes": {
            "inventory_source": "file",
            "inventory_path": str(inventory_path) if inventory_path else None,
        },
        "pipeline": {"group_id": f"flowwarden-demo-{int(time.time())}"},
        "enforcement": {
            "mode": "dry_run",
            "mode_by_detector": {},
            "apply_to_cluster": False,
            "gitops_dir": str(opts.out / "rules"),
            "group_id": f"flowwarden-demo-enforcer-{int(time.time())}",
        },
    }
    if opts.bus == "memory":
        # One in-process worker consumes everything: one partition keeps the batches few and large.
        overrides["kafka"] = {"partitions": 1}
    if opts.bootstrap:
        overrides["kafka"] = {
            "bootstrap_servers": [s.strip() for s in opts.bootstrap.split(",") if s.strip()]
        }
    return settings_from(opts.config, **overrides)  # and its log_level, log_format


def load_traffic(opts: DemoOptions, settings: Settings) -> Traffic:
    """Simulated cluster traffic with labels, or a capture metered by the collector."""
    if opts.pcap is not None:
        from flowwarden.collectors.offline import meter_pcap

        if not opts.pcap.is_file():
            raise InputError(f"--pcap: {opts.pcap} is not a file")
        flows = meter_pcap(opts.pcap, settings)
        pods = 0
        if opts.inventory is not None:
            pods = len(json.loads(opts.inventory.read_text()).get("items", []))
        return Traffic(flows, None, opts.inventory, pods, f"capture {opts.pcap.name}")
    from flowwarden.simulator import simulate

    sim = simulate(minutes=opts.minutes, pods=opts.pods, seed=opts.seed, attacks="all", settings=settings)
    traffic_dir = opts.out / "traffic"
    sim.save(traffic_dir)
    n_pods = sum(1 for p in sim.inventory["items"] if not p.get("spec", {}).get("hostNetwork"))
    return Traffic(
        sim.flows, sim.labels, traffic_dir / "inventory.json", n_pods, f"simulated cluster, seed {opts.seed}"
    )


def run_demo(opts: DemoOptions) -> DemoSummary:
    from flowwarden.cli.demo_view import DemoView

    opts.out.mkdir(parents=True, exist_ok=True)
    for stale in ("flowwarden.db", "flowwarden.db-wal", "flowwarden.db-shm"):
        (opts.out / stale).unlink(missing_ok=True)
    # Settings are built twice: the traffic decides the inventory path the pipeline reads.
    settings = demo_settings(opts, None)
    traffic = load_traffic(opts, settings)
    settings = demo_settings(opts, traffic.inventory_path)
    view = DemoView(live=opts.live, to_stderr=opts.json_output)
    if view.live_enabled and settings.log_level != "debug":
        # The live view shows every decision, refusals included: keep the stages' logs to
        # errors so they do not tear the panel (log_level: debug shows them all the same).
        for name in ("flowwarden.enforcement", "flowwarden.pipeline", "flowwarden.models", "flowwarden.bus"):
            logging.getLogger(name).setLevel(logging.ERROR)
    with view:
        run = _Run(settings, traffic, view, opts)
        alerts, decisions, windows, model = run.execute()
    return _finish(opts, settings, traffic, alerts, decisions, windows, model)


class _RecordingEngine:
    """The pipeline's engine, keeping each closed window's scores for the report.

    An :class:`~flowwarden.pipeline.runtime.ports.Engine` itself: every call goes to the
    real engine; ``process`` and ``flush`` also keep the windows they scored.
    """

    def __init__(self, engine: DetectionEngine) -> None:
        self.engine = engine
        self.windows: list[pd.DataFrame] = []

    def _keep(self, result: EngineResult) -> EngineResult:
        if len(result.windows):
            self.windows.append(result.windows)
        return result

    def process(
        self, flows: pd.DataFrame, *, now: float | None = None, enriched: bool = False
    ) -> EngineResult:
        return self._keep(self.engine.process(flows, now=now, enriched=enriched))

    def flush(self) -> EngineResult:
        return self._keep(self.engine.flush())

    def open_window_floor(self) -> float | None:
        return self.engine.open_window_floor()

    def set_model(self, model: LoadedModel | None) -> None:
        self.engine.set_model(model)

    def set_inventory(self, inventory: PodInventory | None) -> None:
        self.engine.set_inventory(inventory)

    def set_rules(self, policy: Any, policy_version: str, feeds: Any, feeds_version: str) -> None:
        self.engine.set_rules(policy, policy_version, feeds, feeds_version)

    def export_state(self) -> bytes:
        return self.engine.export_state()

    def import_state(self, data: bytes) -> None:
        self.engine.import_state(data)

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def resolve(self, alert: Alert, *, benign: bool) -> int:
        return self.engine.resolve(alert, benign=benign)


class _Run:
    def __init__(self, settings: Settings, traffic: Traffic, view: Any, opts: DemoOptions) -> None:
        self.settings = settings
        self.traffic = traffic
        self.view = view
        self.opts = opts
        self.sim_now = 0.0

    def execute(self) -> tuple[list[Alert], list[Decision], pd.DataFrame, Any]:
        from flowwarden.bus import open_bus, publish_flows
        from flowwarden.enforcement.enforcer import Enforcer
        from flowwarden.kube import inventory_source_from_settings
        from flowwarden.pipeline.detection.engine import DetectionEngine
        from flowwarden.pipeline.runtime.model_watch import ModelWatcher
        from flowwarden.pipeline.runtime.stage import PipelineStage, StageOptions
        from flowwarden.store import Store

        s = self.settings
        topics = s.kafka.topics
        bus = open_bus(s)
        store = Store(s.store.url).start()
        try:
            bus.ensure_topics([topics.flows, topics.alerts, topics.decisions, topics.flows_dlq])
            engine = _RecordingEngine(DetectionEngine(s))
            watcher = ModelWatcher(s.pipeline.model_dir)
            stage = PipelineStage(
                s,
                bus=bus,
                store=store,
                engine=engine,
                model_watcher=watcher,
                inventory_source=inventory_source_from_settings(s),  # the traffic's pods
                options=StageOptions(align_idle_s=ALIGN_IDLE_S, poll_timeout_s=0.0, max_records=500),
            )
            enforcer = Enforcer(s, store=store, bus=bus, clock=lambda: self.sim_now)
            producer = bus.producer()
            stage.start()
            enforcer.start()
            # The view reads alerts as a person's tool would: its own group on the alerts topic.
            viewer = bus.consumer([topics.alerts], f"{s.pipeline.group_id}-view")
            model = engine.engine.model
            self.view.model(watcher.version)
            try:
                self._replay(producer, stage, enforcer, viewer, publish_flows)
                stage.drain(idle_polls=3, max_seconds=60.0, flush=True)
                self._settle(enforcer, viewer)
            finally:
                viewer.close()
                producer.flush(10.0)
                producer.close()
                stage.stop()
                enforcer.stop()
            alerts = store.list_alerts()
            decisions = store.list_decisions()
            windows = pd.concat(engine.windows, ignore_index=True) if engine.windows else pd.DataFrame()
            return alerts, decisions, windows, model
        finally:
            store.stop()
            bus.close()

    def _replay(self, producer: Any, stage: Any, enforcer: Any, viewer: Any, publish_flows: Any) -> None:
        flows = self.traffic.flows.sort_values("ts_end", kind="stable").reset_index(drop=True)
        if not len(flows):
            return
        t0, t1 = float(flows["ts_end"].iloc[0]), float(flows["ts_end"].iloc[-1])
        span = max(t1 - t0, 1e-9)
        pace = self.opts.duration / span if self.opts.duration > 0 else 0.0
        wall0 = time.monotonic()
        edges = flows["ts_end"].searchsorted([t0 + k * BATCH_S for k in range(int(span // BATCH_S) + 2)])
        partitions = self.settings.kafka.partitions
        topic = self.settings.kafka.topics.flows
        for a, b in itertools.pairwise(edges):
            if b <= a:
                continue
            batch = flows.iloc[a:b]
            self.sim_now = float(batch["ts_end"].iloc[-1])
            publish_flows(producer, topic, batch, partitions)
            while stage.step():
                pass
            self._show_alerts(viewer)
            for d in enforcer.poll_once(timeout_s=0.0):
                self.view.decision(d)
            self.view.progress(self.sim_now, t0, t1, len(batch), stage.stats, self._alerts_of(stage))
            if pace:
                lag = (self.sim_now - t0) * pace - (time.monotonic() - wall0)
                if lag > 0:
                    time.sleep(min(lag, 1.0))

    def _show_alerts(self, viewer: Any) -> None:
        messages = viewer.poll(timeout_s=0.0, max_records=500)
        for m in messages:
            self.view.alert(Alert.from_json(m.value))
        if messages:
            viewer.commit(messages)

    def _settle(self, enforcer: Any, viewer: Any) -> None:
        """Let the enforcer take every alert the final flush produced."""
        self._show_alerts(viewer)
        for _ in range(20):
            decisions = enforcer.poll_once(timeout_s=0.05)
            for d in decisions:
                self.view.decision(d)
            if not decisions:
                break

    def _alerts_of(self, stage: Any) -> int:
        return len(stage.stats.alert_ids)  # distinct alerts; updates of an open alert keep its id


def _finish(
    opts: DemoOptions,
    settings: Settings,
    traffic: Traffic,
    alerts: list[Alert],
    decisions: list[Decision],
    windows: pd.DataFrame,
    model: Any,
) -> DemoSummary:
    from flowwarden.enforcement.offline import plan_offline, write_decisions

    out = opts.out
    files: list[Path] = []
    alerts_path = out / "alerts.jsonl"
    alerts_path.write_text("".join(a.to_json() + "\n" for a in alerts))
    files.append(alerts_path)
    decisions_path = out / "decisions.jsonl"
    write_decisions(decisions, decisions_path)
    files.append(decisions_path)
    rules_dir = out / "rules"
    plan_offline(alerts, settings, rules_dir)
    files.extend(sorted(p for p in rules_dir.iterdir() if p.is_file()))
    files.append(out / "flowwarden.db")
    ts = traffic.flows["ts_end"]
    sim_minutes = float(ts.max() - ts.min()) / 60.0 if len(ts) else 0.0
    metrics: dict[str, Any] | None = None
    if traffic.labels is not None:
        from flowwarden.models.evaluation import evaluate
        from flowwarden.models.report import write_report
        from flowwarden.models.workflow import write_evaluation

        window_s = settings.pipeline.window_s
        metrics = evaluate(
            alerts,
            traffic.labels,
            windows,
            window_s=window_s,
            hours=max(sim_minutes / 60.0, 1e-9),
            pods=max(traffic.pods, 1),
        )
        evaluation = out / "evaluation"
        write_evaluation(evaluation, metrics, windows, alerts, traffic.labels, window_s, model)
        files.append(evaluation / "metrics.json")
        if model is not None and len(windows):
            files.append(write_report(model, evaluation, out / "report.html"))
    return DemoSummary(
        traffic.source, len(traffic.flows), sim_minutes, alerts, decisions, metrics, out, files
    )
