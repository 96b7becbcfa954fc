"""``flowwarden detect`` (offline, no services) and ``flowwarden pipeline …`` (the streaming runtime).

``detect`` runs the very engine the streaming pipeline runs over a Parquet file of flows,
or over a capture metered by the collector's code, and writes one alert per line, in
``alerts.format`` or ``--format`` (native, ecs, ocsf: :mod:`flowwarden.alert_formats`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, cast

import typer

from flowwarden.alert_formats import FORMATS, AlertExporter, AlertFormat
from flowwarden.cli.common import (
    COMMANDS,
    ConfigOption,
    Output,
    OutputOption,
    StrictOption,
    emit,
    progress,
    settings_from,
)
from flowwarden.errors import ExitCode, InputError

log = logging.getLogger(__name__)


def _alert_format(fmt: str) -> AlertFormat:
    if fmt not in FORMATS:
        raise InputError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    return cast(AlertFormat, fmt)


@COMMANDS.register("pipeline")
def register(app: typer.Typer) -> None:
    _register_run(app)  # ``flowwarden pipeline run``: the streaming runtime (below)

    @app.command("detect")
    def detect(
        out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the alerts (JSON Lines).")],
        flows: Annotated[
            Path | None, typer.Option("--flows", help="Parquet file of flows (FLOW_SCHEMA).")
        ] = None,
        pcap: Annotated[
            Path | None, typer.Option("--pcap", help="A capture to meter into flows first.")
        ] = None,
        inventory: Annotated[
            Path | None, typer.Option("--inventory", help="`kubectl get pods -A -o json` output.")
        ] = None,
        windows_out: Annotated[
            Path | None, typer.Option("--windows", help="Also write the scored entity-windows (Parquet).")
        ] = None,
        no_model: Annotated[
            bool, typer.Option("--no-model", help="Do not load the shipped anomaly model.")
        ] = False,
        fmt: Annotated[
            str | None,
            typer.Option(
                "--format",
                help="Alert format: native, ecs (Elastic Common Schema) or ocsf (Detection Finding); "
                "default alerts.format.",
            ),
        ] = None,
        config: ConfigOption = None,
        output: OutputOption = Output.text,
        strict: StrictOption = False,
    ) -> None:
        """Score flows offline (same engine as the live pipeline) and write alerts.jsonl."""
        import pandas as pd

        from flowwarden.kube import PodInventory
        from flowwarden.pipeline.runtime.offline import default_model, detect_flows

        settings = settings_from(config)
        if fmt is not None:
            settings = settings.model_copy(
                update={"alerts": settings.alerts.model_copy(update={"format": _alert_format(fmt)})}
            )
        if (flows is None) == (pcap is None):
            raise InputError("detect: give exactly one of --flows FILE.parquet or --pcap FILE")
        if flows is not None:
            if not flows.exists():
                raise InputError(f"--flows: {flows}: no such file")
            try:
                frame = pd.read_parquet(flows)
            except (OSError, ValueError) as exc:
                raise InputError(f"--flows: {flows}: not a readable Parquet file: {exc}") from exc
        else:
            assert pcap is not None
            if not pcap.exists():
                raise InputError(f"--pcap: {pcap}: no such file")
            from flowwarden.collectors.offline import meter_capture

            with progress("meter", total=pcap.stat().st_size) as step:
                frame, _report = meter_capture(
                    pcap, settings, progress=lambda n, done, size: step(f"{n:,} packets", done, size)
                )
        inv_path = inventory or settings.kubernetes.inventory_path
        inv = PodInventory.from_file(inv_path) if inv_path is not None else None
        model = None if no_model else default_model()
        with progress("detect", total=max(len(frame), 1)) as step:
            result = detect_flows(
                frame,
                settings=settings,
                inventory=inv,
                model=model,
                keep_windows=windows_out is not None,
                progress=lambda done, total: step(f"{done:,} flows", done, max(total, 1)),
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        exporter = AlertExporter.from_settings(settings)
        with out.open("wb") as fh:
            for alert in result.alerts:
                fh.write(exporter.encode(alert) + b"\n")
        if windows_out is not None:
            result.windows.to_parquet(windows_out, index=False)
        invalid = 0 if result.invalid is None else len(result.invalid)
        if invalid:
            assert result.invalid is not None
            typer.secho(
                f"{invalid} invalid flows set aside (first: {result.invalid['reason'].iloc[0]})",
                err=True,
                fg=typer.colors.YELLOW,
            )
        by_detector: dict[str, int] = {}
        for a in result.alerts:
            by_detector[a.detector] = by_detector.get(a.detector, 0) + 1
        summary = ", ".join(f"{k}={v}" for k, v in sorted(by_detector.items())) or "none"
        emit(
            output,
            {
                "flows": len(frame),
                "invalid_flows": invalid,
                "alerts": len(result.alerts),
                "by_detector": dict(sorted(by_detector.items())),
                "format": settings.alerts.format,
                "out": str(out),
                "windows": str(windows_out) if windows_out is not None else None,
            },
            f"{len(frame)} flows, {len(result.alerts)} alerts ({summary}) -> {out}",
        )
        if strict and result.alerts:
            raise typer.Exit(ExitCode.FOUND)


STAGES = ("all", "enrich", "detect")


def _register_run(app: typer.Typer) -> None:
    """``flowwarden pipeline run``, owned by the pipeline runtime (``pipeline/runtime/stage.py``)."""
    pipeline_app = typer.Typer(help="The streaming detection pipeline.", no_args_is_help=True)
    app.add_typer(pipeline_app, name="pipeline")

    @pipeline_app.command("run")
    def run(
        config: ConfigOption = None,
        worker_id: Annotated[
            str | None,
            typer.Option(
                "--worker-id",
                help="Names this worker in logs and, for --stage all, its checkpoint: unique per "
                "replica, stable across its restarts (a StatefulSet ordinal). A detect worker's state "
                "is checkpointed per partition and moves with it. Default: the host name.",
            ),
        ] = None,
        metrics_port: Annotated[
            int | None, typer.Option("--metrics-port", help="Serve /metrics here (0: off; default: setting).")
        ] = None,
        max_seconds: Annotated[
            float | None, typer.Option("--max-seconds", help="Stop after this long (default: until SIGTERM).")
        ] = None,
        flush_on_stop: Annotated[
            bool, typer.Option("--flush-on-stop", help="Close every open window at stop and commit all.")
        ] = False,
        ready_port: Annotated[
            int,
            typer.Option(
                "--ready-port",
                help="Serve /ready (Kafka and the store reachable) and /healthz here (0: off).",
            ),
        ] = 0,
        stage: Annotated[
            str,
            typer.Option(
                "--stage",
                help="all: one process does everything (default). enrich: flows in, enriched flows "
                "keyed by workload out (kafka.topics.flows_by_workload). detect: those in, alerts out, "
                "the cluster-wide memory shared with the other detect workers. Scale enrich and "
                "detect by replicas (docs/scale-out.md).",
            ),
        ] = "all",
        output: OutputOption = Output.text,
    ) -> None:
        """Consume flows, detect, send alerts to the topic, the store and the notifiers."""
        import socket

        from flowwarden.pipeline.runtime.stage import StageOptions, run_pipeline
        from flowwarden.readiness import Readiness

        if stage not in STAGES:
            raise InputError(f"--stage must be one of {', '.join(STAGES)}, not {stage!r}")
        settings = settings_from(config)
        if stage != "all" and settings.bus.kind != "kafka":
            raise InputError(f"--stage {stage} needs bus.kind=kafka: the stages meet on Kafka topics")
        worker_id = worker_id or socket.gethostname()
        readiness = Readiness.from_settings(settings, store=stage != "enrich")  # enrich never opens it
        if ready_port:
            readiness.serve(ready_port)
        try:
            stats = run_pipeline(
                settings,
                options=StageOptions.from_settings(settings, worker_id=worker_id),
                metrics_port=metrics_port,
                max_seconds=max_seconds,
                flush_on_stop=flush_on_stop,
                stage=stage,
            )
        finally:
            readiness.close()
        emit(
            output,
            {
                "batches": stats.batches,
                "flows": stats.flows,
                "alerts": stats.alerts,
                "dead_letters": stats.dlq,
            },
            f"pipeline stopped: {stats.batches} batches, {stats.flows} flows, {stats.alerts} alerts, "
            f"{stats.dlq} dead letters",
        )
