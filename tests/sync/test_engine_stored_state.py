"""The sync engine reading what it stored: texts in batches and exactly, shared connections."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, func, select
from support.helpers import listening, make_settings, run_once
from support.sync_checks import _assert_matches_api

from exporter.db.schema import bound_locks, sync_runs
from exporter.errors import ClientMismatchError
from exporter.sandbox.server import Sandbox
from exporter.service import job
from exporter.sync import crawl
from exporter.sync.versions import concat_whole, load_live_raw


def test_stored_texts_are_read_in_batches_of_small_owners_and_alone_for_large_ones() -> None:
    stored = {"a": 3, "b": 0, "c": 150, "d": 40, "e": 40, "f": 40, "g": 1}
    plan = crawl.plan_text_batches(list("abcdefgh"), stored, small=100, owners=2, locks=90)
    # b and h have nothing stored: no read; c is large; d+e reach 80 locks, f would pass 90.
    assert plan == [["a"], ["c"], ["d", "e"], ["f", "g"]]
    assert crawl.plan_text_batches(list("ag"), stored, small=100, owners=5, locks=90) == [
        ["a", "g"]
    ]


def test_postgresql_reads_large_owners_in_batches_too(engine: Engine) -> None:
    stored = {f"owner-{n}": 500 for n in range(12)}
    with crawl._StoredTexts(engine, list(stored), stored) as texts:
        sizes = [len(batch) for batch in texts._batches]
    # 5,000 locks a statement on PostgreSQL; elsewhere owners of 100 locks or more alone.
    assert sizes == ([10, 2] if engine.dialect.name == "postgresql" else [1] * 12)


@pytest.mark.parametrize(
    "odd_id", ["with\x1eseparator", "\x1e", "ends-with\x1e"], ids=["inside", "only", "end"]
)
def test_stored_texts_are_read_exactly_whatever_the_ids_contain(
    engine: Engine, odd_id: str
) -> None:
    # SQLite and MariaDB read an owner's texts as one joined value: ids holding the separator
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


@pytest.mark.parametrize(
    ("length", "limit", "whole"),
    [
        pytest.param(100, 1 << 30, True, id="far below"),
        pytest.param(26, 108, True, id="4 bytes a character still below"),
        pytest.param(27, 108, False, id="could reach the cut"),
        pytest.param(105, 108, False, id="as long as a cut result"),
        pytest.param(108, 108, False, id="at the limit"),
    ],
)
def test_a_joined_value_passes_as_whole_only_if_no_cut_can_be_that_long(
    length: int, limit: int, whole: bool
) -> None:
    # A result cut at `limit` bytes (back to a whole character, up to 3 bytes less) is at
    # least limit - 3 bytes; utf8mb4 characters are 1-4 bytes, so only the bound is known.
    assert concat_whole("x" * length, limit) is whole


@pytest.mark.parametrize("db_url", ["postgresql", "mariadb"], indirect=True)
def test_the_texts_readers_end_no_transaction_on_their_autocommit_connections(
    db_url: str, tmp_path: Path
) -> None:
    # Each read is one statement on an autocommit connection: a commit after it was one more
    # round trip per read on MariaDB, where PyMySQL sends COMMIT even in autocommit mode.
    readers: list[str] = []

    def commit(_conn: Connection) -> None:
        if threading.current_thread().name.startswith("read"):
            readers.append(threading.current_thread().name)

    with Sandbox(seed=5, owners=3, locks_per_owner=120) as fake:
        run_once(fake, db_url, tmp_path)
        with listening(Engine, commit=commit):
            result = run_once(fake, db_url, tmp_path)
    assert result.counts.unchanged == 360
    assert readers == []


def test_an_owners_first_request_goes_out_before_its_stored_texts_are_read(
    db_url: str, tmp_path: Path
) -> None:
    # The texts are needed only once the first page is in: their read runs while the request is
    # in flight. Here the read waits (up to 5 s) for the sandbox to receive a locks request;
    # a fetch that waited for the read first would leave it waiting in vain.
    requested = threading.Event()
    waited: list[bool] = []

    def hold_reads(_conn: Connection, _cursor: object, statement: str, *_args: object) -> None:
        if threading.current_thread().name.startswith("read") and "bound_locks" in statement:
            waited.append(requested.wait(timeout=5))

    with Sandbox(seed=5, owners=2, locks_per_owner=30) as fake:
        run_once(fake, db_url, tmp_path)
        fake.hooks.append(lambda request: requested.set() if request.route == "locks" else None)
        with listening(Engine, before_cursor_execute=hold_reads):
            result = run_once(fake, db_url, tmp_path)
    assert result.counts.unchanged == 60
    assert waited and all(waited)


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


def test_a_database_filled_by_another_client_is_refused(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    run_once(sandbox, db_url, tmp_path)
    other = make_settings(sandbox, db_url, tmp_path, client_id="other-client")

    with pytest.raises(ClientMismatchError, match="other-client"):
        job.run_once(other)

    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(sync_runs)).scalar() == 1
