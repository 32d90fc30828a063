"""The versions a run wrote and the check that a run stored what the sandbox served."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from exporter.db.schema import bound_lock_versions
from exporter.results import RunResult
from exporter.sandbox.server import Sandbox
from support.history import assert_history_consistent, expected_locks, locks_at


def _versions(engine: Engine, run_id: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                select(bound_lock_versions).where(bound_lock_versions.c.run_id == run_id)
            ).mappings()
        ]


def _assert_matches_api(engine: Engine, fake: Sandbox, result: RunResult) -> None:
    assert result.finished_at is not None
    assert locks_at(engine, result.finished_at) == expected_locks(fake.snapshot())
    assert_history_consistent(engine)
