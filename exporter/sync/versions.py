"""Primitives of the version tables: how a version is opened, closed and removed.

Every function takes the connection of the caller's transaction; none commits. The sync engine
decides *what* changes; these functions write it so that the current tables and the open versions
always move together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    String,
    Table,
    bindparam,
    func,
    insert,
    literal,
    literal_column,
    select,
    update,
)

from exporter.db.bulk import insert_many
from exporter.db.inlists import chunks
from exporter.db.schema import (
    LOCK_TRACKED,
    VERSION_TABLES,
    bound_lock_versions,
    bound_locks,
    sync_runs,
)
from exporter.db.types import UTCDateTime
from exporter.kinds import ChangeType
from exporter.sync.plan import OwnerDiff

_REOPENED = (ChangeType.UPDATED, ChangeType.RESTORED)  # versions that carry changed_fields

# Lock columns kept current only: a change to them rewrites the row but makes no version.
LOCK_CURRENT_ONLY = ("lock_id_hex", "rcl_serial_no", "rcl_date", "raw")


class Clock:
    """`now()`, forced strictly past every instant already written."""

    def __init__(self, now: Callable[[], datetime], floor: datetime | None) -> None:
        self._now = now
        self._last = floor

    def __call__(self) -> datetime:
        t = self._now().astimezone(UTC)
        if self._last is not None and t <= self._last:
            t = self._last + timedelta(microseconds=1)
        self._last = t
        return t

    def start_after(self, floor: datetime | None) -> None:
        """From now on give instants past `floor` (the latest one stored), as Clock(now, floor)."""
        self._last = floor


def latest_instant(conn: Connection) -> datetime | None:
    """The latest instant already written, so new versions always start after it."""
    candidates = [
        *(conn.execute(select(func.max(v.c.valid_from))).scalar() for v in VERSION_TABLES),
        conn.execute(select(func.max(sync_runs.c.started_at))).scalar(),
        conn.execute(select(func.max(sync_runs.c.finished_at))).scalar(),
    ]
    present = [c for c in candidates if c is not None]
    return max(present) if present else None


def version_row(
    entity_id: str,
    values: Mapping[str, Any],
    t: datetime,
    change_type: str,
    fields: Sequence[str] | None,
    run_id: int,
) -> dict[str, Any]:
    """A version row opened at `t` (changed_fields only for updates and restores)."""
    return {
        "id": entity_id,
        **values,
        "valid_from": t,
        "valid_to": None,
        "change_type": change_type,
        "changed_fields": list(fields or ()) if change_type in _REOPENED else None,
        "removal_reason": None,
        "run_id": run_id,
    }


def load_locks(conn: Connection, ids: Sequence[str]) -> dict[str, Mapping[Any, Any]]:
    """The stored tracked and current-only columns of the locks `ids`, by id."""
    return load_rows(conn, bound_locks, (*LOCK_TRACKED, *LOCK_CURRENT_ONLY), ids)


def present_by_owner(conn: Connection, table: Table) -> dict[str, int]:
    """Present (not removed) rows of a current table per owner id."""
    column = table.c.owner_account_id
    rows = conn.execute(
        select(column, func.count()).where(table.c.removed_at.is_(None)).group_by(column)
    )
    return {owner_id: count for owner_id, count in rows}


def changed_fields(
    old: Mapping[Any, Any], new: Mapping[str, Any], fields: Iterable[str]
) -> list[str]:
    """The `fields` whose stored value `old` differs from the new one."""
    return [name for name in fields if old[name] != new[name]]


def load_rows(
    conn: Connection, table: Table, names: Sequence[str], ids: Sequence[str]
) -> dict[str, Mapping[Any, Any]]:
    """The stored columns `names` (and removed_at) of the rows `ids` of a current table, by id."""
    columns = [table.c[name] for name in names]
    stored: dict[str, Mapping[Any, Any]] = {}
    for chunk in chunks(ids):
        rows = conn.execute(
            select(table.c.id, table.c.removed_at, *columns).where(table.c.id.in_(chunk))
        )
        for row in rows:
            stored[row.id] = row._mapping
    return stored


# Joins one owner's stored texts into one value. JSON text (what `raw` holds) never contains it:
# control characters must be escaped in strings, and whitespace is " \t\n\r".
_JOIN = "\x1e"
# Where an owner's texts are read joined as they are. MySQL/MariaDB's GROUP_CONCAT silently cuts
# its result at group_concat_max_len (1 MiB by default; raised per session below, and bounded by
# max_allowed_packet anyway), so there the joined texts are checked against that limit.
# PostgreSQL reads rows: its string_agg of 500 texts cost the server twice the CPU of sending
# them as rows (0.26 s against 0.12 s per 100,000 locks), and psycopg turns rows into tuples in C
# (client CPU 0.10-0.14 s against 0.17-0.25 s for the joined texts, split in Python).
_READ_JOINED = frozenset({"sqlite"})
_READ_JOINED_CHECKED = frozenset({"mysql", "mariadb"})
_MYSQL_CONCAT_MAX = 1 << 30


def load_live_raw(conn: Connection, owner_id: str) -> dict[str, str]:
    """The stored payload text of the owner's present locks, by lock id."""
    present = (bound_locks.c.owner_account_id == owner_id) & bound_locks.c.removed_at.is_(None)
    if conn.dialect.name in _READ_JOINED:
        # One row, not one per lock: sqlite3 lets go of the GIL for every row and must win it
        # back from the fetch threads each time, so row by row the reader kept them waiting.
        # Both aggregates take the same rows in one pass, so the lists line up; an id
        # containing the separator makes their lengths differ.
        ids, texts = conn.execute(
            select(
                func.aggregate_strings(bound_locks.c.id, _JOIN),
                func.aggregate_strings(func.coalesce(bound_locks.c.raw, ""), _JOIN),
            ).where(present)
        ).one()
        if ids is None:
            return {}
        id_list, text_list = ids.split(_JOIN), texts.split(_JOIN)
        if len(id_list) == len(text_list):
            return dict(zip(id_list, text_list, strict=True))
    elif conn.dialect.name in _READ_JOINED_CHECKED:
        joined = _load_live_raw_checked(conn, present)
        if joined is not None:
            return joined
    text = func.coalesce(bound_locks.c.raw, "")
    return dict(conn.execute(select(bound_locks.c.id, text).where(present)).all())


def _load_live_raw_checked(conn: Connection, present: Any) -> dict[str, str] | None:
    """MySQL/MariaDB: the texts read joined, or None if the join may have been cut (or an id
    holds the separator). PyMySQL decodes rows in Python: 500 rows cost the reader ~5 ms of CPU
    and the GIL, one joined row a tenth of that."""
    if not conn.info.get("exporter_concat_max"):
        conn.exec_driver_sql(f"SET SESSION group_concat_max_len = {_MYSQL_CONCAT_MAX}")
        conn.info["exporter_concat_max"] = True
    ids, texts, count, limit = conn.execute(
        select(
            func.aggregate_strings(bound_locks.c.id, _JOIN),
            func.aggregate_strings(func.coalesce(bound_locks.c.raw, ""), _JOIN),
            func.count(),
            # The limit in force, not the one set above: the session's is what cuts.
            literal_column("@@session.group_concat_max_len", Integer()),
        ).where(present)
    ).one()
    if not count:
        return {}
    id_list, text_list = ids.split(_JOIN), texts.split(_JOIN)
    if (
        len(id_list) == len(text_list) == count
        and concat_whole(ids, limit)
        and concat_whole(texts, limit)
    ):
        return dict(zip(id_list, text_list, strict=True))
    return None


def concat_whole(joined: str, limit: int) -> bool:
    """Whether a GROUP_CONCAT result `joined` is certainly not cut by group_concat_max_len
    `limit` (bytes). A cut result is cut back to a whole character, so it is at least
    `limit` - 3 bytes long, and a character is at most 4 bytes (utf8mb4).

    A bound, not the exact lengths: summing CHAR_LENGTH of every text to compare with cost the
    server 0.12 s of CPU per 100,000 locks, 40% of the reads (0.29 s against 0.17 s).
    """
    return 4 * len(joined) < limit - 3


def load_live_raw_of(
    conn: Connection, table: Table, owner_ids: Sequence[str]
) -> dict[str, dict[str, str]]:
    """The stored payload texts of the present rows of several owners: owner -> id -> text.

    One statement for many owners: for lists of a few elements each (contacts, cards, grants)
    the statement, not the rows, is what costs.
    """
    texts: dict[str, dict[str, str]] = {owner_id: {} for owner_id in owner_ids}
    for chunk in chunks(owner_ids):
        # All rows fetched at once: iterating the result fetches them one by one, a Python
        # call per row (on PostgreSQL a fifth of the CPU of a read of 4,662 texts).
        rows = conn.execute(
            select(table.c.owner_account_id, table.c.id, table.c.raw)
            .where(table.c.owner_account_id.in_(chunk))
            .where(table.c.removed_at.is_(None))
        ).all()
        for owner_id, row_id, raw in rows:
            texts[owner_id][row_id] = raw or ""
    return texts


def close_versions(conn: Connection, table: Table, ids: Sequence[str], t: datetime) -> None:
    """End the open versions of `ids` at `t`."""
    for chunk in chunks(ids):
        conn.execute(
            update(table)
            .where(table.c.id.in_(chunk))
            .where(table.c.valid_to.is_(None))
            .values(valid_to=t)
        )


def open_created_versions(
    conn: Connection,
    owner_id: str,
    t: datetime,
    run_id: int,
    *,
    current: Table = bound_locks,
    versions: Table = bound_lock_versions,
    tracked: Sequence[str] = LOCK_TRACKED,
) -> None:
    """Open `created` versions for the owner's locks (or rows of `current`) inserted at `t`,
    copied in the database.

    Only this transaction's new rows have first_seen_at == t: every instant the engine writes is
    later than all stored ones (Clock). Copying them server-side spares sending every new lock's
    attributes a second time.
    """
    source = select(
        current.c.id,
        *(current.c[name] for name in tracked),
        literal(t, UTCDateTime()).label("valid_from"),
        literal(ChangeType.CREATED, String()).label("change_type"),
        literal(run_id).label("run_id"),
    ).where(current.c.owner_account_id == owner_id, current.c.first_seen_at == t)
    columns = ["id", *tracked, "valid_from", "change_type", "run_id"]
    conn.execute(insert(versions).from_select(columns, source))


def remove_rows(
    conn: Connection,
    current: Table,
    versions: Table,
    tracked: Sequence[str],
    ids: Sequence[str],
    t: datetime,
    reason: str,
    run_id: int,
) -> None:
    """Close the open versions of `ids` and open `removed` versions carrying their last values."""
    for chunk in chunks(ids):
        close_versions(conn, versions, chunk, t)
        source = select(
            current.c.id,
            *(current.c[name] for name in tracked),
            literal(t, UTCDateTime()).label("valid_from"),
            literal(ChangeType.REMOVED, String()).label("change_type"),
            literal(reason).label("removal_reason"),
            literal(run_id).label("run_id"),
        ).where(current.c.id.in_(chunk))
        conn.execute(
            insert(versions).from_select(
                ["id", *tracked, "valid_from", "change_type", "removal_reason", "run_id"], source
            )
        )
        conn.execute(update(current).where(current.c.id.in_(chunk)).values(removed_at=t))


@dataclass(frozen=True)
class VersionedTable:
    """A current table with its version table: the tracked columns (a change to one of them makes
    a version) and the column order of new rows (`write_diff`'s `new_rows`)."""

    current: Table
    versions: Table
    tracked: tuple[str, ...]
    new_columns: tuple[str, ...]


def write_diff(
    conn: Connection,
    diff: OwnerDiff[Any],
    new_rows: Sequence[tuple[Any, ...]],
    tables: VersionedTable,
    *,
    owner_id: str,
    t: datetime,
    run_id: int,
) -> None:
    """Write one owner's diff (exporter.sync.plan.diff_owner) at `t`: `new_rows` (its created
    rows, in `tables.new_columns` order) with their `created` versions, updated and restored
    rows with new versions, refreshed rows without."""
    current, versions, tracked = tables.current, tables.versions, tables.tracked
    close_versions(conn, versions, [change.record.id for change in diff.changes], t)
    insert_many(conn, current, tables.new_columns, new_rows)
    by_id = update(current).where(current.c.id == bindparam("b_id"))
    for kind in (ChangeType.UPDATED, ChangeType.RESTORED):
        rows = [
            {"b_id": c.record.id, **c.values, **c.current, "removed_at": None, "updated_at": t}
            for c in diff.of(kind)
        ]
        if rows:
            conn.execute(by_id, rows)
    if diff.refresh:
        conn.execute(by_id, [{"b_id": record.id, **now} for record, now in diff.refresh])
    if new_rows:
        open_created_versions(
            conn, owner_id, t, run_id, current=current, versions=versions, tracked=tracked
        )
    if diff.changes:
        rows = [
            version_row(c.record.id, c.values, t, c.kind, c.fields, run_id) for c in diff.changes
        ]
        conn.execute(insert(versions), rows)
