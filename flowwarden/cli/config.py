"""``flowwarden config``: check a settings file, or print a commented example of one.

The example is generated from :class:`~flowwarden.settings.Settings` itself (defaults,
plus the comments written beside each field in ``settings.py``), so it never drifts
from the code and always passes ``config check``.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from flowwarden.cli.common import COMMANDS, Output, OutputOption, emit

config_app = typer.Typer(help="Check settings files; print a commented example.", no_args_is_help=True)

_FIELD = re.compile(r"^\s+(?P<name>[a-z_][a-z0-9_]*)\s*:")
_TRAILING = re.compile(r"\)?\s+#\s*(?P<text>[^\"']*)$")


@COMMANDS.register("config")
def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")


@config_app.command("check")
def check_command(
    file: Annotated[Path, typer.Argument(help="YAML settings file to validate.")],
    output: OutputOption = Output.text,
) -> None:
    """Validate FILE (with FLOWWARDEN_* environment overrides) and print the effective settings."""
    from flowwarden.cli.common import settings_from
    from flowwarden.settings import dump_settings

    # ConfigError names the key and the nearest valid name; then detector, threshold and
    # backend names and threshold ranges.
    settings = settings_from(file)
    emit(
        output,
        {"file": str(file), "valid": True, "settings": settings.model_dump(mode="json")},
        lambda: (
            f"# {file}: valid; effective settings (environment overrides applied):\n"
            + dump_settings(settings).rstrip("\n")
        ),
    )


@config_app.command("example")
def example_command() -> None:
    """Print a commented example settings file (every key, with its default)."""
    typer.echo(example_yaml(), nl=False)


def _field_comments(cls: type) -> dict[str, list[str]]:
    """Comments written beside (or just above) each field in the class source."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out: dict[str, list[str]] = {}
    pending: list[str] = []
    for line in lines[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        m = _FIELD.match(line)
        if m and "(" not in m.group("name"):
            notes = list(pending)
            trailing = _TRAILING.search(line)
            if trailing and "#" in line:
                notes.append(trailing.group("text").strip())
            if notes:
                out[m.group("name")] = notes
        pending = []
    return out


def _yaml_value(name: str, value: Any, indent: str) -> str:
    """One ``key: value`` line; lists and mappings inline (flow style) to stay readable."""
    import yaml

    if isinstance(value, list | dict):
        flow = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6).strip()
        return f"{indent}{name}: {flow}\n"
    text = yaml.safe_dump({name: value}, default_flow_style=False, sort_keys=False, width=10**6)
    return "".join(f"{indent}{line}\n" for line in text.rstrip("\n").splitlines())


def _detector_thresholds() -> list[str]:
    """Comment lines: every registered detector's thresholds, defaults and allowed ranges."""
    from flowwarden.pipeline.detection.detectors import DETECTORS

    out = []
    for name, cls in DETECTORS.items():
        out.append(f"  #   {name}:")
        for key, default in cls.defaults.items():
            value = int(default) if float(default).is_integer() else default
            out.append(f"  #     {key}: {value}  # {cls.constraints[key]}")
    return out


def example_yaml() -> str:
    """The example file: every section and key with its default and its comment."""
    from pydantic import BaseModel

    from flowwarden.settings import Settings

    defaults = Settings.model_construct().model_dump(mode="json")
    out = [
        "# flowwarden settings: every key with its default. Delete what you do not change.",
        "# Environment variables override this file: FLOWWARDEN_<SECTION>__<KEY>, e.g.",
        "#   FLOWWARDEN_BUS__KIND=kafka  FLOWWARDEN_KAFKA__BOOTSTRAP_SERVERS='[\"kafka:9092\"]'",
        "# Check a file with: flowwarden config check FILE",
        "",
    ]
    top_comments = _field_comments(Settings)
    for name, field in Settings.model_fields.items():
        section_cls = field.annotation
        value = defaults[name]
        if isinstance(section_cls, type) and issubclass(section_cls, BaseModel) and isinstance(value, dict):
            doc = (section_cls.__dict__.get("__doc__") or "").strip().splitlines()
            if doc:
                out.append(f"# {doc[0]}")
            out.append(f"{name}:")
            comments = _field_comments(section_cls)
            for key, sub in value.items():
                for note in comments.get(key, []):
                    out.append(f"  # {note}")
                if (name, key) == ("pipeline", "detectors"):
                    out.extend(_detector_thresholds())
                out.append(_yaml_value(key, sub, "  ").rstrip("\n"))
        else:
            for note in top_comments.get(name, []):
                out.append(f"# {note}")
            out.append(_yaml_value(name, value, "").rstrip("\n"))
        out.append("")
    return "\n".join(out)
