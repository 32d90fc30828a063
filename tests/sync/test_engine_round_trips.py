"""The sync engine's database work around its requests: what hides behind the API's latency,
and how many statements the run's bookkeeping sends to a database on another host."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, select
from support.helpers import listening, run_once

from exporter.db.schema import owner_accounts
from exporter.errors import Interrupted, TapkeyError
from exporter.kinds import OwnerStatus
from exporter.results import OwnerOutcome
from exporter.sandbox.protocol import SandboxRequest
from exporter.sandbox.server import Sandbox
from exporter.sync import run_records
from exporter.sync.crawl import call_until_stopped
from exporter.sync.owners import LAST_SEEN_CHUNK, record_owners

#: The pre-crawl count of present locks per owner (exporter.sync.versions.present_by_owner).
_COUNT = "GROUP BY bound_locks.owner_account_id"


def test_the_present_locks_are_counted_while_the_owner_list_is_requested(
    db_url: str, tmp_path: Path
) -> None:
    # The owner list's first answer waits for the count (at most 10 s): counted in series after
    # the list, as before, the count comes only after the answer.
    events: list[str] = []
    counted = threading.Event()

    def statement(_conn: Connection, _cursor: Any, sql: str, *_args: Any) -> None:
        if _COUNT in sql and not counted.is_set():
            events.append("counted")
            counted.set()

    def hook(request: SandboxRequest) -> None:
        if request.route == "owners" and "owners answered" not in events:
            events.append("owners asked")
            counted.wait(10)
            events.append("owners answered")

    with Sandbox(seed=3, owners=4, locks_per_owner=3) as fake:
        run_once(fake, db_url, tmp_path)
        fake.hooks.append(hook)
        with listening(Engine, before_cursor_execute=statement):
            result = run_once(fake, db_url, tmp_path)
    assert result.status == "succeeded"
    assert result.counts.unchanged == 12
    # Counted before the answer (before the request, or while it waited): not after it.
    assert sorted(events) == ["counted", "owners answered", "owners asked"]
    assert events.index("counted") < events.index("owners answered")


def _fails(exc: Exception) -> Any:
    def call() -> None:
        raise exc

    return call


def test_a_failing_request_wins_over_the_failing_read_done_meanwhile() -> None:
    # Before the overlap the read came after the request: a failed request ended the run
    # without it (a Tapkey error: a failed run, not a database error), so it still does.
    stop = threading.Event()
    db_error, api_error = RuntimeError("database away"), TapkeyError("owner list refused")
    with pytest.raises(TapkeyError, match="refused"):
        call_until_stopped(stop, _fails(api_error), _fails(db_error))
    with pytest.raises(RuntimeError, match="away"):
        call_until_stopped(stop, lambda: "owners", _fails(db_error))
    done: list[str] = []
    assert call_until_stopped(stop, lambda: "owners", lambda: done.append("read")) == "owners"
    assert done == ["read"]


def test_a_stop_during_the_request_still_interrupts_after_the_read_meanwhile() -> None:
    stop, release = threading.Event(), threading.Event()
    with pytest.raises(Interrupted):
        call_until_stopped(stop, lambda: release.wait(10), stop.set)
    release.set()


def test_last_seen_is_written_by_one_statement_per_chunk_of_owners(engine: Engine) -> None:
    # An executemany of one UPDATE per owner is one statement (a round trip) per owner on
    # PyMySQL; chunks of CASE ... WHEN are few on every backend, with the same values.
    n = 2 * LAST_SEEN_CHUNK + 7
    t = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    ids = [f"owner-{i:04d}" for i in range(n)]
    outcomes = [
        OwnerOutcome(
            owner_id,
            OwnerStatus.FAILED if i % 10 == 3 else OwnerStatus.COMPLETE,
            fetched_at=t + timedelta(seconds=i, microseconds=i),
            error="failed" if i % 10 == 3 else None,
        )
        for i, owner_id in enumerate(ids)
    ]
    statements: list[int] = []

    def count(_conn: Any, _cursor: Any, sql: str, params: Any, _ctx: Any, many: bool) -> None:
        if sql.lstrip().upper().startswith("UPDATE OWNER_ACCOUNTS"):
            statements.append(len(params) if many else 1)

    with engine.begin() as conn:
        conn.execute(
            owner_accounts.insert(),
            [{"id": i, "name": i, "first_seen_at": t, "updated_at": t} for i in ids],
        )
        run_id = run_records.open_run(conn, started_at=t, trigger="manual", client_id="c")
    with listening(engine, before_cursor_execute=count), engine.begin() as conn:
        record_owners(conn, run_id, outcomes)
    assert sum(statements) == 2  # 456 owners complete of 507, LAST_SEEN_CHUNK a statement
    with engine.connect() as conn:
        rows = conn.execute(select(owner_accounts.c.id, owner_accounts.c.last_seen_at))
        stored = {owner_id: seen_at for owner_id, seen_at in rows}
    assert stored == {
        o.owner_account_id: o.fetched_at if o.status == OwnerStatus.COMPLETE else None
        for o in outcomes
    }
