"""Log entries read back: the lock_openings_daily view, its documented query and `exporter log`."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text, update
from support import doc_sql
from support.log_entries import _instant, listed_entries, run, settings_for
from typer.testing import CliRunner

from exporter import cli
from exporter.cli import app
from exporter.db.engine import make_engine
from exporter.db.schema import log_entries
from exporter.read.log_view import LogRow
from exporter.sandbox.server import Sandbox

# -- the view and the documented query -------------------------------------------------------------


def test_lock_openings_daily_counts_trigger_lock_commands_per_lock_and_day(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=9, owners=2, locks_per_owner=4, log_entries_per_owner=80) as fake:
        run(settings_for(fake, db_url, tmp_path))
        listed = listed_entries(fake)
    expected = Counter(
        (_instant(e["lockTimestamp"]).date().isoformat(), e["boundLockId"])
        for e in listed.values()
        if e["logType"] == "Command" and e["command"] == "TriggerLock"
    )
    assert any(e["command"] != "TriggerLock" for e in listed.values())  # some are not openings
    with engine.connect() as conn:
        viewed = conn.execute(
            text("SELECT day, bound_lock_id, openings, title FROM lock_openings_daily")
        ).all()
        # The example of docs/schema.md, verbatim.
        queries = doc_sql.queries("`lock_openings_daily`")
        documented = [conn.execute(text(query)).all() for query in queries]
    assert {(str(day), lock): n for day, lock, n, _ in viewed} == dict(expected)
    assert all(title for *_, title in viewed)  # joined to the lock
    assert documented[0] and all(row for row in documented)
    total = sum(row.openings for row in documented[0])
    assert total == sum(n for (day, _), n in expected.items() if day >= "2024-12-01")


# -- exporter log ---------------------------------------------------------------------------------


@pytest.fixture
def log_db(db_url: str, engine: Engine, tmp_path: Path) -> tuple[str, dict[tuple[str, str], Any]]:
    """A database holding one run's log entries; the sandbox's entries by (owner, id)."""
    with Sandbox(seed=12, owners=2, locks_per_owner=3, log_entries_per_owner=15) as fake:
        run(settings_for(fake, db_url, tmp_path))
        return db_url, listed_entries(fake)


def _log(db_url: str, tmp_path: Path, *args: str) -> Any:
    config = tmp_path / "config.toml"
    config.write_text("")
    env = {"EXPORTER_CONFIG": str(config), "EXPORTER_DATABASE__URL": db_url}
    # Tables 250 columns wide: rich fixes the console width when it is created (import time).
    saved, cli.out.width = cli.out._width, 250
    try:
        return CliRunner().invoke(app, ["log", *args], env=env)
    finally:
        cli.out._width = saved


def _newest_first(entries: Iterable[dict[str, Any]]) -> list[str]:
    keyed = sorted(
        entries,
        key=lambda e: (_instant(e["lockTimestamp"]), _instant(e["receivedAt"]), e["id"]),
    )
    # Ties in both times are ordered by id ascending, within the descending order.
    ordered = sorted(
        keyed, key=lambda e: (_instant(e["lockTimestamp"]), _instant(e["receivedAt"])), reverse=True
    )
    return [e["id"] for e in ordered]


def test_log_json_and_csv_list_every_entry_newest_first(
    log_db: tuple[str, dict[tuple[str, str], Any]], tmp_path: Path
) -> None:
    db_url, listed = log_db
    result = _log(db_url, tmp_path, "--format", "json", "--limit", "0")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["id"] for r in rows] == _newest_first(listed.values())
    for row in rows:
        entry = listed[(row["owner_account_id"], row["id"])]
        assert row["command"] == entry["command"] and row["entry_no"] == entry["entryNo"]
        assert _instant(row["lock_timestamp"]) == _instant(entry["lockTimestamp"])
        assert row["title"]  # the lock's title, joined
    csv_result = _log(db_url, tmp_path, "--format", "csv", "--limit", "0")
    assert csv_result.exit_code == 0
    csv_rows = list(csv.DictReader(io.StringIO(csv_result.stdout)))
    assert [r["id"] for r in csv_rows] == [r["id"] for r in rows]
    assert list(csv_rows[0]) == list(LogRow._fields)
    three = json.loads(_log(db_url, tmp_path, "--format", "json", "--limit", "3").stdout)
    assert [r["id"] for r in three] == [r["id"] for r in rows[:3]]


def test_log_by_lock_prefix_and_since(
    log_db: tuple[str, dict[tuple[str, str], Any]], tmp_path: Path
) -> None:
    db_url, listed = log_db
    lock_id = next(iter(listed.values()))["boundLockId"]
    result = _log(db_url, tmp_path, "--lock", lock_id[:8], "--format", "json", "--limit", "0")
    assert result.exit_code == 0, result.output
    of_lock = [e for e in listed.values() if e["boundLockId"] == lock_id]
    assert [r["id"] for r in json.loads(result.stdout)] == _newest_first(of_lock)
    since = sorted(_instant(e["lockTimestamp"]) for e in listed.values())[-4]
    recent = _log(db_url, tmp_path, "--since", since.isoformat(), "--format", "json")
    assert len(json.loads(recent.stdout)) == 4
    table = _log(db_url, tmp_path, "--lock", lock_id[:8])
    assert table.exit_code == 0
    assert f"{len(of_lock)} log entries" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lock", "no-such-lock"], "no bound lock has the id"),
        (["--since", "yesterday"], "cannot read 'yesterday' as a time"),
        (["--since", "1d", "--until", "2d"], "swap them"),
        (["--format", "xml"], "must be one of table, csv, json"),
    ],
)
def test_log_bad_input_is_one_line_and_exit_2(
    log_db: tuple[str, dict[tuple[str, str], Any]], tmp_path: Path, args: list[str], message: str
) -> None:
    result = _log(log_db[0], tmp_path, *args)
    assert result.exit_code == 2
    assert message in result.output


def test_log_output_escapes_what_the_api_sent(
    log_db: tuple[str, dict[tuple[str, str], Any]], tmp_path: Path
) -> None:
    db_url = log_db[0]
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                update(log_entries).values(log_type="\x1b[31mRed", command="=HYPERLINK(1)")
            )
    finally:
        engine.dispose()
    table = _log(db_url, tmp_path, "--limit", "1")
    assert "\\x1b[31mRed" in table.stdout and "\x1b" not in table.stdout
    cells = list(csv.DictReader(io.StringIO(_log(db_url, tmp_path, "--format", "csv").stdout)))
    assert cells[0]["command"] == "'=HYPERLINK(1)"
    raw = _log(db_url, tmp_path, "--format", "csv", "--csv-raw").stdout
    assert next(csv.DictReader(io.StringIO(raw)))["command"] == "=HYPERLINK(1)"
