"""`exporter serve` as a subprocess, its JSON log, and waits and checks on it, for daemon tests."""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, select

from exporter.db.schema import sync_runs
from exporter.sandbox.server import Sandbox, SandboxRequest
from support.helpers import subprocess_env

SERVING = re.compile(r"serving /healthz, /livez and /metrics on http://127\.0\.0\.1:(\d+)")
STARTED = re.compile(r"run (\d+) started")


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
