"""API text on a terminal: control and format characters are shown escaped, never raw.

Titles, descriptions and owner names with ESC sequences (colour, clear screen, OSC 8 links), C1
controls and bidi overrides, and a token error code carrying them, go through every human-facing
output: the run summary, `locks`, `history`, `changes`, `runs`, `runs show`, `check`, text logs.
JSON stays exact and the database stores the text unchanged.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.table import Table
from sqlalchemy import select
from support.cli import CliResult
from support.helpers import subprocess_env

from exporter import cli, terminal
from exporter.cli.console import SafeConsole
from exporter.db.engine import make_engine
from exporter.db.schema import bound_locks, owner_accounts
from exporter.sandbox.server import Sandbox
from exporter.service.logging import JsonFormatter, TextFormatter

Cli = Callable[..., CliResult]
TITLE = "Door \x1b[31mred\x1b[0m \x1b]8;;https://evil.example/\x07link\x1b]8;;\x07 \u202egnp.exe"
DESCRIPTION = "\x1b[2J\x1b[Hcleared \x9b31mC1 \x1b]0;window title\x07 zero\u200bwidth"
OWNER = "Owner \x1b]0;pwned\x07 \u2066isolated\u2069"
BAD_LOCK_ID = "lock\x1b[2J\x9b1m\u202e"  # quoted by the warning about its unreadable date


def _raw_controls(text: str) -> list[str]:
    """Control or format characters in `text` that a terminal would act on (not \\n, \\t)."""
    allowed = "\n\t\u200c\u200d"  # layout, and the joiners emoji and scripts need
    return [c for c in text if unicodedata.category(c) in ("Cc", "Cf") and c not in allowed]


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param("\x1b[31mred", "\\x1b[31mred", id="esc"),
        pytest.param("a\x9bb\x7f", "a\\x9bb\\x7f", id="c1-and-del"),
        pytest.param("\u202eevil\u2066", "\\u202eevil\\u2066", id="bidi"),
        pytest.param("tag\U000e0041", "tag\\U000e0041", id="tag-character"),
        pytest.param("a\rb", "a\\rb", id="carriage-return"),
        pytest.param("line\nnext\ttab", "line\nnext\ttab", id="layout-kept"),
        pytest.param(
            "Bäckerei 👨\u200d👩\u200d👧 ok", "Bäckerei 👨\u200d👩\u200d👧 ok", id="joiners"
        ),
    ],
)
def test_visible_escapes_control_and_format_characters(text: str, shown: str) -> None:
    assert terminal.visible(text) == shown
    assert _raw_controls(terminal.visible(text, keep_layout=False)) == []
    assert terminal.visible("a\nb", keep_layout=False) == "a\\nb"


def test_the_escaped_characters_are_those_of_unicodes_control_and_format_categories() -> None:
    # The character class is written out (building it at import would cost every command
    # 0.3 s); it must stay what the categories say for this Python's Unicode version.
    categories = {"Cc", "Cf", "Cs", "Zl", "Zp"}
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        category = unicodedata.category(char)
        unsafe = category in categories and char not in "\u200c\u200d"
        matched = terminal._UNSAFE.match(char) is not None
        # Characters unassigned here may be format characters in a later Unicode version.
        assert matched == unsafe or (matched and category == "Cn"), (hex(code), category)


def test_a_safe_console_escapes_strings_in_text_tables_titles_and_rules() -> None:
    buffer = io.StringIO()
    console = SafeConsole(file=buffer, width=200, force_terminal=True, markup=False)
    table = Table(title=f"title {TITLE}")
    table.add_column(f"column {DESCRIPTION}")
    table.add_row(OWNER)
    console.print(table)
    console.rule(TITLE)
    console.print(TITLE, DESCRIPTION)

    printed = buffer.getvalue()
    # The console's own colour codes are all the ESC bytes left: "\x1b[" + digits + "m".
    assert "\x1b]" not in printed and "\x1b[2J" not in printed and "\x9b" not in printed
    assert "\u202e" not in printed and "\u2066" not in printed
    assert "\\x1b]8;;https://evil.example/\\x07link" in printed and "\\u202egnp.exe" in printed


def test_text_log_lines_show_control_characters_and_newlines_escaped() -> None:
    record = logging.LogRecord(
        "exporter.sync.engine",
        logging.WARNING,
        __file__,
        1,
        "owner %s: %s",
        (OWNER, "a\nFAKE"),
        None,
    )
    line = TextFormatter().format(record)
    assert "\n" not in line and _raw_controls(line) == []
    assert "Owner \\x1b]0;pwned\\x07" in line and "a\\nFAKE" in line


@pytest.mark.parametrize(
    "message",
    ["CSI \x9b2J clear", "bidi \u202eevil", "tag \U000e0041", "line\u2028sep", "lone \ud800"],
)
def test_json_log_lines_carry_no_raw_c1_or_format_characters_and_stay_exact(message: str) -> None:
    # json.dumps escapes C0 only; C1 controls and bidi overrides would reach a terminal that
    # tails the log. Non-ASCII text people read (names) stays as it is.
    record = logging.LogRecord("exporter", logging.INFO, __file__, 1, f"Büro {message}", None, None)
    line = JsonFormatter().format(record)
    assert not any(unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl") for char in line)
    assert "Büro" in line
    assert json.loads(line)["message"] == f"Büro {message}"


def test_api_text_is_shown_escaped_by_every_command_and_stored_unchanged(
    sandbox: Sandbox, exporter_cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli.out, "_width", 600)  # no cell folded: the escapes stay in one piece
    owner_id = sandbox.owners_payload()[0]["id"]
    lock_id = sandbox.locks_payload(owner_id)[0]["id"]
    url = f"sqlite:///{tmp_path / 'inv.db'}"
    env = subprocess_env(sandbox, url)
    assert exporter_cli("run-once", env=env).code == 0
    sandbox.rename(lock_id, TITLE)
    sandbox.update_lock(lock_id, description=DESCRIPTION)
    sandbox.update_owner(owner_id, name=OWNER)
    bad = {**sandbox.locks_payload(owner_id)[1], "id": BAD_LOCK_ID, "bindDate": "not a date"}
    sandbox.rebind(bad, owner_id)
    outputs = {"run-once": exporter_cli("run-once", env=env)}
    for args in (
        ("locks",),
        ("locks", "--as-of", "2"),
        ("history", lock_id),
        ("changes",),
        ("runs",),
        ("runs", "show", "2"),
        ("check",),
    ):
        outputs[" ".join(args)] = exporter_cli(*args, env=env)

    for name, result in outputs.items():
        assert _raw_controls(result.out + result.err) == [], name
    assert outputs["run-once"].code == 0
    assert "lock\\x1b[2J\\x9b1m\\u202e: bindDate" in outputs["run-once"].err  # a log line
    assert "\\x1b]8;;https://evil.example/\\x07link" in outputs["locks"].out
    assert "\\x1b[2J\\x1b[Hcleared" in outputs["locks"].out
    assert "Owner \\x1b]0;pwned\\x07" in outputs["check"].out
    assert "Owner \\x1b]0;pwned\\x07" in outputs["changes"].out
    assert "\\u202egnp.exe" in outputs[f"history {lock_id}"].out

    data = exporter_cli("locks", "--format", "json", env=env)
    assert _raw_controls(data.out) == []  # written as ASCII escapes
    (lock,) = [lock for lock in json.loads(data.out)["locks"] if lock["id"] == lock_id]
    assert (lock["title"], lock["description"], lock["owner_name"]) == (TITLE, DESCRIPTION, OWNER)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(select(bound_locks.c.title).where(bound_locks.c.id == lock_id))
            assert stored.scalar_one() == TITLE
            name = conn.execute(
                select(owner_accounts.c.name).where(owner_accounts.c.id == owner_id)
            )
            assert name.scalar_one() == OWNER
    finally:
        engine.dispose()


def test_an_owner_name_with_line_breaks_stays_on_its_heading_line(
    sandbox: Sandbox, exporter_cli: Cli, tmp_path: Path
) -> None:
    # A heading is one line: a line break in the name would print a line of its own there,
    # such as a forged heading of another owner account.
    owner_id = sandbox.owners_payload()[0]["id"]
    sandbox.update_owner(owner_id, name="Depot\nOwner account Forged (f00d): 0 locks\tx")
    env = subprocess_env(sandbox, f"sqlite:///{tmp_path / 'inv.db'}")
    assert exporter_cli("run-once", env=env).code == 0

    shown = exporter_cli("locks", "--owner", owner_id, env=env).out
    assert shown.splitlines()[0].startswith(
        "Owner account Depot\\nOwner account Forged (f00d): 0 locks\\tx ("
    )
    assert not any(line.startswith("Owner account Forged") for line in shown.splitlines())
