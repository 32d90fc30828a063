"""The daemon's pieces in process: startup checks, schedule, metrics, health, run-id logs."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine, text
from support.helpers import make_settings, subprocess_env

from exporter.config.crontab import CrontabTrigger
from exporter.config.loader import load_settings
from exporter.db.engine import make_engine
from exporter.db.writer_lock import MYSQL_LOCK_WAIT_TIMEOUT, WriterLock
from exporter.results import Counts, RunResult
from exporter.sandbox.server import Fault, Sandbox, SandboxRequest
from exporter.service import http, job, scheduler
from exporter.service import logging as service_logging
from exporter.service.metrics import Metrics

# -- pieces, in process --------------------------------------------------------------------------


def _serve(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`exporter serve` in a child process, for the failures that stop it before it serves."""
    return subprocess.run(
        [sys.executable, "-m", "exporter.cli", "serve"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_serve_refuses_to_start_without_credentials(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}
    done = _serve(env, tmp_path)
    assert done.returncode == 2
    assert "client_id" in done.stderr


def test_serve_reports_a_busy_http_port(tmp_path: Path, sandbox: Sandbox) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = subprocess_env(sandbox, f"sqlite:///{tmp_path / 'x.db'}")
        env.update(EXPORTER_HTTP__ENABLED="true", EXPORTER_HTTP__LISTEN=f"127.0.0.1:{port}")
        done = _serve(env, tmp_path)
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
