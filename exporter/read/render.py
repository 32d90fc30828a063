"""Read-side output: inventories and changes as rich tables for people, CSV and JSON for scripts.

JSON keeps native types (numbers, true/false, null) and writes times as ISO-8601 UTC; CSV writes
the same values as text (times ISO-8601, booleans `true`/`false`, NULL as an empty field), so
`json.loads` and `csv.DictReader` read back exactly what the report functions returned, except
that a CSV text cell a spreadsheet would run as a formula gets a leading `'` (unless `raw`).
Both write a list given as an iterator while it is read: a million locks in constant memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime
from itertools import groupby, islice
from operator import attrgetter, itemgetter
from typing import IO, Any

from rich.console import Console
from rich.table import Table

from exporter.read.changelog import ChangeFeed, ChangeRow, FieldChange, LockHistory
from exporter.read.inventory import Inventory, LockRow, OwnerRow, fold
from exporter.read.runs import RunDetail, RunRow

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

# OWASP's list (CSV injection): a spreadsheet takes a cell that starts with one of these for a
# formula, and a formula can run commands or send the sheet's contents away.
FORMULA_STARTS = frozenset("=+-@\t\r")
# Tables are for people: past this many rows they say how many more there are instead.
TABLE_LIMIT = 1000


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def csv_value(value: Any, *, raw: bool = False) -> str:
    """A value as a CSV field: NULL is empty, booleans are true/false, times ISO-8601.

    Text starting with a formula character gets a leading `'` unless `raw` (numbers and times
    are never touched).
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, str):
        return "'" + value if not raw and value[:1] in FORMULA_STARTS else value
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
    """`data` as indented JSON; a list given as an iterator is written while it is consumed.

    The text is what `json.dumps(data, indent=2)` gives (times ISO-8601): ASCII, every other
    character written as an escape (`\\u00e4`, `\\u202e`), so that no control or bidi character
    of the data reaches a terminal raw. Parsed, it is exactly the data.
    """
    _write_json(data, out, 0)
    out.write("\n")


def _write_json(value: Any, out: IO[str], depth: int) -> None:
    if isinstance(value, Iterator):
        pad = "\n" + "  " * (depth + 1)
        started = False
        for batch in _batches(value):
            out.write(("," if started else "[") + pad + _dump_items(batch, depth + 1))
            started = True
        out.write("\n" + "  " * depth + "]" if started else "[]")
    elif isinstance(value, Mapping) and any(isinstance(v, Iterator) for v in value.values()):
        pad = "\n" + "  " * (depth + 1)
        for n, (key, item) in enumerate(value.items()):
            out.write(("," if n else "{") + pad + _dump(str(key), 0) + ": ")
            _write_json(item, out, depth + 1)
        out.write("\n" + "  " * depth + "}")
    else:
        out.write(_dump(value, depth))


def _batches(items: Iterable[Any], size: int = 1000) -> Iterator[list[Any]]:
    it = iter(items)
    return iter(lambda: list(islice(it, size)), [])


_CONTAINERS = frozenset({dict, list, tuple})


def _flat(value: Any) -> bool:
    return type(value) is dict and bool(value) and _CONTAINERS.isdisjoint(map(type, value.values()))


def _dump_items(items: list[Any], depth: int) -> str:
    """List items at nesting `depth`, as json.dumps(indent=2) lays them out, joined."""
    if not all(map(_flat, items)):
        return ("," + "\n" + "  " * depth).join(_dump(item, depth) for item in items)
    # Flat objects (locks, runs) in one call of the C encoder, with the indentation as its item
    # separator (with `indent`, json.dumps uses its pure-Python encoder: 5x slower). Outside
    # strings "},\n" can only be where one object ends and the next begins (a newline inside a
    # string is written as \n).
    inner = "\n" + "  " * (depth + 1)
    text = json.dumps(items, default=_json_default, separators=("," + inner, ": "))
    opening, closing = "{" + inner, "\n" + "  " * depth + "}"
    text = text[2:-2].replace("}," + inner + "{", closing + ",\n" + "  " * depth + opening)
    return opening + text + closing


def _dump(value: Any, depth: int) -> str:
    """`value` as json.dumps(indent=2) writes it at nesting `depth`."""
    text = json.dumps(value, indent=2, default=_json_default)
    return text.replace("\n", "\n" + "  " * depth) if depth else text


def write_csv(
    rows: Iterable[Mapping[str, Any]], columns: Sequence[str], out: IO[str], *, raw: bool = False
) -> None:
    """Rows (mappings) as CSV with a header line; see `csv_value`."""
    write_csv_tuples(([row.get(c) for c in columns] for row in rows), columns, out, raw=raw)


def write_csv_tuples(
    rows: Iterable[Sequence[Any]], columns: Sequence[str], out: IO[str], *, raw: bool = False
) -> None:
    """Rows (values in `columns` order) as CSV with a header line; see `csv_value`.

    Fields are quoted as the csv module quotes them (a comma, a quote or a newline in them),
    and also for a carriage return, which a reader would take for the end of the row.
    """
    out.write(",".join(_quoted(list(columns))) + "\n")
    for batch in _batches(rows):
        fields = [_quoted(_csv_column(column, raw)) for column in zip(*batch, strict=True)]
        out.write("\n".join(map(",".join, zip(*fields, strict=True))) + "\n")


_BOOL_TEXT = {True: "true", False: "false"}
_first = itemgetter(0)


def _csv_column(column: Sequence[Any], raw: bool) -> list[str]:
    """One column of a batch of rows as `csv_value` writes each of its cells.

    Column by column, so that most columns cost no Python call per cell; the lines are then
    joined with str.join (csv.writer took 3.4 us a lock, the joins 0.2 us).
    """
    kinds = set(map(type, column))
    empty = type(None) in kinds
    kinds.discard(type(None))
    if kinds == {str}:
        if not raw and not FORMULA_STARTS.isdisjoint(map(_first, filter(None, column))):
            return [(v and ("'" + v if v[0] in FORMULA_STARTS else v)) or "" for v in column]
        return [v or "" for v in column] if empty else list(column)
    if not kinds:
        return [""] * len(column)
    if empty:
        return [csv_value(v, raw=raw) for v in column]
    if kinds == {bool}:
        return list(map(_BOOL_TEXT.__getitem__, column))
    if kinds == {datetime}:
        return list(map(datetime.isoformat, column))
    if kinds <= {int, float}:
        return list(map(str, column))
    return [csv_value(v, raw=raw) for v in column]


_NEEDS_QUOTES = (",", '"', "\n", "\r")


def _quoted(column: list[str]) -> list[str]:
    """The fields of `column`, those with a comma, quote, newline or CR quoted (RFC 4180)."""
    text = "".join(column)
    if not any(char in text for char in _NEEDS_QUOTES):
        return column
    return [
        '"' + v.replace('"', '""') + '"' if any(char in v for char in _NEEDS_QUOTES) else v
        for v in column
    ]


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
        console.print(f"Inventory as of {_cell(inv.as_of.at)} UTC{run}")
    total = removed = owners_shown = 0
    for owner, locks in _by_owner(inv.owners, inv.locks):
        if not locks and filtered:
            continue
        owners_shown += 1
        label = f"{owner.name or '(no name)'} ({owner.id})"
        if owner.removed_at is not None:
            label += f", removed {_cell(owner.removed_at)}"
        room = max(TABLE_LIMIT - total, 0)
        total += len(locks)
        removed += sum(1 for lock in locks if lock.removed_at is not None)
        if not locks:
            console.print(f"No bound locks for owner account {label}.")
        elif room:
            _owner_table(label, locks, room, console, include_removed=include_removed)
    if not owners_shown:
        console.print("No lock matches --model / --search." if filtered else "No owner accounts.")
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
            _cell(lock.bind_date),
        ]
        if include_removed:
            cells.append(_cell(lock.removed_at))
        table.add_row(*cells)
    console.print(table)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


# -- changes and histories ------------------------------------------------------------------------


# CHANGE_COLUMNS up to `title` are attributes of the change, then field, old, new, version_id.
_CHANGE_ATTRIBUTES = attrgetter(*CHANGE_COLUMNS[:-4])
_NO_FIELD = (FieldChange("", None, None),)


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
            _cell(row.changed_at),
            str(row.run_id),
            row.change_type,
            what,
            row.lock_id_hex or row.id if row.entity == "lock" else row.id,
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
