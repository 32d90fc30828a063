"""The real `exporter` command as a subprocess: exit codes, the writer lock, crash recovery."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import typer
from rich.console import Console
from sqlalchemy import Engine, create_engine, func, select
from support.cli import EXPORTER, run_exporter
from support.helpers import subprocess_env
from support.history import assert_history_consistent, expected_locks, locks_at
from typer.testing import CliRunner

from exporter import cli
from exporter.db.schema import sync_run_owners, sync_runs
from exporter.demo import run_demo
from exporter.errors import UsageError
from exporter.sandbox.server import Fault, Sandbox, SandboxRequest
from exporter.sync.run_records import ABANDONED


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*EXPORTER, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def _scalar(engine: Engine, query: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(query).scalar() or 0)  # type: ignore[call-overload]


def _running(engine: Engine) -> bool:
    return _scalar(engine, select(func.count()).where(sync_runs.c.status == "running")) > 0


def test_run_once_prints_a_summary_and_json(sandbox: Sandbox, tmp_path: Path) -> None:
    env = subprocess_env(sandbox, f"sqlite:///{tmp_path / 'inv.db'}")

    table = run_exporter(env, "run-once")
    as_json = run_exporter(env, "run-once", "--format", "json")
    quiet = run_exporter(env, "run-once", "--quiet")

    assert table.returncode == 0, table.stderr
    assert "succeeded" in table.stdout and "created" in table.stdout
    data = json.loads(as_json.stdout)
    assert data["status"] == "succeeded" and data["counts"]["unchanged"] == 15
    # Times in the one ISO-8601 form every other JSON and CSV output uses.
    assert datetime.fromisoformat(data["started_at"]).isoformat() == data["started_at"]
    assert datetime.fromisoformat(data["owners"][0]["fetched_at"]).tzinfo is not None
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


def test_run_once_reports_changes_per_entity(sandbox: Sandbox, tmp_path: Path) -> None:
    env = subprocess_env(sandbox, f"sqlite:///{tmp_path / 'inv.db'}")
    env["EXPORTER_TAPKEY__ENTITIES"] = "contacts,cards,grants"

    as_json = run_exporter(env, "run-once", "--format", "json")
    sandbox.revoke_grant(sandbox.grants_payload(sandbox.owners_payload()[0]["id"])[0]["id"])
    table = run_exporter(env, "run-once")

    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    entities = data["entities"]
    assert list(entities) == ["locks", "contacts", "cards", "grants"]
    assert entities["locks"] == data["counts"] and entities["grants"] == data["access"]["grants"]
    created = Counter(c["entity"] for c in data["changes"] if c["change_type"] == "created")
    assert created == {
        "owner": 3,
        "lock": 15,
        **{e[:-1]: entities[e]["created"] for e in ("contacts", "cards", "grants")},
    }
    assert all(entities[e]["created"] > 0 for e in entities)
    assert table.returncode == 0, table.stderr
    cells = [[c.strip() for c in line.strip("│").split("│")] for line in table.stdout.splitlines()]
    header = ["created", "updated", "removed", "restored", "unchanged", "skipped"]
    rows = {row[0]: dict(zip(header, row[1:], strict=True)) for row in cells if len(row) == 7}
    assert list(rows) == ["locks", "contacts", "cards", "grants"]
    assert (rows["grants"]["updated"], rows["grants"]["created"]) == ("1", "0")


def test_run_once_with_an_entity_whose_scope_is_missing_is_partial(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    env = subprocess_env(sandbox, f"sqlite:///{tmp_path / 'inv.db'}")
    env["EXPORTER_TAPKEY__ENTITIES"] = "contacts,grants"
    env["EXPORTER_TAPKEY__SCOPES"] = "read:owneraccounts read:core:entities"

    result = run_exporter(env, "run-once")

    assert result.returncode == 3, result.stderr
    assert "partial" in result.stdout and "contacts" in result.stdout
    assert "token lacks scope read:grants" in result.stderr
    assert "@example." not in result.stderr  # no identifier (email) in any log line


@pytest.mark.parametrize(
    "args, env_extra, code, message",
    [
        pytest.param(["run-once", "--bogus"], {}, 2, "No such option", id="unknown-option"),
        pytest.param(
            ["run-once"], {"EXPORTER_TAPKEY__PAGE_SIZE": "0"}, 2, "page_size", id="bad-config"
        ),
        pytest.param(
            ["run-once"],
            {"EXPORTER_TAPKEY__ENTITIES": "locks,doors"},
            2,
            "unknown entity 'doors'",
            id="unknown-entity",
        ),
        pytest.param(
            ["run-once"],
            {"EXPORTER_TAPKEY__CLIENT_SECRET": "wrong-secret"},
            1,
            "client_secret",
            id="wrong-secret",
        ),
        pytest.param(
            ["run-once"],
            {"EXPORTER_DATABASE__URL": "postgresql://postgres@127.0.0.1:9/none"},
            5,
            "cannot connect",
            id="db-unreachable",
        ),
    ],
)
def test_exit_codes(
    sandbox: Sandbox,
    tmp_path: Path,
    args: list[str],
    env_extra: dict[str, str],
    code: int,
    message: str,
) -> None:
    env = subprocess_env(sandbox, f"sqlite:///{tmp_path / 'inv.db'}")
    env.update(env_extra)

    result = run_exporter(env, *args)

    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "wrong-secret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_a_partial_run_exits_3(sandbox: Sandbox, tmp_path: Path) -> None:
    owner = sandbox.owners_payload()[0]["id"]
    sandbox.add_fault(Fault(route="locks", owner_id=owner, status=500, times=None))
    env = subprocess_env(sandbox, f"sqlite:///{tmp_path / 'inv.db'}")
    env["EXPORTER_TAPKEY__MAX_RETRIES"] = "0"

    result = run_exporter(env, "run-once")

    assert result.returncode == 3, result.stderr
    assert owner in result.stderr


def test_a_schema_behind_the_code_exits_5_and_writes_nothing(
    sandbox: Sandbox, empty_db_url: str
) -> None:
    if empty_db_url.startswith("sqlite"):
        pytest.skip("SQLite is upgraded automatically by run-once")
    env = subprocess_env(sandbox, empty_db_url)

    result = run_exporter(env, "run-once")
    current = run_exporter(env, "db", "current")

    assert result.returncode == 5 and "exporter db upgrade" in result.stderr
    assert current.returncode == 5 and "behind" in current.stdout
    assert sandbox.request_count == 0
    upgraded = run_exporter(env, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert run_exporter(env, "db", "current").returncode == 0


# Runs `exporter run-once` in-process and prints which of these modules it loaded.
_LOADED = """
import runpy, sys
sys.argv = ["exporter", "run-once", "--quiet"]
try:
    runpy.run_module("exporter.cli", run_name="__main__")
except SystemExit as exit:
    code = exit.code
heavy = ("alembic", "exporter.read.inventory", "exporter.read.changelog", "exporter.read.render")
print(code, sorted(m for m in heavy if m in sys.modules))
"""


def test_run_once_loads_neither_the_read_side_nor_alembic(
    sandbox: Sandbox, db_url: str, engine: Engine
) -> None:
    # What start-up costs before the first request: a schema already at head needs no Alembic,
    # a sync no reports. (The time itself is in benchmarks/: see the README.)
    env = subprocess_env(sandbox, db_url)
    assert run_exporter(env, "run-once", "--quiet").returncode == 0  # creates the schema
    loaded = subprocess.run(
        [EXPORTER[0], "-c", _LOADED], env=env, capture_output=True, text=True, timeout=60
    )
    assert loaded.stdout.strip() == "0 []", loaded.stderr


# Imports the command line as the `exporter` script does and prints which of these it loaded.
_IMPORTED = """
import sys
import exporter.cli
unneeded = ("apscheduler", "prometheus_client", "wsgiref", "rich", "alembic", "exporter.read")
print(sorted(m for m in unneeded if m in sys.modules))
"""


def test_importing_the_cli_loads_no_scheduler_metrics_display_alembic_or_read_side(
    tmp_path: Path,
) -> None:
    # Every command pays for what `import exporter.cli` loads before it starts: the daemon's
    # scheduler, metrics and HTTP server, rich (output, a progress bar), Alembic and the read side
    # are loaded by the commands that use them, when they use them.
    loaded = subprocess.run(
        [EXPORTER[0], "-c", _IMPORTED], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert loaded.stdout.strip() == "[]", loaded.stderr


def test_two_concurrent_runs_one_exits_4(sandbox: Sandbox, db_url: str, engine: Engine) -> None:
    # The first run's lock lists are held until the second run has exited, however slowly a
    # busy machine starts the second process: the two always overlap.
    second_done = threading.Event()

    def hold_locks(request: SandboxRequest) -> None:
        if request.route == "locks":
            second_done.wait(60)

    sandbox.hooks.append(hold_locks)
    env = subprocess_env(sandbox, db_url)
    env["EXPORTER_TAPKEY__WORKERS"] = "1"
    first = _start(env, "run-once")
    try:
        _wait_for(lambda: _running(engine))
        second = run_exporter(env, "run-once")
    finally:
        second_done.set()
        _out, err_text = first.communicate(timeout=60)

    assert second.returncode == 4, second.stderr
    assert "writer lock" in second.stderr
    assert first.returncode == 0, err_text
    assert _scalar(engine, select(func.count()).select_from(sync_runs)) == 1


def test_concurrent_first_runs_on_a_new_sqlite_file_create_the_schema_once(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    # The first run of a new SQLite file creates the schema under the writer lock: the runs that
    # start meanwhile are skipped (exit 4) instead of failing on "table already exists".
    sandbox.add_fault(Fault(route="locks", kind="delay", delay=0.5, times=None))
    url = f"sqlite:///{tmp_path / 'new.db'}"
    env = {**subprocess_env(sandbox, url), "EXPORTER_TAPKEY__WORKERS": "1"}

    runs = [_start(env, "run-once", "--quiet") for _ in range(4)]
    results = [(run.wait(timeout=120), run.communicate()[1]) for run in runs]

    codes = [code for code, _ in results]
    assert set(codes) <= {0, 4} and 0 in codes, results
    for code, stderr in results:
        assert "Traceback" not in stderr and "already exists" not in stderr
        if code == 4:
            assert "another exporter run holds the writer lock" in stderr
    engine = create_engine(url)
    try:
        assert _scalar(engine, select(func.count()).select_from(sync_runs)) == codes.count(0)
        assert_history_consistent(engine)
    finally:
        engine.dispose()


def test_a_killed_run_is_marked_failed_by_the_next_and_history_converges(
    sandbox: Sandbox, db_url: str, engine: Engine
) -> None:
    env = subprocess_env(sandbox, db_url)
    assert run_exporter(env, "run-once").returncode == 0
    for owner in sandbox.owners_payload():
        sandbox.rename(sandbox.locks_payload(owner["id"])[0]["id"], f"renamed {owner['id'][:4]}")
    sandbox.add_fault(Fault(route="locks", kind="delay", delay=0.5, times=None))
    env["EXPORTER_TAPKEY__WORKERS"] = "1"
    victim = _start(env, "run-once")
    try:
        _wait_for(lambda: _scalar(engine, select(func.count()).select_from(sync_run_owners)) > 3)
        os.kill(victim.pid, signal.SIGKILL)
    finally:
        victim.communicate(timeout=30)
    assert _running(engine)
    assert_history_consistent(engine)
    with engine.connect() as conn:
        committed = conn.execute(
            select(
                func.sum(sync_run_owners.c.locks_seen), func.sum(sync_run_owners.c.updated)
            ).where(sync_run_owners.c.run_id == 2)
        ).one()
    sandbox.clear_faults()

    recovery = run_exporter(env, "run-once")

    assert recovery.returncode == 0, recovery.stderr
    with engine.connect() as conn:
        runs = conn.execute(select(sync_runs).order_by(sync_runs.c.id)).mappings().all()
    assert [(r["status"], r["error"]) for r in runs] == [
        ("succeeded", None),
        ("failed", ABANDONED),
        ("succeeded", None),
    ]
    # No end time is made up for the killed run; its counts are those its owners committed.
    killed = runs[1]
    assert killed["finished_at"] is None
    assert (killed["locks_seen"], killed["updated"]) == tuple(committed)
    assert killed["updated"] > 0
    assert "run(s) 2 had no recorded end (the process was killed, or lost" in recovery.stderr
    assert "dead process" not in recovery.stderr
    finished = runs[-1]["finished_at"]
    assert locks_at(engine, finished) == expected_locks(sandbox.snapshot())
    assert_history_consistent(engine)


def test_demo_builds_a_history_in_a_fresh_sqlite_file(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}
    result = run_exporter(env, "demo", "--generations", "2", timeout=120, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "demo.db").is_file()
    assert "Run 3" in result.stdout and "current_bound_locks" in result.stdout
    # Every entity is enabled: a grant's history and who could open its lock then and now.
    assert "grants: " in result.stdout and "History of grant" in result.stdout
    assert "giving access at the end of run 1" in result.stdout
    assert "giving access at the end of run 3" in result.stdout


def test_sandbox_command_serves_a_fake_tapkey_until_interrupted() -> None:
    server = _start(os.environ.copy(), "sandbox", "--port", "0", "--owners", "2")
    try:
        assert server.stdout is not None
        first_line = server.stdout.readline()
        base_url = first_line.rsplit(" at ", 1)[1].strip()
        token = requests.post(
            f"{base_url}/connect/token",
            data={"grant_type": "client_credentials"},
            auth=("sandbox-client", "sandbox-secret"),
            timeout=5,
        ).json()["access_token"]
        owners = requests.get(
            f"{base_url}/api/v1/Owners", headers={"Authorization": f"Bearer {token}"}, timeout=5
        ).json()
        assert len(owners) == 2
        logs = requests.get(
            f"{base_url}/api/v1/Owners/{owners[0]['id']}/LogEntries",
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
        ).json()
        assert logs and logs[0]["logType"]  # the access data, with the default sizes
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=10)
    assert server.returncode in (0, 130)


def test_lock_timeout_waits_for_the_other_run_instead_of_skipping(
    sandbox: Sandbox, db_url: str, engine: Engine
) -> None:
    sandbox.add_fault(Fault(route="locks", kind="delay", delay=0.4, times=3))
    env = subprocess_env(sandbox, db_url)
    env["EXPORTER_TAPKEY__WORKERS"] = "1"
    first = _start(env, "run-once")
    try:
        _wait_for(lambda: _running(engine))
        second = run_exporter({**env, "EXPORTER_DATABASE__LOCK_TIMEOUT": "30"}, "run-once")
    finally:
        first.communicate(timeout=60)

    assert (first.returncode, second.returncode) == (0, 0), second.stderr
    with engine.connect() as conn:
        runs = conn.execute(select(sync_runs).order_by(sync_runs.c.id)).mappings().all()
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"]
    assert runs[0]["finished_at"] <= runs[1]["started_at"]


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for name, command in getattr(group, "commands", {}).items():
        found.append((*path, name))
        found += _commands(command, (*path, name))
    return found


def test_every_help_text_is_shown_whole() -> None:
    # Help is rendered as rich markup: an unescaped "[logging]" in a docstring vanished.
    root = typer.main.get_command(cli.app)
    paths = _commands(root)
    assert ("db", "upgrade") in paths and ("sandbox",) in paths
    for path in paths:
        command = root
        for name in path:
            command = command.commands[name]  # type: ignore[attr-defined]
        written = command.help or ""  # type: ignore[attr-defined]  # the docstring or help=
        shown = CliRunner().invoke(cli.app, [*path, "--help"], terminal_width=200).output
        missing = set(written.replace("\\[", "[").split()) - set(shown.split())
        assert not missing, f"exporter {' '.join(path)} --help lost {sorted(missing)}"


def _config(folder: Path, database: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.toml"
    path.write_text(
        '[tapkey]\nclient_id = "c"\nclient_secret = "s"\n'
        f'[database]\nurl = "sqlite:///{database}"\n'
    )
    return path


def test_the_config_file_comes_from_the_flag_then_the_env_then_the_working_folder(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}
    named = _config(tmp_path / "named", "named.db")
    flagged = _config(tmp_path / "flagged", "flagged.db")
    cwd = tmp_path / "cwd"
    _config(cwd, "cwd.db")

    def upgrade(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return run_exporter({**env, **extra}, "db", "upgrade", *args, cwd=cwd)

    # Each relative SQLite path is resolved against its own config file's folder.
    assert upgrade().returncode == 0
    assert (cwd / "cwd.db").is_file()
    assert upgrade(EXPORTER_CONFIG=str(named)).returncode == 0
    assert (named.parent / "named.db").is_file()
    assert upgrade("--config", str(flagged), EXPORTER_CONFIG=str(named)).returncode == 0
    assert (flagged.parent / "flagged.db").is_file()

    missing = upgrade(EXPORTER_CONFIG=str(tmp_path / "nope.toml"))
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        f"error: config file {tmp_path / 'nope.toml'} (from EXPORTER_CONFIG) does not exist; "
        "check the path"
    )


@pytest.mark.parametrize(
    "command",
    [
        ["locks"],
        ["changes"],
        ["runs"],
        ["history", "x"],
        ["db", "current"],
        ["run-once", "--dry-run"],
    ],
)
def test_commands_that_write_nothing_create_no_sqlite_file(
    command: list[str], tmp_path: Path
) -> None:
    # A mistyped path must say so, not leave an empty database that "has no schema".
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}
    env.update(EXPORTER_TAPKEY__CLIENT_ID="c", EXPORTER_TAPKEY__CLIENT_SECRET="s")
    missing = tmp_path / "typo" / "inventory.db"
    done = run_exporter(env, *command, "--database-url", f"sqlite:///{missing}", cwd=tmp_path)
    assert done.returncode == 5
    assert done.stderr.strip() == (
        f"error: the SQLite database {missing} does not exist; check [database] url "
        "(`exporter run-once` or `exporter db upgrade` creates it)"
    )
    assert list(tmp_path.iterdir()) == []


def test_demo_replaces_only_an_earlier_demo_database(tmp_path: Path) -> None:
    quiet = Console(file=io.StringIO())
    path = tmp_path / "demo.db"
    run_demo(path, generations=1, console=quiet)
    run_demo(path, generations=1, console=quiet)  # an earlier demo's file is replaced

    with sqlite3.connect(path) as conn:  # now it holds a real run: the user's data
        conn.execute("UPDATE sync_runs SET trigger = 'manual' WHERE id = 1")
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    for target in (path, notes):
        before = target.read_bytes()
        with pytest.raises(UsageError, match="exists and is not a demo database"):
            run_demo(target, generations=1, console=quiet)
        assert target.read_bytes() == before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_run_once_records_its_run_as_interrupted(
    sandbox: Sandbox, db_url: str, engine: Engine, signum: int
) -> None:
    sandbox.add_fault(Fault(route="locks", kind="delay", delay=0.5, times=10))
    env = subprocess_env(sandbox, db_url)
    env["EXPORTER_TAPKEY__WORKERS"] = "1"
    process = _start(env, "run-once")
    _wait_for(lambda: _running(engine))
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == 1, stderr
    assert "stopping the run" in stderr and "error: interrupted" in stderr
    with engine.connect() as conn:
        run = conn.execute(select(sync_runs)).mappings().one()
    assert (run["status"], run["error"]) == ("failed", "interrupted")
    assert run["finished_at"] is not None


def _stop_and_time(process: subprocess.Popen[str], signum: int = signal.SIGTERM) -> float:
    """Send `signum` and return how long the process took to exit (killed after 30 s)."""
    started = time.monotonic()
    process.send_signal(signum)
    try:
        process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
    return time.monotonic() - started


def _assert_interrupted(engine: Engine) -> None:
    with engine.connect() as conn:
        run = conn.execute(select(sync_runs)).mappings().one()
    assert (run["status"], run["error"]) == ("failed", "interrupted")
    assert_history_consistent(engine)


@pytest.mark.parametrize("route", ["owners", "locks"])
def test_a_signalled_run_once_abandons_requests_in_flight(
    sandbox: Sandbox, db_url: str, engine: Engine, route: str
) -> None:
    # A request hanging for a minute (a slow API, up to [tapkey] read_timeout) does not hold up
    # a stop: the run is recorded as interrupted and the process exits at once.
    sandbox.add_fault(Fault(route=route, kind="delay", delay=60, times=None))
    process = _start(subprocess_env(sandbox, db_url), "run-once")
    _wait_for(lambda: sandbox.requests[route] > 0)

    assert _stop_and_time(process) < 5
    assert process.returncode == 1
    _assert_interrupted(engine)


def test_a_signalled_run_once_sends_no_further_retry(
    sandbox: Sandbox, db_url: str, engine: Engine
) -> None:
    # Every owner's first request is refused with "retry in 20 s": a stop ends those waits at
    # once, and no retry is sent.
    busy = Fault(route="locks", status=503, headers={"Retry-After": "20"}, times=None)
    sandbox.add_fault(busy)
    env = {**subprocess_env(sandbox, db_url), "EXPORTER_TAPKEY__MAX_RETRIES": "5"}
    process = _start(env, "run-once")
    _wait_for(lambda: sandbox.requests["locks"] == 3)
    time.sleep(0.2)  # the three fetches are asleep now

    assert _stop_and_time(process) < 5
    assert sandbox.requests["locks"] == 3
    assert process.returncode == 1
    _assert_interrupted(engine)


def test_sandbox_on_a_port_in_use_is_one_line_and_exit_2(sandbox: Sandbox) -> None:
    port = sandbox.base_url.rsplit(":", 1)[1]
    done = run_exporter(os.environ.copy(), "sandbox", "--port", port, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use; choose another "
        "--port (0 picks a free one)"
    )


def test_a_failed_owner_is_reported_once_on_stderr(sandbox: Sandbox, tmp_path: Path) -> None:
    # Cron mails stderr: the sync's log line names the failed owner; the summary must not repeat it.
    owner_id = sandbox.owners_payload()[0]["id"]
    sandbox.add_fault(Fault(route="locks", status=403, owner_id=owner_id, times=None))
    env = subprocess_env(sandbox, f"sqlite:///{tmp_path / 'inv.db'}")

    done = run_exporter(env, "run-once", "--quiet")

    assert done.returncode == 3, done.stderr
    assert done.stderr.count(f"owner {owner_id} failed:") == 1


def test_markup_and_emoji_codes_in_data_are_shown_as_they_are(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    # Titles and errors are data: console markup would take "[b]" or "[tapkey]" for styling, and
    # emoji codes ":smile:" for emoji.
    title = "Door [b]Red[/b] [wing] :smile:"
    lock_id = sandbox.locks_payload(sandbox.owners_payload()[0]["id"])[0]["id"]
    sandbox.rename(lock_id, title)
    env = {**subprocess_env(sandbox, f"sqlite:///{tmp_path / 'inv.db'}"), "COLUMNS": "300"}
    assert run_exporter(env, "run-once", "--quiet").returncode == 0
    failed = run_exporter(
        {**env, "EXPORTER_TAPKEY__CLIENT_SECRET": "wrong-secret"}, "run-once", "--quiet"
    )
    assert failed.returncode == 1 and "[tapkey]" in failed.stderr

    assert title in run_exporter(env, "locks").stdout
    assert title in run_exporter(env, "history", lock_id).stdout
    assert "[tapkey]" in run_exporter(env, "runs", "show", "2").stdout
