"""The `exporter` command in tests: as a subprocess (`EXPORTER`, `run_exporter`) or in-process
(`CliResult`, given by the `exporter_cli` fixture in tests/conftest.py); its one-line messages."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

EXPORTER = [sys.executable, "-m", "exporter.cli"]


def run_exporter(
    env: dict[str, str], *args: str, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real command to its end; output captured, exit code not checked."""
    return subprocess.run(
        [*EXPORTER, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class CliResult:
    """Exit code and output of one in-process `exporter` call (the real entry point)."""

    code: int
    out: str
    err: str


def one_line(message: str | None) -> str:
    """`message`, asserted to be one line without a traceback."""
    assert message, "expected a message"
    assert "\n" not in message and "Traceback" not in message, message
    return message
