"""Read-side queries: the inventory now or at any past instant, and the changes a run wrote.

Everything is computed from the version tables with the rules of the schema: a version is valid
on [valid_from, valid_to); a lock is present at T when its version valid at T is not `removed`.
Daily counts are in `exporter.read.daily`, changes and lock histories in `exporter.read.changelog`,
runs in `exporter.read.runs`, instants (`--as-of`) in `exporter.read.asof`, batched reading in
`exporter.read.streaming`. Nothing here reads the clock: callers pass `now`.
"""

from __future__ import annotations

import contextlib
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, TypedDict, Unpack

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Connection,
    Engine,
    FromClause,
    LargeBinary,
    RowMapping,
    Select,
    String,
    Text,
    bindparam,
    case,
    cast,
    column,
    func,
    literal_column,
    select,
)

from exporter.db.engine import connect
from exporter.db.schema import (
    bound_lock_versions,
    bound_locks,
    owner_account_versions,
    owner_accounts,
)
from exporter.errors import UsageError
from exporter.kinds import ChangeType
from exporter.read import streaming, versions_at
from exporter.read.asof import AsOf, valid_at
from exporter.read.streaming import Columns, sqlite_text_order, stream, stream_columns, streamed

# Compared per row: a module constant, not an Enum attribute lookup (four times slower).
_REMOVED = ChangeType.REMOVED

# A result row (RowMapping) or a plain dict of column values.
Row = Mapping[Any, Any]

# -- inventory ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OwnerRow:
    """An owner account as shown by `exporter locks`."""

    id: str
    name: str | None
    active: bool | None
    removed_at: datetime | None = None


class LockRow(NamedTuple):
    """A bound lock in an inventory; `removed_at` is set only with include_removed.

    A tuple in the order of the CSV columns: an inventory streams a million of them.
    """

    owner_account_id: str
    owner_name: str | None
    id: str
    title: str | None
    description: str | None
    lock_model_name: str | None
    bind_date: datetime | None
    lock_id_hex: str | None
    physical_lock_id: str | None
    lock_type_id: str | None
    manufacturer_id: int | None
    active: bool | None
    unbind_date: datetime | None
    target_type: str | None
    removed_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        """The fields by name."""
        return self._asdict()


@dataclass(frozen=True)
class Inventory:
    """An inventory: the owners shown (also those without locks) and the locks, both in order.

    `locks` is a list, or (inside `open_inventory`) read from the database while it is iterated.
    `columns`, set by `open_inventory` when no filter applies, reads the same locks in batches,
    each batch as its columns in LockRow order (the CSV writer's input; times may come as their
    ISO text, see `stream_columns`): iterate one or the other.
    """

    as_of: AsOf | None
    owners: list[OwnerRow]
    locks: Iterable[LockRow]
    columns: Iterable[Columns] | None = None


class InventoryFilters(TypedDict, total=False):
    """The filters `inventory()` passes on to `open_inventory()` unchanged (defaults there)."""

    as_of: AsOf | None
    owner: str | None
    model: str | None
    search: str | None
    include_removed: bool


def inventory(engine: Engine, **filters: Unpack[InventoryFilters]) -> Inventory:
    """The locks present now, or at `as_of` exactly as the version tables recorded them.

    `owner` matches an owner account id or (any case) a current or past name; `model` a lock
    model name or lock type id (any case); `search` is a case-insensitive substring of the
    title, description, ids or model. Owners without locks are listed unless model/search filter.
    """
    with open_inventory(engine, **filters) as found:
        return Inventory(found.as_of, found.owners, list(found.locks))


@contextlib.contextmanager
def open_inventory(
    engine: Engine,
    *,
    as_of: AsOf | None = None,
    owner: str | None = None,
    model: str | None = None,
    search: str | None = None,
    include_removed: bool = False,
    with_owners: bool = True,
) -> Iterator[Inventory]:
    """`inventory()` with the locks read from the database as they are iterated, in order.

    Locks are sorted by owner name, owner id, title and lock id (`fold` order): the owners
    here, each owner's locks by the database, so that a million locks pass through in
    constant memory. Iterate them inside the
    block, once. Without `with_owners` the owner list is left empty (CSV has no use for it);
    with model/search (or include_removed) finding the owners of the shown locks reads the locks
    once more first.
    """
    with connect(engine) as conn:
        owner_ids = resolve_owner(conn, owner) if owner is not None else None
        at = as_of.at if as_of is not None else None
        query, holders = _lock_reads(conn, at, owner_ids, include_removed)
        reading = _reading(conn.dialect.name)
        filtered = model is not None or search is not None

        # As of an instant on SQLite the hex comes from each owner's current locks (in Python).
        hexes_later = at is not None and conn.dialect.name == "sqlite"

        def batches(as_text: bool) -> Iterator[Columns]:
            found = stream_columns(conn, query, params=holders, times_as_text=as_text, **reading)
            if not hexes_later:
                return found
            return versions_at.with_current_hex(conn, LockRow._fields, found)

        def locks() -> Iterator[LockRow]:
            found: Iterable[Sequence[Any]] = stream(conn, query, holders, **reading)
            if hexes_later:
                found = (row for columns in batches(False) for row in zip(*columns, strict=True))
            rows = map(LockRow._make, found)
            if not filtered:
                return rows
            return (lock for lock in rows if _matches(lock, model, search))

        owners: list[OwnerRow] = []
        if with_owners:
            owners = _owners(conn, at, owner_ids, include_removed)
            if filtered or include_removed:
                owners = listed_owners(owners, locks(), only_those_with_locks=filtered)
        # Both are read lazily: the query runs for the one that is iterated.
        columns = None if filtered else batches(True)
        yield Inventory(as_of, owners, locks(), columns)


def listed_owners(
    owners: list[OwnerRow], locks: Iterable[LockRow], *, only_those_with_locks: bool
) -> list[OwnerRow]:
    """The owners an inventory lists: `owners` (or only those holding one of `locks`), plus the
    owner of any lock missing from them (gone, with include_removed), in `fold` order."""
    holding: dict[str, str | None] = {}
    for lock in locks:
        holding.setdefault(lock.owner_account_id, lock.owner_name)
    listed = [o for o in owners if o.id in holding] if only_those_with_locks else list(owners)
    known = {o.id for o in listed}
    listed += [OwnerRow(i, name, None) for i, name in holding.items() if i not in known]
    listed.sort(key=lambda o: (fold(o.name), o.id))
    return listed


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def fold(text: str | None) -> tuple[bool, str]:
    """A sort key: NULL last, ASCII letters in either case alike, else by code point.

    Only ASCII case is folded because that is what every database can do identically (SQLite's
    lower() knows no other letters); `text_order` sorts the same way in SQL.
    """
    return (text is None, (text or "").translate(_ASCII_LOWER))


def text_order(expr: ColumnElement[Any], dialect: str) -> list[ColumnElement[Any]]:
    """ORDER BY terms that sort `expr` as `fold` does, on each database."""
    lowered: ColumnElement[Any]
    if dialect == "postgresql":
        # Under the "C" collation lower() folds ASCII only, and comparison is by byte.
        lowered = func.lower(expr.collate("C")).collate("C")
    elif dialect in ("mysql", "mariadb"):
        # LOWER() folds every letter there; on binary strings REPLACE works byte by byte, and
        # no UTF-8 sequence of another character contains an ASCII byte.
        lowered = cast(expr, LargeBinary)
        for upper in string.ascii_uppercase:
            lowered = func.replace(lowered, literal_column(f"'{upper}'"), upper.lower())
    else:
        lowered = func.lower(expr)  # SQLite: ASCII only, BINARY collation
    return [expr.is_(None), lowered]


def id_order(expr: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    """An ORDER BY term comparing ids by code point (a PostgreSQL locale may skip the dashes)."""
    return expr.collate("C") if dialect == "postgresql" else expr


def resolve_owner(conn: Connection, text: str) -> set[str]:
    """The owner account ids whose id, current name or past name is `text` (any case)."""
    wanted = text.strip()
    ids: set[str] = set()
    for table in (owner_accounts, owner_account_versions):
        for owner_id, name in conn.execute(select(table.c.id, table.c.name).distinct()):
            if owner_id == wanted or (name is not None and name.casefold() == wanted.casefold()):
                ids.add(owner_id)
    if not ids:
        raise UsageError(
            f"no owner account has the id or name {text!r}; `exporter locks` lists them"
        )
    return ids


def _matches(lock: LockRow, model: str | None, search: str | None) -> bool:
    if model is not None:
        wanted = model.strip().casefold()
        if wanted not in (
            (lock.lock_model_name or "").casefold(),
            (lock.lock_type_id or "").casefold(),
        ):
            return False
    if search is not None:
        needle = search.strip().casefold()
        haystack = (
            lock.title,
            lock.description,
            lock.id,
            lock.lock_id_hex,
            lock.physical_lock_id,
            lock.lock_model_name,
        )
        return any(needle in value.casefold() for value in haystack if value)
    return True


def fields_of(row: Row, names: Iterable[str], **given: Any) -> dict[str, Any]:
    """A record's fields from `row`: each of `names` from the column of that name, but `given`."""
    return {**{name: row[name] for name in names if name not in given}, **given}


def lock_row(row: Row, owner_name: str | None, hex_id: str | None) -> LockRow:
    """A LockRow from a bound_locks or bound_lock_versions row."""
    return LockRow(**fields_of(row, LockRow._fields, owner_name=owner_name, lock_id_hex=hex_id))


def _owners(
    conn: Connection, at: datetime | None, owner_ids: set[str] | None, include_removed: bool
) -> list[OwnerRow]:
    """The owner accounts present now or at `at` (also the removed ones with include_removed)."""
    if at is None:
        query = select(owner_accounts)
        if not include_removed:
            query = query.where(owner_accounts.c.removed_at.is_(None))
        found = [
            OwnerRow(r["id"], r["name"], r["active"], r["removed_at"])
            for r in conn.execute(query).mappings()
        ]
    else:
        ov = owner_account_versions
        found = [
            OwnerRow(
                r["id"],
                r["name"],
                r["active"],
                r["valid_from"] if r["change_type"] == _REMOVED else None,
            )
            for r in conn.execute(select(ov).where(valid_at(ov, at))).mappings()
            if include_removed or r["change_type"] != _REMOVED
        ]
    if owner_ids is not None:
        found = [o for o in found if o.id in owner_ids]
    found.sort(key=lambda o: (fold(o.name), o.id))
    return found


def _lock_reads(
    conn: Connection, at: datetime | None, owner_ids: set[str] | None, include_removed: bool
) -> tuple[Select[Any], list[dict[str, Any]]]:
    """The query of an inventory's locks, and the parameters of each of its runs, in turn.

    A million locks are read owner by owner: sorted all at once by owner name and title, the
    sort was most of the query's time (it spilled to disk on PostgreSQL). The owners are put in
    order here, and each owner's locks, found through its index, sort in memory: SQLite runs
    the query once per owner; PostgreSQL once, given the owners in order (a query per owner
    waited for a round trip each), and sorts only within an owner (an incremental sort).
    """
    holders = _holders(conn, at, owner_ids, include_removed)
    query = _locks_query(conn.dialect.name, at, include_removed)
    if conn.dialect.name == "postgresql":
        ids, names = [owner_id for owner_id, _ in holders], [name for _, name in holders]
        return query, [{"owners": ids, "owner_names": names}]
    return query, [{"owner": owner_id, "owner_name": name} for owner_id, name in holders]


def _reading(dialect: str) -> dict[str, Any]:
    """How `stream_columns` reads `_lock_reads`'s query: on SQLite the owner's id and name are
    given, not selected, and each owner's rows (id, title first) are put in order in Python."""
    sqlite = {"given": ("owner", "owner_name"), "sort": sqlite_text_order(1, 0)}
    return sqlite if dialect == "sqlite" else {}


def _holders(
    conn: Connection, at: datetime | None, owner_ids: set[str] | None, include_removed: bool
) -> list[tuple[str, str | None]]:
    """Each owner account that may hold locks of the inventory and its name as shown (then, for
    `at`), in inventory order (`fold` of the name, id)."""
    if at is None:
        holding = select(bound_locks.c.owner_account_id).distinct()
        if not include_removed:
            holding = holding.where(bound_locks.c.removed_at.is_(None))
        names = owner_names(conn)
    else:
        # Every owner that ever held a lock, from the owner index alone: one without a lock at
        # `at` finds no row, a filter here would read every version.
        holding = select(bound_lock_versions.c.owner_account_id).distinct()
        then = owner_account_versions
        # Named as it was named then; an owner with no version then, as it is named now.
        names = owner_names(conn) | dict(
            conn.execute(select(then.c.id, then.c.name).where(valid_at(then, at))).all()
        )
    ids = set(conn.execute(holding).scalars())
    if owner_ids is not None:
        ids &= owner_ids
    ordered = sorted(ids, key=lambda owner_id: (fold(names.get(owner_id)), owner_id))
    return [(owner_id, names.get(owner_id)) for owner_id in ordered]


def _locks_query(dialect: str, at: datetime | None, include_removed: bool) -> Select[Any]:
    """The locks present now or at `at` as LockRow columns of the owners `_lock_reads` gives
    (the name shown is given too; on SQLite neither it nor the id is selected: `_reading`), by
    owner in the order given, then by title and id.

    As of `at` on SQLite the hex is left NULL for `versions_at.with_current_hex` to fill in.
    """
    owner: ColumnElement[Any] = bindparam("owner", type_=owner_accounts.c.id.type)
    owner_name: ColumnElement[Any] = bindparam("owner_name", type_=owner_accounts.c.name.type)
    fields = LockRow._fields
    if dialect == "postgresql":
        given = (
            func.unnest(
                bindparam("owners", type_=ARRAY(owner_accounts.c.id.type)),
                bindparam("owner_names", type_=ARRAY(owner_accounts.c.name.type)),
            )
            .table_valued(column("id", String), column("name", Text), with_ordinality="n")
            .render_derived()
        )
        if at is not None:
            query, held = versions_at.postgresql_versions(fields, given, at, include_removed)
            return query.order_by(
                given.c.n, *text_order(held.c.title, dialect), id_order(held.c.id, dialect)
            )
        found: FromClause = given.join(bound_locks, bound_locks.c.owner_account_id == given.c.id)
        owner, owner_name, owner_order = given.c.id, given.c.name, [given.c.n]
    elif at is not None and dialect == "sqlite":
        query = versions_at.versions_query(fields, owner, at, include_removed)
        lock = bound_lock_versions
        return query.order_by(*text_order(lock.c.title, dialect), id_order(lock.c.id, dialect))
    else:
        found, owner_order = bound_locks, []
    if at is None:
        lock = bound_locks
        columns = {name: streamed(lock.c[name]) for name in fields[2:]}
        if dialect == "sqlite" and not include_removed:  # NULL on every row, stored after raw
            columns["removed_at"] = streaming.streamed_null(lock.c.removed_at)
    else:
        # MariaDB: the version valid at `at` joined to its lock (a streamed read there allows
        # no second statement on the connection while its rows are read).
        lock, current = bound_lock_versions, bound_locks
        found = lock.join(current, current.c.id == lock.c.id)
        same = versions_at.same_device(lock.c.physical_lock_id, current.c.physical_lock_id)
        hex_id = case((same, current.c.lock_id_hex))
        columns = versions_at.versions_columns(lock, fields, hex_id)
    owners = (
        () if dialect == "sqlite" else (lock.c.owner_account_id, owner_name.label("owner_name"))
    )
    query = select(*owners, *(columns[name] for name in fields[2:])).select_from(found)
    if not owner_order:
        query = query.where(lock.c.owner_account_id == owner)
    if at is not None:
        query = query.where(*versions_at.filters(lock, at, include_removed))
    elif not include_removed:
        query = query.where(lock.c.removed_at.is_(None))
    return query.order_by(
        *owner_order, *text_order(lock.c.title, dialect), id_order(lock.c.id, dialect)
    )


def hex_of(row: Row) -> str | None:
    """The lock id hex of a version row joined with bound_locks (its current physical id only)."""
    # bound_locks keeps the customer-facing id for the lock's current physical id only.
    same = row["physical_lock_id"] == row["current_physical_lock_id"]
    hex_id: str | None = row["lock_id_hex"] if same else None
    return hex_id


def owner_names(conn: Connection) -> dict[str, str | None]:
    """Every owner account's current name by id."""
    return dict(conn.execute(select(owner_accounts.c.id, owner_accounts.c.name)).all())


def current_locks(engine: Engine) -> Sequence[RowMapping]:
    """Present bound locks with their owner's name, ordered by owner name, then title."""
    query = (
        select(bound_locks, owner_accounts.c.name.label("owner_name"))
        .join(owner_accounts, owner_accounts.c.id == bound_locks.c.owner_account_id, isouter=True)
        .where(bound_locks.c.removed_at.is_(None))
        .order_by(owner_accounts.c.name, bound_locks.c.owner_account_id, bound_locks.c.title)
    )
    with connect(engine) as conn:
        return conn.execute(query).mappings().all()
