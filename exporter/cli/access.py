"""The read commands over access and log entries: `access`, `log`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from exporter.cli import shared
from exporter.cli.shared import check_format, errors, reader
from exporter.errors import UsageError

if TYPE_CHECKING:
    from exporter.config.settings import Settings


def access(
    lock: Annotated[
        str | None,
        typer.Argument(
            help="A bound lock id, a lock id such as 12-34-BF-FB, a physical lock id, or the "
            "start of a bound lock id (as for `exporter history`).",
            show_default=False,
        ),
    ] = None,
    contact: Annotated[
        str | None,
        typer.Option(
            "--contact",
            help="Instead of a lock: what this contact can open (its id, the start of its id, "
            "or its identifier as stored).",
            show_default=False,
        ),
    ] = None,
    as_of: shared.AsOfOption = None,
    config: shared.ConfigOption = None,
    database_url: shared.DatabaseOption = None,
    fmt: shared.ReadFormatOption = "table",
    csv_raw: shared.CsvRawOption = False,
) -> None:
    """Show who can open a lock, or with --contact what a person can open: the grants in force
    (state Ok, within their validity), now or at --as-of. Needs grants in \\[tapkey] entities.

    Example: exporter access 12-34-BF-FB --as-of 2026-03-01T00:00:00Z
    """
    from exporter.read import access as access_report
    from exporter.read import access_render, asof, formats

    check_format(fmt, formats.FORMATS)

    def one_subject() -> None:
        if (lock is None) == (contact is None):
            raise UsageError("give either a LOCK or --contact ID (one of the two)")

    with errors():
        loaded = shared.settings(config, database_url=database_url)
        with shared.database_reader(loaded, usage=one_subject) as engine:
            now = datetime.now(UTC)
            when = asof.resolve_as_of(engine, as_of, now=now) if as_of else None
            if lock is not None:
                answer = access_report.who_can_open(engine, lock, now=now, as_of=when)
            else:
                assert contact is not None
                stored = _stored_identifier(loaded)
                answer = access_report.what_can_open(
                    engine, contact, now=now, as_of=when, stored_identifier=stored
                )
        if fmt == "json":
            formats.write_json(access_render.access_json(answer), shared.out.file)
        elif fmt == "csv":
            access_render.access_csv(answer, shared.out.file, raw=csv_raw)
        else:
            access_render.access_table(answer, shared.out)


def log_command(
    config: shared.ConfigOption = None,
    database_url: shared.DatabaseOption = None,
    lock: Annotated[
        str | None,
        typer.Option(
            help="Only this lock: a bound lock id or its start, a lock id such as 12-34-BF-FB, "
            "or a physical lock id.",
            show_default=False,
        ),
    ] = None,
    owner: shared.OwnerOption = None,
    since: shared.SinceOption = None,
    until: shared.UntilOption = None,
    limit: Annotated[
        int,
        typer.Option(
            min=0, max=shared.MAX_LIMIT, help="How many entries, newest first (0: all of them)."
        ),
    ] = 100,
    fmt: shared.ReadFormatOption = "table",
    csv_raw: shared.CsvRawOption = False,
) -> None:
    """Show stored log entries (openings and other lock events), newest event first;
    --since and --until compare the time of the event (lockTimestamp).

    Needs \\[tapkey] entities with log_entries. Example: exporter log --lock 12-34-BF-FB --since 7d
    """
    from exporter.read import asof, formats, log_view

    check_format(fmt, formats.FORMATS)
    now = datetime.now(UTC)
    with errors(), reader(config, database_url) as engine:
        start, end = asof.parse_period(since, until, now=now)
        with log_view.open_log(
            engine, lock=lock, owner=owner, since=start, until=end, limit=limit or None
        ) as feed:
            if fmt == "json":
                log_view.log_json(feed.rows, shared.out.file)
            elif fmt == "csv":
                log_view.log_csv(feed.rows, shared.out.file, raw=csv_raw)
            else:
                log_view.log_table(feed, shared.out)


def _stored_identifier(loaded: Settings) -> Callable[[str], str | None]:
    """How [privacy] stores a contact's identifier: as it is, its keyed hash, or not at all."""
    from exporter.tapkey.access import Privacy

    privacy = loaded.privacy
    return Privacy(privacy.contact_identifier, privacy.key()).identifier
