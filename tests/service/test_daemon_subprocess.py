"""`exporter serve`: the real daemon as a subprocess against the sandbox, on every backend.

The daemons run with a 1 s interval and JSON logs; each test reads the database, the daemon's
log lines (to attribute run ids to a process) and its /healthz and /metrics endpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from support.daemon import (
    SERVING,
    assert_clean_log,
    assert_metrics_match,
    assert_no_overlap,
    eventually,
    on_route,
    runs,
    serve,
    wait_for,
)
from support.helpers import POSTGRES_ADMIN, make_settings
from support.history import assert_history_consistent, expected_locks, locks_at

from exporter.db import migrate
from exporter.db.engine import make_engine
from exporter.errors import LockHeldError
from exporter.sandbox.server import Fault, Sandbox, SandboxRequest
from exporter.service import job
from exporter.sync.run_records import ABANDONED

# -- the daemon ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_daemons_on_one_database_never_overlap_and_keep_history_exact(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=5, owners=3, locks_per_owner=4) as fake:
        # Each run sees a new generation: advance when a run asks for the first page of the owner
        # list (it holds the lock by then, so no other run is reading) and remember what that run
        # must store. Later pages and lock lists of the run all come from that generation.
        generations: list[dict[str, dict[str, Any]]] = []

        def advance(request: SandboxRequest) -> None:
            if request.route == "owners" and request.skip == 0:
                fake.advance(changes=2)
                generations.append(expected_locks(fake.snapshot()))

        fake.hooks.append(advance)
        # Runs of ~0.8 s (3 owners x 1 page and 1 confirmation x 0.2 s) every 1 s plus jitter:
        # slots keep colliding.
        fake.add_fault(Fault(route="locks", kind="delay", delay=0.2, times=None))
        options = {"tapkey__workers": "1", "schedule__jitter": "0.5"}
        with (
            serve(fake, db_url, tmp_path, "a", **options) as a,
            serve(fake, db_url, tmp_path, "b", **options) as b,
        ):
            # Runs are counted once both daemons serve: on a busy machine one process can start
            # seconds after the other, and the counts below would be reached without it.
            for daemon in (a, b):
                wait_for(lambda d=daemon: SERVING.search(d.text()), 60, "start-up", daemon)
            wait_for(lambda: len(runs(engine)) >= 5, 30, "five runs", a)
            # A manual run-once beside the daemons either runs or is turned away by the lock.
            manual: list[str] = []
            while len(manual) < 5 or "skipped" not in manual:
                try:
                    manual.append(job.run_once(make_settings(fake, db_url, tmp_path)).status)
                except LockHeldError:
                    manual.append("skipped")
                assert len(manual) < 50, manual
            wait_for(lambda: len(runs(engine)) >= 12, 30, "twelve runs", a)
            # Which daemon wins a slot is chance (jitter, run times, the manual runs taking the
            # lock back to back): one can lose many in a row. Both must win one eventually.
            wait_for(lambda: a.run_ids() and b.run_ids(), 60, "a run of each daemon", a)
            for daemon in (a, b):
                eventually(lambda daemon=daemon: assert_metrics_match(daemon, engine))
            skips = sum(d.metrics()[("tapkey_exporter_lock_skips_total", ())] for d in (a, b))
            assert a.stop() == 0
            assert b.stop() == 0

    rows = runs(engine)
    assert_no_overlap(rows)
    ids_a, ids_b = a.run_ids(), b.run_ids()
    assert ids_a and ids_b, "both daemons won the lock at some point"
    assert not ids_a & ids_b
    scheduled = {row["id"] for row in rows if row["trigger"] == "schedule"}
    assert ids_a | ids_b == scheduled, "every scheduled run row comes from a started run"
    assert set(manual) <= {"succeeded", "skipped"}
    assert sum(row["trigger"] == "manual" for row in rows) == manual.count("succeeded")
    # Only the runs in flight when the daemons were stopped may have been interrupted.
    interrupted = [row for row in rows if row["status"] != "succeeded"]
    assert len(interrupted) <= 2
    assert all((r["status"], r["error"]) == ("failed", "interrupted") for r in interrupted)
    # Losers skipped their slot, said why at info level, and wrote no row.
    assert skips >= 1
    skipped = [
        line
        for d in (a, b)
        for line in d.lines()
        if line["message"].startswith("skipped this slot")
    ]
    assert len(skipped) >= skips
    assert all(line["level"] == "INFO" for line in skipped)
    # Each succeeded run stored exactly one whole generation, later than the previous run's
    # (a run that asked the owner list twice, or was stopped before asking, takes none or two).
    position = 0
    for row in rows:
        if row["status"] != "succeeded":
            continue
        stored = locks_at(engine, row["finished_at"])
        later = [i for i in range(position, len(generations)) if generations[i] == stored]
        assert later, f"run {row['id']} stored no generation after generation {position}"
        position = later[0] + 1
    assert_history_consistent(engine)
    for daemon in (a, b):
        assert_clean_log(daemon)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_mid_run_ends_the_run_as_interrupted_and_exits_0(
    db_url: str, engine: Engine, tmp_path: Path, sandbox: Sandbox, signum: signal.Signals
) -> None:
    # SIGHUP: the terminal `serve` was started from closed; by default it killed the daemon.
    if signum == signal.SIGHUP and signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
        pytest.skip("SIGHUP is ignored here (nohup) and the daemon inherits that, as it should")
    # The fetches in flight hang for a minute: the stop abandons them instead of waiting.
    mid_run = on_route(sandbox, "locks")
    sandbox.add_fault(Fault(route="locks", kind="delay", delay=60, times=None))
    with serve(sandbox, db_url, tmp_path, schedule__every="1h", tapkey__workers="1") as daemon:
        wait_for(mid_run.is_set, 20, "the run to fetch locks", daemon)
        started = time.monotonic()
        assert daemon.stop(signum) == 0
        assert time.monotonic() - started < 5

    [row] = runs(engine)
    assert (row["status"], row["error"]) == ("failed", "interrupted")
    assert row["finished_at"] is not None
    assert_history_consistent(engine)
    assert_clean_log(daemon)
    # The lock was released and the database is usable: a manual run goes through.
    sandbox.clear_faults()
    result = job.run_once(make_settings(sandbox, db_url, tmp_path))
    assert result.status == "succeeded"
    assert locks_at(engine, result.finished_at) == expected_locks(sandbox.snapshot())


def test_a_sigkilled_daemons_run_is_marked_failed_by_the_next_daemon(
    db_url: str, engine: Engine, tmp_path: Path, sandbox: Sandbox
) -> None:
    mid_run = on_route(sandbox, "locks")
    sandbox.add_fault(Fault(route="locks", kind="delay", delay=5.0, times=None))
    with serve(sandbox, db_url, tmp_path, "killed", schedule__every="1h") as killed:
        wait_for(mid_run.is_set, 20, "the run to fetch locks", killed)
        killed.stop(signal.SIGKILL)
    [row] = runs(engine)
    assert row["status"] == "running"

    sandbox.clear_faults()
    with serve(sandbox, db_url, tmp_path, "next", schedule__every="1h") as following:
        wait_for(
            lambda: len(runs(engine)) == 2 and runs(engine)[1]["finished_at"],
            20,
            "the next daemon's run",
            following,
        )
        assert following.stop() == 0
    dead, fresh = runs(engine)
    assert (dead["status"], dead["error"], dead["finished_at"]) == ("failed", ABANDONED, None)
    assert fresh["status"] == "succeeded"
    assert "run(s) 1 had no recorded end (the process was killed, or lost" in following.text()
    assert_history_consistent(engine)


def test_a_failing_api_does_not_stop_the_daemon_and_healthz_follows(
    db_url: str, engine: Engine, tmp_path: Path, sandbox: Sandbox
) -> None:
    with serve(sandbox, db_url, tmp_path, http__healthz_max_age="2s") as daemon:
        wait_for(lambda: daemon.health()[0] == 200, 20, "healthz 200", daemon)
        # The API fails first (the client retries), then the token endpoint too.
        for route in ("owners", "locks"):
            sandbox.add_fault(Fault(route=route, kind="status", status=503, times=None))
        wait_for(lambda: any(r["status"] == "failed" for r in runs(engine)), 20, "a failed run")
        sandbox.add_fault(Fault(route="token", kind="status", status=503, times=None))
        wait_for(lambda: daemon.health()[0] == 503, 20, "healthz 503", daemon)
        status, body = daemon.health()
        assert (status, body["status"]) == (503, "stale") and "ago" in body["reason"]
        # Liveness asks whether the process serves, not whether Tapkey does: no restart.
        assert daemon.health("/livez") == (200, {"status": "ok"})
        wait_for(
            lambda: sum(r["status"] == "failed" for r in runs(engine)) >= 2,
            20,
            "two failed runs",
            daemon,
        )

        sandbox.clear_faults()
        wait_for(lambda: daemon.health()[0] == 200, 20, "healthz 200 again", daemon)
        eventually(lambda: assert_metrics_match(daemon, engine))
        metrics = daemon.metrics()
        assert daemon.stop() == 0

    rows = runs(engine)
    statuses = [row["status"] for row in rows]
    first_failure = statuses.index("failed")
    assert "succeeded" in statuses[first_failure:], "the daemon recovered"
    assert all(row["error"] for row in rows if row["status"] == "failed")
    assert_no_overlap(rows)
    assert_history_consistent(engine)
    assert metrics[("tapkey_exporter_api_retries_total", ())] > 0
    assert metrics[("tapkey_exporter_lock_skips_total", ())] == 0
    assert metrics[("tapkey_exporter_locks_present", ())] == 15
    assert metrics[("tapkey_exporter_owners_present", ())] == 3
    assert metrics[("tapkey_exporter_database_up", ())] == 1
    successes = {r["finished_at"].timestamp() for r in rows if r["status"] == "succeeded"}
    assert metrics[("tapkey_exporter_database_last_success_timestamp_seconds", ())] in successes
    failed_lines = [line for line in daemon.lines() if line["level"] == "ERROR"]
    assert failed_lines and all("run_id" in line for line in failed_lines)
    assert "Traceback" not in daemon.text(), "failures are one-line errors"


@pytest.fixture
def late_postgresql_url(worker_id: str) -> Iterator[str]:
    """The URL of a PostgreSQL database that does not exist yet; dropped afterwards."""
    name = f"exporter_late_{worker_id}_{os.getpid()}".replace("-", "_")
    admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
    except Exception as exc:
        admin.dispose()
        pytest.skip(f"postgresql not reachable: {exc}")
    try:
        yield make_url(POSTGRES_ADMIN).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def test_a_database_unreachable_at_a_slot_is_retried_at_the_next(
    late_postgresql_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    with serve(sandbox, late_postgresql_url, tmp_path) as daemon:
        wait_for(
            lambda: daemon.text().count("retrying at the next slot") >= 2,
            20,
            "two failed slots",
            daemon,
        )
        status, body = daemon.health()
        assert (status, body["status"]) == (503, "unavailable")
        # No run was started, so none "failed": the line says the slot was skipped.
        assert "run failed" not in daemon.text()
        assert "slot skipped, no run started: cannot connect to the database" in daemon.text()
        errors = daemon.metrics()[
            ("tapkey_exporter_slot_errors_total", (("error", "DatabaseUnavailableError"),))
        ]
        assert errors >= 2

        admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {make_url(late_postgresql_url).database}"))
        admin.dispose()
        engine = make_engine(late_postgresql_url)
        try:
            migrate.upgrade(engine)
            wait_for(lambda: daemon.health()[0] == 200, 20, "healthz 200", daemon)
            assert daemon.stop() == 0
            assert {row["status"] for row in runs(engine)} <= {"succeeded", "failed"}
            assert any(row["status"] == "succeeded" for row in runs(engine))
        finally:
            engine.dispose()
    assert "Traceback" not in daemon.text()


@contextlib.contextmanager
def sync_runs_locked(db_url: str) -> Iterator[None]:
    """Hold an exclusive lock on sync_runs (PostgreSQL): recording a run's end hangs meanwhile."""
    blocker = create_engine(db_url)
    try:
        with blocker.connect() as conn, conn.begin():
            conn.execute(text("LOCK TABLE sync_runs IN ACCESS EXCLUSIVE MODE"))
            yield
    finally:
        blocker.dispose()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_second_signal_exits_at_once_and_the_next_run_cleans_up(
    db_url: str, engine: Engine, tmp_path: Path, sandbox: Sandbox
) -> None:
    mid_run = on_route(sandbox, "locks")
    sandbox.add_fault(Fault(route="locks", kind="delay", delay=10.0, times=None))
    with serve(sandbox, db_url, tmp_path, schedule__every="1h") as daemon:
        wait_for(mid_run.is_set, 20, "the run to fetch locks", daemon)
        with sync_runs_locked(db_url):  # the interrupted run cannot record its end
            daemon.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: "waiting up to" in daemon.text(), 10, "the first signal", daemon)
            started = time.monotonic()
            assert daemon.stop(signal.SIGTERM) == 128 + signal.SIGTERM
            assert time.monotonic() - started < 2
    [row] = runs(engine)
    assert row["status"] == "running"  # abandoned mid-run; nothing half-written
    assert_history_consistent(engine)

    sandbox.clear_faults()
    result = job.run_once(make_settings(sandbox, db_url, tmp_path))
    assert result.status == "succeeded"
    [dead, _] = runs(engine)
    assert (dead["status"], dead["error"]) == ("failed", ABANDONED)
    assert_history_consistent(engine)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_shutdown_timeout_bounds_the_wait_for_a_stuck_run(
    db_url: str, engine: Engine, tmp_path: Path, sandbox: Sandbox
) -> None:
    mid_run = on_route(sandbox, "locks")
    sandbox.add_fault(Fault(route="locks", kind="delay", delay=10.0, times=None))
    with serve(
        sandbox, db_url, tmp_path, schedule__every="1h", schedule__shutdown_timeout="1"
    ) as daemon:
        wait_for(mid_run.is_set, 20, "the run to fetch locks", daemon)
        with sync_runs_locked(db_url):  # a database that stopped answering
            started = time.monotonic()
            assert daemon.stop(signal.SIGTERM) == 0
            assert time.monotonic() - started < 4
    assert "did not stop within 1 s" in daemon.text()
    [row] = runs(engine)
    assert row["status"] == "running"
    assert_history_consistent(engine)
