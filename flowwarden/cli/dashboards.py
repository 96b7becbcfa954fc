"""``flowwarden dashboards``: generate, check, render and push the Grafana dashboards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flowwarden.cli.common import COMMANDS, ConfigOption, Output, OutputOption, emit, settings_from
from flowwarden.errors import ConfigError

DEFAULT_IMG_DIR = Path("docs/img")


@COMMANDS.register("dashboards")
def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Grafana dashboards as code: generate, check, render, push.", no_args_is_help=True
    )

    @group.command("generate")
    def generate(
        out: Annotated[
            Path | None, typer.Option(help="Directory for the JSON (default: dashboards/json).")
        ] = None,
        output: OutputOption = Output.text,
    ) -> None:
        """Write every dashboard's JSON from the code."""
        from flowwarden.dashboards.catalog import JSON_DIR
        from flowwarden.dashboards.catalog import generate as write

        paths = [str(p) for p in write(out or JSON_DIR)]
        emit(output, {"written": paths}, "\n".join(paths))

    @group.command("check")
    def check(
        out: Annotated[Path | None, typer.Option(help="Directory of the committed JSON.")] = None,
        output: OutputOption = Output.text,
    ) -> None:
        """Fail when the committed JSON differs from what the code generates."""
        from flowwarden.dashboards.catalog import JSON_DIR, stale

        problems = stale(out or JSON_DIR)
        if problems:
            raise ConfigError(
                "dashboards JSON is stale (run 'flowwarden dashboards generate'): " + "; ".join(problems)
            )
        emit(output, {"up_to_date": True}, "dashboards JSON is up to date")

    @group.command("render")
    def render(
        out: Annotated[Path, typer.Option(help="Directory for the layout pictures.")] = DEFAULT_IMG_DIR,
        fmt: Annotated[str, typer.Option("--format", help="svg or png.")] = "svg",
    ) -> None:
        """Draw each dashboard's layout (panel titles in grid positions) for the docs."""
        from flowwarden.dashboards.catalog import load_committed
        from flowwarden.dashboards.render import render_all

        if fmt not in ("svg", "png"):
            raise ConfigError(f"--format: {fmt!r} is not one of svg, png")
        for path in render_all(load_committed(), out, fmt):
            typer.echo(str(path))

    @group.command("push")
    def push(
        url: Annotated[str, typer.Option(help="Grafana base URL, e.g. http://grafana:3000.")],
        token: Annotated[
            str, typer.Option(envvar="GRAFANA_TOKEN", help="Service-account token (or GRAFANA_TOKEN).")
        ],
        datasources: Annotated[bool, typer.Option(help="Also create/update the data sources.")] = True,
        config: ConfigOption = None,
        output: OutputOption = Output.text,
    ) -> None:
        """Upload the folder, data sources and dashboards to an existing Grafana (retried: settings.retry)."""
        from flowwarden.dashboards.push import push as upload
        from flowwarden.retry import RetryPolicy

        settings = settings_from(config)
        policy = RetryPolicy.from_settings(settings.retry, "grafana", attempts=5)
        done = upload(url, token, with_datasources=datasources, retry=policy)
        emit(output, {"done": done}, "\n".join(done))

    app.add_typer(group, name="dashboards")
