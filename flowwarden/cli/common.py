"""Options and helpers every command shares."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

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


def settings_from(config: Path | None) -> Settings:
    """Load and validate the settings once, at the start of a command."""
    settings = load_settings(config)
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
