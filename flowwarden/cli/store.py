"""``flowwarden store``: the store's schema version and size, and its retention run once."""

from __future__ import annotations

from typing import Annotated

import typer

from flowwarden.cli.common import COMMANDS, ConfigOption, settings_from

store_app = typer.Typer(help="The store: schema, size, pruning by retention.", no_args_is_help=True)


@COMMANDS.register("store")
def register(app: typer.Typer) -> None:
    app.add_typer(store_app, name="store")


@store_app.command("info")
def info_command(config: ConfigOption = None) -> None:
    """The schema version and the rows of every table (migrates a store that lags, like any start)."""
    import sqlalchemy as sa

    from flowwarden.store import DATA_TABLES, Store

    settings = settings_from(config)
    with Store(settings.store.url) as store:
        typer.echo(f"schema version\t{store.schema_version()}")
        with store.engine.connect() as conn:
            for table in DATA_TABLES:
                n = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
                typer.echo(f"{table.name}\t{n}")


@store_app.command("prune")
def prune_command(
    config: ConfigOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the cut-offs, delete nothing.")] = False,
) -> None:
    """Delete rollups and batch marks older than store.rollup_retention_days / batch_mark_retention_days."""
    from datetime import UTC, datetime

    from flowwarden.retention import cutoffs, prune_store
    from flowwarden.store import Store

    settings = settings_from(config)
    if dry_run:
        rollups, batches = cutoffs(settings.store, datetime.now(UTC))
        typer.echo(f"rollups before\t{rollups or 'kept'}\nbatch marks before\t{batches or 'kept'}")
        return
    with Store(settings.store.url) as store:
        result = prune_store(store, settings.store)
    typer.echo(f"rollup rows deleted\t{result.rollup_rows}\t(before {result.rollups_before or 'kept'})")
    typer.echo(f"batch marks deleted\t{result.batch_marks}\t(before {result.batches_before or 'kept'})")
