"""`exporter check`: config, token and scopes, visible owners, database; writes nothing.

Exit codes: 0 all good, 2 configuration incomplete, 1 Tapkey failed, 5 database unreachable or
schema not current (the first of these that applies).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, text
from support.cli import CliResult
from support.helpers import SANDBOX_SECRET, subprocess_env

from exporter.db import migrate
from exporter.db.engine import make_engine
from exporter.sandbox.server import Fault, Sandbox
from exporter.service.check import RUN_TABLES

Cli = Callable[..., CliResult]


def _counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            table.name: conn.execute(text(f"SELECT COUNT(*) FROM {table.name}")).scalar_one()
            for table in RUN_TABLES
        }


def _lines(result: CliResult) -> dict[str, str]:
    """{check name: "ok ..." / "FAILED ..." / "skip ..."} from both streams."""
    lines = {}
    for line in (result.out + result.err).splitlines():
        status, _, rest = line.partition(" ")
        name, _, detail = rest.strip().partition(" ")
        if status in ("ok", "FAILED", "skip"):
            lines[name] = f"{status} {detail.strip()}"
    return lines


def test_an_owner_name_cannot_print_a_check_line_of_its_own(
    sandbox: Sandbox, db_url: str, exporter_cli: Cli
) -> None:
    owner_id = sandbox.owners_payload()[0]["id"]
    sandbox.update_owner(owner_id, name="Forged\nFAILED database  dropped\r\x1b[2K")

    result = exporter_cli("check", env=subprocess_env(sandbox, db_url))

    owners = [line for line in result.out.splitlines() if line.startswith("ok     owners")]
    assert len(owners) == 1
    assert "Forged\\nFAILED database  dropped\\r\\x1b[2K" in owners[0]
    assert "FAILED" not in result.out.replace(owners[0], "") and "FAILED" not in result.err


def test_all_good_reports_scopes_owners_and_schema_and_writes_nothing(
    sandbox: Sandbox, db_url: str, engine: Engine, exporter_cli: Cli
) -> None:
    # Pages of 2: the run sees full pages, so it learns that the server honours that size.
    env = {**subprocess_env(sandbox, db_url), "EXPORTER_TAPKEY__PAGE_SIZE": "2"}
    assert exporter_cli("run-once", "--quiet", env=env).code == 0
    before = _counts(engine)
    sandbox.reset_counters()

    result = exporter_cli("check", env=env)

    assert result.code == 0, result.err
    lines = _lines(result)
    assert list(lines) == ["config", "token", "owners", "database", "paging", "holds"]
    assert lines["holds"] == "ok none: no removals are held back"
    assert lines["paging"] == (
        f"ok {sandbox.base_url}: the server returns full pages of 2: a shorter page ends a list "
        "without a confirming request"
    )
    assert lines["config"] == "ok environment variables only; client_id sandbox-client"
    assert lines["token"] == "ok granted scopes read:core:entities read:owneraccounts"
    owners = sandbox.owners_payload()
    assert lines["owners"].startswith(f"ok {len(owners)} visible: ")
    assert all(f"{o['name']} ({o['id']})" in lines["owners"] for o in owners)
    assert lines["database"].endswith(
        f"reachable, schema at {migrate.head_revision()} (current), this user may write it"
    )
    assert _counts(engine) == before
    assert set(sandbox.requests) == {"token", "owners"}  # no lock was read


def test_a_sqlite_file_that_does_not_exist_yet_is_not_created(
    sandbox: Sandbox, tmp_path: Path, exporter_cli: Cli
) -> None:
    target = tmp_path / "new" / "inventory.db"

    result = exporter_cli("check", env=subprocess_env(sandbox, f"sqlite:///{target}"))

    assert result.code == 0
    assert _lines(result)["database"].endswith("no file yet; run-once creates it")
    assert not target.exists() and not target.parent.exists()


def test_check_fails_for_a_sqlite_file_that_cannot_be_created(
    sandbox: Sandbox, tmp_path: Path, exporter_cli: Cli
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    env = subprocess_env(sandbox, f"sqlite:///{blocker / 'sub' / 'inventory.db'}")

    result = exporter_cli("check", env=env)

    assert result.code == 5
    assert f"cannot be created ({blocker} is not a folder)" in _lines(result)["database"]


def test_removals_held_back_until_confirmed_are_listed(tmp_path: Path, exporter_cli: Cli) -> None:
    with Sandbox(seed=21, owners=2, locks_per_owner=24) as fake:
        env = subprocess_env(fake, f"sqlite:///{tmp_path / 'inv.db'}")
        assert exporter_cli("run-once", "--quiet", env=env).code == 0
        owner = fake.owners_payload()[0]["id"]
        for lock in fake.locks_payload(owner)[:13]:
            fake.unbind(lock["id"])
        assert exporter_cli("run-once", "--quiet", env=env).code == 3

        result = exporter_cli("check", env=env)

    assert result.code == 0
    assert _lines(result)["holds"] == (
        f"ok 1 held-back removal(s) wait for confirmation: locks of owner {owner} (since run 2); "
        "see docs/operations.md, Confirming mass removals"
    )


@pytest.mark.parametrize(
    "env, faults, code, name, message",
    [
        pytest.param(
            {"EXPORTER_TAPKEY__CLIENT_SECRET": "wrong"},
            [],
            1,
            "token",
            "check [tapkey] client_id and client_secret",
            id="wrong-secret",
        ),
        pytest.param(
            {"EXPORTER_TAPKEY__SCOPES": "read:owneraccounts"},
            [],
            1,
            "token",
            "missing read:core:entities: add them to [tapkey] scopes",
            id="scope-missing",
        ),
        pytest.param(
            {},
            [Fault("owners", status=403, times=None)],
            1,
            "owners",
            "GET /api/v1/Owners was refused (403)",
            id="owner-list-403",
        ),
        pytest.param(
            # The token request follows [tapkey] max_retries like the API requests.
            {"EXPORTER_TAPKEY__MAX_RETRIES": "3"},
            [Fault("token", status=503, times=None)],
            1,
            "token",
            "failed after 4 attempts (HTTP 503)",
            id="token-endpoint-down",
        ),
        pytest.param(
            {},
            [Fault("owners", kind="body", body="[]", times=None)],
            1,
            "owners",
            "no owner accounts visible: make the OAuth client's service account co-admin",
            id="no-owners-visible",
        ),
        pytest.param(
            {"EXPORTER_TAPKEY__CLIENT_ID": ""},
            [],
            2,
            "config",
            "missing [tapkey] client_id",
            id="client-id-missing",
        ),
    ],
)
def test_a_tapkey_or_credentials_problem_is_reported_and_the_database_still_checked(
    sandbox: Sandbox,
    tmp_path: Path,
    exporter_cli: Cli,
    env: dict[str, str],
    faults: list[Fault],
    code: int,
    name: str,
    message: str,
) -> None:
    for fault in faults:
        sandbox.add_fault(fault)
    base = subprocess_env(sandbox, f"sqlite:///{tmp_path / 'inv.db'}")

    result = exporter_cli("check", env={**base, **env})

    assert result.code == code
    lines = _lines(result)
    assert lines[name].startswith("FAILED ") and message in lines[name]
    assert lines["database"].startswith("ok ")
    # Every check has a line: those that need the failed one say they were skipped.
    assert set(lines) == {"config", "token", "owners", "database", "paging", "holds"}
    if name == "config":
        assert lines["token"].startswith("skip ") and lines["owners"].startswith("skip ")
    assert "Traceback" not in result.err and SANDBOX_SECRET not in result.out + result.err


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param(
            "postgresql://exporter:hunter2@127.0.0.1:9/inventory",
            "postgresql://exporter:***@127.0.0.1:9/inventory",
            id="user-info",
        ),
        pytest.param(
            "postgresql://exporter@127.0.0.1:9/inventory?password=hunter2&sslpassword=hunter2k",
            "postgresql://exporter@127.0.0.1:9/inventory?password=***&sslpassword=***",
            id="query",
        ),
    ],
)
def test_an_unreachable_database_exits_5_with_the_password_masked(
    sandbox: Sandbox, exporter_cli: Cli, url: str, shown: str
) -> None:
    result = exporter_cli("check", env=subprocess_env(sandbox, url))

    assert result.code == 5
    database = _lines(result)["database"]
    assert database.startswith(f"FAILED cannot connect to the database {shown}: ")
    assert "hunter2" not in result.out + result.err
    assert _lines(result)["owners"].startswith("ok ")
    current = exporter_cli("db", "current", env=subprocess_env(sandbox, url))
    assert current.code == 5 and f"cannot connect to the database {shown}: " in current.err
    assert "hunter2" not in current.out + current.err


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_db_current_shows_a_url_with_its_query_password_masked(
    sandbox: Sandbox, db_url: str, exporter_cli: Cli
) -> None:
    # PostgreSQL here trusts local connections: the password is sent and ignored.
    url = f"{db_url}?password=hunter2&application_name=exporter"

    result = exporter_cli("db", "current", env=subprocess_env(sandbox, url))

    assert result.code == 0, result.err
    assert "?application_name=exporter&password=***: revision" in result.out
    assert "hunter2" not in result.out + result.err


def test_a_schema_behind_exits_5_and_creates_nothing(
    sandbox: Sandbox, empty_db_url: str, exporter_cli: Cli
) -> None:
    engine = make_engine(empty_db_url)
    try:
        with engine.connect():
            pass  # an existing database (for SQLite: an existing, empty file)
        result = exporter_cli("check", env=subprocess_env(sandbox, empty_db_url))
        tables = inspect(engine).get_table_names()
    finally:
        engine.dispose()

    database = _lines(result)["database"]
    if empty_db_url.startswith("sqlite"):
        # An existing SQLite file without the schema is upgraded by run-once itself.
        assert result.code == 0 and "run-once upgrades it" in database
    else:
        assert result.code == 5
        assert database.startswith("FAILED ") and "run `exporter db upgrade`" in database
    assert tables == []


def test_a_schema_from_a_newer_exporter_exits_5(
    sandbox: Sandbox, db_url: str, engine: Engine, exporter_cli: Cli
) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'zzzz'"))
    try:
        result = exporter_cli("check", env=subprocess_env(sandbox, db_url))
    finally:
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE alembic_version SET version_num = :v"), {"v": migrate.head_revision()}
            )

    assert result.code == 5
    assert "unknown to this exporter version" in _lines(result)["database"]


def test_a_database_of_another_client_exits_2(
    sandbox: Sandbox, db_url: str, exporter_cli: Cli
) -> None:
    env = subprocess_env(sandbox, db_url)
    assert exporter_cli("run-once", "--quiet", env=env).code == 0

    result = exporter_cli("check", env={**env, "EXPORTER_TAPKEY__CLIENT_ID": "another-client"})

    assert result.code == 2
    assert "filled by OAuth client 'sandbox-client'" in _lines(result)["database"]


def test_every_failure_is_listed_and_the_exit_code_follows_the_order(
    sandbox: Sandbox, exporter_cli: Cli
) -> None:
    env = subprocess_env(sandbox, "postgresql://postgres@127.0.0.1:9/x")
    env["EXPORTER_TAPKEY__CLIENT_SECRET"] = "wrong"

    result = exporter_cli("check", env=env)

    lines = _lines(result)
    assert lines["token"].startswith("FAILED ") and lines["database"].startswith("FAILED ")
    assert result.code == 1  # Tapkey before the database


def test_an_invalid_configuration_is_one_line_and_exit_2(
    sandbox: Sandbox, tmp_path: Path, exporter_cli: Cli
) -> None:
    env = subprocess_env(sandbox, f"sqlite:///{tmp_path / 'inv.db'}")
    env["EXPORTER_TAPKEY__WORKERS"] = "many"

    result = exporter_cli("check", env=env)

    assert result.code == 2
    assert result.err.strip() == (
        "error: EXPORTER_TAPKEY__WORKERS: [tapkey] workers: must be a whole number (got 'many'); "
        "fix the environment variable"
    )
    assert sandbox.request_count == 0
