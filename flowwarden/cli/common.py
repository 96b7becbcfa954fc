"""Options and helpers every command shares: settings, logging, ``--output``, progress, exit codes.

A command that reports takes :data:`OutputOption` and ends with :func:`emit`, one call
with the data (a JSON-able dict) and the text a person reads; ``--output json`` prints
the data as one JSON document on stdout instead, so a script never parses prose. Long
work draws a progress bar on stderr through :func:`progress`, which draws nothing when
stderr is not a terminal; the stages only report through a callback.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from flowwarden.errors import ExitCode
from flowwarden.plugins import Registry
from flowwarden.settings import Settings, load_settings

# The CLI's command groups: each module's ``register(app)`` adds its group to the app.
COMMANDS: Registry[Callable[[typer.Typer], None]] = Registry("command", "flowwarden")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML settings file (FLOWWARDEN_* environment variables override it)."
    ),
]


class Output(StrEnum):
    """What a reporting command prints on stdout."""

    text = "text"
    json = "json"


# The --output of the command being run: main() answers an error in the same form.
CURRENT_OUTPUT: ContextVar[Output] = ContextVar("flowwarden_output", default=Output.text)


def _remember_output(value: Output) -> Output:
    CURRENT_OUTPUT.set(value)
    return value


OutputOption = Annotated[
    Output,
    typer.Option(
        "--output",
        help="text for people; json: one JSON document on stdout for scripts (errors too).",
        case_sensitive=False,
        callback=_remember_output,
    ),
]

StrictOption = Annotated[
    bool,
    typer.Option(
        "--strict",
        help=f"Exit {int(ExitCode.FOUND)} when detection found something (alerts), so CI can fail on it.",
    ),
]


def emit(output: Output, data: dict[str, Any], text: str | Callable[[], str] | None = None) -> None:
    """Print a command's result: ``data`` as JSON, or ``text`` (default: ``data`` as key: value lines)."""
    if output is Output.json:
        typer.echo(json.dumps(data, default=_jsonable, sort_keys=False))
        return
    if callable(text):
        text = text()
    if text is None:
        text = "\n".join(f"{k}: {v}" for k, v in data.items())
    typer.echo(text)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def error_document(exc: BaseException, code: int) -> str:
    """The JSON form of a failure, for ``--output json`` (stdout stays one JSON document)."""
    return json.dumps({"error": {"type": type(exc).__name__, "message": str(exc), "exit_code": code}})


# --------------------------------------------------------------------------- logging

LOG_HANDLER_NAME = "flowwarden-cli"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Send log records to stderr at ``level`` (settings ``log_level``), as text or JSON lines.

    Replaces only the handler it installed itself, so calling it again (once the settings
    are loaded) changes level and format without doubling every line.
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        if h.get_name() == LOG_HANDLER_NAME:
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(LOG_HANDLER_NAME)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))


# --------------------------------------------------------------------------- settings


def settings_from(config: Path | None, **overrides: Any) -> Settings:
    """Load and validate the settings once, at the start of a command; apply their logging.

    ``overrides``: top-level sections merged over the file (command-line flags).
    """
    settings = load_settings(config, **overrides)
    configure_logging(settings.log_level, settings.log_format)
    check_plugin_settings(settings)
    return settings


def check_plugin_settings(settings: Settings) -> None:
    """The names and parameters of plugins in the settings, against their registries.

    The base settings cannot import the stages that own the registries; the CLI (which
    may import every stage) checks them right after loading, so a typo stops any command
    at start with the key path and the nearest name.
    """
    from flowwarden.enforcement.backends import check_backend_settings
    from flowwarden.pipeline.detection.detectors import check_detector_settings

    check_detector_settings(settings)
    check_backend_settings(settings)


# --------------------------------------------------------------------------- progress

# A stage's progress callback: (what it is doing, done, total or None when unknown).
ProgressFn = Callable[[str, float, float | None], None]


@contextmanager
def progress(title: str, total: float | None = None) -> Iterator[ProgressFn]:
    """A progress bar on stderr while the block runs; nothing at all when stderr is not a terminal.

    The stage calls the yielded function with what it is doing, how much is done and,
    when it knows it, the total (bytes of a capture, 1.0 for a fraction).
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        yield _no_progress
        return
    with Progress(
        TextColumn(f"[bold]{title}[/] {{task.description:<22}}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("start", total=total)

        def step(what: str, done: float, of: float | None = None) -> None:
            bar.update(task, description=what, completed=done, total=of if of is not None else total)

        yield step


def _no_progress(what: str, done: float, total: float | None = None) -> None:
    """Stderr is a file or a pipe: a bar there is noise in a log, so nothing is drawn."""


def fraction_progress(step: ProgressFn) -> Callable[[str, float], None]:
    """Adapt :func:`progress` to the stages that report a fraction done (models, simulator)."""
    return lambda what, done: step(what, done, 1.0)


def require_kafka(settings: Settings, command: str) -> None:
    """Refuse to publish onto the in-memory bus from a command that exits right after.

    The memory bus lives inside this process: whatever it publishes is gone when the
    command ends, and nothing else could have read it. Succeeding would hide that.
    """
    if settings.bus.kind == "memory":
        from flowwarden.errors import ConfigError

        raise ConfigError(
            f"{command}: bus.kind is memory, so the flows would go nowhere (the in-memory bus ends "
            "with this process); set bus.kind: kafka and kafka.bootstrap_servers "
            "(FLOWWARDEN_BUS__KIND=kafka), or run `flowwarden demo` for everything in one process"
        )
