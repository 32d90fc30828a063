"""The `exporter` commands: what they import, help texts, config file lookup, demo and sandbox."""

from __future__ import annotations

import io
import os
import re
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
import typer
from rich.console import Console
from sqlalchemy import Engine
from support.cli import EXPORTER, run_exporter
from support.cli_runs import _start
from support.helpers import subprocess_env
from typer.testing import CliRunner

from exporter import cli
from exporter.demo import run_demo
from exporter.errors import UsageError
from exporter.sandbox.server import Sandbox

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


def _loaded_by_importing(modules: str, candidates: tuple[str, ...], cwd: Path) -> str:
    """Which of `candidates` a fresh interpreter has loaded after `import {modules}`, printed."""
    listed = f"sorted(m for m in {candidates!r} if m in sys.modules)"
    script = f"import sys\nimport {modules}\nprint({listed})"
    loaded = subprocess.run(
        [EXPORTER[0], "-c", script], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    return loaded.stdout.strip() or loaded.stderr


def test_importing_the_cli_loads_no_scheduler_metrics_display_alembic_or_read_side(
    tmp_path: Path,
) -> None:
    # Every command pays for what `import exporter.cli` loads before it starts: the daemon's
    # scheduler, metrics and HTTP server, rich (output, a progress bar), Alembic and the read side
    # are loaded by the commands that use them, when they use them.
    unneeded = ("apscheduler", "prometheus_client", "wsgiref", "rich", "alembic", "exporter.read")
    assert _loaded_by_importing("exporter.cli", unneeded, tmp_path) == "[]"


def test_run_once_sends_its_token_request_before_loading_the_tables_and_the_sync(
    tmp_path: Path,
) -> None:
    # What run-once loads before its token request leaves (docs/operations.md, "Start-up").
    later = ("exporter.db.schema", "exporter.sync", "exporter.tapkey.client", "alembic", "rich")
    before = "exporter.cli, exporter.service.preflight"
    assert _loaded_by_importing(before, later, tmp_path) == "[]"


def test_demo_builds_a_history_in_a_fresh_sqlite_file(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}
    result = run_exporter(env, "demo", timeout=120, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "demo.db").is_file()
    assert "Run 4" in result.stdout and "current_bound_locks" in result.stdout
    # Every entity is enabled: a grant's history and who could open its lock then and now.
    assert "grants: " in result.stdout and "History of grant" in result.stdout
    assert "giving access at the end of run 1" in result.stdout
    assert "giving access at the end of run 4" in result.stdout
    # The lock its `access` hint names is still bound: the command has something to show now.
    (prefix,) = set(re.findall(r"exporter access ([0-9a-f]{8})", result.stdout))
    with sqlite3.connect(tmp_path / "demo.db") as db:
        query = "SELECT removed_at FROM bound_locks WHERE substr(id, 1, 8) = ?"
        assert db.execute(query, (prefix,)).fetchall() == [(None,)]


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
    missing = tmp_path / "typo" / "inventory.db"
    assert _sqlite_error(command, missing, tmp_path) == (
        f"error: the SQLite database {missing} does not exist; check [database] url "
        "(`exporter run-once` or `exporter db upgrade` creates it)"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["run-once"], ["db", "current"], ["locks"]])
def test_a_directory_as_the_sqlite_database_is_named_as_such(
    command: list[str], tmp_path: Path
) -> None:
    assert _sqlite_error(command, tmp_path, tmp_path) == (
        f"error: the SQLite database {tmp_path} is a directory; check [database] url, which "
        "names the database file (e.g. sqlite:///exporter.db)"
    )
    assert list(tmp_path.iterdir()) == []


def _sqlite_error(command: list[str], database: Path, cwd: Path) -> str:
    """The one line `command` prints for the SQLite database `database`, which it must not open
    (exit 5)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}
    env.update(EXPORTER_TAPKEY__CLIENT_ID="c", EXPORTER_TAPKEY__CLIENT_SECRET="s")
    done = run_exporter(env, *command, "--database-url", f"sqlite:///{database}", cwd=cwd)
    assert done.returncode == 5
    return done.stderr.strip()


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


def test_sandbox_on_a_port_in_use_is_one_line_and_exit_2(sandbox: Sandbox) -> None:
    port = sandbox.base_url.rsplit(":", 1)[1]
    done = run_exporter(os.environ.copy(), "sandbox", "--port", port, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use; choose another "
        "--port (0 picks a free one)"
    )
