"""The ``flowwarden`` command: the one place that wires the stages together.

Each command group lives in its own module here and registers itself on
:data:`~flowwarden.cli.common.COMMANDS` (the plugin mechanism every family shares,
:mod:`flowwarden.plugins`); importing this package imports them, so a command module
that fails to import stops the CLI with its error instead of silently missing a command.
Stage modules are imported inside the commands so that ``--help`` stays fast.
Errors that a user can fix (:class:`~flowwarden.errors.FlowwardenError`) are printed as
one line and exit with status 2, never as a traceback.
"""

from __future__ import annotations

import logging
import sys

import typer

from flowwarden.cli.common import COMMANDS
from flowwarden.errors import FlowwardenError

# isort: off
# The built-in command groups, in the order ``--help`` lists them (the data path).
from flowwarden.cli import (  # noqa: F401 - importing registers them
    config,
    simulate,
    replay,
    collect,
    pipeline,
    enforce,
    models,
    dashboards,
    demo,
)

# isort: on

app = typer.Typer(
    name="flowwarden",
    help="Flow-analytics firewall brain for Kubernetes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register_all() -> None:
    for _name, add in COMMANDS.items():
        add(app)


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
