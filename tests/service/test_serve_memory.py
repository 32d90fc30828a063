"""`exporter serve` over many slots: what a finished slot allocated, and its threads, are let go."""

from __future__ import annotations

import gc
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from support.helpers import make_settings

from exporter.sandbox.server import Sandbox
from exporter.service import scheduler

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
    being rebuilt adds kilobytes in one block (1,100-1,500 B a slot in a busy xdist worker).
    """
    gc.collect()
    before = _ours(tracemalloc.take_snapshot())
    for _ in range(MEASURED):
        slot()
    gc.collect()
    after = _ours(tracemalloc.take_snapshot())
    return sum(stat.count_diff for stat in after.compare_to(before, "filename")) / MEASURED


def test_slots_that_write_leave_memory_and_threads_flat(db_url: str, tmp_path: Path) -> None:
    # A daemon runs for months: each slot builds an engine, a client, fetch and reader threads,
    # and records its metrics; none of a finished slot's objects or threads may stay behind.
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
            # of the interpreter filling up, other tests' leftovers in this worker) in one only.
            growths = [_growth(writing_slot) for _ in range(2)]
        finally:
            tracemalloc.stop()

    runs = daemon.metrics.registry.get_sample_value(
        "tapkey_exporter_runs_total", {"status": "succeeded"}
    )
    assert runs == WARM_UP + 2 * MEASURED  # every slot ran and wrote
    # 2-4 blocks a slot from SQLAlchemy's caches; keeping each slot's RunResult (3 owners) alone
    # adds 24-27.
    assert min(growths) < 12, f"{growths} blocks a slot"
    assert threading.active_count() <= threads
