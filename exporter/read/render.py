"""Read-side tables for people: the inventory, the change feed and lock histories (with their
JSON and CSV shapes; the writers are in read.formats)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import groupby
from operator import attrgetter
from typing import IO, Any

from rich.console import Console
from rich.table import Table

from exporter.kinds import ChangeEntity, ChangeType
from exporter.read.changelog import ChangeFeed, ChangeRow, FieldChange, LockHistory
from exporter.read.formats import cell, shown, write_csv_columns, write_csv_tuples
from exporter.read.inventory import Inventory, LockRow, OwnerRow, fold
from exporter.terminal import visible

# Tables are for people: past this many rows they say how many more there are instead.
TABLE_LIMIT = 1000

LOCK_COLUMNS = (
    "owner_account_id",
    "owner_name",
    "id",
    "title",
    "description",
    "lock_model_name",
    "bind_date",
    "lock_id_hex",
    "physical_lock_id",
    "lock_type_id",
    "manufacturer_id",
    "active",
    "unbind_date",
    "target_type",
    "removed_at",
)
# One CSV row per changed field (a change without field changes gets one row with them empty).
CHANGE_COLUMNS = (
    "changed_at",
    "run_id",
    "entity",
    "change_type",
    "removal_reason",
    "id",
    "lock_id_hex",
    "owner_account_id",
    "owner_name",
    "title",
    "field",
    "old",
    "new",
    "version_id",
)


# -- locks ----------------------------------------------------------------------------------------


def inventory_json(inv: Inventory) -> dict[str, Any]:
    """`exporter locks --format json` (the locks as an iterator: written as they are read)."""
    return {
        "as_of": inv.as_of.at if inv.as_of else None,
        "as_of_run": inv.as_of.run_id if inv.as_of else None,
        "owners": [
            {"id": o.id, "name": o.name, "active": o.active, "removed_at": o.removed_at}
            for o in inv.owners
        ],
        "locks": map(LockRow._asdict, inv.locks),
    }


def inventory_csv(inv: Inventory, out: IO[str], *, raw: bool = False) -> None:
    """`exporter locks --format csv`: one row per lock."""
    if inv.columns is not None:
        write_csv_columns(inv.columns, LOCK_COLUMNS, out, raw=raw)
    else:
        write_csv_tuples(inv.locks, LOCK_COLUMNS, out, raw=raw)


def inventory_table(
    inv: Inventory, console: Console, *, include_removed: bool, filtered: bool = False
) -> None:
    """Grouped by owner account like Tapkey's console sample (`filtered`: by model or text).

    The locks arrive in owner order, so one owner's locks are held at a time; past TABLE_LIMIT
    locks the rest is only counted.
    """
    if inv.as_of is not None:
        run = f" (end of run {inv.as_of.run_id})" if inv.as_of.run_id is not None else ""
        console.print(f"Inventory as of {cell(inv.as_of.at)} UTC{run}")
    total = removed = owners_shown = 0
    for owner, locks in _by_owner(inv.owners, inv.locks):
        if not locks and filtered:
            continue
        owners_shown += 1
        # A heading is one line: a line break in the name would start a line of its own.
        name = visible(owner.name, keep_layout=False) if owner.name else "(no name)"
        label = f"{name} ({owner.id})"
        if owner.removed_at is not None:
            label += f", removed {cell(owner.removed_at)}"
        room = max(TABLE_LIMIT - total, 0)
        total += len(locks)
        removed += sum(1 for lock in locks if lock.removed_at is not None)
        if not locks:
            console.print(f"No bound locks for owner account {label}.")
        elif room:
            _owner_table(label, locks, room, console, include_removed=include_removed)
    if not owners_shown:
        first_run_at = inv.as_of.first_run_at if inv.as_of is not None else None
        if first_run_at is not None:
            console.print(
                f"Nothing was recorded yet then: the first run started {cell(first_run_at)} UTC."
            )
        else:
            console.print(
                "No lock matches --model / --search." if filtered else "No owner accounts."
            )
        return
    if total > TABLE_LIMIT:
        console.print(
            f"{total - TABLE_LIMIT:,} more locks not shown (a table stops at {TABLE_LIMIT:,}): "
            "use --format csv or json for all, or narrow with --owner, --model or --search."
        )
    tail = f" ({removed} removed)" if removed else ""
    console.print(f"{_count(total, 'lock')} in {_count(owners_shown, 'owner account')}{tail}.")


def _by_owner(
    owners: Sequence[OwnerRow], locks: Iterable[LockRow]
) -> Iterator[tuple[OwnerRow, list[LockRow]]]:
    """Each owner with its locks; both come sorted by owner (`report.fold` of the name, id)."""

    def key(name: str | None, owner_id: str) -> tuple[tuple[bool, str], str]:
        return fold(name), owner_id

    listed = iter(owners)
    pending = next(listed, None)
    for owner_id, group in groupby(locks, key=attrgetter("owner_account_id")):
        held = list(group)
        here = key(held[0].owner_name, owner_id)
        while pending is not None and key(pending.name, pending.id) < here:
            yield pending, []
            pending = next(listed, None)
        if pending is not None and pending.id == owner_id:
            yield pending, held
            pending = next(listed, None)
        else:  # an owner the owner list lacks
            yield OwnerRow(owner_id, held[0].owner_name, None), held
    while pending is not None:
        yield pending, []
        pending = next(listed, None)


def _owner_table(
    label: str, locks: list[LockRow], room: int, console: Console, *, include_removed: bool
) -> None:
    table = Table(
        title=f"Owner account {label}: {_count(len(locks), 'lock')}", title_justify="left"
    )
    for column in ("Lock ID", "Lock ID (hex)", "Title", "Description", "Lock model", "Bound"):
        # Ids stay whole (`history` needs them): folded, never cut short with an ellipsis.
        table.add_column(column, overflow="fold", no_wrap=column == "Bound")
    if include_removed:
        table.add_column("Removed")
    for lock in locks[:room]:
        cells = [
            lock.id,
            lock.lock_id_hex or "",
            lock.title or "",
            lock.description or "",
            lock.lock_model_name or "",
            cell(lock.bind_date),
        ]
        if include_removed:
            cells.append(cell(lock.removed_at))
        table.add_row(*cells)
    console.print(table)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


# -- changes and histories ------------------------------------------------------------------------


# CHANGE_COLUMNS up to `title` are attributes of the change, then field, old, new, version_id.
_CHANGE_ATTRIBUTES = attrgetter(*CHANGE_COLUMNS[:-4])
_NO_FIELD = (FieldChange("", None, None),)
# Compared per row: module constants, not Enum attribute lookups.
_CREATED, _REMOVED, _RESTORED = ChangeType.CREATED, ChangeType.REMOVED, ChangeType.RESTORED


def _change_tuples(rows: Iterable[ChangeRow]) -> Iterator[tuple[Any, ...]]:
    for row in rows:
        attributes = _CHANGE_ATTRIBUTES(row)
        for change in row.changes or _NO_FIELD:
            yield (*attributes, change.field or None, change.old, change.new, row.version_id)


def changes_csv(rows: Iterable[ChangeRow], out: IO[str], *, raw: bool = False) -> None:
    """One CSV row per changed field."""
    write_csv_tuples(_change_tuples(rows), CHANGE_COLUMNS, out, raw=raw)


def describe(row: ChangeRow, names: Mapping[str, str | None]) -> str:
    """What a change did, in words: `title: 'A' -> 'B'`, or the removal reason."""
    if row.change_type == _REMOVED:
        return f"{_REMOVED}: {row.removal_reason}" if row.removal_reason else _REMOVED.value
    if row.change_type == _CREATED:
        return f"{_CREATED} ({row.lock_model_name})" if row.lock_model_name else _CREATED.value
    parts = []
    for change in row.changes:
        if change.field == "owner_account_id":  # names here; the ids are in csv/json
            old, new = (names.get(v) or str(v) for v in (change.old, change.new))
            parts.append(f"owner: {old} -> {new}")
        else:
            parts.append(f"{change.field}: {shown(change.old)} -> {shown(change.new)}")
    text = "; ".join(parts)
    if row.change_type == _RESTORED:
        return f"{_RESTORED}; {text}" if text else _RESTORED.value
    return text or ChangeType.UPDATED.value


def changes_table(feed: ChangeFeed, console: Console, *, titled: bool = True) -> None:
    """One line per change, titled with their number; past TABLE_LIMIT the rest is counted."""
    table = Table(title_justify="left")
    for column in ("When (UTC)", "Run", "Change", "What", "Id", "Owner account", "Details"):
        table.add_column(column, overflow="fold", no_wrap=column in ("When (UTC)", "Change"))
    total = 0
    for row in feed.rows:
        total += 1
        if total > TABLE_LIMIT:
            continue
        what = row.entity if row.title is None else f"{row.entity} {row.title!r}"
        table.add_row(
            cell(row.changed_at),
            str(row.run_id),
            row.change_type,
            what,
            row.lock_id_hex or row.id if row.entity == ChangeEntity.LOCK else row.id,
            row.owner_name or row.owner_account_id or "",
            describe(row, feed.owner_names),
        )
    if titled:
        table.title = _count(total, "change")
    console.print(table)
    if total > TABLE_LIMIT:
        console.print(
            f"{total - TABLE_LIMIT:,} more changes not shown (a table stops at {TABLE_LIMIT:,}): "
            "use --format csv or json for all, or narrow with --since, --until, --run, --kind, "
            "--entity or --owner."
        )


def history_json(history: LockHistory) -> dict[str, Any]:
    """`exporter history --format json`."""
    return {
        "query": history.query,
        "locks": [lock.as_dict() for lock in history.locks],
        "bindings": [b.as_dict() for b in history.bindings],
        "versions": [v.as_dict() for v in history.versions],
    }


def history_table(history: LockHistory, console: Console) -> None:
    """The bindings of the device, then every version with what changed."""
    hexes = sorted({lock.lock_id_hex for lock in history.locks if lock.lock_id_hex})
    device = f" (lock id {', '.join(hexes)})" if hexes else ""
    console.print(f"{len(history.locks)} bound lock(s) for {history.query!r}{device}")
    held = Table(title="Who held it", title_justify="left")
    for column in ("Owner account", "Bound lock id", "From (UTC)", "To (UTC)", "Ended by"):
        held.add_column(column, overflow="fold", no_wrap=column.endswith("(UTC)"))
    for b in history.bindings:
        held.add_row(
            f"{b.owner_name or '?'} ({b.owner_account_id})",
            b.bound_lock_id,
            cell(b.held_from),
            cell(b.held_to) or "now",
            b.end_reason or "",
        )
    console.print(held)
    versions = Table(title="Versions", title_justify="left")
    for column in ("When (UTC)", "Run", "Bound lock id", "Change", "Title", "What changed"):
        versions.add_column(column, overflow="fold", no_wrap=column == "When (UTC)")
    for row in history.versions:
        versions.add_row(
            cell(row.changed_at),
            str(row.run_id),
            row.id,
            row.change_type,
            row.title or "",
            describe(row, history.owner_names),
        )
    console.print(versions)
