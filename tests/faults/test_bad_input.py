"""Bad command-line input and bad configuration, on every command: one line and exit 2."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
from support.cli import CliResult, one_line, run_exporter
from support.helpers import (
    subprocess_env,
)

from exporter import cli
from exporter.sandbox.server import Sandbox


def _commands(option: str = "--config") -> list[tuple[list[str], list[str], bool]]:
    """Every command as (path, placeholder arguments, takes `option`)."""
    root = typer.main.get_command(cli.app)
    found: list[tuple[list[str], list[str], bool]] = []

    def walk(command: Any, path: list[str]) -> None:
        params = list(command.params)
        options = {opt for param in params for opt in getattr(param, "opts", [])}
        arguments = ["1" for p in params if type(p).__name__ == "TyperArgument" and p.required]
        subcommands = getattr(command, "commands", None) or {}
        if path and (not subcommands or params):
            found.append((path, arguments, option in options))
        for name, sub in subcommands.items():
            walk(sub, [*path, name])

    walk(root, [])
    return found


COMMANDS = _commands()
CONFIG_COMMANDS = [c for c in COMMANDS if c[2]]


@pytest.mark.parametrize(
    "path, arguments, _config", COMMANDS, ids=[" ".join(c[0]) for c in COMMANDS]
)
def test_an_unknown_option_is_one_line_and_exit_2(
    exporter_cli: Callable[..., CliResult], path: list[str], arguments: list[str], _config: bool
) -> None:
    result = exporter_cli(*path, *arguments, "--no-such-option")

    assert result.code == 2
    assert one_line(result.err.strip()) == (
        f"error: No such option: --no-such-option (see 'exporter {' '.join(path)} --help')"
    )


CONFIG_FAULTS = [
    pytest.param(
        "malformed.toml",
        b'[tapkey]\nclient_id = "sandbox-client\n',
        {},
        r"malformed\.toml: invalid TOML: .*\(at line 2, column \d+\)",
        id="malformed-toml",
    ),
    pytest.param(
        "typo.toml",
        b'[tapkey]\nclient_secrte = "x"\n',
        {},
        r"unknown key \[tapkey\] client_secrte in .*typo\.toml; did you mean client_secret\?",
        id="unknown-key",
    ),
    pytest.param(
        "typo-section.toml",
        b"[tapkee]\n",
        {},
        r"unknown section \[tapkee\] in .*; did you mean \[tapkey\]\?",
        id="unknown-section",
    ),
    pytest.param(
        None,
        None,
        {"EXPORTER_TAPKEY__CLIENT_SECRT": "x"},
        r"unknown environment variable EXPORTER_TAPKEY__CLIENT_SECRT: .*did you mean "
        r"EXPORTER_TAPKEY__CLIENT_SECRET\?",
        id="unknown-env-key",
    ),
    pytest.param(
        "a-folder",
        None,
        {},
        r"config file .*a-folder\b.*[Ii]s a directory",
        id="unreadable-config-folder",
    ),
    pytest.param(
        "missing.toml",
        None,
        {},
        r"config file .*missing\.toml\b.*(does not exist|No such file or directory)",
        id="missing-config",
    ),
    pytest.param(
        "latin1.toml",
        b'[tapkey]\nclient_id = "caf\xe9"\n',
        {},
        r"latin1\.toml: not UTF-8 text; save the config file as UTF-8",
        id="not-utf8",
    ),
    pytest.param(
        None,
        None,
        {"EXPORTER_TAPKEY__PAGE_SIZE": "0"},
        r"EXPORTER_TAPKEY__PAGE_SIZE: \[tapkey\] page_size: must be between 1 and 5000",
        id="bad-value",
    ),
    pytest.param(
        None,
        None,
        {"EXPORTER_DATABASE__URL": "sqlite://exporter.db"},
        r"\[database\] url: sqlite://exporter\.db names a host, not a file \(two slashes\): "
        r"write sqlite:///exporter\.db for a relative path",
        id="sqlite-two-slashes",
    ),
    pytest.param(
        None,
        None,
        {"EXPORTER_DATABASE__URL": "mysql://root:pw@127.0.0.1:3306"},
        r"\[database\] url: mysql://root:\*\*\*@127\.0\.0\.1:3306 names no database: add it",
        id="mariadb-without-database",
    ),
    pytest.param(
        None,
        None,
        {"EXPORTER_DATABASE__URL": "postgresql+asyncpg://u@db/x"},
        r"the postgresql driver 'asyncpg' is not supported: the exporter uses psycopg 3; "
        r"write postgresql://",
        id="asyncpg",
    ),
    pytest.param(
        None,
        None,
        {"EXPORTER_DATABASE__URL": "mysql+mysqldb://u@db/x"},
        r"the mysql driver 'mysqldb' is not supported: the exporter uses PyMySQL; write mysql://",
        id="mysqldb",
    ),
]


@pytest.mark.parametrize(
    "path, arguments, _config", CONFIG_COMMANDS, ids=[" ".join(c[0]) for c in CONFIG_COMMANDS]
)
@pytest.mark.parametrize("name, content, env, expected", CONFIG_FAULTS)
def test_bad_configuration_is_one_line_and_exit_2(
    exporter_cli: Callable[..., CliResult],
    tmp_path: Path,
    path: list[str],
    arguments: list[str],
    _config: bool,
    name: str | None,
    content: bytes | None,
    env: dict[str, str],
    expected: str,
) -> None:
    options: list[str] = []
    if name is not None:
        target = tmp_path / name
        if content is not None:
            target.write_bytes(content)
        elif name == "a-folder":
            target.mkdir()
        options = ["--config", str(target)]

    result = exporter_cli(*path, *arguments, *options, env=env)

    assert result.code == 2, result.err
    line = one_line(result.err.strip())
    assert line.startswith("error: ") and re.search(expected, line), line
    assert result.out == ""


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
@pytest.mark.parametrize("command", ["run-once", "serve"])
def test_an_in_memory_database_is_refused_for_runs(
    sandbox: Sandbox, exporter_cli: Callable[..., CliResult], url: str, command: str
) -> None:
    env = {**subprocess_env(sandbox, url), "EXPORTER_SCHEDULE__EVERY": "1h"}

    result = exporter_cli(command, env=env)

    assert result.code == 2
    assert one_line(result.err.strip()) == (
        f"error: [database] url {url} is an in-memory database, which is gone when the run "
        "ends: name a file, e.g. sqlite:///exporter.db"
    )
    assert sandbox.request_count == 0


DATABASE_URL_COMMANDS = [c[:2] for c in _commands("--database-url") if c[2]]


@pytest.mark.parametrize(
    "path, arguments", DATABASE_URL_COMMANDS, ids=[" ".join(c[0]) for c in DATABASE_URL_COMMANDS]
)
@pytest.mark.parametrize("url", ["sqlite:///caf\udce9.db", "postgresql://u@127.0.0.1/caf\udce9"])
def test_a_database_url_that_is_not_utf8_is_one_line_and_exit_2(
    exporter_cli: Callable[..., CliResult],
    tmp_path: Path,
    path: list[str],
    arguments: list[str],
    url: str,
) -> None:
    # A Latin-1 terminal's byte reaches Python as a lone surrogate: the URL parser or the driver
    # failed on it with a traceback (and SQLite created the file first).
    result = exporter_cli(*path, *arguments, "--database-url", url)

    assert result.code == 2, result.err
    assert one_line(result.err.strip()) == (
        "error: [database] url given on the command line is not UTF-8 text; type it in a UTF-8 "
        "terminal (e.g. LANG=C.UTF-8)"
    )
    assert list(tmp_path.iterdir()) == []


def test_an_unreadable_secret_file_is_one_line_and_exit_2(
    sandbox: Sandbox, tmp_path: Path, exporter_cli: Callable[..., CliResult]
) -> None:
    env = subprocess_env(sandbox, f"sqlite:///{tmp_path / 'x.db'}")
    del env["EXPORTER_TAPKEY__CLIENT_SECRET"]
    (tmp_path / "secret-folder").mkdir()
    env["EXPORTER_TAPKEY__CLIENT_SECRET_FILE"] = str(tmp_path / "secret-folder")

    for name, prefix in (("run-once", "error:"), ("check", "FAILED config")):
        result = exporter_cli(name, env=env)
        assert result.code == 2 and "Traceback" not in result.err
        [line] = [line for line in result.err.splitlines() if line.startswith(prefix)]
        assert "cannot read [tapkey] client_secret_file" in line and "Is a directory" in line
        assert "chmod" not in result.err  # no permission advice about a folder


def test_the_real_command_prints_usage_and_config_errors_on_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('[tapkey\nclient_id = "x"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}

    unknown = run_exporter(env, "db", "current", "--bogus")
    malformed = run_exporter(env, "run-once", "--config", str(tmp_path / "bad.toml"))

    assert unknown.returncode == 2 and malformed.returncode == 2
    assert unknown.stderr.count("\n") == 1 and "No such option: --bogus" in unknown.stderr
    assert malformed.stderr.count("\n") == 1 and "(at line 1, column 8)" in malformed.stderr
