"""``flowwarden policy``: validate the declared firewall policy (the YAML kept in git)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flowwarden.cli.common import COMMANDS

policy_app = typer.Typer(help="Check the declared egress/ingress/port policy.", no_args_is_help=True)


@COMMANDS.register("policy")
def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="policy")


@policy_app.command("check")
def check_command(
    file: Annotated[Path, typer.Argument(help="Policy YAML file to validate.")],
    show: Annotated[bool, typer.Option("--show", help="Print the policy as flowwarden reads it.")] = False,
) -> None:
    """Validate FILE; errors name the key path and the nearest valid name (exit status 3)."""
    from flowwarden.policy import ENDPOINTS, load_policy

    policy = load_policy(file)
    if not policy.declared:
        typer.echo(f"{file}: valid; declares nothing (an empty policy checks no flow)")
        return
    scopes = policy.scopes()
    egress = sum(s.egress is not None for _, s in scopes)
    ingress = sum(s.ingress is not None for _, s in scopes)
    endpoints = [e for e in ENDPOINTS if getattr(policy.cluster, e) is not None]
    typer.echo(
        f"{file}: valid; {len(policy.namespaces)} namespaces, {policy.rule_count()} rules; "
        f"egress declared for {egress} scopes, ingress for {ingress}; "
        f"cluster endpoints: {', '.join(endpoints) or 'none'}"
    )
    if show:
        typer.echo(policy.to_yaml(), nl=False)
