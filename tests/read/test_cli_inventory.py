"""`exporter locks`, `history`, `changes` and `runs` on every backend: content, formats, errors."""

from __future__ import annotations

import csv
import io
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.inventory_data import InventoryDb
from typer.testing import CliRunner

from exporter import cli
from exporter.cli import app
from exporter.db.schema import LOCK_TRACKED
from exporter.read import formats, render
from exporter.read import runs as read_runs


@pytest.fixture
def wide() -> Iterator[None]:
    """Tables 250 columns wide: rich fixes the console width when it is created (import time)."""
    saved = cli.out._width
    cli.out.width = 250
    yield
    cli.out._width = saved


@pytest.fixture
def exporter(inventory_db: InventoryDb, tmp_path: Path, wide: None) -> Any:
    """Run `exporter ARGS...` in-process against the filled database; returns the result."""
    config = tmp_path / "config.toml"
    config.write_text("")  # keeps a developer's ./config.toml or $EXPORTER_CONFIG out of it
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(
            app,
            list(args),
            env={
                "EXPORTER_CONFIG": str(config),
                "EXPORTER_DATABASE__URL": inventory_db.url,
            },
        )

    return run


def _ok(result: Any) -> str:
    assert result.exit_code == 0, (result.exit_code, result.output, result.stderr)
    return str(result.stdout)


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _tracked_json(lock: dict[str, Any]) -> dict[str, Any]:
    values = {name: lock[name] for name in LOCK_TRACKED}
    for name in ("bind_date", "unbind_date"):
        values[name] = _when(values[name])
    return values


def _as_csv(row: dict[str, Any], columns: tuple[str, ...]) -> dict[str, str]:
    return {
        c: formats.csv_value(_when(row[c]) if c.endswith(("_at", "_date")) else row[c])
        for c in columns
    }


# -- locks ----------------------------------------------------------------------------------------


def test_locks_as_of_each_run_equals_that_generation_in_json_and_csv(
    inventory_db: InventoryDb, exporter: Any
) -> None:
    for generation in inventory_db.generations:
        data = json.loads(_ok(exporter("locks", "--as-of", str(generation.run_id), "-f", "json")))

        assert data["as_of_run"] == generation.run_id
        assert _when(data["as_of"]) == generation.finished_at
        assert {lock["id"]: _tracked_json(lock) for lock in data["locks"]} == generation.locks
        assert {lock["id"]: lock["lock_id_hex"] for lock in data["locks"]} == generation.hexes
        assert {o["id"]: o["name"] for o in data["owners"]} == generation.owners
        rows = _csv(_ok(exporter("locks", "--as-of", str(generation.run_id), "-f", "csv")))
        assert rows == [_as_csv(lock, render.LOCK_COLUMNS) for lock in data["locks"]]
        inactive = {i for i, lock in generation.locks.items() if lock["active"] is False}
        assert {r["id"] for r in rows if r["active"] == "false"} == inactive
        assert {r["active"] for r in rows} <= {"true", "false"}


def test_locks_as_of_a_timestamp_or_now(inventory_db: InventoryDb, exporter: Any) -> None:
    second = inventory_db.generations[1]
    naive = second.finished_at.replace(tzinfo=None).isoformat()
    vienna = second.finished_at.astimezone(
        __import__("zoneinfo").ZoneInfo("Europe/Vienna")
    ).isoformat()
    for moment in (naive, vienna, second.finished_at.isoformat().replace("+00:00", "Z")):
        data = json.loads(_ok(exporter("locks", "--as-of", moment, "--format", "json")))
        assert {lock["id"]: _tracked_json(lock) for lock in data["locks"]} == second.locks

    current = json.loads(_ok(exporter("locks", "--format", "json")))
    assert current["as_of"] is None
    last = inventory_db.generations[-1]
    assert {lock["id"]: _tracked_json(lock) for lock in current["locks"]} == last.locks


def test_locks_before_the_first_run_say_that_nothing_was_recorded_yet(
    inventory_db: InventoryDb, exporter: Any
) -> None:
    # An empty inventory then is no answer about the locks: the exporter had not looked yet.
    first = inventory_db.generations[0].started_at
    table = _ok(exporter("locks", "--as-of", (first - timedelta(days=1)).isoformat()))
    assert f"the first run started {first:%Y-%m-%d %H:%M:%S} UTC" in table
    assert "No owner accounts." not in table

    data = json.loads(_ok(exporter("locks", "--as-of", first.isoformat(), "--format", "json")))
    assert data["locks"] == []  # the run had begun: nothing of it is written yet
    assert "first run" not in _ok(exporter("locks", "--as-of", "1"))


def test_locks_table_is_grouped_by_owner_like_the_console_sample(
    inventory_db: InventoryDb, exporter: Any
) -> None:
    last = inventory_db.generations[-1]
    table = _ok(exporter("locks"))

    for owner_id, name in last.owners.items():
        assert f"Owner account {name} ({owner_id})" in table or (
            f"No bound locks for owner account {name} ({owner_id})" in table
        )
    for lock_id in last.locks:
        assert lock_id in table  # whole ids, never cut short
    assert f"{len(last.locks)} locks in {len(last.owners)} owner accounts" in table
    first_owner = table.index("Owner account ")
    assert all(table.index(name) >= first_owner for name in last.owners.values())

    then = _ok(exporter("locks", "--as-of", str(inventory_db.generations[0].run_id)))
    assert f"(end of run {inventory_db.generations[0].run_id})" in then
    assert "Renamed Door" not in then and "Renamed Door" in table


def test_locks_filters(inventory_db: InventoryDb, exporter: Any) -> None:
    owner_id, _, new_name = inventory_db.renamed_owner
    data = json.loads(_ok(exporter("locks", "--owner", new_name.lower(), "-f", "json")))
    assert data["locks"] and {lock["owner_account_id"] for lock in data["locks"]} == {owner_id}
    assert [o["id"] for o in data["owners"]] == [owner_id]

    searched = json.loads(_ok(exporter("locks", "--search", "RENAMED", "-f", "json")))
    assert [lock["id"] for lock in searched["locks"]] == [inventory_db.renamed]
    removed = json.loads(_ok(exporter("locks", "--include-removed", "-f", "json")))
    gone = {lock["id"] for lock in removed["locks"] if lock["removed_at"]}
    assert inventory_db.rebound[0] in gone
    assert "Removed" in _ok(exporter("locks", "--include-removed"))
    model = removed["locks"][0]["lock_model_name"]
    by_model = json.loads(_ok(exporter("locks", "--model", model, "-f", "json")))
    assert {lock["lock_model_name"] for lock in by_model["locks"]} == {model}
    nothing = _ok(exporter("locks", "--model", "No Such Model"))
    assert "No lock matches --model / --search." in nothing and "No owner accounts" not in nothing


@pytest.mark.parametrize(
    "args, message",
    [
        pytest.param(
            ["locks", "--as-of", "last tuesday"], "cannot read 'last tuesday'", id="as-of"
        ),
        pytest.param(["locks", "--as-of", "9999"], "there is no run 9999", id="no-run"),
        pytest.param(
            ["locks", "--as-of", "20260301"],
            "there is no run 20260301; for the day 2026-03-01 write it with dashes",
            id="no-run-but-a-date",
        ),
        pytest.param(["locks", "--owner", "Nobody"], "no owner account", id="owner"),
        pytest.param(["changes", "--since", "7"], "cannot read '7'", id="since"),
        pytest.param(["changes", "--kind", "deleted"], "unknown change kind", id="kind"),
        pytest.param(["history", "zz-not-a-lock"], "no bound lock", id="history"),
        pytest.param(["runs", "show", "9999"], "there is no run 9999", id="run"),
        pytest.param(["changes", "--run", "9999"], "there is no run 9999", id="changes-run"),
        pytest.param(["runs", "--status", "done"], "unknown run status 'done'", id="status"),
        # Past what sync_runs.id or LIMIT can hold: a database refused these (exit 1 or 5).
        pytest.param(["locks", "--as-of", "3000000000"], "no run 3000000000", id="huge-as-of"),
        pytest.param(["runs", "show", "9" * 20], f"no run {'9' * 20}", id="huge-run"),
        pytest.param(["changes", "--run", "3000000000"], "no run 3000000000", id="huge-run-opt"),
        pytest.param(["locks", "--as-of", "\u00b2"], "cannot read", id="as-of-superscript"),
        pytest.param(["changes", "--since", "99999999999d"], "the years 1 to 9999", id="long-ago"),
        pytest.param(
            ["locks", "--as-of", "0001-01-01T00:00:00+05:00"], "the years 1 to 9999", id="year-0"
        ),
        # A Latin-1 terminal's bytes reach Python as lone surrogates: no driver encodes them.
        pytest.param(["history", "T\udcfcr"], "is not UTF-8 text", id="history-not-utf8"),
        pytest.param(["log", "--lock", "\udcff"], "is not UTF-8 text", id="log-not-utf8"),
        pytest.param(["access", "--contact", "\udcff"], "is not UTF-8 text", id="contact-not-utf8"),
        pytest.param(
            ["changes", "--since", "2026-02-01", "--until", "2026-01-01"],
            "is not before --until",
            id="since-after-until",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(exporter: Any, args: list[str], message: str) -> None:
    result = exporter(*args)

    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


@pytest.mark.parametrize("command", ["runs", "log"])
def test_a_limit_past_what_sql_takes_is_a_usage_error(exporter: Any, command: str) -> None:
    result = exporter(command, "--limit", "9" * 20)  # a database refused it (exit 1 or 5)
    assert result.exit_code == 2 and "less than or equal to" in result.stderr


def test_an_unknown_format_is_a_usage_error(exporter: Any) -> None:
    result = exporter("locks", "--format", "xml")
    assert result.exit_code == 2 and "table, csv, json" in result.stderr
    assert "'--format'" in result.stderr  # names the option, as for any other bad value


def test_a_database_without_the_schema_exits_5(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("")
    result = CliRunner().invoke(
        app,
        ["runs"],
        env={
            "EXPORTER_CONFIG": str(config),
            "EXPORTER_DATABASE__URL": f"sqlite:///{tmp_path / 'empty.db'}",
        },
    )
    assert result.exit_code == 5 and "exporter db upgrade" in result.stderr


def test_a_read_command_loads_no_api_client(inventory_db: InventoryDb, tmp_path: Path) -> None:
    # requests and OAuth (the sync's side) took 0.1 s to import, in every read command.
    config = tmp_path / "config.toml"
    config.write_text("")
    args = ["runs", "-c", str(config), "--database-url", inventory_db.url]
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from exporter.cli import app\n"
        f"assert CliRunner().invoke(app, {args!r}).exit_code == 0\n"
        "print([m for m in ('requests', 'oauthlib', 'exporter.tapkey') if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr


# -- history --------------------------------------------------------------------------------------


def test_history_of_a_lowercase_hex_id_shows_both_bindings(
    inventory_db: InventoryDb, exporter: Any
) -> None:
    old, new = inventory_db.rebound
    hex_id = next(g.hexes[new] for g in inventory_db.generations if new in g.hexes)
    assert hex_id is not None

    data = json.loads(_ok(exporter("history", hex_id.lower(), "--format", "json")))

    assert {lock["id"] for lock in data["locks"]} == {old, new}
    assert [(b["bound_lock_id"], b["end_reason"]) for b in data["bindings"]][-2:] == [
        (old, "unbound"),
        (new, None),
    ]
    rebind_run = inventory_db.generations[3].run_id
    assert [(v["id"], v["change_type"]) for v in data["versions"] if v["run_id"] == rebind_run] == [
        (new, "created"),
        (old, "removed"),
    ]
    table = _ok(exporter("history", hex_id.lower()))
    assert f"2 bound lock(s) for {hex_id.lower()!r} (lock id {hex_id})" in table
    assert old in table and new in table and "unbound" in table
    rows = _csv(_ok(exporter("history", hex_id, "-f", "csv")))
    assert [int(r["version_id"]) for r in rows] == [v["version_id"] for v in data["versions"]]


def test_history_shows_old_to_new_values_per_field(
    inventory_db: InventoryDb, exporter: Any
) -> None:
    runs = [g.run_id for g in inventory_db.generations]
    moved, source, target = inventory_db.moved
    data = json.loads(_ok(exporter("history", moved, "-f", "json")))
    (update,) = [v for v in data["versions"] if v["run_id"] == runs[3]]
    assert (update["change_type"], update["changes"]) == (
        "updated",
        [{"field": "owner_account_id", "old": source, "new": target}],
    )
    table = _ok(exporter("history", moved))
    names = inventory_db.generations[-1].owners  # tables show current owner names
    assert f"owner: {names[source]} -> {names[target]}" in table
    assert f"{names[source]} ({source})" in table and "moved" in table  # who held it

    renamed = _ok(exporter("history", inventory_db.renamed))
    assert "title: '" in renamed and "-> 'Renamed Door'" in renamed
    unbound = json.loads(_ok(exporter("history", inventory_db.unbound, "-f", "json")))
    assert [(v["change_type"], v["removal_reason"]) for v in unbound["versions"]][-2:] == [
        ("removed", "unbound"),
        ("restored", None),
    ]
    assert "removed: unbound" in _ok(exporter("history", inventory_db.unbound))


def test_history_takes_the_start_of_an_id(inventory_db: InventoryDb, exporter: Any) -> None:
    # The demo's tables show the first 8 characters of each id.
    whole = json.loads(_ok(exporter("history", inventory_db.renamed, "-f", "json")))
    short = json.loads(_ok(exporter("history", inventory_db.renamed[:8], "-f", "json")))
    assert short["locks"] == whole["locks"] and short["versions"] == whole["versions"]

    listed = json.loads(_ok(exporter("locks", "--include-removed", "-f", "json")))
    ids = sorted(lock["id"] for lock in listed["locks"])
    shared = next(a[:1] for a, b in itertools.pairwise(ids) if a[:1] == b[:1])
    result = exporter("history", shared)
    assert result.exit_code == 2 and "more than one bound lock id" in result.stderr
    upper = json.loads(_ok(exporter("history", inventory_db.renamed[:8].upper(), "-f", "json")))
    assert upper["versions"] == whole["versions"]  # a start typed in another case is taken too


# -- changes --------------------------------------------------------------------------------------


def _change_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["version_id"], row["entity"])


def test_changes_json_and_csv_round_trip(inventory_db: InventoryDb, exporter: Any) -> None:
    data = json.loads(_ok(exporter("changes", "--format", "json")))
    rows = _csv(_ok(exporter("changes", "--format", "csv")))

    flattened = []
    for change in data:
        base = {k: v for k, v in change.items() if k != "changes"}
        for field in change["changes"] or [{"field": None, "old": None, "new": None}]:
            flattened.append({**base, **field})
    expected = []
    for row in flattened:
        values = {**row, "changed_at": _when(row["changed_at"])}
        for side in ("old", "new"):
            if row["field"] in ("bind_date", "unbind_date"):
                values[side] = _when(row[side])
        expected.append({c: formats.csv_value(values[c]) for c in render.CHANGE_COLUMNS})
    assert rows == expected
    assert {c["run_id"] for c in data} == {g.run_id for g in inventory_db.generations} - {
        inventory_db.generations[6].run_id  # the partial run changed nothing
    }


def test_changes_since_a_duration_and_by_run_kind_and_owner(
    inventory_db: InventoryDb, exporter: Any
) -> None:
    generations = inventory_db.generations
    everything = json.loads(_ok(exporter("changes", "-f", "json")))

    # Runs are one day apart and the last one ran about an hour ago: 12h covers only the last.
    recent = json.loads(_ok(exporter("changes", "--since", "12h", "-f", "json")))
    assert recent and {c["run_id"] for c in recent} == {generations[-1].run_id}
    assert recent == [c for c in everything if c["run_id"] == generations[-1].run_id]
    since = generations[2].started_at.isoformat()
    until = generations[3].started_at.isoformat()
    window = json.loads(_ok(exporter("changes", "--since", since, "--until", until, "-f", "json")))
    by_run = json.loads(_ok(exporter("changes", "--run", str(generations[2].run_id), "-f", "json")))
    assert window == by_run and {c["run_id"] for c in by_run} == {generations[2].run_id}

    kinds = json.loads(_ok(exporter("changes", "--kind", "removed,restored", "-f", "json")))
    assert {c["change_type"] for c in kinds} == {"removed", "restored"}
    assert kinds == [c for c in everything if c["change_type"] in ("removed", "restored")]
    moved, source, _ = inventory_db.moved
    of_owner = json.loads(_ok(exporter("changes", "--owner", source, "-f", "json")))
    assert moved in {c["id"] for c in of_owner}

    assert f"{len(by_run)} changes" in _ok(exporter("changes", "--run", str(generations[2].run_id)))
    table = _ok(exporter("changes", "--run", str(generations[3].run_id)))
    assert "removed: unbound" in table
    assert "owner: " in table and " -> " in table


def test_changes_quiet_prints_nothing_when_nothing_changed(
    inventory_db: InventoryDb, exporter: Any
) -> None:
    partial = str(inventory_db.generations[6].run_id)
    assert _ok(exporter("changes", "--run", partial, "--quiet")) == ""
    assert _ok(exporter("changes", "--run", partial, "--quiet", "-f", "json")) == ""
    assert "0 changes" in _ok(exporter("changes", "--run", partial))
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert _ok(exporter("changes", "--since", later, "-q")) == ""
    loud = _ok(exporter("changes", "--run", str(inventory_db.generations[3].run_id), "-q"))
    assert "changes" not in loud.splitlines()[0] and "removed" in loud


# -- runs -----------------------------------------------------------------------------------------


def test_runs_lists_recent_runs_in_every_format(inventory_db: InventoryDb, exporter: Any) -> None:
    generations = inventory_db.generations
    data = json.loads(_ok(exporter("runs", "--format", "json")))
    assert [r["id"] for r in data] == [g.run_id for g in reversed(generations)]
    assert [r["status"] for r in data] == [g.status for g in reversed(generations)]
    assert data[-1]["created"] == len(generations[0].locks)
    rows = _csv(_ok(exporter("runs", "--format", "csv")))
    assert rows == [_as_csv(r, read_runs.RUN_COLUMNS) for r in data]
    assert len(json.loads(_ok(exporter("runs", "--limit", "2", "-f", "json")))) == 2

    table = _ok(exporter("runs"))
    partial = generations[6]
    assert "partial" in table and "succeeded" in table
    assert f"owner {inventory_db.partial_owner}" in table  # the error summary

    quiet = _ok(exporter("runs", "--quiet"))
    assert "partial" in quiet and "succeeded" not in quiet and str(partial.run_id) in quiet
    only_ok = _ok(exporter("runs", "--status", "succeeded", "--quiet"))
    assert only_ok == ""


def test_runs_show_lists_the_owner_outcomes(inventory_db: InventoryDb, exporter: Any) -> None:
    partial = inventory_db.generations[6]
    data = json.loads(_ok(exporter("runs", "show", str(partial.run_id), "--format", "json")))

    assert data["run"]["id"] == partial.run_id and data["run"]["status"] == "partial"
    first = data["owners"][0]
    assert (first["owner_account_id"], first["status"]) == (inventory_db.partial_owner, "failed")
    assert "503" in first["error"]
    assert {o["owner_account_id"] for o in data["owners"]} == set(partial.owners)
    assert {o["owner_name"] for o in data["owners"]} == set(partial.owners.values())
    rows = _csv(_ok(exporter("runs", "show", str(partial.run_id), "-f", "csv")))
    assert rows == [_as_csv(o, read_runs.RUN_OWNER_COLUMNS) for o in data["owners"]]

    table = _ok(exporter("runs", "show", str(partial.run_id)))
    assert f"Run {partial.run_id}: partial" in table and "failed" in table and "503" in table
    for name in partial.owners.values():
        assert name in table
