"""The progress bar of `run-once` at a terminal (exporter.service.progress); the counts it is
fed are checked in tests/sync/test_first_load.py."""

from __future__ import annotations

import io
import logging
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.helpers import subprocess_env

from exporter.cli.console import SafeConsole
from exporter.config.sections import LoggingSettings
from exporter.results import SyncProgress
from exporter.sandbox.server import Fault, Sandbox
from exporter.service.logging import setup_logging
from exporter.service.progress import ProgressBar, wanted

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.mark.parametrize(
    ("is_terminal", "quiet", "log_format", "shown"),
    [
        pytest.param(True, False, "text", True, id="terminal"),
        pytest.param(False, False, "text", False, id="not a terminal"),
        pytest.param(True, True, "text", False, id="--quiet"),
        pytest.param(True, False, "json", False, id="JSON logs"),
    ],
)
def test_a_bar_is_drawn_only_for_a_person(
    is_terminal: bool, quiet: bool, log_format: str, shown: bool
) -> None:
    assert wanted(is_terminal=is_terminal, quiet=quiet, log_format=log_format) is shown


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_log_lines_print_whole_above_the_bar(restore_logging: None) -> None:
    terminal = io.StringIO()
    console = SafeConsole(file=terminal, force_terminal=True, width=100, soft_wrap=True)
    setup_logging(LoggingSettings(), stream=terminal)
    [handler] = logging.getLogger().handlers

    with ProgressBar(console) as update:
        update(SyncProgress(owners_done=1, owners_total=4, locks_seen=500, api_requests=7))
        logging.getLogger("exporter.sync").warning("owner o2 failed: HTTP 500 after 3 attempts")
        update(SyncProgress(owners_done=2, owners_total=4, locks_seen=1000, api_requests=12))

    assert isinstance(handler, logging.StreamHandler) and handler.stream is terminal  # restored
    # What a terminal shows on each line: the text after its last carriage return (the bar is
    # redrawn from the line's start, after erasing it).
    lines = [_ANSI.sub("", line).rsplit("\r", 1)[-1] for line in terminal.getvalue().split("\n")]
    # The log line is a line of its own, not written into the bar's line.
    [logged] = [line for line in lines if "owner o2 failed" in line]
    assert re.fullmatch(
        r"\S+Z WARNING exporter\.sync: owner o2 failed: HTTP 500 after 3 attempts", logged
    )
    drawn = _ANSI.sub("", terminal.getvalue())
    assert "2/4" in drawn and "1,000 locks" in drawn and "12 requests" in drawn


def _run_at_a_terminal(env: dict[str, str], *args: str) -> tuple[int, str]:
    """`exporter run-once ARGS` with stderr on a pseudo-terminal; its exit code and stderr."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter.cli", "run-once", *args],
        env={**env, "COLUMNS": "120"},
        stdout=subprocess.DEVNULL,
        stderr=slave,
        stdin=subprocess.DEVNULL,
    )
    os.close(slave)
    output = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal closed: the process is gone
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    os.close(master)
    return process.wait(timeout=30), _ANSI.sub("", output.decode(errors="replace"))


@pytest.mark.slow
def test_run_once_draws_the_bar_on_a_terminal_only_and_not_with_quiet_or_json_logs(
    tmp_path: Path,
) -> None:
    with Sandbox(seed=8, owners=4, locks_per_owner=3) as fake:
        fake.add_fault(Fault("locks", kind="delay", delay=0.3, times=None))
        env = subprocess_env(fake, f"sqlite:///{tmp_path / 'bar.db'}")
        env["EXPORTER_TAPKEY__WORKERS"] = "1"
        code, shown = _run_at_a_terminal(env)
        quiet_code, quiet = _run_at_a_terminal(env, "--quiet")
        json_code, json_logs = _run_at_a_terminal({**env, "EXPORTER_LOGGING__FORMAT": "json"})
        piped = subprocess.run(
            [sys.executable, "-m", "exporter.cli", "run-once"],
            env={**env, "COLUMNS": "120"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert (code, quiet_code, json_code, piped.returncode) == (0, 0, 0, 0)
    assert "owners" in shown and "locks/s" in shown and "/4" in shown
    assert "locks/s" not in quiet and quiet.strip() == ""
    assert "locks/s" not in json_logs
    # Not a terminal: the log lines and the summary, no bar.
    assert "locks/s" not in piped.stderr and "run " in piped.stderr
