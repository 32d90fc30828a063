"""The sync engine end to end: sandbox over real HTTP -> database, on every backend."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select
from support.helpers import make_settings, run_once, sandbox_lock_ids, sandbox_owner_ids
from support.history import assert_history_consistent, count_rows, expected_locks, locks_at

from exporter.db.schema import (
    api_paging,
    bound_lock_versions,
    bound_locks,
    owner_account_versions,
    owner_accounts,
    sync_run_owners,
    sync_runs,
)
from exporter.errors import ClientMismatchError
from exporter.results import RunResult
from exporter.sandbox.server import Fault, Sandbox, SandboxRequest
from exporter.service import job
from exporter.sync import crawl
from exporter.sync.versions import load_live_raw


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


def test_first_load_stores_every_lock_with_a_created_version(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    result = run_once(sandbox, db_url, tmp_path)

    assert result.status == "succeeded"
    assert (result.owners_seen, result.locks_seen, result.counts.created) == (3, 15, 15)
    assert count_rows(engine, bound_locks) == 15
    assert count_rows(engine, owner_accounts) == 3
    versions = _versions(engine, result.run_id or 0)
    assert {v["change_type"] for v in versions} == {"created"}
    _assert_matches_api(engine, sandbox, result)
    with engine.connect() as conn:
        run = conn.execute(select(sync_runs)).mappings().one()
        owners = conn.execute(select(sync_run_owners)).mappings().all()
        raw = conn.execute(
            select(bound_locks.c.id, bound_locks.c.raw, bound_locks.c.lock_id_hex)
        ).all()
    assert run["status"] == "succeeded" and run["client_id"] == "sandbox-client"
    assert run["api_requests"] >= 4
    assert {o["status"] for o in owners} == {"complete"} and len(owners) == 3
    served = {lock["id"] for locks in sandbox.snapshot().values() for lock in locks}
    assert {row.id for row in raw} == served
    assert all(row.raw.startswith("{") and row.lock_id_hex for row in raw)


def test_unchanged_rerun_writes_no_versions_and_rewrites_no_lock_rows(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    run_once(sandbox, db_url, tmp_path)
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.lower())

    run_engine_events: list[Engine] = []
    original = job.make_engine

    def spying_engine(settings: Any, **kwargs: Any) -> Engine:
        created = original(settings, **kwargs)
        event.listen(created, "before_cursor_execute", record)
        run_engine_events.append(created)
        return created

    job.make_engine = spying_engine  # type: ignore[assignment]
    try:
        second = run_once(sandbox, db_url, tmp_path)
    finally:
        job.make_engine = original  # type: ignore[assignment]

    assert second.status == "succeeded"
    assert second.counts.as_dict() == {
        "created": 0,
        "updated": 0,
        "removed": 0,
        "restored": 0,
        "unchanged": 15,
        "skipped": 0,
    }
    assert _versions(engine, second.run_id or 0) == []
    writes = [s for s in statements if s.startswith(("insert", "update", "delete"))]
    assert not [s for s in writes if "bound_locks" in s.split("where")[0] and "versions" not in s]
    assert not [s for s in writes if "bound_lock_versions" in s]
    _assert_matches_api(engine, sandbox, second)
    # Owners with nothing to write are still recorded: a run row each, and when last seen.
    with engine.connect() as conn:
        rows = conn.execute(
            select(sync_run_owners).where(sync_run_owners.c.run_id == second.run_id)
        ).mappings()
        fetched = {
            r["owner_account_id"]: (r["status"], r["unchanged"], r["fetched_at"]) for r in rows
        }
        last_seen = dict(
            conn.execute(select(owner_accounts.c.id, owner_accounts.c.last_seen_at)).all()
        )
    assert {o: (status, n) for o, (status, n, _) in fetched.items()} == {
        o: ("complete", 5) for o in sandbox_owner_ids(sandbox)
    }
    assert last_seen == {o: at for o, (_, _, at) in fetched.items()}
    assert all(second.started_at < at < (second.finished_at or at) for at in last_seen.values())
    # The stored texts of these small owners came in one statement, not one per owner.
    parts = [re.split(r"\sfrom\s", s, maxsplit=1) for s in statements if s.startswith("select")]
    texts = [p for p in parts if "raw" in p[0] and p[1].startswith("bound_locks")]
    assert len(texts) == 1, texts


def test_stored_texts_are_read_in_batches_of_small_owners_and_alone_for_large_ones() -> None:
    stored = {"a": 3, "b": 0, "c": 150, "d": 40, "e": 40, "f": 40, "g": 1}
    plan = crawl.plan_text_batches(list("abcdefgh"), stored, small=100, owners=2, locks=90)
    # b and h have nothing stored: no read; c is large; d+e reach 80 locks, f would pass 90.
    assert plan == [["a"], ["c"], ["d", "e"], ["f", "g"]]
    assert crawl.plan_text_batches(list("ag"), stored, small=100, owners=5, locks=90) == [
        ["a", "g"]
    ]


@pytest.mark.parametrize(
    "mutate, change_type, fields",
    [
        pytest.param(
            lambda f, lock: f.rename(lock, "Renamed door"), "updated", ["title"], id="rename"
        ),
        pytest.param(
            lambda f, lock: f.update_lock(lock, description="new text"),
            "updated",
            ["description"],
            id="description",
        ),
        pytest.param(
            lambda f, lock: f.update_lock(lock, active=False), "updated", ["active"], id="active"
        ),
    ],
)
def test_a_tracked_change_closes_the_old_version_and_opens_a_new_one(
    sandbox: Sandbox,
    db_url: str,
    engine: Engine,
    tmp_path: Path,
    mutate: Callable[[Sandbox, str], None],
    change_type: str,
    fields: list[str],
) -> None:
    run_once(sandbox, db_url, tmp_path)
    lock_id = sandbox_lock_ids(sandbox, sandbox_owner_ids(sandbox)[1])[2]
    mutate(sandbox, lock_id)

    result = run_once(sandbox, db_url, tmp_path)

    versions = _versions(engine, result.run_id or 0)
    assert [(v["id"], v["change_type"]) for v in versions] == [(lock_id, change_type)]
    assert versions[0]["changed_fields"] in (fields, f'["{fields[0]}"]')
    assert result.counts.updated == 1 and result.counts.unchanged == 14
    _assert_matches_api(engine, sandbox, result)


def test_untracked_change_updates_the_row_without_a_version(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    run_once(sandbox, db_url, tmp_path)
    lock_id = sandbox_lock_ids(sandbox, sandbox_owner_ids(sandbox)[0])[0]
    sandbox.update_lock(lock_id, rclSerialNo=4242)

    result = run_once(sandbox, db_url, tmp_path)

    assert _versions(engine, result.run_id or 0) == []
    with engine.connect() as conn:
        row = conn.execute(select(bound_locks).where(bound_locks.c.id == lock_id)).mappings().one()
    assert row["rcl_serial_no"] == 4242 and '"rclSerialNo":4242' in row["raw"].replace(" ", "")
    _assert_matches_api(engine, sandbox, result)


def test_removal_then_restore(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    run_once(sandbox, db_url, tmp_path)
    owner = sandbox_owner_ids(sandbox)[0]
    lock_id = sandbox_lock_ids(sandbox, owner)[1]
    lock = next(item for item in sandbox.locks_payload(owner) if item["id"] == lock_id)
    sandbox.unbind(lock_id)

    removed = run_once(sandbox, db_url, tmp_path)

    assert [
        (v["id"], v["change_type"], v["removal_reason"])
        for v in _versions(engine, removed.run_id or 0)
    ] == [(lock_id, "removed", "unbound")]
    _assert_matches_api(engine, sandbox, removed)

    sandbox.rebind(lock, owner)
    restored = run_once(sandbox, db_url, tmp_path)

    versions = _versions(engine, restored.run_id or 0)
    assert [(v["id"], v["change_type"]) for v in versions] == [(lock_id, "restored")]
    assert restored.counts.restored == 1
    _assert_matches_api(engine, sandbox, restored)


@pytest.mark.parametrize("target_first", [True, False], ids=["target-first", "source-first"])
def test_a_lock_moving_owners_is_an_update_never_a_removal(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path, target_first: bool
) -> None:
    run_once(sandbox, db_url, tmp_path)
    owners = sandbox_owner_ids(sandbox)
    source, target = (owners[2], owners[0]) if target_first else (owners[0], owners[2])
    lock_id = sandbox_lock_ids(sandbox, source)[0]
    sandbox.move(lock_id, target)

    result = run_once(sandbox, db_url, tmp_path, tapkey={"workers": 1})

    versions = _versions(engine, result.run_id or 0)
    assert [(v["id"], v["change_type"], v["owner_account_id"]) for v in versions] == [
        (lock_id, "updated", target)
    ]
    assert result.counts.removed == 0
    _assert_matches_api(engine, sandbox, result)


@pytest.mark.parametrize("stored_owner_first", [True, False], ids=["stored-first", "other-first"])
def test_a_lock_listed_by_two_owners_stays_with_the_first_and_is_never_removed(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path, stored_owner_first: bool
) -> None:
    run_once(sandbox, db_url, tmp_path)
    owners = sandbox_owner_ids(sandbox)
    # workers=1 applies owners in list order, so this picks which listing the run meets first.
    stored, other = (owners[0], owners[2]) if stored_owner_first else (owners[2], owners[0])
    lock_id = sandbox_lock_ids(sandbox, stored)[0]
    sandbox.list_also(lock_id, other)  # a move caught half-way: both lists have the lock

    result = run_once(sandbox, db_url, tmp_path, tapkey={"workers": 1})

    assert result.status == "succeeded"
    # Counted once, under the owner met first; the other listing is not an unreadable "skip".
    counts = result.counts
    assert (counts.created, counts.removed, counts.skipped) == (0, 0, 0)
    assert counts.unchanged + counts.updated == 15
    versions = [(v["id"], v["change_type"], v["owner_account_id"]) for v in _versions(engine, 2)]
    assert versions == ([] if stored_owner_first else [(lock_id, "updated", other)])
    assert_history_consistent(engine)
    # The owner met second says why one of its locks is not under it.
    second = other if stored_owner_first else stored
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                sync_run_owners.c.owner_account_id,
                sync_run_owners.c.status,
                sync_run_owners.c.error,
            ).where(sync_run_owners.c.run_id == result.run_id)
        ).all()
    notes = {owner: error for owner, status, error in rows if status == "complete" and error}
    assert list(notes) == [second]
    assert notes[second] == (
        f"lock also listed by another owner in this run (a move caught half-way?): {lock_id}; "
        "kept under that owner until the next run"
    )

    sandbox.move(lock_id, other)  # the move completes
    settled = run_once(sandbox, db_url, tmp_path, tapkey={"workers": 1})
    assert (settled.counts.created, settled.counts.removed, settled.counts.skipped) == (0, 0, 0)
    _assert_matches_api(engine, sandbox, settled)


@pytest.mark.parametrize(
    "odd_id", ["with\x1eseparator", "\x1e", "ends-with\x1e"], ids=["inside", "only", "end"]
)
def test_stored_texts_are_read_exactly_whatever_the_ids_contain(
    engine: Engine, odd_id: str
) -> None:
    # SQLite and PostgreSQL read an owner's texts as one joined value: ids holding the separator
    # must not shift one lock's text onto another (that could pass a changed lock as unchanged).
    t = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        ("plain", "owner-1", '{"id":"plain"}', None),
        (odd_id, "owner-1", '{"id":"odd"}', None),
        ("no-text", "owner-1", None, None),
        ("removed", "owner-1", '{"id":"removed"}', t),
        ("elsewhere", "owner-2", '{"id":"elsewhere"}', None),
    ]
    with engine.begin() as conn:
        conn.execute(
            bound_locks.insert(),
            [
                {"id": i, "owner_account_id": o, "raw": raw, "removed_at": gone}
                | {"first_seen_at": t, "updated_at": t}
                for i, o, raw, gone in rows
            ],
        )
        assert load_live_raw(conn, "owner-1") == {
            "plain": '{"id":"plain"}',
            odd_id: '{"id":"odd"}',
            "no-text": "",
        }
        assert load_live_raw(conn, "nobody") == {}


@pytest.mark.parametrize("db_url", ["mariadb"], indirect=True)
@pytest.mark.parametrize("limit", [10, 50, 108], ids=["in the ids", "in a text", "near the end"])
def test_texts_cut_by_group_concat_are_read_again_row_by_row(engine: Engine, limit: int) -> None:
    # MariaDB reads an owner's texts joined by GROUP_CONCAT, which cuts its result silently at
    # group_concat_max_len: a cut text must never pass for the stored one.
    t = datetime(2026, 1, 1, tzinfo=UTC)
    # Three texts of 36 characters: joined, 110.
    texts = {f"lock-{n}": f'{{"id":"lock-{n}","title":"{"x" * 10}"}}' for n in range(3)}
    with engine.begin() as conn:
        conn.execute(
            bound_locks.insert(),
            [
                {"id": i, "owner_account_id": "owner-1", "raw": raw, "first_seen_at": t}
                | {"updated_at": t}
                for i, raw in texts.items()
            ],
        )
        assert load_live_raw(conn, "owner-1") == texts  # joined, whole
        # The session limit the reader raises, lowered again: 10 cuts the joined ids, 50 the
        # second text, 108 the last text two characters before its end.
        conn.exec_driver_sql(f"SET SESSION group_concat_max_len = {limit}")
        assert load_live_raw(conn, "owner-1") == texts


def test_twenty_fetch_threads_share_the_database_connections(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    # More fetch threads than the engine's pool (5 + 10 overflow) has connections: the crawl
    # must not need a connection per thread.
    with Sandbox(seed=5, owners=24, locks_per_owner=2) as fake:
        run_once(fake, db_url, tmp_path, tapkey={"workers": 20})
        fake.advance(3)
        result = run_once(fake, db_url, tmp_path, tapkey={"workers": 20})
        assert result.status == "succeeded"
        _assert_matches_api(engine, fake, result)


def test_an_owner_lost_and_regained(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    run_once(sandbox, db_url, tmp_path)
    owner = sandbox_owner_ids(sandbox)[1]
    locks = set(sandbox_lock_ids(sandbox, owner))
    sandbox.hide_owner(owner)

    lost = run_once(sandbox, db_url, tmp_path)

    versions = _versions(engine, lost.run_id or 0)
    assert {(v["id"], v["removal_reason"]) for v in versions} == {
        (lock, "owner_removed") for lock in locks
    }
    with engine.connect() as conn:
        owner_row = (
            conn.execute(select(owner_accounts).where(owner_accounts.c.id == owner))
            .mappings()
            .one()
        )
    assert owner_row["removed_at"] is not None
    assert lost.status == "succeeded"
    _assert_matches_api(engine, sandbox, lost)

    sandbox.show_owner(owner)
    regained = run_once(sandbox, db_url, tmp_path)

    assert {v["id"] for v in _versions(engine, regained.run_id or 0)} == locks
    assert regained.counts.restored == len(locks)
    with engine.connect() as conn:
        kinds = (
            conn.execute(
                select(owner_account_versions.c.change_type)
                .where(owner_account_versions.c.id == owner)
                .order_by(owner_account_versions.c.valid_from)
            )
            .scalars()
            .all()
        )
    assert kinds == ["created", "removed", "restored"]
    _assert_matches_api(engine, sandbox, regained)


def test_a_failed_owner_makes_the_run_partial_and_removes_nothing(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    run_once(sandbox, db_url, tmp_path)
    owners = sandbox_owner_ids(sandbox)
    failing = owners[0]
    for lock in sandbox_lock_ids(sandbox, failing)[:2]:
        sandbox.unbind(lock)
    sandbox.unbind(sandbox_lock_ids(sandbox, owners[1])[0])
    sandbox.add_fault(Fault(route="locks", owner_id=failing, status=503, times=None))

    result = run_once(sandbox, db_url, tmp_path, tapkey={"max_retries": 1})

    assert result.status == "partial"
    assert result.counts.removed == 1  # only the healthy owner's unbound lock
    with engine.connect() as conn:
        outcome = (
            conn.execute(
                select(sync_run_owners).where(
                    sync_run_owners.c.owner_account_id == failing,
                    sync_run_owners.c.run_id == result.run_id,
                )
            )
            .mappings()
            .one()
        )
        present = conn.execute(
            select(func.count())
            .select_from(bound_locks)
            .where(bound_locks.c.owner_account_id == failing, bound_locks.c.removed_at.is_(None))
        ).scalar()
    assert outcome["status"] == "failed" and "503" in (outcome["error"] or "")
    assert present == 5
    assert_history_consistent(engine)

    sandbox.clear_faults()
    healed = run_once(sandbox, db_url, tmp_path)
    assert healed.status == "succeeded" and healed.counts.removed == 2
    _assert_matches_api(engine, sandbox, healed)


def test_a_list_shifting_mid_crawl_causes_no_false_removal(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=3, owners=2, locks_per_owner=12) as fake:
        run_once(fake, db_url, tmp_path, tapkey={"page_size": 4})
        owner = sandbox_owner_ids(fake)[0]
        first = sandbox_lock_ids(fake, owner)[0]
        fired: list[bool] = []

        def unbind_after_first_page(request: SandboxRequest) -> None:
            if request.owner_id == owner and (request.skip or 0) > 0 and not fired:
                fired.append(True)
                fake.unbind(first)

        fake.hooks.append(unbind_after_first_page)
        result = run_once(fake, db_url, tmp_path, tapkey={"page_size": 4})

        assert fired and result.status == "succeeded"
        assert [(v["id"], v["change_type"]) for v in _versions(engine, result.run_id or 0)] == [
            (first, "removed")
        ]
        _assert_matches_api(engine, fake, result)


def test_token_expiry_mid_run_fetches_a_new_token(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=4, owners=4, locks_per_owner=3) as fake:

        def revoke_once(request: SandboxRequest) -> None:
            if request.route == "locks" and request.number == 2:
                fake.revoke_tokens()

        fake.hooks.append(revoke_once)
        result = run_once(fake, db_url, tmp_path, tapkey={"workers": 1})

        assert result.status == "succeeded" and result.counts.created == 12
        assert fake.requests["token"] == 2
        _assert_matches_api(engine, fake, result)


def test_429_with_retry_after_is_retried(db_url: str, engine: Engine, tmp_path: Path) -> None:
    with Sandbox(seed=5, owners=2, locks_per_owner=3) as fake:
        fake.add_fault(Fault(route="locks", status=429, headers={"Retry-After": "0"}, times=2))
        fake.add_fault(Fault(route="owners", status=429, headers={"Retry-After": "1"}, times=1))

        result = run_once(fake, db_url, tmp_path)

        assert result.status == "succeeded" and result.counts.created == 6
        _assert_matches_api(engine, fake, result)


def test_a_server_side_page_cap_loses_no_rows(db_url: str, engine: Engine, tmp_path: Path) -> None:
    with Sandbox(seed=6, owners=2, locks_per_owner=23, max_top=5) as fake:
        result = run_once(fake, db_url, tmp_path, tapkey={"page_size": 10})

        assert result.status == "succeeded" and result.counts.created == 46
        _assert_matches_api(engine, fake, result)


def _paging_row(engine: Engine) -> tuple[int | None, int | None] | None:
    with engine.connect() as conn:
        row = conn.execute(select(api_paging.c.honoured_page_size, api_paging.c.max_top)).first()
    return None if row is None else (row[0], row[1])


def test_the_learned_page_size_saves_a_request_per_list_on_later_runs(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=6, owners=3, locks_per_owner=7) as fake:
        first = run_once(fake, db_url, tmp_path, tapkey={"page_size": 10})
        # Nothing known, nothing stored: every short page is confirmed by one more request.
        assert first.api_requests == 2 * (1 + 3)
        assert _paging_row(engine) == (7, None)  # the longest page the server returned
        owners = sandbox_owner_ids(fake)
        fake.unbind(sandbox_lock_ids(fake, owners[0])[0])  # 6 locks: shorter than 7, so the end
        fake.bind_new(owners[1])  # 8 locks, holding every stored one: nothing to remove
        fake.reset_counters()

        later = run_once(fake, db_url, tmp_path, tapkey={"page_size": 10})

        # One request per list, and one to confirm the end of the longest (owner 1's 8 locks).
        assert later.status == "succeeded" and later.api_requests == 1 + 3 + 1
        assert (later.counts.removed, later.counts.created) == (1, 1)
        assert fake.requests["owners"] + fake.requests["locks"] == 1 + 3 + 1
        assert _paging_row(engine) == (8, None)
        _assert_matches_api(engine, fake, later)


def test_a_server_that_starts_to_cap_below_the_learned_size_removes_nothing(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=6, owners=2, locks_per_owner=12) as fake:
        run_once(fake, db_url, tmp_path, tapkey={"page_size": 10})
        assert _paging_row(engine) == (10, None)
        fake.max_top = 5  # silently, below the size it returned in full before
        gone = fake.locks_payload(sandbox_owner_ids(fake)[1])[0]["id"]
        fake.unbind(gone)

        cut = run_once(fake, db_url, tmp_path, tapkey={"page_size": 10})

        # Each lock list ended at 5 rows, which looked like the end; the confirmation caught the
        # cap, so none of the 14 locks past the cut is removed (nor the unbound one: its list is
        # unproven too), the run is partial and says why.
        assert cut.status == "partial" and cut.counts.removed == 0
        assert "not proven" in (cut.error or "") and "cuts pages at 5 rows" in (cut.error or "")
        assert _paging_row(engine) == (None, 5)  # pages of 5 from now on
        assert count_rows(engine, bound_locks) == 24
        assert_history_consistent(engine)

        # Every end is confirmed again.
        after = run_once(fake, db_url, tmp_path, tapkey={"page_size": 10})

        assert after.status == "succeeded" and after.counts.removed == 1
        _assert_matches_api(engine, fake, after)


def test_an_owner_list_cut_by_a_new_cap_removes_no_owner(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=6, owners=12, locks_per_owner=2) as fake:
        # The owner list fills a page of 10.
        run_once(fake, db_url, tmp_path, tapkey={"page_size": 10})
        assert _paging_row(engine) == (10, None)
        fake.max_top = 9

        cut = run_once(fake, db_url, tmp_path, tapkey={"page_size": 10})

        assert cut.status == "partial" and "the owner list" in (cut.error or "")
        assert cut.counts.removed == 0 and cut.owners_seen == 9
        with engine.connect() as conn:
            present = conn.execute(
                select(func.count()).where(owner_accounts.c.removed_at.is_(None))
            ).scalar_one()
        assert present == 12
        assert_history_consistent(engine)


def test_a_refused_page_size_is_stepped_down_and_remembered(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=6, owners=2, locks_per_owner=9, refuse_top=4) as fake:
        first = run_once(fake, db_url, tmp_path, tapkey={"page_size": 1000})
        assert first.status == "succeeded" and first.counts.created == 18
        assert _paging_row(engine) == (4, 4)
        fake.reset_counters()
        refused: list[SandboxRequest] = []
        fake.hooks.append(lambda r: refused.append(r) if (r.top or 0) > 4 else None)

        again = run_once(fake, db_url, tmp_path, tapkey={"page_size": 1000})

        assert again.status == "succeeded" and again.counts.unchanged == 18
        assert refused == []  # pages of 4 from the start
        _assert_matches_api(engine, fake, again)


def test_a_server_ignoring_skip_fails_that_fetch_instead_of_looping(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=7, owners=2, locks_per_owner=9) as fake:
        run_once(fake, db_url, tmp_path, tapkey={"page_size": 4})
        fake.ignore_skip = True

        result = run_once(fake, db_url, tmp_path, tapkey={"page_size": 4})

        # The owner list (2 owners) is one page, read whole at the page size the first run
        # learned; each owner's 9 locks need paging, which fails.
        assert result.status == "partial"
        assert {o.status for o in result.owners} == {"failed"}
        assert "skip" in (result.error or "").lower() and result.counts.removed == 0
        assert fake.request_count < 60
        assert_history_consistent(engine)


def test_the_owner_list_failing_fails_the_run_and_changes_nothing(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    first = run_once(sandbox, db_url, tmp_path)
    sandbox.hide_owner(sandbox_owner_ids(sandbox)[0])
    sandbox.add_fault(Fault(route="owners", status=500, times=None))

    result = run_once(sandbox, db_url, tmp_path, tapkey={"max_retries": 1})

    assert result.status == "failed" and "500" in (result.error or "")
    assert locks_at(engine, datetime.now(UTC)) == locks_at(
        engine, first.finished_at or datetime.now(UTC)
    )
    assert count_rows(engine, bound_lock_versions) == 15
    assert_history_consistent(engine)


def test_a_database_filled_by_another_client_is_refused(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    run_once(sandbox, db_url, tmp_path)
    other = make_settings(sandbox, db_url, tmp_path, client_id="other-client")

    with pytest.raises(ClientMismatchError, match="other-client"):
        job.run_once(other)

    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(sync_runs)).scalar() == 1


def test_dry_run_reports_changes_and_writes_nothing(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    run_once(sandbox, db_url, tmp_path)
    owner = sandbox_owner_ids(sandbox)[0]
    sandbox.rename(sandbox_lock_ids(sandbox, owner)[0], "Dry")
    sandbox.unbind(sandbox_lock_ids(sandbox, owner)[1])
    before = count_rows(engine, bound_lock_versions)

    result = run_once(sandbox, db_url, tmp_path, dry_run=True)

    assert result.run_id is None
    assert sorted(c.change_type for c in result.changes) == ["removed", "updated"]
    assert count_rows(engine, bound_lock_versions) == before
    assert count_rows(engine, sync_runs) == 1


def test_the_clock_stepping_back_still_orders_versions(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    run_once(sandbox, db_url, tmp_path, now=lambda: start)
    sandbox.rename(sandbox_lock_ids(sandbox, sandbox_owner_ids(sandbox)[0])[0], "Earlier clock")

    result = run_once(sandbox, db_url, tmp_path, now=lambda: start - timedelta(days=1))

    assert result.counts.updated == 1
    assert_history_consistent(engine)


@pytest.mark.slow
def test_history_is_exact_across_random_generations(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    rng = random.Random(2024)
    with Sandbox(seed=11, owners=6, locks_per_owner=8) as fake:
        results = [run_once(fake, db_url, tmp_path, tapkey={"page_size": 5})]
        snapshots = [expected_locks(fake.snapshot())]
        for _ in range(8):
            fake.advance(changes=rng.randint(3, 9))
            results.append(run_once(fake, db_url, tmp_path, tapkey={"page_size": 5}))
            snapshots.append(expected_locks(fake.snapshot()))

        assert all(r.status == "succeeded" for r in results)
        for result, snapshot in zip(results, snapshots, strict=True):
            assert result.finished_at is not None
            assert locks_at(engine, result.finished_at) == snapshot, f"run {result.run_id}"
        assert_history_consistent(engine)
