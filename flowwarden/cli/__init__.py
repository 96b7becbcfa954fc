"""The ``flowwarden`` command: the one place that wires the stages together.

Each command group lives in its own module here and registers itself on
:data:`~flowwarden.cli.common.COMMANDS` (the plugin mechanism every family shares,
:mod:`flowwarden.plugins`); importing this package imports them, so a command module
that fails to import stops the CLI with its error instead of silently missing a command.
Stage modules are imported inside the commands so that ``--help`` stays fast.
Errors that a user can fix (:class:`~flowwarden.errors.FlowwardenError`) are printed as
one line, never as a traceback, and exit with their class's status
(:class:`~flowwarden.errors.ExitCode`: bad input 2, configuration 3, unreachable service 4).
"""

from __future__ import annotations

import sys

import typer

from flowwarden.cli.common import COMMANDS, CURRENT_OUTPUT, Output, configure_logging, error_document
from flowwarden.errors import ExitCode, FlowwardenError

# isort: off
# The built-in command groups, in the order ``--help`` lists them (the data path).
from flowwarden.cli import (  # noqa: F401 - importing registers them
    config,
    simulate,
    replay,
    collect,
    pipeline,
    alerts,
    policy,
    feeds,
    enforce,
    models,
    dashboards,
    report,
    store,
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


def run(args: list[str] | None = None) -> int:
    """Run the command line ``args`` (default: ``sys.argv``) and return its exit status.

    The one place where errors become statuses, so that tests and :func:`main` agree.
    """
    _log_from_environment()
    CURRENT_OUTPUT.set(Output.text)
    try:
        # Not standalone: click returns the status of typer.Exit and --help instead of exiting.
        status = app(args=args, standalone_mode=False)
    except FlowwardenError as exc:
        return _fail(exc, int(exc.exit_code))
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        return int(ExitCode.INTERRUPTED)
    except typer.TyperException as exc:  # click's usage errors: bad option, missing argument
        if CURRENT_OUTPUT.get() is Output.json:
            typer.echo(error_document(exc, ExitCode.BAD_INPUT))
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            typer.echo(f"flowwarden: error: {exc}", err=True)
        return int(ExitCode.BAD_INPUT)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    return status if isinstance(status, int) else int(ExitCode.OK)


def _log_from_environment() -> None:
    """Logging from FLOWWARDEN_LOG_LEVEL / FLOWWARDEN_LOG_FORMAT until a command loads its settings
    file (commands without ``--config`` keep this one)."""
    from flowwarden.settings import load_settings

    try:
        settings = load_settings(None)
    except FlowwardenError:  # a bad variable: the command that loads the settings says which
        configure_logging()
        return
    configure_logging(settings.log_level, settings.log_format)


def _fail(exc: FlowwardenError, code: int) -> int:
    if CURRENT_OUTPUT.get() is Output.json:
        typer.echo(error_document(exc, code))
    typer.secho(f"flowwarden: error: {exc}", err=True, fg=typer.colors.RED)
    return code


def main() -> None:
    sys.exit(run())
