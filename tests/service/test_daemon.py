"""`exporter serve`: the real daemon as a subprocess against the sandbox, on every backend.

The daemons run with a 1 s interval and JSON logs; each test reads the database, the daemon's
log lines (to attribute run ids to a process) and its /healthz and /metrics endpoint.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.engine import make_url
from support.helpers import POSTGRES_ADMIN, make_settings, subprocess_env
from support.history import assert_history_consistent, expected_locks, locks_at
from typer.testing import CliRunner

from exporter import cli
from exporter.config.crontab import CrontabTrigger
from exporter.config.loader import load_settings, secret_file_warning
from exporter.db import migrate
from exporter.db.engine import make_engine
from exporter.db.schema import sync_runs
from exporter.db.writer_lock import MYSQL_LOCK_WAIT_TIMEOUT, WriterLock
from exporter.errors import LockHeldError
from exporter.results import Counts, RunResult
from exporter.sandbox.server import Fault, Sandbox, SandboxRequest
from exporter.service import http, job, scheduler
from exporter.service import logging as service_logging
from exporter.service.metrics import Metrics
from exporter.sync.run_records import ABANDONED

SERVING = re.compile(r"serving /healthz, /livez and /metrics on http://127\.0\.0\.1:(\d+)")
STARTED = re.compile(r"run (\d+) started")


# -- helpers --------------------------------------------------------------------------------------


@dataclass
class Daemon:
    """A running `exporter serve` subprocess and its JSON log file."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    def text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def lines(self) -> list[dict[str, Any]]:
        parsed = []
        for line in self.text().splitlines():
            with contextlib.suppress(ValueError):
                parsed.append(json.loads(line))
        return parsed

    def run_ids(self) -> set[int]:
        """Ids of the runs this process started, from its "run N started" lines."""
        ids = set()
        for line in self.lines():
            match = STARTED.fullmatch(line["message"].split(" (")[0])
            if match:
                assert line.get("run_id") == int(match[1]), line
                ids.add(int(match[1]))
        return ids

    def url(self, path: str) -> str:
        def port() -> int | None:
            found = SERVING.search(self.text())
            return int(found[1]) if found else None

        found = wait_for(port, 15, "the HTTP endpoint's start-up line", self)
        return f"http://127.0.0.1:{found}{path}"

    def health(self, path: str = "/healthz") -> tuple[int, dict[str, Any]]:
        response = requests.get(self.url(path), timeout=10)
        return response.status_code, response.json()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = requests.get(self.url("/metrics"), timeout=10)
        response.raise_for_status()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def wait_for(
    check: Callable[[], Any], timeout: float, what: str, daemon: Daemon | None = None
) -> Any:
    """Poll `check` until it returns something truthy; fail with the daemon's log otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if daemon is not None and daemon.proc.poll() is not None:
            pytest.fail(
                f"daemon exited ({daemon.proc.returncode}) waiting for {what}:\n" + daemon.text()
            )
        if time.monotonic() > deadline:
            tail = daemon.text()[-4000:] if daemon is not None else ""
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{tail}")
        time.sleep(0.1)


def eventually(assertion: Callable[[], None], timeout: float = 5) -> None:
    """Retry `assertion` until it passes (a run may finish between two reads)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            assertion()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


@contextlib.contextmanager
def serve(
    fake: Sandbox, db_url: str, tmp_path: Path, name: str = "daemon", **settings: str
) -> Iterator[Daemon]:
    """Start `exporter serve`; `schedule__every="1h"` sets EXPORTER_SCHEDULE__EVERY and so on."""
    env = subprocess_env(fake, db_url)
    env.update(
        EXPORTER_SCHEDULE__EVERY="1s",
        EXPORTER_LOGGING__FORMAT="json",
        EXPORTER_HTTP__ENABLED="true",
        EXPORTER_HTTP__LISTEN="127.0.0.1:0",  # the daemon logs the port it got
        EXPORTER_TAPKEY__MAX_RETRIES="1",
    )
    env.update({f"EXPORTER_{key.upper()}": value for key, value in settings.items()})
    log_path = tmp_path / f"{name}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter.cli", "serve"],
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        yield Daemon(proc, log_path)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def runs(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(row) for row in conn.execute(select(sync_runs).order_by(sync_runs.c.id)).mappings()
        ]


def on_route(fake: Sandbox, route: str) -> threading.Event:
    """An event set when the sandbox gets a request on `route`."""
    seen = threading.Event()

    def hook(request: SandboxRequest) -> None:
        if request.route == route:
            seen.set()

    fake.hooks.append(hook)
    return seen


def assert_metrics_match(daemon: Daemon, engine: Engine) -> None:
    """The daemon's counters equal the sync_runs rows of the runs it started."""
    metrics = daemon.metrics()
    mine = daemon.run_ids()
    rows = [row for row in runs(engine) if row["id"] in mine]
    assert all(row["status"] != "running" for row in rows), "a run is in progress"
    by_status = Counter(row["status"] for row in rows)
    for status in ("succeeded", "partial", "failed"):
        assert metrics[("tapkey_exporter_runs_total", (("status", status),))] == by_status[status]
    assert metrics[("tapkey_exporter_run_duration_seconds_count", ())] == len(rows)
    for kind in ("created", "updated", "removed", "restored"):
        written = sum(row[kind] or 0 for row in rows)
        labels = (("entity", "locks"), ("kind", kind))
        assert metrics[("tapkey_exporter_changes_total", labels)] == written, kind
    requests_sent = sum(row["api_requests"] or 0 for row in rows)
    assert metrics[("tapkey_exporter_api_requests_total", ())] == requests_sent


def assert_no_overlap(rows: list[dict[str, Any]]) -> None:
    for before, after in itertools.pairwise(rows):
        assert before["finished_at"] is not None, before
        assert before["finished_at"] <= after["started_at"], (before, after)


def assert_clean_log(daemon: Daemon) -> None:
    assert "Traceback" not in daemon.text()
    for line in daemon.lines():
        if line["logger"] == "exporter.sync.engine":
            assert "run_id" in line, line


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


def test_sigterm_mid_run_ends_the_run_as_interrupted_and_exits_0(
    db_url: str, engine: Engine, tmp_path: Path, sandbox: Sandbox
) -> None:
    # The fetches in flight hang for a minute: the stop abandons them instead of waiting.
    mid_run = on_route(sandbox, "locks")
    sandbox.add_fault(Fault(route="locks", kind="delay", delay=60, times=None))
    with serve(sandbox, db_url, tmp_path, schedule__every="1h", tapkey__workers="1") as daemon:
        wait_for(mid_run.is_set, 20, "the run to fetch locks", daemon)
        started = time.monotonic()
        assert daemon.stop(signal.SIGTERM) == 0
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


# -- pieces, in process --------------------------------------------------------------------------


def test_serve_refuses_to_start_without_credentials(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}
    done = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "client_id" in done.stderr


def test_serve_reports_a_busy_http_port(tmp_path: Path, sandbox: Sandbox) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = subprocess_env(sandbox, f"sqlite:///{tmp_path / 'x.db'}")
        env.update(EXPORTER_HTTP__ENABLED="true", EXPORTER_HTTP__LISTEN=f"127.0.0.1:{port}")
        done = subprocess.run(
            [sys.executable, "-m", "exporter.cli", "serve"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 2
    assert f"cannot listen on [http] listen 127.0.0.1:{port}" in done.stderr


def _schedule(tmp_path: Path, **values: Any) -> Any:
    overrides = {f"schedule.{key}": value for key, value in values.items()}
    return load_settings(None, env={}, cwd=tmp_path, overrides=overrides).schedule


def test_the_trigger_follows_the_schedule_settings(tmp_path: Path) -> None:
    every = scheduler.build_trigger(_schedule(tmp_path, every="90s", jitter=5))
    assert isinstance(every, IntervalTrigger)
    assert every.interval == timedelta(seconds=90)
    assert every.jitter == 5

    cron = scheduler.build_trigger(
        _schedule(tmp_path, every="", cron="30 2 * * *", timezone="Europe/Vienna")
    )
    assert isinstance(cron, CrontabTrigger)
    assert str(cron.timezone) == "Europe/Vienna"
    after = datetime(2025, 1, 10, 12, 0, tzinfo=UTC)
    # 02:30 in Vienna in winter is 01:30 UTC.
    assert cron.get_next_fire_time(None, after) == datetime(2025, 1, 11, 1, 30, tzinfo=UTC)


def test_the_changes_metric_counts_every_entity_by_kind() -> None:
    metrics = Metrics()
    result = RunResult(
        1,
        "succeeded",
        "schedule",
        datetime.now(UTC),
        counts=Counts(created=2, removed=1),
        access={"contacts": Counts(created=4), "grants": Counts(updated=3)},
    )
    metrics.record_run(result, status="succeeded", duration=1.0)
    metrics.record_run(result, status="succeeded", duration=1.0)

    def changes(entity: str, kind: str) -> float | None:
        labels = {"entity": entity, "kind": kind}
        return metrics.registry.get_sample_value("tapkey_exporter_changes_total", labels)

    assert (changes("locks", "created"), changes("locks", "removed")) == (4, 2)
    assert (changes("contacts", "created"), changes("grants", "updated")) == (8, 6)
    assert (changes("cards", "created"), changes("grants", "restored")) == (0, 0)


def test_healthz_reads_the_database(
    db_url: str, engine: Engine, tmp_path: Path, sandbox: Sandbox
) -> None:
    def health(now: datetime) -> tuple[int, dict[str, Any]]:
        return http.health(engine, max_age=3600, now=lambda: now)

    status, body = health(datetime.now(UTC))
    assert (status, body["reason"]) == (503, "no succeeded run yet")
    result = job.run_once(make_settings(sandbox, db_url, tmp_path))
    assert result.finished_at is not None
    status, body = health(result.finished_at + timedelta(minutes=59))
    assert (status, body["status"], body["age_seconds"]) == (200, "ok", 59 * 60)
    status, body = health(result.finished_at + timedelta(minutes=61))
    assert (status, body["status"]) == (503, "stale")
    # A failed run half an hour later does not count as fresh.
    sandbox.add_fault(Fault(route="owners", kind="status", status=500, times=None))
    later = result.finished_at + timedelta(minutes=30)
    failed = job.run_once(
        make_settings(sandbox, db_url, tmp_path, max_retries=0), now=lambda: later
    )
    assert failed.status == "failed"
    assert health(result.finished_at + timedelta(minutes=61))[0] == 503


def test_healthz_is_503_when_the_database_is_unreachable() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    engine = make_engine(f"postgresql://nobody@127.0.0.1:{port}/none")
    try:
        status, body = http.health(engine, max_age=60, now=lambda: datetime.now(UTC))
    finally:
        engine.dispose()
    assert (status, body) == (503, {"status": "unavailable", "reason": "cannot read the database"})


def test_livez_asks_only_whether_the_process_serves() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    engine = make_engine(f"postgresql://nobody@127.0.0.1:{port}/none")  # unreachable
    stopping = threading.Event()
    app = http.make_app(engine, Metrics(), max_age=60, live=lambda: not stopping.is_set())

    def get(path: str) -> tuple[str, dict[str, Any]]:
        answer: list[str] = []
        body = b"".join(app({"PATH_INFO": path}, lambda status, _headers: answer.append(status)))
        return answer[0], json.loads(body)

    try:
        assert get("/healthz")[0] == "503 Service Unavailable"
        assert get("/livez") == ("200 OK", {"status": "ok"})
        stopping.set()
        assert get("/livez") == ("503 Service Unavailable", {"status": "stopping"})
    finally:
        engine.dispose()


@pytest.mark.parametrize("fmt", [pytest.param("json", id="json"), pytest.param("text", id="text")])
def test_every_log_line_of_a_run_carries_its_run_id(fmt: str) -> None:
    # The handler setup_logging puts on the root logger, on a logger of its own here (the
    # subprocess tests cover setup_logging itself).
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        service_logging.JsonFormatter() if fmt == "json" else service_logging.TextFormatter()
    )
    handler.addFilter(service_logging.RunIdFilter())
    logger = logging.getLogger("exporter.test")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info("before")
        with service_logging.run_scope() as scope:
            logger.info("no row yet")
            scope.bind(42)
            logger.info("in the run")
            # A thread of its own (the HTTP endpoint's) is not part of the run.
            other = threading.Thread(target=logger.warning, args=("from another thread",))
            other.start()
            other.join()
        logger.info("after")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5
    if fmt == "json":
        records = [json.loads(line) for line in lines]
        assert [r.get("run_id") for r in records] == [None, None, 42, None, None]
        assert records[3]["level"] == "WARNING" and records[3]["message"] == "from another thread"
    else:
        assert [" run=42: " in line for line in lines] == [False, False, True, False, False]
        assert re.match(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO exporter\.test: before$", lines[0]
        )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_fetch_threads_log_the_run_id_and_the_http_threads_do_not(
    db_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    # While a run is in progress, /healthz fails to read its database (a warning on an HTTP
    # thread) and a fetch is retried (a warning on a fetch thread).
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    unreachable = make_engine(f"postgresql://nobody@127.0.0.1:{port}/none")
    app = http.make_app(unreachable, Metrics(), max_age=60)
    endpoint = http.HttpEndpoint(app, "127.0.0.1", 0)
    endpoint.start()
    host, http_port = endpoint.address

    def probe(request: SandboxRequest) -> None:
        if request.route == "locks" and request.number == 1:
            requests.get(f"http://{host}:{http_port}/healthz", timeout=10)

    sandbox.hooks.append(probe)
    sandbox.add_fault(Fault(route="locks", status=503))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(service_logging.JsonFormatter())
    handler.addFilter(service_logging.RunIdFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)  # a first retry is logged at INFO
    try:
        with service_logging.run_scope() as scope:
            result = job.run_once(make_settings(sandbox, db_url, tmp_path), on_started=scope.bind)
    finally:
        root.setLevel(level)
        root.removeHandler(handler)
        endpoint.stop()
        unreachable.dispose()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    [healthz] = [line for line in lines if line["message"].startswith("healthz: cannot read")]
    [retry] = [line for line in lines if "; retrying in " in line["message"]]
    assert "run_id" not in healthz
    assert retry["run_id"] == result.run_id


@pytest.mark.parametrize("db_url", ["postgresql", "mariadb"], indirect=True)
def test_database_connections_use_tcp_keepalives(db_url: str, engine: Engine) -> None:
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            # Server side: PostgreSQL ends a dead client's session (and its advisory lock).
            for name, value in (("idle", "30"), ("interval", "10"), ("count", "3")):
                assert conn.execute(text(f"SHOW tcp_keepalives_{name}")).scalar() == value
        else:
            sock = conn.connection.dbapi_connection._sock  # type: ignore[union-attr]
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 10
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
    lock = WriterLock(engine)
    with lock:
        if engine.dialect.name != "postgresql":
            assert lock._conn is not None
            timeout = lock._conn.execute(text("SELECT @@SESSION.wait_timeout")).scalar()
            assert timeout == MYSQL_LOCK_WAIT_TIMEOUT


# -- the shipped deployment examples -------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def test_the_kubernetes_manifest_configures_a_reachable_healthz(tmp_path: Path) -> None:
    documents = list(yaml.safe_load_all((REPO / "deploy" / "kubernetes.yaml").read_text()))
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {}
    for variable in container["env"]:
        if "secretKeyRef" in variable.get("valueFrom", {}):
            env[variable["name"]] = (
                "postgresql://u:p@db/x" if "DATABASE" in variable["name"] else "s"
            )
        elif "value" in variable:
            env[variable["name"]] = variable["value"].replace("$(POD_IP)", "10.1.2.3")
    assert {"EXPORTER_TAPKEY__CLIENT_SECRET", "EXPORTER_DATABASE__URL"} <= set(env)
    config = tmp_path / "config.toml"
    config.write_text(config_map["data"]["config.toml"])
    settings = load_settings(config, env=env, cwd=tmp_path)
    assert settings.tapkey.credentials()[1] == "s"
    assert settings.http.enabled
    assert (settings.http.host, settings.http.port) == ("10.1.2.3", 9464)
    [port] = container["ports"]
    assert port["containerPort"] == settings.http.port
    # Readiness (and alerting) ask whether syncs succeed; liveness only whether the process
    # serves, so a Tapkey or database outage does not restart the pods.
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": port["name"]}
    assert "startupProbe" not in container  # /livez answers from the start
    assert pod["terminationGracePeriodSeconds"] > settings.schedule.shutdown_timeout
    assert container["args"][0] == "serve"
    assert container["securityContext"]["readOnlyRootFilesystem"]


def test_the_systemd_unit_crontab_and_dockerfile_fit_the_cli(tmp_path: Path) -> None:
    unit = (REPO / "deploy" / "tapkey-exporter.service").read_text()
    values = dict(line.split("=", 1) for line in unit.splitlines() if re.match(r"[A-Za-z]+=", line))
    # The install lines of the unit's header are docs/deployment.md's, and the config file they
    # install passes the permission check for the service user (no "chmod 600" that would lock it
    # out).
    installs = [line[1:].strip() for line in unit.splitlines() if line.startswith("#   install ")]
    deployment = (REPO / "docs" / "deployment.md").read_text()
    documented = [line.strip() for line in deployment.splitlines()]
    assert len(installs) == 3 and all(line in documented for line in installs)
    [config_line] = [line for line in installs if line.endswith("config.toml")]
    words = config_line.split()
    mode, owner = int(words[words.index("-m") + 1], 8), words[words.index("-o") + 1]
    service = 54321  # the tapkey-exporter user, in its group of the same number
    assert owner == "root"
    assert (
        secret_file_warning(
            Path(words[-1]), mode=mode, owner=0, group=service, uid=service, groups=[service]
        )
        is None
    )
    assert values["ExecStart"].split()[1:3] == ["serve", "--config"]
    default_timeout = load_settings(None, env={}, cwd=tmp_path).schedule.shutdown_timeout
    assert int(values["TimeoutStopSec"]) > default_timeout
    assert values["KillSignal"] == "SIGTERM"

    [entry] = [
        line
        for line in (REPO / "deploy" / "crontab").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    fields = entry.split()
    assert fields[6:8] == ["/opt/tapkey-exporter/bin/exporter", "run-once"]
    usage = CliRunner().invoke(cli.app, ["run-once", "--help"], terminal_width=200).output
    for option in (word for word in fields[8:] if word.startswith("--")):
        assert option in usage

    dockerfile = (REPO / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert re.search(r"^USER 10001", dockerfile, re.MULTILINE)
    assert "[postgres,mysql]" in dockerfile
    assert 'ENTRYPOINT ["exporter"]' in dockerfile and 'CMD ["serve"]' in dockerfile
