"""Options and helpers every command shares."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flowwarden.settings import Settings, load_settings

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML settings file (FLOWWARDEN_* environment variables override it)."
    ),
]


def settings_from(config: Path | None) -> Settings:
    """Load and validate the settings once, at the start of a command."""
    return load_settings(config)
