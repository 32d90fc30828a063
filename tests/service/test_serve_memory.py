"""`exporter serve` over many slots: what a finished slot allocated, and its threads, are let go.

Measured in a fresh interpreter (this file run as a script): in a pytest worker, the log records
that pytest keeps for the report, and what earlier tests of the worker left behind, grew by
12-13 memory blocks a slot, as much as a small leak.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path

#: Allocations of these packages are the daemon's own (the in-process sandbox keeps a history).
_OURS = ("*/exporter/*", "*/sqlalchemy/*", "*/apscheduler/*", "*/prometheus_client/*")
#: Slots before measuring: SQLAlchemy's per-statement caches grow over the first few dozen slots
#: (about 2.4 KB a slot over slots 6-15, 0.2 KB over slots 46-55) and then level off.
WARM_UP, MEASURED = 30, 15


def _ours(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    kept = snapshot.filter_traces([tracemalloc.Filter(True, pattern) for pattern in _OURS])
    return kept.filter_traces([tracemalloc.Filter(False, "*/exporter/sandbox*")])


def _growth(slot: Callable[[], None]) -> float:
    """Memory blocks a slot that the daemon's own allocations grew by over MEASURED slots.

    Blocks, not bytes: a leak keeps new objects, while a dict of SQLAlchemy's event registry
    being rebuilt adds kilobytes in one block.
    """
    gc.collect()
    before = _ours(tracemalloc.take_snapshot())
    for _ in range(MEASURED):
        slot()
    gc.collect()
    after = _ours(tracemalloc.take_snapshot())
    return sum(stat.count_diff for stat in after.compare_to(before, "filename")) / MEASURED


def _measure(db_url: str, tmp_path: Path) -> dict[str, object]:
    """The child's side: a daemon's slots against an in-process sandbox, measured."""
    from support.helpers import make_settings

    from exporter.sandbox.server import Sandbox
    from exporter.service import scheduler

    with Sandbox(seed=9, owners=3, locks_per_owner=4) as fake:
        daemon = scheduler.Daemon(make_settings(fake, db_url, tmp_path, workers=2))
        owners = [owner["id"] for owner in fake.owners_payload()]

        def writing_slot() -> None:
            for owner in owners:
                fake.unbind(fake.locks_payload(owner)[0]["id"])
                fake.bind_new(owner)
            daemon.tick()

        # Traced from the start: a cache entry allocated untraced and replaced by a traced one
        # would look like growth.
        tracemalloc.start()
        try:
            for _ in range(WARM_UP):
                writing_slot()
            threads = threading.active_count()
            # Two windows: a leak grows in both; a one-off allocation (a cache of SQLAlchemy or
            # of the interpreter filling up) in one only.
            growths = [_growth(writing_slot) for _ in range(2)]
        finally:
            tracemalloc.stop()
    runs = daemon.metrics.registry.get_sample_value(
        "tapkey_exporter_runs_total", {"status": "succeeded"}
    )
    return {
        "runs": runs,
        "growths": growths,
        "threads": [threads, threading.active_count()],
    }


def test_slots_that_write_leave_memory_and_threads_flat(db_url: str, tmp_path: Path) -> None:
    # A daemon runs for months: each slot builds an engine, a client, fetch and reader threads,
    # and records its metrics; none of a finished slot's objects or threads may stay behind.
    tests = str(Path(__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run(
        [sys.executable, __file__, db_url, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    measured = json.loads(child.stdout.splitlines()[-1])
    assert measured["runs"] == WARM_UP + 2 * MEASURED  # every slot ran and wrote
    # 2-4 blocks a slot from SQLAlchemy's caches; keeping each slot's RunResult (3 owners) alone
    # adds 24-27.
    growths = measured["growths"]
    assert min(growths) < 12, f"{growths} blocks a slot"
    before, after = measured["threads"]
    assert after <= before


if __name__ == "__main__":
    print(json.dumps(_measure(sys.argv[1], Path(sys.argv[2]))))
