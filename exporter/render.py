"""Turn report results into rich tables for people, or CSV and JSON for scripts.

JSON keeps native types (numbers, true/false, null) and writes times as ISO-8601 UTC; CSV writes
the same values as text (times ISO-8601, booleans `true`/`false`, NULL as an empty field), so
`json.loads` and `csv.DictReader` read back exactly what the report functions returned.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import IO, Any

from rich.console import Console
from rich.table import Table

from exporter.changelog import ChangeFeed, ChangeRow, FieldChange, LockHistory
from exporter.report import Inventory, RunDetail, RunRow

FORMATS = ("table", "csv", "json")

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
RUN_COLUMNS = (
    "id",
    "started_at",
    "finished_at",
    "duration_seconds",
    "status",
    "trigger",
    "owners_seen",
    "locks_seen",
    "created",
    "updated",
    "removed",
    "restored",
    "unchanged",
    "skipped",
    "api_requests",
    "error",
    "client_id",
)
RUN_OWNER_COLUMNS = (
    "owner_account_id",
    "owner_name",
    "status",
    "locks_seen",
    "created",
    "updated",
    "removed",
    "restored",
    "unchanged",
    "skipped",
    "fetched_at",
    "error",
)


# -- values ---------------------------------------------------------------------------------------


def json_value(value: Any) -> Any:
    """A value as JSON holds it: times as ISO-8601 text, containers recursively."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return value


def csv_value(value: Any) -> str:
    """A value as a CSV field: NULL is empty, booleans are true/false, times ISO-8601."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _cell(value: Any) -> str:
    """A value for a table cell: short UTC times, yes/no."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _shown(value: Any) -> str:
    """A value inside a sentence (old -> new)."""
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return repr(value)
    return _cell(value)


def write_json(data: Any, out: IO[str]) -> None:
    """`data` as indented JSON, ASCII: every other character as an escape (`\\u00e4`, `\\u202e`),
    so that no control or bidi character of the data reaches a terminal raw."""
    out.write(json.dumps(json_value(data), indent=2) + "\n")


def write_csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], out: IO[str]) -> None:
    """Rows as CSV with a header line."""
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: csv_value(row.get(c)) for c in columns})


# -- locks ----------------------------------------------------------------------------------------


def inventory_json(inv: Inventory) -> dict[str, Any]:
    """`exporter locks --format json`."""
    return {
        "as_of": inv.as_of.at if inv.as_of else None,
        "as_of_run": inv.as_of.run_id if inv.as_of else None,
        "owners": [
            {"id": o.id, "name": o.name, "active": o.active, "removed_at": o.removed_at}
            for o in inv.owners
        ],
        "locks": [lock.as_dict() for lock in inv.locks],
    }


def inventory_csv(inv: Inventory, out: IO[str]) -> None:
    """`exporter locks --format csv`: one row per lock."""
    write_csv((lock.as_dict() for lock in inv.locks), LOCK_COLUMNS, out)


def inventory_table(
    inv: Inventory, console: Console, *, include_removed: bool, filtered: bool = False
) -> None:
    """Grouped by owner account like Tapkey's console sample (`filtered`: by model or text)."""
    if inv.as_of is not None:
        run = f" (end of run {inv.as_of.run_id})" if inv.as_of.run_id is not None else ""
        console.print(f"Inventory as of {_cell(inv.as_of.at)} UTC{run}")
    if not inv.owners:
        console.print("No lock matches --model / --search." if filtered else "No owner accounts.")
        return
    by_owner: dict[str, list[Any]] = {o.id: [] for o in inv.owners}
    for lock in inv.locks:
        by_owner[lock.owner_account_id].append(lock)
    for owner in inv.owners:
        label = f"{owner.name or '(no name)'} ({owner.id})"
        if owner.removed_at is not None:
            label += f", removed {_cell(owner.removed_at)}"
        locks = by_owner[owner.id]
        if not locks:
            console.print(f"No bound locks for owner account {label}.")
            continue
        table = Table(
            title=f"Owner account {label}: {_count(len(locks), 'lock')}", title_justify="left"
        )
        for column in ("Lock ID", "Lock ID (hex)", "Title", "Description", "Lock model", "Bound"):
            # Ids stay whole (`history` needs them): folded, never cut short with an ellipsis.
            table.add_column(column, overflow="fold", no_wrap=column == "Bound")
        if include_removed:
            table.add_column("Removed")
        for lock in locks:
            cells = [
                lock.id,
                lock.lock_id_hex or "",
                lock.title or "",
                lock.description or "",
                lock.lock_model_name or "",
                _cell(lock.bind_date),
            ]
            if include_removed:
                cells.append(_cell(lock.removed_at))
            table.add_row(*cells)
        console.print(table)
    removed = sum(1 for lock in inv.locks if lock.removed_at is not None)
    tail = f" ({removed} removed)" if removed else ""
    console.print(
        f"{_count(len(inv.locks), 'lock')} in {_count(len(inv.owners), 'owner account')}{tail}."
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# -- changes and histories ------------------------------------------------------------------------


def _change_dicts(rows: Iterable[ChangeRow]) -> Iterable[dict[str, Any]]:
    for row in rows:
        base = row.as_dict()
        base.pop("changes")
        for change in row.changes or (FieldChange("", None, None),):
            yield {**base, "field": change.field or None, "old": change.old, "new": change.new}


def changes_csv(rows: Iterable[ChangeRow], out: IO[str]) -> None:
    """One CSV row per changed field."""
    write_csv(_change_dicts(rows), CHANGE_COLUMNS, out)


def describe(row: ChangeRow, names: Mapping[str, str | None]) -> str:
    """What a change did, in words: `title: 'A' -> 'B'`, or the removal reason."""
    if row.change_type == "removed":
        return f"removed: {row.removal_reason}" if row.removal_reason else "removed"
    if row.change_type == "created":
        return f"created ({row.lock_model_name})" if row.lock_model_name else "created"
    parts = []
    for change in row.changes:
        if change.field == "owner_account_id":  # names here; the ids are in csv/json
            old, new = (names.get(v) or str(v) for v in (change.old, change.new))
            parts.append(f"owner: {old} -> {new}")
        else:
            parts.append(f"{change.field}: {_shown(change.old)} -> {_shown(change.new)}")
    text = "; ".join(parts)
    if row.change_type == "restored":
        return f"restored; {text}" if text else "restored"
    return text or "updated"


def changes_table(feed: ChangeFeed, console: Console, *, title: str | None = None) -> None:
    """One line per change."""
    table = Table(title=title, title_justify="left")
    for column in ("When (UTC)", "Run", "Change", "What", "Id", "Owner account", "Details"):
        table.add_column(column, overflow="fold", no_wrap=column in ("When (UTC)", "Change"))
    for row in feed.rows:
        what = row.entity if row.title is None else f"{row.entity} {row.title!r}"
        table.add_row(
            _cell(row.changed_at),
            str(row.run_id),
            row.change_type,
            what,
            row.lock_id_hex or row.id if row.entity == "lock" else row.id,
            row.owner_name or row.owner_account_id or "",
            describe(row, feed.owner_names),
        )
    console.print(table)


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
            _cell(b.held_from),
            _cell(b.held_to) or "now",
            b.end_reason or "",
        )
    console.print(held)
    versions = Table(title="Versions", title_justify="left")
    for column in ("When (UTC)", "Run", "Bound lock id", "Change", "Title", "What changed"):
        versions.add_column(column, overflow="fold", no_wrap=column == "When (UTC)")
    for row in history.versions:
        versions.add_row(
            _cell(row.changed_at),
            str(row.run_id),
            row.id,
            row.change_type,
            row.title or "",
            describe(row, history.owner_names),
        )
    console.print(versions)


# -- runs -----------------------------------------------------------------------------------------


def _summary(error: str | None, width: int = 80) -> str:
    line = (error or "").strip().splitlines()[0] if error and error.strip() else ""
    return line if len(line) <= width else line[: width - 3] + "..."


def runs_table(rows: Sequence[RunRow], console: Console) -> None:
    """Recent runs, newest first (the trigger and full error are in csv/json and `runs show`)."""
    table = Table(title="Runs (newest first)", title_justify="left")
    for column in ("Run", "Started (UTC)", "Took", "Status", "Owners", "Locks", "+", "~", "-", "r"):
        table.add_column(column, no_wrap=True)
    table.add_column("Error", overflow="fold", min_width=24, ratio=1)
    for run in rows:
        table.add_row(
            str(run.id),
            run.started_at.strftime("%Y-%m-%d %H:%M"),
            f"{run.duration_seconds:.1f} s" if run.duration_seconds is not None else "",
            run.status,
            str(run.owners_seen),
            str(run.locks_seen),
            str(run.created),
            str(run.updated),
            str(run.removed),
            str(run.restored),
            _summary(run.error),
        )
    console.print(table)
    console.print("Locks: + created, ~ updated, - removed, r restored.")


def run_detail_json(detail: RunDetail) -> dict[str, Any]:
    """`exporter runs show --format json`."""
    return {"run": detail.run.as_dict(), "owners": [o.as_dict() for o in detail.owners]}


def run_detail_table(detail: RunDetail, console: Console) -> None:
    """A run's figures, then one line per owner account."""
    run = detail.run
    facts = Table(title=f"Run {run.id}: {run.status}", show_header=False, title_justify="left")
    for name in RUN_COLUMNS[1:]:
        value = getattr(run, name)
        facts.add_row(name, f"{value:.2f}" if isinstance(value, float) else _cell(value))
    console.print(facts)
    owners = Table(title="Owner accounts", title_justify="left")
    owners.add_column("Owner account", overflow="fold")
    for column in ("Status", "Locks", "+", "~", "-", "r", "Fetched (UTC)"):
        owners.add_column(column, no_wrap=True)
    owners.add_column("Error", overflow="fold", min_width=24, ratio=1)
    for o in detail.owners:
        owners.add_row(
            f"{o.owner_name or '?'} ({o.owner_account_id})",
            o.status,
            str(o.locks_seen),
            str(o.created),
            str(o.updated),
            str(o.removed),
            str(o.restored),
            _cell(o.fetched_at),
            o.error or "",
        )
    console.print(owners)
    console.print("Locks: + created, ~ updated, - removed, r restored.")
