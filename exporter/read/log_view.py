"""`exporter log`: recent log entries read from the database, newest first, streamed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, NamedTuple

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, Select, select

from exporter.db.engine import connect
from exporter.db.schema import bound_locks, log_entries, owner_accounts
from exporter.errors import UsageError
from exporter.read import formats, render
from exporter.read.changelog import find_locks
from exporter.read.inventory import id_order, resolve_owner
from exporter.read.streaming import stream, streamed


class LogRow(NamedTuple):
    """One log entry as `exporter log` shows it (the CSV columns, in order)."""

    lock_timestamp: datetime | None
    received_at: datetime
    owner_account_id: str
    owner_name: str | None
    bound_lock_id: str | None
    lock_id_hex: str | None
    title: str | None
    log_type: str | None
    command: str | None
    contact_id: str | None
    bound_card_id: str | None
    entry_no: int | None
    id: str

    def as_dict(self) -> dict[str, Any]:
        """The row by column name (JSON output)."""
        return self._asdict()


@dataclass(frozen=True)
class LogFeed:
    """The entries asked for, newest first (an iterator: read it once, inside the block)."""

    rows: Iterator[LogRow]
    limit: int | None


@contextlib.contextmanager
def open_log(
    engine: Engine,
    *,
    lock: str | None = None,
    owner: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = 100,
) -> Iterator[LogFeed]:
    """The stored log entries matching the options, newest event (lockTimestamp) first.

    `lock` is what `exporter history` takes (a bound lock id or its start, a lock id such as
    12-34-BF-FB, a physical lock id); `since`/`until` bound lockTimestamp; `limit` None is all.
    """
    if since is not None and until is not None and since >= until:
        raise UsageError(
            f"--since ({since.isoformat()}) is not before --until ({until.isoformat()}); swap them"
        )
    with connect(engine) as conn:
        lock_ids = find_locks(conn, lock) if lock is not None else None
        owner_ids = resolve_owner(conn, owner) if owner is not None else None
        query = _query(conn.dialect.name, lock_ids, owner_ids, since, until)
        if limit is not None:
            query = query.limit(limit)
        yield LogFeed(map(LogRow._make, stream(conn, query)), limit)


def _query(
    dialect: str,
    lock_ids: list[str] | None,
    owner_ids: set[str] | None,
    since: datetime | None,
    until: datetime | None,
) -> Select[Any]:
    e, lock, owner = log_entries, bound_locks, owner_accounts
    columns = {
        **{name: e.c[name] for name in LogRow._fields if name in e.c},
        "owner_name": owner.c.name,
        "lock_id_hex": lock.c.lock_id_hex,
        "title": lock.c.title,
    }
    query = select(*(streamed(columns[name]) for name in LogRow._fields)).select_from(
        e.outerjoin(lock, lock.c.id == e.c.bound_lock_id).outerjoin(
            owner, owner.c.id == e.c.owner_account_id
        )
    )
    if lock_ids is not None:
        query = query.where(e.c.bound_lock_id.in_(lock_ids))
    if owner_ids is not None:
        query = query.where(e.c.owner_account_id.in_(sorted(owner_ids)))
    if since is not None:
        query = query.where(e.c.lock_timestamp >= since)
    if until is not None:
        query = query.where(e.c.lock_timestamp < until)
    # Newest event first; an entry without a lockTimestamp last (NULLS LAST is not portable).
    return query.order_by(
        e.c.lock_timestamp.is_(None),
        e.c.lock_timestamp.desc(),
        e.c.received_at.desc(),
        id_order(e.c.id, dialect),
    )


def log_csv(rows: Iterable[LogRow], out: IO[str], *, raw: bool = False) -> None:
    """The entries as CSV, one line each (columns as LogRow)."""
    formats.write_csv_tuples(rows, LogRow._fields, out, raw=raw)


def log_json(rows: Iterable[LogRow], out: IO[str]) -> None:
    """The entries as a JSON array of objects, written while they are read."""
    formats.write_json(map(LogRow.as_dict, rows), out)


def log_table(feed: LogFeed, console: Console) -> None:
    """One line per entry; past render.TABLE_LIMIT the rest is counted."""
    table = Table(title_justify="left")
    for column in ("When (UTC)", "Received (UTC)", "Lock", "Owner account", "Event", "By"):
        table.add_column(column, overflow="fold", no_wrap=column.endswith("(UTC)"))
    total = 0
    for row in feed.rows:
        total += 1
        if total > render.TABLE_LIMIT:
            continue
        lock = row.title or row.lock_id_hex or row.bound_lock_id or ""
        event = f"{row.log_type or '?'} {row.command}" if row.command else row.log_type or ""
        by = f"contact {row.contact_id}" if row.contact_id else ""
        if row.bound_card_id:
            by = f"{by}, card {row.bound_card_id}" if by else f"card {row.bound_card_id}"
        table.add_row(
            formats.cell(row.lock_timestamp),
            formats.cell(row.received_at),
            lock,
            row.owner_name or row.owner_account_id,
            event,
            by,
        )
    limited = feed.limit is not None and total == feed.limit
    table.title = f"{total:,} most recent log entries" if limited else _count(total)
    console.print(table)
    if total > render.TABLE_LIMIT:
        console.print(
            f"{total - render.TABLE_LIMIT:,} more entries not shown (a table stops at "
            f"{render.TABLE_LIMIT:,}): use --format csv or json, or narrow with --lock or --since."
        )


def _count(n: int) -> str:
    return "1 log entry" if n == 1 else f"{n:,} log entries"
