"""``flowwarden models``: train, evaluate, tune, report, list, promote, roll back.

This module is where the pipeline's engine and the models stage meet: ``models/`` never
imports ``pipeline``; the commands here hand it the engine's offline runner
(:func:`pipeline.offline.detect_flows`) so that training and evaluation use the live code.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flowwarden.cli.common import (
    COMMANDS,
    ConfigOption,
    Output,
    OutputOption,
    emit,
    fraction_progress,
    progress,
    settings_from,
)
from flowwarden.errors import ConfigError, InputError

if TYPE_CHECKING:
    from flowwarden.models.workflow import DetectFn
    from flowwarden.settings import Settings

models_app = typer.Typer(help="Train, evaluate, tune, report, promote and roll back detection models.")

FlowsOption = Annotated[
    str, typer.Option("--flows", help="Parquet flow files: a path or a quoted glob ('DIR/*.parquet').")
]
LabelsOption = Annotated[
    Path | None, typer.Option("--labels", help="labels.json with attack episodes (see docs/models.md).")
]
InventoryOption = Annotated[
    Path | None,
    typer.Option("--inventory", help="Pods as `kubectl get pods -A -o json` (enrichment, pod count)."),
]
RegistryOption = Annotated[
    Path | None,
    typer.Option("--registry", help="Model registry directory (default: settings pipeline.model_dir)."),
]
BudgetOption = Annotated[
    float, typer.Option("--budget", help="False alerts allowed per hour per 100 pods.", min=0.0)
]


@COMMANDS.register("models")
def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


# ---------------------------------------------------------------------- wiring
def pipeline_detector(inventory: dict[str, Any] | None) -> DetectFn:
    """The pipeline's own offline engine, adapted to what ``models`` needs."""
    from flowwarden.kube import PodInventory
    from flowwarden.models.workflow import Detection
    from flowwarden.pipeline.runtime.offline import detect_flows

    inv = PodInventory.from_dict(inventory) if inventory is not None else None

    def detect(flows: Any, settings: Settings, model: Any) -> Detection:
        res = detect_flows(flows, settings=settings, inventory=inv, model=model)
        state = res.engine.export_state() if res.engine is not None else None
        return Detection(res.alerts, res.windows, state)

    return detect


def feature_names() -> list[str]:
    from flowwarden.records import WINDOW_FEATURES

    return list(WINDOW_FEATURES)


@contextmanager
def progress_bar(title: str) -> Iterator[Callable[[str, float], None]]:
    """The shared progress bar (stderr, only on a terminal) for the workflow's fraction-done reports."""
    with progress(title, total=1.0) as step:
        yield fraction_progress(step)


def _labels(path: Path | None, *, required: bool) -> Any:
    from flowwarden.labels import Labels

    if path is None:
        if required:
            raise InputError("labels: --labels is required (attack episodes to measure against)")
        return None
    return Labels.load(path)


def _registry(registry: Path | None, config: Path | None) -> Path:
    if registry is not None:
        return registry
    settings = settings_from(config)
    if settings.pipeline.model_dir is None:
        raise ConfigError("registry: give --registry DIR or set pipeline.model_dir in the settings")
    return settings.pipeline.model_dir


def _print_overall(metrics: dict[str, Any], output: Output = Output.text, **extra: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    if output is Output.json:
        emit(output, {**extra, "overall": metrics["overall"], "per_technique": metrics["per_technique"]})
        return
    console = Console()
    o = metrics["overall"]
    console.print(
        f"recall {_fmt(o['recall'])}  precision {_fmt(o['precision'])}  "
        f"false alerts/h/100 pods {_fmt(o['false_alerts_per_hour_per_100_pods'])}  "
        f"ROC-AUC {_fmt(o.get('roc_auc'))}  PR-AUC {_fmt(o.get('pr_auc'))}"
    )
    table = Table("technique", "episodes", "detected", "recall", "ttd median s", "ttd p90 s", "detectors")
    for t, row in metrics["per_technique"].items():
        ttd = row["time_to_detect_s"]
        table.add_row(
            t,
            str(row["episodes"]),
            str(row["detected"]),
            _fmt(row["recall"]),
            _fmt(ttd["median"]),
            _fmt(ttd["p90"]),
            ", ".join(row["detectors"]),
        )
    console.print(table)


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if isinstance(x, float) else str(x)


# ---------------------------------------------------------------------- commands
@models_app.command("train")
def train_command(
    flows: FlowsOption,
    out: Annotated[Path, typer.Option("--out", help="Model directory to write (its name is the version).")],
    labels: LabelsOption = None,
    inventory: InventoryOption = None,
    method: Annotated[str, typer.Option(help="isolation_forest, lof or ocsvm.")] = "isolation_forest",
    n_estimators: Annotated[int, typer.Option(help="Trees of the forest.", min=1)] = 200,
    seed: Annotated[int, typer.Option(help="Random seed: same seed and data, same model.")] = 0,
    budget: BudgetOption = 1.0,
    version: Annotated[
        str | None, typer.Option(help="Version name (default: the --out directory name).")
    ] = None,
    parent: Annotated[
        str | None, typer.Option(help="Parent version (default: the registry's active one).")
    ] = None,
    config: ConfigOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Learn baselines, seen edges and the anomaly model from benign flows (episodes excluded)."""
    from flowwarden.models.estimators import METHODS
    from flowwarden.models.workflow import count_pods, read_flows, read_inventory, train

    if method not in METHODS:
        raise InputError(f"--method: {method!r} is not one of {', '.join(METHODS)}")
    settings = settings_from(config)
    inv = read_inventory(inventory)
    data = read_flows(flows)
    with progress_bar("train") as step:
        model = train(
            data,
            settings=settings,
            detect=pipeline_detector(inv),
            feature_names=feature_names(),
            out=out,
            labels=_labels(labels, required=False),
            pods=count_pods(inv) if inv is not None else None,
            params={"method": method, "n_estimators": n_estimators, "random_state": seed},
            budget=budget,
            version=version,
            parent=parent,
            sources=[flows],
            progress=step,
        )
    tr = model.metadata["training"]
    emit(
        output,
        {"version": model.version, "out": str(out), "threshold": model.threshold, "training": tr},
        f"model {model.version} written to {out}: {tr['windows']} benign windows, {tr['flows']} flows "
        f"({tr['excluded_attack_flows']} attack flows excluded), threshold {model.threshold:.4f}",
    )


@models_app.command("evaluate")
def evaluate_command(
    model: Annotated[Path, typer.Option("--model", help="Model directory.")],
    flows: FlowsOption,
    labels: Annotated[Path, typer.Option("--labels", help="labels.json with attack episodes.")],
    inventory: InventoryOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Directory for metrics.json (default: MODEL/evaluation).")
    ] = None,
    config: ConfigOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Run the live pipeline's engine with the model over labelled flows; write metrics.json."""
    from flowwarden.models.registry import load_model
    from flowwarden.models.workflow import EVAL_DIR, count_pods, evaluate_model, read_flows, read_inventory

    settings = settings_from(config)
    loaded = load_model(model)
    inv = read_inventory(inventory)
    data = read_flows(flows)
    out_dir = out or model / EVAL_DIR
    with progress_bar("evaluate") as step:
        metrics = evaluate_model(
            loaded,
            data,
            _labels(labels, required=True),
            settings=settings,
            detect=pipeline_detector(inv),
            pods=count_pods(inv) if inv is not None else None,
            out_dir=out_dir,
            progress=step,
        )
    _print_overall(metrics, output, metrics_file=str(out_dir / "metrics.json"))
    if output is Output.text:
        typer.echo(f"metrics written to {out_dir / 'metrics.json'}")


@models_app.command("tune")
def tune_command(
    flows: FlowsOption,
    labels: Annotated[Path, typer.Option("--labels", help="labels.json with attack episodes.")],
    out: Annotated[Path, typer.Option("--out", help="Model directory for the tuned model.")],
    inventory: InventoryOption = None,
    budget: BudgetOption = 1.0,
    train_fraction: Annotated[
        float, typer.Option(help="Share of the time range learned from (the rest judges).")
    ] = 0.5,
    window_sizes: Annotated[
        str, typer.Option(help="Window sizes to try, seconds, comma-separated.")
    ] = "10,20",
    config: ConfigOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Search window size, forest parameters and threshold for recall under the false-alert budget."""
    from flowwarden.models.evaluation import evaluate, write_metrics
    from flowwarden.models.tuning import tune
    from flowwarden.models.workflow import (
        EVAL_DIR,
        count_pods,
        data_hours,
        read_flows,
        read_inventory,
        write_evaluation,
    )

    try:
        sizes = [float(x) for x in window_sizes.split(",") if x.strip()]
    except ValueError as exc:
        raise InputError(
            f"--window-sizes: {window_sizes!r} is not a comma-separated list of seconds"
        ) from exc
    settings = settings_from(config)
    inv = read_inventory(inventory)
    data = read_flows(flows)
    lab = _labels(labels, required=True)
    detect = pipeline_detector(inv)
    with progress_bar("tune") as step:
        result = tune(
            data,
            lab,
            settings=settings,
            detect=detect,
            feature_names=feature_names(),
            pods=count_pods(inv) if inv is not None else None,
            budget=budget,
            train_fraction=train_fraction,
            window_sizes=sizes,
            out=out,
            progress=step,
        )
    write_metrics(result.summary(), out / "tuning.json")
    if result.model is not None and result.judged is not None:
        # The tuned model's own evaluation on the judged (later) period, for `models report`.
        late, later = result.judged
        det = result.best_detection
        windows = det.windows.assign(score_isolation_forest=result.model.score(det.windows))
        metrics = evaluate(
            det.alerts,
            later,
            windows,
            window_s=result.best.window_s,
            hours=data_hours(late),
            pods=int(result.best_metrics["pods"]),
        ) | {"model_version": result.model.version, "threshold": result.model.threshold}
        write_evaluation(
            out / EVAL_DIR, metrics, windows, det.alerts, later, result.best.window_s, result.model
        )
    b, d = result.best, result.default
    summary = result.summary()
    if output is Output.json:
        emit(output, {**summary, "out": str(out), "search": str(out / "tuning.json")})
        return
    typer.echo(
        f"tuned: window {b.window_s:g}s params {b.params or 'defaults'} threshold {b.threshold:.4f}: "
        f"recall {_fmt((b.confirmed or {}).get('recall'))}, false alerts/h/100 pods "
        f"{_fmt((b.confirmed or {}).get('false_alerts_per_hour_per_100_pods'))} (budget {budget:g}); "
        f"defaults: recall {_fmt((d.confirmed or {}).get('recall'))}, false alerts/h/100 pods "
        f"{_fmt((d.confirmed or {}).get('false_alerts_per_hour_per_100_pods'))}"
    )
    if not summary["budget_met"]:
        noisy = {
            name: row["false_alerts"]
            for name, row in result.best_metrics.get("per_detector", {}).items()
            if row.get("false_alerts")
        }
        typer.secho(
            f"warning: the budget of {budget:g} is not met; false alerts by detector: {noisy or 'none'} "
            "(tune sets the forest and the window size; rule thresholds live in pipeline.detectors)",
            err=True,
            fg=typer.colors.YELLOW,
        )
    typer.echo(f"model written to {out}; search in {out / 'tuning.json'}")


@models_app.command("report")
def report_command(
    model: Annotated[Path, typer.Option("--model", help="Model directory (evaluated: MODEL/evaluation).")],
    out: Annotated[Path, typer.Option("--out", help="HTML file to write.")],
    evaluation: Annotated[
        Path | None, typer.Option("--evaluation", help="Evaluation directory (default: MODEL/evaluation).")
    ] = None,
    output: OutputOption = Output.text,
) -> None:
    """One self-contained HTML report: curves, score distributions, per technique, features."""
    from flowwarden.models.registry import load_model
    from flowwarden.models.report import write_report
    from flowwarden.models.workflow import EVAL_DIR

    loaded = load_model(model)
    path = write_report(loaded, evaluation or model / EVAL_DIR, out)
    emit(output, {"report": str(path)}, f"report written to {path}")


@models_app.command("list")
def list_command(
    registry: RegistryOption = None, config: ConfigOption = None, output: OutputOption = Output.text
) -> None:
    """The registry's versions, the active one marked with *."""
    from flowwarden.models.registry import list_models

    rows = list_models(_registry(registry, config))
    if output is Output.json:
        emit(output, {"models": rows})
        return
    if not rows:
        typer.echo("no models")
    for r in rows:
        mark = "*" if r["active"] else " "
        typer.echo(
            f"{mark} {r['version']:<24} parent={r['parent'] or '-'} method={r['method']} "
            f"threshold={_fmt(r['threshold'])} recall={_fmt(r['recall'])} "
            f"fa/h/100pods={_fmt(r['false_alerts_per_hour_per_100_pods'])} {r['status']}"
        )


@models_app.command("promote")
def promote_command(
    version: Annotated[str, typer.Argument(help="Version to make live.")],
    registry: RegistryOption = None,
    config: ConfigOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Make a verified version live; a running pipeline switches to it without a restart."""
    from flowwarden.models.registry import promote

    model = promote(_registry(registry, config), version)
    emit(output, {"active": model.version}, f"promoted {model.version}")


@models_app.command("rollback")
def rollback_command(
    registry: RegistryOption = None, config: ConfigOption = None, output: OutputOption = Output.text
) -> None:
    """Go back to the version promoted before the active one."""
    from flowwarden.models.registry import rollback

    previous = rollback(_registry(registry, config))
    emit(
        output,
        {"active": previous},
        f"rolled back to {previous}" if previous else "rolled back: no model active now",
    )


@models_app.command("show")
def show_command(
    model: Annotated[Path, typer.Option("--model", help="Model directory.")],
    output: OutputOption = Output.text,
) -> None:
    """Verify a model directory and print its metadata (JSON either way; text is indented)."""
    from flowwarden.models.registry import load_model

    metadata = load_model(model).metadata
    emit(output, metadata, lambda: json.dumps(metadata, indent=1, sort_keys=True))
