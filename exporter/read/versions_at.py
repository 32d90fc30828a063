"""The locks at an instant (`exporter locks --as-of`): the version valid then, with the lock id
hex its lock has now for the same physical lock.

`bound_locks` keeps the customer-facing hex id (`lock_id_hex`) for a lock's current physical
lock only, so a version shows it only while its physical_lock_id is the current one (both NULL
counts as the same). Joining each of a million version rows to bound_locks by id cost more than
reading the versions: on SQLite 3.1 s of 5.6 (a random primary-key search and row read per
version), on PostgreSQL hash joins of both tables and then a sort of all million rows (spilled
to disk) before the first row was sent. Both now take the hex from the owner's own current
locks (one index range, in the same order as the versions) and look up by id only the locks
that have changed owner since: SQLite in Python (`with_current_hex`), PostgreSQL in the query
(`postgresql_versions`), one owner at a time so that its rows stream in order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from itertools import compress
from operator import itemgetter
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    FromClause,
    Select,
    and_,
    case,
    exists,
    null,
    or_,
    select,
    true,
)

from exporter.db.inlists import chunks
from exporter.db.schema import bound_lock_versions, bound_locks
from exporter.kinds import ChangeType
from exporter.read.asof import valid_at
from exporter.read.streaming import Columns, streamed, streamed_null

__all__ = ["filters", "postgresql_versions", "same_device", "versions_columns", "with_current_hex"]


def same_device(version: ColumnElement[Any], current: ColumnElement[Any]) -> ColumnElement[bool]:
    """Whether two physical lock ids name the same device (both NULL counts as the same)."""
    return (version == current) | (version.is_(None) & current.is_(None))


def filters(lock: FromClause, at: datetime, include_removed: bool) -> list[ColumnElement[bool]]:
    found = [valid_at(lock, at)]
    if not include_removed:
        found.append(lock.c.change_type != ChangeType.REMOVED)
    return found


def versions_columns(
    lock: FromClause, fields: Sequence[str], hex_id: ColumnElement[Any]
) -> dict[str, ColumnElement[Any]]:
    """The columns `fields` of the versions `lock`, `lock_id_hex` being `hex_id`."""
    return {
        **{name: streamed(lock.c[name]) for name in fields if name in lock.c},
        "lock_id_hex": hex_id,
        "removed_at": streamed(case((lock.c.change_type == ChangeType.REMOVED, lock.c.valid_from))),
    }


def versions_query(
    fields: Sequence[str], owner: ColumnElement[Any], at: datetime, include_removed: bool
) -> Select[Any]:
    """One owner's versions valid at `at` as `fields` but the first two (the owner's id and
    name, which the caller has), unordered, the hex left NULL: `with_current_hex` fills it in
    (SQLite)."""
    lock = bound_lock_versions
    columns = versions_columns(lock, fields, null())
    if not include_removed:
        # Only versions not `removed` are read: removed_at is NULL on every row.
        columns["removed_at"] = streamed_null(columns["removed_at"])
    return select(*(columns[name] for name in fields[2:])).where(
        lock.c.owner_account_id == owner, *filters(lock, at, include_removed)
    )


def postgresql_versions(
    fields: Sequence[str],
    given: FromClause,
    at: datetime,
    include_removed: bool,
) -> tuple[Select[Any], FromClause]:
    """The versions valid at `at` of the owners `given` (id, name), as `fields`, unordered, and
    the derived table they are read from (to order by).

    A LATERAL subquery per owner, kept from being merged into the outer query by its OFFSET:
    the owner's versions (by its owner index) hash-joined to the owner's current locks (by
    theirs); only a lock held by another owner now is looked up by id. The rows come out owner
    by owner, so an incremental sort orders each owner's few hundred and they stream.
    """
    lock, current, elsewhere = bound_lock_versions, bound_locks, bound_locks.alias("elsewhere")
    inner = (
        select(
            lock,
            current.c.id.label("current_id"),
            current.c.physical_lock_id.label("current_physical_lock_id"),
            current.c.lock_id_hex.label("current_lock_id_hex"),
        )
        .select_from(
            lock.outerjoin(
                current,
                and_(current.c.id == lock.c.id, current.c.owner_account_id == given.c.id),
            )
        )
        .where(lock.c.owner_account_id == given.c.id, *filters(lock, at, include_removed))
        .offset(0)
        .lateral("held")
    )
    same_there = same_device(inner.c.physical_lock_id, elsewhere.c.physical_lock_id)
    moved = (
        select(case((same_there, elsewhere.c.lock_id_hex)))
        .where(elsewhere.c.id == inner.c.id)
        .scalar_subquery()
    )
    hex_id = case(
        (
            inner.c.current_id.is_not(None),
            case(
                (
                    same_device(inner.c.physical_lock_id, inner.c.current_physical_lock_id),
                    inner.c.current_lock_id_hex,
                )
            ),
        ),
        else_=moved,
    )
    columns = versions_columns(inner, fields, hex_id)
    query = (
        select(inner.c.owner_account_id, given.c.name.label("owner_name"))
        .add_columns(*(columns[name] for name in fields[2:]))
        .select_from(given.join(inner, true()))
        # As the inner join did: a version of a lock bound_locks does not hold is not shown.
        .where(
            or_(
                inner.c.current_id.is_not(None),
                exists().where(elsewhere.c.id == inner.c.id),
            )
        )
    )
    return query, inner


def with_current_hex(
    conn: Connection, fields: Sequence[str], batches: Iterable[Columns]
) -> Iterator[Columns]:
    """`batches` of `versions_query` rows (columns `fields`) with each version's lock id hex,
    as the join gave it.

    A batch's rows are one owner's (the query runs per owner): its current locks are read once,
    by the owner index, into a dict; a lock that has changed owner since is looked up by id.
    A version whose lock bound_locks does not hold is left out, as the join left it out.
    """
    lock_id, hex_at, physical_at = (fields.index(name) for name in _HELD)
    owner: object = None
    current: dict[str, tuple[str | None, ...]] = {}
    for columns in batches:
        ids = columns[lock_id]
        if columns[0][0] != owner:
            owner = columns[0][0]
            current = _held(conn, bound_locks.c.owner_account_id == owner)
        found: list[tuple[str | None, ...] | None] = list(map(current.get, ids))
        if None in found:
            missing = sorted({i for i, lock in zip(ids, found, strict=True) if lock is None})
            for part in chunks(missing):
                current |= _held(conn, bound_locks.c.id.in_(part))
            found = list(map(current.get, ids))
        if None in found:
            keep = [lock is not None for lock in found]
            columns = [list(compress(column, keep)) for column in columns]
            found = list(compress(found, keep))
        held = cast(list[tuple[str | None, ...]], found)
        columns[hex_at] = _hexes(held, columns[physical_at])
        yield columns


def _hexes(held: list[tuple[str | None, ...]], physical: Sequence[str | None]) -> list[Any]:
    """The hex of each version: its lock's current hex (`held`: its row from `_held`) if the
    version's physical lock id is the current one, else NULL."""
    devices = list(map(itemgetter(1), held))
    if devices == list(physical):
        # The same devices as now (most versions): no comparison a row in Python.
        return list(map(itemgetter(2), held))
    return [
        lock[2] if device == lock[1] else None for lock, device in zip(held, physical, strict=True)
    ]


_HELD = ("id", "lock_id_hex", "physical_lock_id")


def _held(conn: Connection, which: ColumnElement[bool]) -> dict[str, tuple[str | None, ...]]:
    """The id, current physical lock id and hex of the locks `which` (in that order), by id."""
    current = bound_locks
    query = select(current.c.id, current.c.physical_lock_id, current.c.lock_id_hex).where(which)
    with conn.execute(query) as result:
        # sqlite3's rows as they are (text needs no processing): no Row per lock, 0.5 s a million.
        rows = result.cursor.fetchall()
        return dict(zip(map(itemgetter(0), rows), rows, strict=True))
