"""Run output: `exporter run-once`'s result, and the recorded runs of `exporter runs` and
`exporter runs show`, as tables for people (and their JSON and CSV shapes).

Loaded by run-once, which must not load the reports' modules (inventory, changelog, render).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from exporter.kinds import OwnerStatus
from exporter.read.formats import cell, write_json

if TYPE_CHECKING:
    from exporter.read.runs import RunDetail, RunRow
    from exporter.results import Change, RunResult


def run_result_json(result: RunResult, out: IO[str], changes: Iterable[Change] | None) -> None:
    """The result as JSON; `changes` (read back as they were written) replace the result's own
    list, which a run that wrote them does not keep."""
    data: dict[str, Any] = dataclasses.asdict(result)
    data["duration_seconds"] = (
        (result.finished_at - result.started_at).total_seconds() if result.finished_at else None
    )
    # Every entity's counts under one key (`counts` holds the locks', `access` the others').
    data["entities"] = {name: c.as_dict() for name, c in result.entity_counts().items()}
    if changes is not None:
        data["changes"] = map(dataclasses.asdict, changes)
    write_json(data, out)


def _counts_table(result: RunResult) -> Table:
    """Changes by kind, one row per entity synced (locks, then [tapkey] entities' others)."""
    entities = result.entity_counts()
    kinds = list(result.counts.as_dict())
    table = Table("changes", *kinds)
    for name, counts in entities.items():
        table.add_row(name, *(str(n) for n in counts.as_dict().values()))
    return table


def print_run_result(result: RunResult, out: Console, err: Console) -> None:
    """The run's figures (a dry run: also the changes it would write); failed owners on `err`
    unless the sync has logged them already."""
    title = "Dry run (nothing written)" if result.dry_run else f"Run {result.run_id}"
    table = Table(title=f"{title}: {result.status}", show_header=False)
    duration = (
        f"{(result.finished_at - result.started_at).total_seconds():.2f} s"
        if result.finished_at
        else "-"
    )
    rows: list[tuple[str, object]] = [
        ("duration", duration),
        ("owners seen", result.owners_seen),
        ("locks seen", result.locks_seen),
        ("API requests", result.api_requests),
    ]
    failed = [o for o in result.owners if o.status == OwnerStatus.FAILED]
    if failed:
        rows.append(("failed owners", len(failed)))
    if result.log_entries or result.log_failures:
        rows.append(("new log entries", result.log_entries))
    if result.log_failures:
        rows.append(("owners whose log failed", len(result.log_failures)))
    for name, value in rows:
        table.add_row(name, str(value))
    out.print(table)
    out.print(_counts_table(result))
    if result.dry_run and result.changes:
        changes = Table(title="Changes that would be written")
        for column in ("entity", "id", "change", "owner", "fields / reason", "title"):
            changes.add_column(column)
        for change in result.changes:
            detail = ", ".join(change.changed_fields or ()) or (change.removal_reason or "")
            changes.add_row(
                change.entity,
                change.id,
                change.change_type,
                change.owner_account_id or "",
                detail,
                change.title or "",
            )
        out.print(changes)
    if not logging.getLogger("exporter.sync.engine").isEnabledFor(logging.WARNING):
        # Otherwise the sync has logged each of them already (cron would mail them twice).
        for owner in failed:
            err.print(f"owner {owner.owner_account_id} failed: {owner.error}")
    if not logging.getLogger("exporter.sync.log_entries").isEnabledFor(logging.WARNING):
        for owner_id, error in result.log_failures.items():
            err.print(f"owner {owner_id}: log entries failed: {error}")


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
    for field in dataclasses.fields(run)[1:]:
        name, value = field.name, getattr(run, field.name)
        facts.add_row(name, f"{value:.2f}" if isinstance(value, float) else cell(value))
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
            cell(o.fetched_at),
            o.error or "",
        )
    console.print(owners)
    console.print("Locks: + created, ~ updated, - removed, r restored.")
