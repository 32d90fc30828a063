"""The real `exporter run-once` as a subprocess: summaries, exit codes, messages on stderr."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from support.cli import run_exporter
from support.cli_runs import _scalar
from support.helpers import subprocess_env

from exporter.db.schema import sync_runs
from exporter.sandbox.server import Fault, Sandbox, SandboxRequest


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


def test_run_once_asks_for_its_token_before_it_opens_its_run(
    sandbox: Sandbox, db_url: str, engine: Engine
) -> None:
    # Start-up (docs/operations.md): the token request leaves once the configuration and the
    # schema are checked; the sync is loaded, takes the writer lock and opens its run meanwhile.
    runs_at_token_request: list[int] = []

    def count_runs(request: SandboxRequest) -> None:
        if request.route == "token":
            runs_at_token_request.append(_scalar(engine, select(func.count(sync_runs.c.id))))

    sandbox.hooks.append(count_runs)
    result = run_exporter(subprocess_env(sandbox, db_url), "run-once", "--quiet")

    assert result.returncode == 0, result.stderr
    assert runs_at_token_request == [0]
    assert _scalar(engine, select(func.count(sync_runs.c.id))) == 1


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
