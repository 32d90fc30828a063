"""`exporter serve` keeps its slots when the wall clock jumps (a suspended host, a clock step)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import apscheduler.executors.base
import apscheduler.schedulers.base
import pytest
from sqlalchemy import Engine, select
from support.helpers import make_settings

from exporter.db.schema import sync_runs
from exporter.sandbox.server import Sandbox
from exporter.service import scheduler


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_slot_right_after_a_suspend_runs_on_time(
    db_url: str, engine: Engine, tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The daemon sleeps towards tomorrow's 03:00 on the monotonic clock, which stands still
    # while the host is suspended. The host wakes shortly before 03:00: the run must start at
    # 03:00, not the suspend's length later (past misfire_grace_time, so not at all).
    settings = make_settings(sandbox, db_url, tmp_path)
    schedule = settings.schedule.model_copy(
        update={"cron": "0 3 * * *", "run_on_start": False, "misfire_grace_time": 2.0}
    )
    settings = settings.model_copy(update={"schedule": schedule})
    jump = [timedelta(0)]

    class WallClock(datetime):
        """The scheduler's wall clock (APScheduler reads it as datetime.now)."""

        @classmethod
        def now(cls, tz: object = None) -> datetime:  # type: ignore[override]
            return datetime.now(tz) + jump[0]  # type: ignore[arg-type]

    monkeypatch.setattr(apscheduler.schedulers.base, "datetime", WallClock)
    monkeypatch.setattr(apscheduler.executors.base, "datetime", WallClock)
    now = datetime.now(UTC)
    slot = scheduler.build_trigger(schedule).get_next_fire_time(None, now)
    daemon = scheduler.Daemon(settings)
    loop = threading.Thread(target=daemon.scheduler.start, daemon=True)
    loop.start()
    try:
        time.sleep(0.5)  # asleep until the slot
        jump[0] = slot - timedelta(seconds=1) - datetime.now(UTC)  # resumed 1 s before it
        deadline = time.monotonic() + 10
        with engine.connect() as conn:
            while not conn.execute(select(sync_runs.c.trigger)).all():
                assert time.monotonic() < deadline, "the 03:00 run did not start"
                time.sleep(0.1)
                conn.rollback()
    finally:
        # As serve stops: shutdown(wait=True) holds the job store's lock while it waits for the
        # slot, whose last step asks that store for the next run time, so the two waited for
        # each other whenever the run ended meanwhile.
        daemon.stop.set()
        daemon.scheduler.shutdown(wait=False)
        loop.join(timeout=10)
    assert daemon._idle.wait(30), "the run did not end"
