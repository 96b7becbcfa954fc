"""``flowwarden feeds``: the threat feeds of the settings: list, update, check an address or name."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from flowwarden.cli.common import COMMANDS, ConfigOption, settings_from

feeds_app = typer.Typer(help="Threat feeds: list, update, check an address or a name.", no_args_is_help=True)


@COMMANDS.register("feeds")
def register(app: typer.Typer) -> None:
    app.add_typer(feeds_app, name="feeds")


@feeds_app.command("list")
def list_command(config: ConfigOption = None) -> None:
    """Every feed in rules.feeds with its copy on disk (no download)."""
    from flowwarden.feeds_fetch import FeedCache, is_url

    settings = settings_from(config)
    cache = FeedCache(settings)
    if not settings.rules.feeds:
        typer.echo("no feeds configured (rules.feeds)")
        return
    loaded = {r.name: r for r in cache.load_all()}
    for src in settings.rules.feeds:
        meta = cache.meta(src.name) if is_url(src.url) else {}
        result = loaded.get(src.name)
        feed = result.feed if result else None
        fetched = meta.get("fetched_at")
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(str(fetched)))) if fetched else "-"
        state = "disabled" if not src.enabled else (result.status if result else "-")
        entries = f"{feed.entries} entries, {feed.rejected} rejected" if feed else "no copy"
        typer.echo(f"{src.name}\t{src.format}\t{state}\t{entries}\tfetched {when}\t{src.url}")


@feeds_app.command("update")
def update_command(
    config: ConfigOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Download in full (no ETag / If-Modified-Since).")
    ] = False,
) -> None:
    """Refresh every enabled feed now; a failure keeps the last good copy (exit status 1 if any failed)."""
    from flowwarden.errors import ExitCode
    from flowwarden.feeds_fetch import FeedCache

    settings = settings_from(config)
    results = FeedCache(settings).refresh_due(force=True) if force else FeedCache(settings).refresh_due()
    failed = 0
    for r in results:
        entries = f"{r.feed.entries} entries" if r.feed else "no copy"
        error = f"\terror: {r.error}" if r.error else ""
        typer.echo(f"{r.name}\t{r.status}\t{entries}\t{r.seconds:.2f}s{error}")
        failed += bool(r.error)
    if failed:
        raise typer.Exit(ExitCode.FAILED)


@feeds_app.command("check")
def check_command(
    value: Annotated[str, typer.Argument(help="An IP address, a CIDR or a domain name.")],
    config: ConfigOption = None,
) -> None:
    """Which feeds list VALUE (their copies on disk, no download), and whether it is protected from blocks."""
    from flowwarden.errors import ExitCode, InputError
    from flowwarden.feeds import valid_name
    from flowwarden.feeds_fetch import FeedCache, build_feed_set
    from flowwarden.feeds_index import normalise_name, parse_network

    if parse_network(value.strip()) is None and not valid_name(normalise_name(value)):
        raise InputError(f"{value!r} is neither an IP address, a CIDR nor a domain name")
    settings = settings_from(config)
    feeds = build_feed_set(FeedCache(settings).load_all(), settings)
    hits = feeds.check(value)
    protected = {(p.feed, p.entry) for p in feeds.protected_entries}
    if not hits:
        typer.echo(f"{value}: not listed by any of {len(feeds.feeds)} feeds")
        return
    for h in hits:
        note = "\tprotected: never blocked (covers a node, the API server, the DNS or a protected address)"
        typer.echo(f"{value}: {h.feed}\t{h.entry}{note if (h.feed, h.entry) in protected else ''}")
    raise typer.Exit(ExitCode.FOUND)


@feeds_app.command("export")
def export_command(
    config: ConfigOption = None,
    nft: Annotated[
        bool, typer.Option("--nft", help="Apply the nftables set (in enforcement.nft_netns if set).")
    ] = False,
    calico: Annotated[
        bool, typer.Option("--calico", help="Write GlobalNetworkSets under enforcement.gitops_dir.")
    ] = True,
    update: Annotated[bool, typer.Option("--update/--no-update", help="Refresh the due feeds first.")] = True,
) -> None:
    """Export every feed (minus protected entries, which are listed) as cluster data; one atomic nft batch."""
    from flowwarden.enforcement.feeds_export import NftFeedExporter, export_mode, write_calico
    from flowwarden.feeds_fetch import FeedCache, build_feed_set

    settings = settings_from(config)
    cache = FeedCache(settings)
    results = cache.refresh_due() if update else cache.load_all()
    feeds = build_feed_set(results, settings)
    mode = export_mode(settings)
    reports = []
    if calico:
        reports.append(write_calico(feeds, settings.enforcement.gitops_dir, mode))
    if nft:
        reports.append(NftFeedExporter(settings, mode).apply(feeds))
    typer.echo(f"mode {mode}; {len(feeds)} entries in {len(feeds.feeds)} feeds")
    for line in dict.fromkeys(line for r in reports for line in r.lines()):
        typer.echo(line)
