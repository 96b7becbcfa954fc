"""The ``flowwarden`` command: the one place that wires the stages together.

Each command group lives in its own module here and registers itself on :data:`app`;
stage modules are imported inside the commands so that ``--help`` stays fast.
Errors that a user can fix (:class:`~flowwarden.errors.FlowwardenError`) are printed as
one line and exit with status 2, never as a traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from flowwarden.errors import FlowwardenError

app = typer.Typer(
    name="flowwarden",
    help="Flow-analytics firewall brain for Kubernetes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Command modules, each with ``register(app)``; listed here so wiring stays in one place.
COMMAND_MODULES = (
    "config",
    "simulate",
    "replay",
    "collect",
    "pipeline",
    "enforce",
    "models",
    "dashboards",
    "demo",
)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"flowwarden.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"flowwarden.cli.{name}":
                continue  # command group not built yet
            raise
        module.register(app)


_register_all()


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )
    try:
        app()
    except FlowwardenError as exc:
        typer.secho(f"flowwarden: error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
