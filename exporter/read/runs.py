"""Runs as the `runs` command shows them: the latest runs, and one run with its owners."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, ClassVar, Final

from sqlalchemy import ColumnElement, Connection, Engine, Select, Table, null, select

from exporter.db.engine import connect
from exporter.db.schema import (
    RUN_STATUSES,
    bound_card_versions,
    bound_lock_versions,
    contact_versions,
    grant_versions,
    owner_account_versions,
    sync_run_owners,
    sync_runs,
)
from exporter.errors import UsageError
from exporter.kinds import ChangeEntity, OwnerStatus
from exporter.read.asof import missing_run, stored_run_id
from exporter.read.inventory import Row, fields_of, fold, id_order, owner_names
from exporter.read.streaming import stream
from exporter.results import Change

__all__ = [
    "RUN_COLUMNS",
    "RUN_OWNER_COLUMNS",
    "RunDetail",
    "RunOwnerRow",
    "RunRow",
    "open_run_changes",
    "run_detail",
    "runs",
]


@dataclass(frozen=True)
class _Tally:
    """What a run, and each owner account's fetch in it, counted: locks seen, changes by kind."""

    locks_seen: int
    created: int
    updated: int
    removed: int
    restored: int
    unchanged: int
    skipped: int

    COLUMNS: ClassVar[tuple[str, ...]] = ()  # the fields in output order (CSV, JSON)

    def as_dict(self) -> dict[str, Any]:
        """The fields by name, in output order."""
        return {name: getattr(self, name) for name in self.COLUMNS}


_TALLY = tuple(f.name for f in fields(_Tally))


@dataclass(frozen=True)
class RunRow(_Tally):
    """One sync run."""

    id: int
    started_at: datetime
    finished_at: datetime | None
    duration_seconds: float | None
    status: str
    trigger: str
    owners_seen: int
    api_requests: int
    error: str | None
    client_id: str | None

    COLUMNS = (
        "id", "started_at", "finished_at", "duration_seconds", "status", "trigger", "owners_seen",
        *_TALLY, "api_requests", "error", "client_id",
    )  # fmt: skip


@dataclass(frozen=True)
class RunOwnerRow(_Tally):
    """How one owner account's fetch went in a run."""

    owner_account_id: str
    owner_name: str | None
    status: str
    fetched_at: datetime | None
    error: str | None

    COLUMNS = ("owner_account_id", "owner_name", "status", *_TALLY, "fetched_at", "error")


# The CSV columns of `exporter runs` and `exporter runs show`.
RUN_COLUMNS: Final = RunRow.COLUMNS
RUN_OWNER_COLUMNS: Final = RunOwnerRow.COLUMNS


@dataclass(frozen=True)
class RunDetail:
    """A run and its per-owner outcomes (failed owners first)."""

    run: RunRow
    owners: list[RunOwnerRow]


def _run_row(row: Row) -> RunRow:
    started, finished = row["started_at"], row["finished_at"]
    duration = (finished - started).total_seconds() if finished is not None else None
    return RunRow(**fields_of(row, RunRow.COLUMNS, duration_seconds=duration))


def runs(engine: Engine, *, limit: int | None = 20, status: str | None = None) -> list[RunRow]:
    """The most recent runs first, optionally only those with `status`."""
    if status is not None and status not in RUN_STATUSES:
        raise UsageError(f"unknown run status {status!r}; use {', '.join(RUN_STATUSES)}")
    with connect(engine) as conn:
        return _select_runs(conn, limit=limit, status=status)


def run_detail(engine: Engine, run_id: int) -> RunDetail:
    """One run with the outcome of every owner account it fetched."""
    if not stored_run_id(run_id):
        raise missing_run(run_id)
    with connect(engine) as conn:
        found = _select_runs(conn, run_id=run_id)
        if not found:
            raise missing_run(run_id)
        names = owner_names(conn)
        outcomes = conn.execute(
            select(sync_run_owners).where(sync_run_owners.c.run_id == run_id)
        ).mappings()
        owners = [
            RunOwnerRow(
                **fields_of(o, RunOwnerRow.COLUMNS, owner_name=names.get(o["owner_account_id"]))
            )
            for o in outcomes
        ]
    owners.sort(
        key=lambda o: (o.status != OwnerStatus.FAILED, fold(o.owner_name), o.owner_account_id)
    )
    return RunDetail(found[0], owners)


def _select_runs(
    conn: Connection,
    *,
    limit: int | None = None,
    status: str | None = None,
    run_id: int | None = None,
) -> list[RunRow]:
    """Runs newest first, narrowed to one status or one run."""
    query = select(sync_runs).order_by(sync_runs.c.id.desc()).limit(limit)
    if status is not None:
        query = query.where(sync_runs.c.status == status)
    if run_id is not None:
        query = query.where(sync_runs.c.id == run_id)
    return [_run_row(row) for row in conn.execute(query).mappings()]


@contextlib.contextmanager
def open_run_changes(engine: Engine, run_id: int) -> Iterator[Iterator[Change]]:
    """Every version a run wrote, as the run reports changes: owners first, then the locks,
    contacts, cards and grants, each by time and id, read from the database as they are
    iterated (inside the block, once)."""

    def changes(table: Table, title: ColumnElement[Any], owner: ColumnElement[Any]) -> Select[Any]:
        return (
            select(
                table.c.id,
                table.c.change_type,
                owner,
                table.c.changed_fields,
                table.c.removal_reason,
                title,
            )
            .where(table.c.run_id == run_id)
            .order_by(table.c.valid_from, id_order(table.c.id, engine.dialect.name))
        )

    owners = owner_account_versions
    streamed_tables = [
        (ChangeEntity.LOCK, bound_lock_versions, bound_lock_versions.c.title),
        (ChangeEntity.CONTACT, contact_versions, contact_versions.c.title),
        (ChangeEntity.CARD, bound_card_versions, bound_card_versions.c.title),
        (ChangeEntity.GRANT, grant_versions, null()),
    ]
    with connect(engine) as conn:
        owner_rows = conn.execute(changes(owners, owners.c.name, owners.c.id)).all()
        # One stream after the other on the connection: each starts once the one before ended.
        yield itertools.chain(
            (_change(ChangeEntity.OWNER, row) for row in owner_rows),
            *(
                _changes_of(conn, entity, changes(table, title, table.c.owner_account_id))
                for entity, table, title in streamed_tables
            ),
        )


def _changes_of(conn: Connection, entity: str, query: Select[Any]) -> Iterator[Change]:
    for row in stream(conn, query):
        yield _change(entity, row)


def _change(entity: str, row: Sequence[Any]) -> Change:
    entity_id, change_type, owner_id, fields, reason, title = row
    return Change(  # entity as plain str, see ChangeRow.entity
        str(entity), entity_id, change_type, owner_id, tuple(fields or ()) or None, reason, title
    )
