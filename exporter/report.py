"""Read-side queries: the inventory now or at any past instant, daily counts, and runs.

Everything is computed from the version tables with the rules of the schema: a version is valid
on [valid_from, valid_to); a lock is present at T when its version valid at T is not `removed`.
The `daily_inventory` view says the same in SQL, and the tests hold both to the same answers.
Changes and lock histories are in `exporter.changelog`. Nothing here reads the clock: callers
pass `now`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    RowMapping,
    Table,
    func,
    literal,
    select,
    union_all,
)

from exporter.errors import UsageError
from exporter.schema import (
    RUN_STATUSES,
    bound_lock_versions,
    bound_locks,
    owner_account_versions,
    owner_accounts,
    sync_run_owners,
    sync_runs,
)
from exporter.settings import parse_duration
from exporter.store import connect

_CHUNK = 500
# A result row (RowMapping) or a plain dict of column values.
Row = Mapping[Any, Any]
_TICK = timedelta(microseconds=1)

# -- instants -------------------------------------------------------------------------------------


def parse_instant(text: str, *, now: datetime) -> datetime:
    """An ISO-8601 timestamp (naive means UTC) or a duration back from `now` ("7d", "1h30m")."""
    value = text.strip()
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        try:
            return now - timedelta(seconds=parse_duration(value))
        except ValueError:
            raise UsageError(
                f"cannot read {text!r} as a time: give an ISO-8601 timestamp such as "
                "2026-03-01 or 2026-03-01T12:00:00Z (UTC unless it has an offset), or a duration "
                "back from now such as 7d, 12h or 1h30m"
            ) from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class AsOf:
    """The instant an inventory was asked for, and the run it came from (for a run id)."""

    at: datetime
    run_id: int | None = None


def resolve_as_of(engine: Engine, text: str, *, now: datetime) -> AsOf:
    """`--as-of`: a run id means that run's `finished_at`; else a timestamp or a duration."""
    value = text.strip()
    if not value.isdigit():
        return AsOf(parse_instant(value, now=now))
    run_id = int(value)
    with connect(engine) as conn:
        row = conn.execute(
            select(sync_runs.c.finished_at, sync_runs.c.status).where(sync_runs.c.id == run_id)
        ).one_or_none()
    if row is None:
        raise missing_run(run_id)
    if row.finished_at is None:
        raise UsageError(
            f"run {run_id} has no recorded end (it is running, or was abandoned); give a "
            "timestamp instead"
        )
    return AsOf(row.finished_at, run_id)


def valid_at(table: Table, at: datetime) -> ColumnElement[bool]:
    """The versions of `table` valid at `at`: valid_from <= at < valid_to (or open)."""
    return (table.c.valid_from <= at) & (table.c.valid_to.is_(None) | (table.c.valid_to > at))


def chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    """`items` in slices small enough for an IN list on every database."""
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


# -- inventory ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OwnerRow:
    """An owner account as shown by `exporter locks`."""

    id: str
    name: str | None
    active: bool | None
    removed_at: datetime | None = None


@dataclass(frozen=True)
class LockRow:
    """A bound lock in an inventory; `removed_at` is set only with include_removed."""

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
        return asdict(self)


@dataclass(frozen=True)
class Inventory:
    """An inventory: every owner shown (also those without locks) and the locks, sorted."""

    as_of: AsOf | None
    owners: list[OwnerRow]
    locks: list[LockRow]


def inventory(
    engine: Engine,
    *,
    as_of: AsOf | None = None,
    owner: str | None = None,
    model: str | None = None,
    search: str | None = None,
    include_removed: bool = False,
) -> Inventory:
    """The locks present now, or at `as_of` exactly as the version tables recorded them.

    `owner` matches an owner account id or (any case) a current or past name; `model` a lock
    model name or lock type id (any case); `search` is a case-insensitive substring of the
    title, description, ids or model. Owners without locks are listed unless model/search filter.
    """
    with connect(engine) as conn:
        owner_ids = resolve_owner(conn, owner) if owner is not None else None
        if as_of is None:
            owners, locks = _current(conn, owner_ids, include_removed)
        else:
            owners, locks = _at(conn, as_of.at, owner_ids, include_removed)
    locks = [lock for lock in locks if _matches(lock, model, search)]
    if model is not None or search is not None:
        shown = {lock.owner_account_id for lock in locks}
        owners = [o for o in owners if o.id in shown]
    listed = {o.id for o in owners}
    for lock in locks:  # an owner that is gone but still holds a shown lock (include_removed)
        if lock.owner_account_id not in listed:
            listed.add(lock.owner_account_id)
            owners.append(OwnerRow(lock.owner_account_id, lock.owner_name, None))
    owners.sort(key=lambda o: (fold(o.name), o.id))
    locks.sort(key=lambda r: (fold(r.owner_name), r.owner_account_id, fold(r.title), r.id))
    return Inventory(as_of, owners, locks)


def fold(text: str | None) -> tuple[bool, str]:
    """A sort key: case-insensitive, NULL last."""
    return (text is None, (text or "").casefold())


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
        if wanted not in (fold(lock.lock_model_name)[1], fold(lock.lock_type_id)[1]):
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


def lock_row(row: Row, owner_name: str | None, hex_id: str | None) -> LockRow:
    """A LockRow from a bound_locks or bound_lock_versions row."""
    return LockRow(
        owner_account_id=row["owner_account_id"],
        owner_name=owner_name,
        id=row["id"],
        title=row["title"],
        description=row["description"],
        lock_model_name=row["lock_model_name"],
        bind_date=row["bind_date"],
        lock_id_hex=hex_id,
        physical_lock_id=row["physical_lock_id"],
        lock_type_id=row["lock_type_id"],
        manufacturer_id=row["manufacturer_id"],
        active=row["active"],
        unbind_date=row["unbind_date"],
        target_type=row["target_type"],
        removed_at=row["removed_at"],
    )


def _current(
    conn: Connection, owner_ids: set[str] | None, include_removed: bool
) -> tuple[list[OwnerRow], list[LockRow]]:
    names = owner_names(conn)
    owner_query = select(owner_accounts)
    lock_query = select(bound_locks)
    if not include_removed:
        owner_query = owner_query.where(owner_accounts.c.removed_at.is_(None))
        lock_query = lock_query.where(bound_locks.c.removed_at.is_(None))
    if owner_ids is not None:
        owner_query = owner_query.where(owner_accounts.c.id.in_(owner_ids))
        lock_query = lock_query.where(bound_locks.c.owner_account_id.in_(owner_ids))
    owners = [
        OwnerRow(r["id"], r["name"], r["active"], r["removed_at"])
        for r in conn.execute(owner_query).mappings()
    ]
    locks = [
        lock_row(r, names.get(r["owner_account_id"]), r["lock_id_hex"])
        for r in conn.execute(lock_query).mappings()
    ]
    return owners, locks


def _at(
    conn: Connection, at: datetime, owner_ids: set[str] | None, include_removed: bool
) -> tuple[list[OwnerRow], list[LockRow]]:
    current_names = owner_names(conn)
    ov = owner_account_versions
    owners_then = {r["id"]: r for r in conn.execute(select(ov).where(valid_at(ov, at))).mappings()}
    names = {**current_names, **{i: r["name"] for i, r in owners_then.items()}}
    owners = [
        OwnerRow(
            r["id"],
            r["name"],
            r["active"],
            r["valid_from"] if r["change_type"] == "removed" else None,
        )
        for r in owners_then.values()
        if (include_removed or r["change_type"] != "removed")
        and (owner_ids is None or r["id"] in owner_ids)
    ]
    v = bound_lock_versions
    query = (
        select(
            v,
            bound_locks.c.physical_lock_id.label("current_physical_lock_id"),
            bound_locks.c.lock_id_hex,
        )
        .join(bound_locks, bound_locks.c.id == v.c.id)
        .where(valid_at(v, at))
    )
    if not include_removed:
        query = query.where(v.c.change_type != "removed")
    if owner_ids is not None:
        query = query.where(v.c.owner_account_id.in_(owner_ids))
    locks = []
    for r in conn.execute(query).mappings():
        removed = {**r, "removed_at": r["valid_from"] if r["change_type"] == "removed" else None}
        locks.append(lock_row(removed, names.get(r["owner_account_id"]), hex_of(r)))
    return owners, locks


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


def run_changes(engine: Engine, run_id: int) -> Sequence[RowMapping]:
    """Every version a run wrote, owners first, as entity/id/change/fields/reason/title rows."""
    owners = select(
        literal("owner").label("entity"),
        owner_account_versions.c.id,
        owner_account_versions.c.change_type,
        owner_account_versions.c.changed_fields,
        owner_account_versions.c.removal_reason,
        owner_account_versions.c.name.label("title"),
        owner_account_versions.c.id.label("owner_account_id"),
        owner_account_versions.c.valid_from,
    ).where(owner_account_versions.c.run_id == run_id)
    locks = select(
        literal("lock").label("entity"),
        bound_lock_versions.c.id,
        bound_lock_versions.c.change_type,
        bound_lock_versions.c.changed_fields,
        bound_lock_versions.c.removal_reason,
        bound_lock_versions.c.title,
        bound_lock_versions.c.owner_account_id,
        bound_lock_versions.c.valid_from,
    ).where(bound_lock_versions.c.run_id == run_id)
    query = union_all(owners, locks)
    with connect(engine) as conn:
        rows = conn.execute(query).mappings().all()
    return sorted(rows, key=lambda r: (r["entity"] != "owner", r["valid_from"], r["id"]))


# -- daily counts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DailyCount:
    """Locks present at the end of a UTC day for one owner account and lock model."""

    day: date
    owner_account_id: str
    owner_name: str | None
    lock_model_name: str | None
    locks: int


def daily_inventory(engine: Engine) -> list[DailyCount]:
    """What the `daily_inventory` view shows, computed by walking the versions day by day."""
    with connect(engine) as conn:
        first, last = conn.execute(
            select(func.min(sync_runs.c.started_at), func.max(sync_runs.c.started_at))
        ).one()
        names = owner_names(conn)
        versions = conn.execute(
            select(
                bound_lock_versions.c.owner_account_id,
                bound_lock_versions.c.lock_model_name,
                bound_lock_versions.c.valid_from,
                bound_lock_versions.c.valid_to,
            ).where(bound_lock_versions.c.change_type != "removed")
        ).all()
    if first is None:
        return []
    counts: dict[tuple[date, str, str | None], int] = defaultdict(int)
    for owner_id, model, valid_from, valid_to in versions:
        # Present at the day's last instant: valid_from <= end - 1us < valid_to.
        day = max(valid_from.date(), first.date())
        stop = last.date() if valid_to is None else min(last.date(), (valid_to - _TICK).date())
        while day <= stop:
            end = datetime.combine(day + timedelta(days=1), time(), tzinfo=UTC) - _TICK
            if valid_from <= end and (valid_to is None or end < valid_to):
                counts[(day, owner_id, model)] += 1
            day += timedelta(days=1)
    return [
        DailyCount(day, owner_id, names.get(owner_id), model, n)
        for (day, owner_id, model), n in sorted(
            counts.items(), key=lambda item: (item[0][0], item[0][1], item[0][2] or "")
        )
    ]


# -- runs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRow:
    """One sync run."""

    id: int
    started_at: datetime
    finished_at: datetime | None
    duration_seconds: float | None
    status: str
    trigger: str
    owners_seen: int
    locks_seen: int
    created: int
    updated: int
    removed: int
    restored: int
    unchanged: int
    skipped: int
    api_requests: int
    error: str | None
    client_id: str | None

    def as_dict(self) -> dict[str, Any]:
        """The fields by name."""
        return asdict(self)


@dataclass(frozen=True)
class RunOwnerRow:
    """How one owner account's fetch went in a run."""

    owner_account_id: str
    owner_name: str | None
    status: str
    locks_seen: int
    created: int
    updated: int
    removed: int
    restored: int
    unchanged: int
    skipped: int
    fetched_at: datetime | None
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        """The fields by name."""
        return asdict(self)


@dataclass(frozen=True)
class RunDetail:
    """A run and its per-owner outcomes (failed owners first)."""

    run: RunRow
    owners: list[RunOwnerRow]


def _run_row(row: Row) -> RunRow:
    started, finished = row["started_at"], row["finished_at"]
    duration = (finished - started).total_seconds() if finished is not None else None
    values = {name: row[name] for name in RunRow.__dataclass_fields__ if name in row}
    return RunRow(**{**values, "duration_seconds": duration})


def missing_run(run_id: int) -> UsageError:
    """The error for a run id that names no run."""
    return UsageError(f"there is no run {run_id}; `exporter runs` lists the runs")


def runs(engine: Engine, *, limit: int | None = 20, status: str | None = None) -> list[RunRow]:
    """The most recent runs first, optionally only those with `status`."""
    if status is not None and status not in RUN_STATUSES:
        raise UsageError(f"unknown run status {status!r}; use {', '.join(RUN_STATUSES)}")
    query = select(sync_runs).order_by(sync_runs.c.id.desc()).limit(limit)
    if status is not None:
        query = query.where(sync_runs.c.status == status)
    with connect(engine) as conn:
        return [_run_row(r) for r in conn.execute(query).mappings()]


def run_detail(engine: Engine, run_id: int) -> RunDetail:
    """One run with the outcome of every owner account it fetched."""
    with connect(engine) as conn:
        row = conn.execute(select(sync_runs).where(sync_runs.c.id == run_id)).mappings().first()
        if row is None:
            raise missing_run(run_id)
        names = owner_names(conn)
        outcomes = conn.execute(
            select(sync_run_owners).where(sync_run_owners.c.run_id == run_id)
        ).mappings()
        owners = [
            RunOwnerRow(
                owner_name=names.get(o["owner_account_id"]),
                **{k: o[k] for k in RunOwnerRow.__dataclass_fields__ if k != "owner_name"},
            )
            for o in outcomes
        ]
    owners.sort(key=lambda o: (o.status != "failed", fold(o.owner_name), o.owner_account_id))
    return RunDetail(_run_row(row), owners)
