"""`exporter access` output: a table for people, CSV and JSON for programs (see read.formats)."""

from __future__ import annotations

from typing import IO, Any

from rich.console import Console
from rich.table import Table

from exporter.read.access import AccessAnswer, AccessRow
from exporter.read.formats import cell, write_csv_tuples


def access_json(answer: AccessAnswer) -> dict[str, Any]:
    """`exporter access --format json`."""
    as_of_run = answer.as_of.run_id if answer.as_of is not None else None
    return {
        "subject": answer.subject,
        "query": answer.query,
        "ids": answer.ids,
        "title": answer.title,
        "at": answer.at,
        "as_of_run": as_of_run,
        "bound": answer.bound,
        "grants": [row._asdict() for row in answer.rows],
    }


def access_csv(answer: AccessAnswer, out: IO[str], *, raw: bool = False) -> None:
    """`exporter access --format csv`: one line per grant giving access."""
    write_csv_tuples(answer.rows, AccessRow._fields, out, raw=raw)


def access_table(answer: AccessAnswer, console: Console) -> None:
    """Who can open the lock (or what the contact can open), one grant a row."""
    when = (
        "now"
        if answer.as_of is None
        else f"at the end of run {answer.as_of.run_id}"
        if answer.as_of.run_id is not None
        else f"at {cell(answer.at)} UTC"
    )
    what = "lock" if answer.subject == "lock" else "contact"
    name = f"{answer.title!r} " if answer.title else ""
    console.print(
        f"{len(answer.rows)} grant(s) giving access {when} for {what} {name}"
        f"({', '.join(answer.ids)}); time restrictions are shown, not evaluated"
        + ("" if answer.bound else "; the lock was not bound then, so no grant opens it")
    )
    table = Table(show_lines=False)
    # A lock's grants go to contacts or cards; a contact's grants name their locks.
    first, second = (
        ("Who (contact or card)", "Identifier / label")
        if answer.subject == "lock"
        else ("Lock", "Bound lock id")
    )
    for column in (first, second, "From (UTC)", "Before (UTC)", "Hours", "Grant"):
        table.add_column(column, overflow="fold", no_wrap=column.endswith("(UTC)"))
    for row in answer.rows:
        if answer.subject == "lock":
            # Under [privacy] hash/drop a contact has no title: its id still says who it is.
            who: str | None = (
                (row.contact_title or f"contact {row.contact_id}")
                if row.contact_id
                else f"card {row.card_title or ''}".strip()
            )
            detail = row.contact_identifier if row.contact_id else row.card_label
        else:
            who, detail = row.lock_title or row.bound_lock_id, row.bound_lock_id
        table.add_row(
            who or "",
            detail or "",
            cell(row.validity_from) or "-",
            cell(row.validity_before) or "-",
            "restricted" if row.time_restriction_ical else "any time",
            row.grant_id,
        )
    console.print(table)
