"""The read commands over the inventory and the runs: `locks`, `history`, `changes`, `runs`,
`runs show`."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime
from typing import Annotated

import typer

from exporter.cli import shared
from exporter.cli.shared import check_format, errors, reader
from exporter.kinds import RunStatus


def locks(
    config: shared.ConfigOption = None,
    database_url: shared.DatabaseOption = None,
    owner: shared.OwnerOption = None,
    model: Annotated[
        str | None,
        typer.Option(help="Only this lock model name or lock type id.", show_default=False),
    ] = None,
    search: Annotated[
        str | None,
        typer.Option(help="Text in the title, description, ids or model.", show_default=False),
    ] = None,
    include_removed: Annotated[
        bool, typer.Option("--include-removed", help="Also show removed locks.")
    ] = False,
    as_of: shared.AsOfOption = None,
    fmt: shared.ReadFormatOption = "table",
    csv_raw: shared.CsvRawOption = False,
) -> None:
    """Show the lock inventory grouped by owner account, now or as it was at --as-of.

    Example: exporter locks --owner "Office Vienna" --as-of 2026-03-01T00:00:00Z
    """
    from exporter.read import asof, formats, render
    from exporter.read import inventory as report

    check_format(fmt, formats.FORMATS)
    with errors(), reader(config, database_url) as engine:
        when = asof.resolve_as_of(engine, as_of, now=datetime.now(UTC)) if as_of else None
        with report.open_inventory(
            engine,
            as_of=when,
            owner=owner,
            model=model,
            search=search,
            include_removed=include_removed,
            with_owners=fmt != "csv",
        ) as inventory:
            if fmt == "json":
                formats.write_json(render.inventory_json(inventory), shared.out.file)
            elif fmt == "csv":
                render.inventory_csv(inventory, shared.out.file, raw=csv_raw)
            else:
                filtered = model is not None or search is not None
                render.inventory_table(
                    inventory, shared.out, include_removed=include_removed, filtered=filtered
                )


def history(
    lock: Annotated[
        str,
        typer.Argument(
            help="A bound lock id, a lock id such as 12-34-BF-FB (every binding of that "
            "device), a physical lock id as the API gives it, or the start of a bound lock id.",
            show_default=False,
        ),
    ],
    config: shared.ConfigOption = None,
    database_url: shared.DatabaseOption = None,
    fmt: shared.ReadFormatOption = "table",
    csv_raw: shared.CsvRawOption = False,
) -> None:
    """Show every version of a lock: what changed (old -> new), when, in which run, and why.

    Example: exporter history 12-34-BF-FB
    """
    from exporter.read import changelog, formats, render

    check_format(fmt, formats.FORMATS)
    with errors(), reader(config, database_url) as engine:
        result = changelog.lock_history(engine, lock)
        if fmt == "json":
            formats.write_json(render.history_json(result), shared.out.file)
        elif fmt == "csv":
            render.changes_csv(result.versions, shared.out.file, raw=csv_raw)
        else:
            render.history_table(result, shared.out)


def changes(
    config: shared.ConfigOption = None,
    database_url: shared.DatabaseOption = None,
    since: shared.SinceOption = None,
    until: shared.UntilOption = None,
    run: Annotated[
        int | None, typer.Option("--run", help="Only changes of this run.", show_default=False)
    ] = None,
    owner: Annotated[
        str | None,
        typer.Option(
            help="Only changes that concern this owner account (id or name).", show_default=False
        ),
    ] = None,
    kind: Annotated[
        list[str] | None,
        typer.Option(
            help="Only these kinds: created, updated, removed, restored (repeat or separate "
            "with commas).",
            show_default=False,
        ),
    ] = None,
    entity: Annotated[
        list[str] | None,
        typer.Option(
            help="Only these entities: owner, lock, contact, card, grant (repeat or separate "
            "with commas; default: all).",
            show_default=False,
        ),
    ] = None,
    fmt: shared.ReadFormatOption = "table",
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="No title, and nothing at all when nothing changed."),
    ] = False,
    csv_raw: shared.CsvRawOption = False,
) -> None:
    """Show the change feed: one line per change with the fields that changed.

    Example: exporter changes --since 7d --kind removed,restored --entity lock,grant
    """
    from exporter.read import asof, changelog, formats, render

    check_format(fmt, formats.FORMATS)
    kinds = {k.strip() for value in kind or () for k in value.split(",") if k.strip()}
    entities = {e.strip() for value in entity or () for e in value.split(",") if e.strip()}
    now = datetime.now(UTC)
    with errors(), reader(config, database_url) as engine:
        start, end = asof.parse_period(since, until, now=now)
        with changelog.open_changes(
            engine,
            since=start,
            until=end,
            run_id=run,
            owner=owner,
            kinds=kinds,
            entities=entities or changelog.ENTITIES,
        ) as feed:
            rows = iter(feed.rows)
            first = next(rows, None)
            if quiet and first is None:
                return
            rows = itertools.chain([first] if first is not None else [], rows)
            if fmt == "json":
                formats.write_json(map(changelog.ChangeRow.as_dict, rows), shared.out.file)
            elif fmt == "csv":
                render.changes_csv(rows, shared.out.file, raw=csv_raw)
            else:
                feed = dataclasses.replace(feed, rows=rows)
                render.changes_table(feed, shared.out, titled=not quiet)


runs_app = typer.Typer(
    help="List recent runs with status, duration, counts and error summary; "
    "`exporter runs show ID` shows one run per owner account. "
    "Example: exporter runs --limit 5 --quiet"
)


@runs_app.callback(invoke_without_command=True)
def runs(
    ctx: typer.Context,
    config: shared.ConfigOption = None,
    database_url: shared.DatabaseOption = None,
    limit: Annotated[
        int, typer.Option(min=1, max=shared.MAX_LIMIT, help="How many runs, newest first.")
    ] = 20,
    status: Annotated[
        str | None,
        typer.Option(
            help="Only runs with this status (succeeded, partial, failed, running).",
            show_default=False,
        ),
    ] = None,
    fmt: shared.ReadFormatOption = "table",
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet", "-q", help="Only runs that did not succeed; nothing if none (for cron)."
        ),
    ] = False,
    csv_raw: shared.CsvRawOption = False,
) -> None:
    """List recent runs with status, duration, counts and error summary.

    Example: exporter runs --limit 5; exporter runs show 42 --format json
    """
    from exporter.read import formats, run_render
    from exporter.read import runs as read_runs

    if ctx.invoked_subcommand is not None:
        return
    check_format(fmt, formats.FORMATS)
    with errors(), reader(config, database_url) as engine:
        rows = read_runs.runs(engine, limit=limit, status=status)
    if quiet:
        rows = [row for row in rows if row.status != RunStatus.SUCCEEDED]
        if not rows:
            return
    with errors():
        if fmt == "json":
            formats.write_json([row.as_dict() for row in rows], shared.out.file)
        elif fmt == "csv":
            rendered = (row.as_dict() for row in rows)
            formats.write_csv(rendered, read_runs.RUN_COLUMNS, shared.out.file, raw=csv_raw)
        else:
            run_render.runs_table(rows, shared.out)


@runs_app.command("show")
def runs_show(
    run_id: Annotated[int, typer.Argument(help="The run id (see `exporter runs`).")],
    config: shared.ConfigOption = None,
    database_url: shared.DatabaseOption = None,
    fmt: shared.ReadFormatOption = "table",
    csv_raw: shared.CsvRawOption = False,
) -> None:
    """Show one run with the outcome of every owner account (CSV: one row per owner).

    Example: exporter runs show 42
    """
    from exporter.read import formats, run_render
    from exporter.read import runs as read_runs

    check_format(fmt, formats.FORMATS)
    with errors(), reader(config, database_url) as engine:
        detail = read_runs.run_detail(engine, run_id)
    with errors():
        if fmt == "json":
            formats.write_json(run_render.run_detail_json(detail), shared.out.file)
        elif fmt == "csv":
            rows = (o.as_dict() for o in detail.owners)
            formats.write_csv(rows, read_runs.RUN_OWNER_COLUMNS, shared.out.file, raw=csv_raw)
        else:
            run_render.run_detail_table(detail, shared.out)
