"""Read-side queries over the version tables: the change feed, lock histories, bindings.

The previous version of a version is the one of the same entity just before it; a change's
fields are the tracked attributes that differ from it (exporter.read.change_rows). The BI views
`bound_lock_change_feed` and `lock_binding_history` say the same in SQL (the tests hold both to
the same answers).
"""

from __future__ import annotations

import contextlib
import re
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from heapq import merge
from typing import Any, TypedDict, Unpack

from sqlalchemy import ColumnElement, Connection, Engine, Table, func, select, true

from exporter.db.engine import connect
from exporter.db.inlists import chunks
from exporter.db.schema import (
    LOCK_TRACKED,
    OWNER_TRACKED,
    bound_lock_versions,
    bound_locks,
    owner_account_versions,
    sync_runs,
)
from exporter.errors import UsageError
from exporter.kinds import BindingEnd, ChangeEntity, ChangeType
from exporter.read.asof import missing_run, stored_run_id
from exporter.read.change_rows import (
    ACCESS_HISTORIES,
    ChangeRow,
    FieldChange,
    access_changes,
    change_row,
    with_previous,
)
from exporter.read.inventory import (
    LockRow,
    Row,
    hex_of,
    id_order,
    lock_row,
    owner_names,
    resolve_owner,
)
from exporter.read.streaming import stream

__all__ = [
    "CHANGE_KINDS",
    "ENTITIES",
    "ChangeFeed",
    "ChangeFilters",
    "ChangeRow",
    "FieldChange",
    "changes",
    "open_changes",
]

# Compared per row: a module constant, not an Enum attribute lookup (four times slower).
_REMOVED = ChangeType.REMOVED

CHANGE_KINDS = tuple(ChangeType)
# Every entity with history, in the order changes of the same instant are listed.
ENTITIES = (ChangeEntity.OWNER, ChangeEntity.LOCK, *ACCESS_HISTORIES)
_RANK = {entity: rank for rank, entity in enumerate(ENTITIES)}
_HEX_RE = re.compile(r"[0-9A-F]{2}(?:-?[0-9A-F]{2})*")


@dataclass(frozen=True)
class ChangeFeed:
    """Changes in time order, and the current names of the owner accounts they mention.

    `rows` is a list, or (inside `open_changes`) read from the database while it is iterated.
    """

    rows: Iterable[ChangeRow]
    owner_names: dict[str, str | None] = field(default_factory=dict)


class ChangeFilters(TypedDict, total=False):
    """The filters `changes()` passes on to `open_changes()` unchanged (defaults there)."""

    since: datetime | None
    until: datetime | None
    run_id: int | None
    owner: str | None
    kinds: Collection[str]
    entities: Collection[str]


def changes(engine: Engine, **filters: Unpack[ChangeFilters]) -> ChangeFeed:
    """Changes observed in [since, until), optionally of one run, owner, kind or entity.

    `entities` are ENTITIES' names (owner, lock, contact, card, grant). A change matches `owner`
    when the element belongs to that owner before or after it.
    """
    with open_changes(engine, **filters) as feed:
        return ChangeFeed(list(feed.rows), feed.owner_names)


@contextlib.contextmanager
def open_changes(
    engine: Engine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    run_id: int | None = None,
    owner: str | None = None,
    kinds: Collection[str] = (),
    entities: Collection[str] = ENTITIES,
) -> Iterator[ChangeFeed]:
    """`changes()` with the changes read from the database as they are iterated, in order.

    Owner changes are few and read first; the changes of locks and of each access entity come
    sorted from the database, each on a connection of its own (a streamed read holds its
    connection), and are merged in, so a feed of a million changes passes through in constant
    memory. Iterate the rows inside the block, once.
    """
    unknown = set(kinds) - set(CHANGE_KINDS)
    if unknown:
        raise UsageError(
            f"unknown change kind {sorted(unknown)[0]!r}; use {', '.join(CHANGE_KINDS)}"
        )
    strange = set(entities) - set(ENTITIES)
    if strange:
        raise UsageError(f"unknown entity {sorted(strange)[0]!r}; use {', '.join(ENTITIES)}")
    if since is not None and until is not None and since >= until:
        raise UsageError(
            f"--since ({since.isoformat()}) is not before --until ({until.isoformat()}); swap them"
        )
    if run_id is not None and not stored_run_id(run_id):
        raise missing_run(run_id)
    with connect(engine) as conn, contextlib.ExitStack() as more:
        if (
            run_id is not None
            and conn.execute(select(sync_runs.c.id).where(sync_runs.c.id == run_id)).first() is None
        ):
            raise missing_run(run_id)
        owner_ids = resolve_owner(conn, owner) if owner is not None else None
        names = owner_names(conn)

        def matching(table: Table) -> ColumnElement[bool]:
            condition: ColumnElement[bool] = true()
            if since is not None:
                condition &= table.c.valid_from >= since
            if until is not None:
                condition &= table.c.valid_from < until
            if run_id is not None:
                condition &= table.c.run_id == run_id
            if kinds:
                condition &= table.c.change_type.in_(sorted(kinds))
            return condition

        owner_rows: list[ChangeRow] = []
        if ChangeEntity.OWNER in entities:
            owner_rows = list(_owner_changes(conn, matching(owner_account_versions), names))
            owner_rows.sort(key=lambda r: (r.changed_at, r.id))
        streams: list[Iterable[ChangeRow]] = [owner_rows]
        if ChangeEntity.LOCK in entities:
            streams.append(_lock_changes(conn, matching(bound_lock_versions), names))
        for entity, history in ACCESS_HISTORIES.items():
            if entity in entities:
                reader = more.enter_context(connect(engine)) if len(streams) > 1 else conn
                condition = matching(history.versions)
                streams.append(access_changes(reader, entity, condition, names))
        rows: Iterator[ChangeRow] = merge(
            *streams, key=lambda r: (r.changed_at, _RANK[r.entity], r.id)
        )
        if owner_ids is not None:
            rows = (r for r in rows if _concerns(r, owner_ids))
        yield ChangeFeed(rows, names)


def _concerns(row: ChangeRow, owner_ids: set[str]) -> bool:
    if row.owner_account_id in owner_ids:
        return True
    return any(c.field == "owner_account_id" and c.old in owner_ids for c in row.changes)


def _lock_changes(
    conn: Connection, condition: ColumnElement[bool], names: Mapping[str, str | None]
) -> Iterator[ChangeRow]:
    """The lock versions matching `condition` as changes, by time and lock id, streamed."""
    v = bound_lock_versions
    query = (
        with_previous(v, LOCK_TRACKED)
        .add_columns(
            bound_locks.c.physical_lock_id.label("current_physical_lock_id"),
            bound_locks.c.lock_id_hex,
        )
        .join(bound_locks, bound_locks.c.id == v.c.id)
        .where(condition)
        .order_by(v.c.valid_from, id_order(v.c.id, conn.dialect.name))
    )
    names_of = query.selected_columns.keys()
    for values in stream(conn, query):
        row = dict(zip(names_of, values, strict=True))
        yield change_row(
            ChangeEntity.LOCK,
            row,
            LOCK_TRACKED,
            row["owner_account_id"],
            names,
            title=row["title"],
            lock_id_hex=hex_of(row),
            lock_model_name=row["lock_model_name"],
        )


def _owner_changes(
    conn: Connection, condition: ColumnElement[bool], names: Mapping[str, str | None]
) -> Iterator[ChangeRow]:
    """The owner versions matching `condition` as changes."""
    query = with_previous(owner_account_versions, OWNER_TRACKED).where(condition)
    for row in conn.execute(query).mappings():
        yield change_row(
            ChangeEntity.OWNER, row, OWNER_TRACKED, row["id"], names, title=row["name"]
        )


@dataclass(frozen=True)
class Binding:
    """A period in which one owner account held a physical lock under one bound lock id."""

    physical_lock_id: str | None
    lock_id_hex: str | None
    bound_lock_id: str
    owner_account_id: str
    owner_name: str | None
    held_from: datetime
    held_to: datetime | None
    end_reason: str | None
    bind_date: datetime | None
    title: str | None

    def as_dict(self) -> dict[str, Any]:
        """The fields by name."""
        return asdict(self)


def bindings(engine: Engine, bound_lock_ids: Collection[str] | None = None) -> list[Binding]:
    """Who held which physical lock when (all locks, or the given bound locks), by start time."""
    with connect(engine) as conn:
        return _bindings(conn, bound_lock_ids)


def _bindings(conn: Connection, bound_lock_ids: Collection[str] | None) -> list[Binding]:
    v = bound_lock_versions
    query = (
        select(
            v,
            bound_locks.c.physical_lock_id.label("current_physical_lock_id"),
            bound_locks.c.lock_id_hex,
        )
        .join(bound_locks, bound_locks.c.id == v.c.id)
        .order_by(v.c.id, v.c.valid_from)
    )
    queries = (
        [query]
        if bound_lock_ids is None
        else [query.where(v.c.id.in_(chunk)) for chunk in chunks(sorted(bound_lock_ids))]
    )
    names = owner_names(conn)
    chains: dict[str, list[Row]] = defaultdict(list)
    for q in queries:
        for found in conn.execute(q).mappings():
            chains[found["id"]].append(found)
    result = []
    for chain in chains.values():
        start: Row | None = None
        ends: list[Row | None] = [*chain, None]
        for row in ends:
            if start is not None and (row is None or not _same_holding(start, row)):
                end_reason = None
                if row is not None:
                    end_reason = (
                        row["removal_reason"]
                        if row["change_type"] == _REMOVED
                        else BindingEnd.MOVED
                        if row["owner_account_id"] != start["owner_account_id"]
                        else BindingEnd.PHYSICAL_LOCK_CHANGED
                    )
                result.append(
                    Binding(
                        physical_lock_id=start["physical_lock_id"],
                        lock_id_hex=hex_of(start),
                        bound_lock_id=start["id"],
                        owner_account_id=start["owner_account_id"],
                        owner_name=names.get(start["owner_account_id"]),
                        held_from=start["valid_from"],
                        held_to=row["valid_from"] if row is not None else None,
                        end_reason=end_reason,
                        bind_date=start["bind_date"],
                        title=start["title"],
                    )
                )
                start = None
            if start is None and row is not None and row["change_type"] != _REMOVED:
                start = row
    result.sort(key=lambda b: (b.held_from, b.bound_lock_id))
    return result


def _same_holding(start: Row, row: Row) -> bool:
    return bool(
        row["change_type"] != _REMOVED
        and row["owner_account_id"] == start["owner_account_id"]
        and row["physical_lock_id"] == start["physical_lock_id"]
    )


@dataclass(frozen=True)
class LockHistory:
    """Every bound lock that matched, who held the device when, and every version."""

    query: str
    locks: list[LockRow]
    bindings: list[Binding]
    versions: list[ChangeRow]
    owner_names: dict[str, str | None]


def lock_history(engine: Engine, key: str) -> LockHistory:
    """The history of a bound lock id, or of every bound lock of a physical lock.

    `key` is a bound lock id, a customer-facing lock id (`12-34-BF-FB`, any case, dashes
    optional) or a physical lock id as the API gives it (Base64).
    """
    with connect(engine) as conn:
        ids = find_locks(conn, key)
        names = owner_names(conn)
        locks = [
            lock_row(r, names.get(r["owner_account_id"]), r["lock_id_hex"])
            for chunk in chunks(ids)
            for r in conn.execute(select(bound_locks).where(bound_locks.c.id.in_(chunk)))
            .mappings()
            .all()
        ]
        versions = [
            row
            for chunk in chunks(ids)
            for row in _lock_changes(conn, bound_lock_versions.c.id.in_(chunk), names)
        ]
        holdings = _bindings(conn, ids)
    locks.sort(key=lambda r: (r.removed_at is None, r.removed_at or r.bind_date, r.id))
    versions.sort(key=lambda r: (r.changed_at, r.id))
    return LockHistory(key, locks, holdings, versions, names)


def find_locks(conn: Connection, key: str) -> list[str]:
    """The bound lock ids `key` names (see `lock_history`), or the one id it is the start of;
    UsageError if none."""
    wanted = utf8_argument(key)
    found = conn.execute(select(bound_locks.c.id).where(bound_locks.c.id == wanted)).scalars()
    ids = list(found)
    if not ids and _HEX_RE.fullmatch(wanted.upper()):
        digits = wanted.upper().replace("-", "")
        hex_id = "-".join(digits[i : i + 2] for i in range(0, len(digits), 2))
        ids = list(
            conn.execute(select(bound_locks.c.id).where(bound_locks.c.lock_id_hex == hex_id))
            .scalars()
            .all()
        )
    if not ids:
        ids = list(
            conn.execute(select(bound_locks.c.id).where(bound_locks.c.physical_lock_id == wanted))
            .scalars()
            .all()
        )
    if not ids and wanted:
        ids = ids_starting_with(conn, wanted)
    if not ids:
        raise UsageError(
            f"no bound lock has the id, lock id or physical lock id {key!r}; find it with "
            "`exporter locks --include-removed --search TEXT`"
        )
    return ids


def utf8_argument(text: str) -> str:
    """`text`, an argument looked up in the database, stripped; UsageError if it is not UTF-8.

    Bytes of another encoding (a Latin-1 terminal) reach Python as lone surrogates, which no
    database driver can encode: they failed with a traceback.
    """
    try:
        text.encode()
    except UnicodeEncodeError:
        raise UsageError(
            f"{text!r} is not UTF-8 text; type it in a UTF-8 terminal (e.g. LANG=C.UTF-8)"
        ) from None
    return text.strip()


def ids_starting_with(
    conn: Connection, prefix: str, table: Table = bound_locks, what: str = "bound lock"
) -> list[str]:
    """The one id of `table` that starts with `prefix` (as `git` takes short hashes), if any.

    Ids compare case-sensitively, but a person typing the start of a GUID may not: without an
    exact match, a start in another case is taken too.
    """
    low = prefix.lower()
    query = select(table.c.id).where(func.lower(table.c.id).startswith(low, autoescape=True))
    candidates = sorted(conn.execute(query).scalars())
    ids = [i for i in candidates if i.startswith(prefix)] or candidates
    if len(ids) > 1:
        shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
        raise UsageError(
            f"{prefix!r} is the start of more than one {what} id ({shown}); give more of it"
        )
    return ids
