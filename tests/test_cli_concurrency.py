"""The real `exporter` command run concurrently: the writer lock, crash recovery, lock timeout."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from sqlalchemy import Engine, create_engine, func, select
from support.cli import run_exporter
from support.cli_runs import _running, _scalar, _start, _wait_for
from support.helpers import subprocess_env
from support.history import assert_history_consistent, expected_locks, locks_at

from exporter.db.schema import sync_run_owners, sync_runs
from exporter.sandbox.server import Fault, Sandbox, SandboxRequest
from exporter.sync.run_records import ABANDONED


def test_two_concurrent_runs_one_exits_4(sandbox: Sandbox, db_url: str, engine: Engine) -> None:
    # The first run's lock lists are held until the second run has exited, however slowly a
    # busy machine starts the second process: the two always overlap.
    second_done = threading.Event()
    holding = threading.Event()

    def hold_locks(request: SandboxRequest) -> None:
        if request.route == "locks":
            holding.set()
            second_done.wait(60)

    sandbox.hooks.append(hold_locks)
    env = subprocess_env(sandbox, db_url)
    env["EXPORTER_TAPKEY__WORKERS"] = "1"
    first = _start(env, "run-once")
    try:
        _wait_for(lambda: _running(engine) and holding.is_set())
        seen = dict(sandbox.requests)  # the first run's: a token, the owners, a lock list
        second = run_exporter(env, "run-once")
        added = {route: n - seen.get(route, 0) for route, n in sandbox.requests.items()}
    finally:
        second_done.set()
        _out, err_text = first.communicate(timeout=60)

    assert second.returncode == 4, second.stderr
    assert "writer lock" in second.stderr
    # The skipped run's token request left before it met the lock (docs/operations.md,
    # "Start-up"); it asked for nothing else.
    assert {route: n for route, n in added.items() if n} in ({}, {"token": 1})
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
