"""``flowwarden alerts``: a person's verdict on an alert, recorded in the store.

``resolve ID --benign`` says the alert was fine: the pipeline folds the verdict into its
memory (the alert's edges become its workload's normal, so the next run of a CronJob does
not alert again); ``--malicious`` keeps them new to the workload's other pods. Each verdict
is kept with who gave it, when and why, under the store's state key
:data:`~flowwarden.pipeline.detection.feedback.RESOLUTIONS_KEY` (the latest verdict on an
alert wins). A running pipeline picks it up within seconds
(:class:`~flowwarden.pipeline.runtime.verdicts.VerdictFollower`), closes the open alert and
counts it in ``flowwarden_alert_resolutions_total{verdict}``.
"""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime
from typing import Annotated

import typer

from flowwarden.cli.common import COMMANDS, ConfigOption, settings_from

alerts_app = typer.Typer(help="Say what an alert was: benign or malicious.", no_args_is_help=True)


@COMMANDS.register("alerts")
def register(app: typer.Typer) -> None:
    app.add_typer(alerts_app, name="alerts")


@alerts_app.command("resolve")
def resolve_command(
    alert_id: Annotated[
        str, typer.Argument(help="The alert's id (as the store and the alerts topic show it).")
    ],
    benign: Annotated[
        bool | None,
        typer.Option("--benign/--malicious", help="The verdict: the behaviour was fine, or an attack."),
    ] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why (kept with the verdict).")] = "",
    by: Annotated[str, typer.Option("--by", help="Who decided (default: the login name).")] = "",
    config: ConfigOption = None,
) -> None:
    """Record a verdict on alert ALERT_ID; the pipeline learns it (benign) or keeps it new (malicious)."""
    from flowwarden.errors import InputError
    from flowwarden.pipeline.detection.feedback import RESOLUTIONS_KEY, add_resolution, parse_resolutions
    from flowwarden.store import Store

    if benign is None:
        raise InputError("say --benign or --malicious")
    settings = settings_from(config)
    verdict = "benign" if benign else "malicious"
    who = by or getpass.getuser()
    with Store(settings.store.url) as store:
        alert = store.get_alert(alert_id)
        if alert is None:
            raise InputError(f"no alert {alert_id!r} in the store ({settings.store.url.split('@')[-1]})")
        with store.transaction() as conn:
            doc = add_resolution(
                store.get_state(RESOLUTIONS_KEY, conn=conn),
                alert_id=alert_id,
                verdict=verdict,
                by=who,
                reason=reason,
                at=datetime.now(UTC),
            )
            store.put_state(RESOLUTIONS_KEY, doc, conn=conn)
        count = len(parse_resolutions(doc))
    typer.echo(
        json.dumps({"alert_id": alert_id, "verdict": verdict, "by": who, "reason": reason, "verdicts": count})
    )
