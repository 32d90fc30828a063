"""The real `exporter run-once` signalled: the run is recorded as interrupted, requests end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from support.cli_runs import _running, _start, _wait_for
from support.helpers import subprocess_env
from support.history import assert_history_consistent

from exporter.db.schema import sync_runs
from exporter.sandbox.server import Fault, Sandbox


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


def test_ctrl_c_while_the_command_line_loads_exits_130_without_a_traceback(
    tmp_path: Path,
) -> None:
    # The installed script, with a Ctrl-C at its first import of typer (sitecustomize runs before
    # the script): it printed a traceback of whichever import was loading.
    (tmp_path / "sitecustomize.py").write_text(
        "import builtins\n"
        "real = builtins.__import__\n"
        "def interrupted(name, *args, **kwargs):\n"
        "    if name == 'typer':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = interrupted\n"
    )
    script = Path(sys.executable).with_name("exporter")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}

    result = subprocess.run(
        [str(script), "--help"], env=env, capture_output=True, text=True, timeout=60
    )

    assert (result.returncode, result.stdout, result.stderr) == (130, "", "")
