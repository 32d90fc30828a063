"""Crash safety: `exporter run-once` SIGKILLed at random points never leaves a broken database.

Each kill lands at a seeded random moment: during start-up (imports, migrations, taking the lock)
or after a random number of API requests, i.e. anywhere in the crawl and the per-owner writes,
in the removal phase or while the run is being closed. After every kill the history must be
consistent; at the end one clean run marks the killed runs failed (abandoned, no end time) and
converges to the API's state with an exact history.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest
from sqlalchemy import Engine, select
from support.cli import EXPORTER
from support.helpers import subprocess_env
from support.history import assert_history_consistent, expected_locks, locks_at

from exporter.db import migrate
from exporter.db.schema import sync_runs
from exporter.sandbox.server import Fault, Sandbox
from exporter.sync.run_records import ABANDONED

KILLS = 10
PAGE_SIZE = 5
OWNERS, LOCKS_PER_OWNER = 8, 8
# Requests one run makes: a token, then the owner list and each owner's locks in two pages
# (a full page of 5, then 4 more rows after the one-row overlap) as long as lists hold 6-9 rows.
REQUESTS = 1 + 2 * (OWNERS + 1)


def _statuses(engine: Engine) -> list[tuple[int, str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(sync_runs.c.id, sync_runs.c.status, sync_runs.c.error).order_by(sync_runs.c.id)
        )
        return [(run_id, status, error) for run_id, status, error in rows]


def _kill_at_random(fake: Sandbox, env: dict[str, str], rng: random.Random) -> None:
    """Start run-once and SIGKILL it at a random point (unless it finished first)."""
    base = fake.request_count
    # One kill in five during start-up, the rest after a random number of API requests.
    target = 0 if rng.random() < 0.2 else rng.randint(1, REQUESTS + 2)
    process = subprocess.Popen(
        [*EXPORTER, "run-once", "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if target == 0:  # somewhere in start-up: imports, config, migrations, the lock
            time.sleep(rng.uniform(0.05, 1.0))
        else:
            deadline = time.monotonic() + 30
            while fake.request_count - base < target and process.poll() is None:
                if time.monotonic() > deadline:
                    raise AssertionError("run-once made no progress")
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.05))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)


@pytest.mark.slow
def test_sigkill_at_random_points_never_breaks_the_history(
    db_url: str, engine: Engine, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(f"crash:{request.node.callspec.id}")
    with Sandbox(seed=41, owners=OWNERS, locks_per_owner=LOCKS_PER_OWNER) as fake:
        # A little latency per page widens the window in which a kill lands mid-run.
        fake.add_fault(Fault("locks", kind="delay", delay=0.015, times=None))
        env = subprocess_env(fake, db_url)
        env.update(EXPORTER_TAPKEY__PAGE_SIZE=str(PAGE_SIZE), EXPORTER_TAPKEY__WORKERS="2")
        left_open: set[int] = set()  # runs whose row a kill left open ("running")
        for attempt in range(KILLS):
            if attempt:
                fake.advance(changes=rng.randint(2, 8))
            _kill_at_random(fake, env, rng)
            assert_history_consistent(engine)
            running = {run_id for run_id, status, _ in _statuses(engine) if status == "running"}
            assert len(running) <= 1  # the next run closes a dead run's row before its own
            left_open |= running

        fake.clear_faults()
        final = subprocess.run(
            [*EXPORTER, "run-once", "--quiet"], env=env, capture_output=True, text=True, timeout=60
        )

        assert final.returncode == 0, final.stderr
        runs = _statuses(engine)
        assert runs[-1][1:] == ("succeeded", None)
        # Exactly the runs a kill left open are closed as failed/abandoned; the others
        # finished before their kill (partial when the deletion guard held something back).
        abandoned = {run_id for run_id, *outcome in runs if outcome == ["failed", ABANDONED]}
        assert abandoned == left_open and len(left_open) >= KILLS // 2
        request.node.user_properties.append(("kills_that_left_a_run_open", len(left_open)))
        assert {status for _, status, _ in runs} <= {"succeeded", "partial", "failed"}
        with engine.connect() as conn:
            finished = conn.execute(
                select(sync_runs.c.finished_at).order_by(sync_runs.c.id.desc()).limit(1)
            ).scalar_one()
        assert locks_at(engine, finished) == expected_locks(fake.snapshot())
        assert_history_consistent(engine)
        # Indexes a killed first load left out (exporter.db.indexes) are built again.
        migrate.check_models(engine)
