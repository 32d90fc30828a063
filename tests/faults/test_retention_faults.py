"""Retention after a run: housekeeping whose failure must not change how the run ended."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from support.helpers import run_once
from support.history import run_statuses

from exporter.db.engine import make_engine
from exporter.sandbox.server import Sandbox
from exporter.service import job


def test_retention_that_fails_leaves_the_run_succeeded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A database error in retention (here the database refuses the delete) turned a succeeded
    # run into exit 5, and `serve` counted it as failed, while sync_runs said succeeded.
    url = f"sqlite:///{tmp_path / 'inventory.db'}"
    engine = make_engine(url)
    start = datetime(2031, 5, 1, tzinfo=UTC)
    with Sandbox(seed=35, owners=2, locks_per_owner=3) as fake:
        run_once(fake, url, tmp_path, now=lambda: start)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "CREATE TRIGGER no_pruning BEFORE DELETE ON sync_run_owners "
                    "BEGIN SELECT RAISE(ABORT, 'pruning refused'); END"
                )
            )
        later = start + timedelta(days=3)
        result = run_once(fake, url, tmp_path, sync={"run_retention": "1d"}, now=lambda: later)

    assert result.status == "succeeded" and job.EXIT_CODES[result.status] == 0
    [warning] = [r.getMessage() for r in caplog.records if "retention skipped" in r.getMessage()]
    assert "pruning refused" in warning and "the next run prunes" in warning
    assert [status for status, _ in run_statuses(engine)] == ["succeeded", "succeeded"]
