"""The real `exporter` command started in the background, and waits on the runs it records."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

from sqlalchemy import Engine, func, select

from exporter.db.schema import sync_runs
from support.cli import EXPORTER


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*EXPORTER, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def _scalar(engine: Engine, query: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(query).scalar() or 0)  # type: ignore[call-overload]


def _running(engine: Engine) -> bool:
    return _scalar(engine, select(func.count()).where(sync_runs.c.status == "running")) > 0
