"""The sync engine's paging: server caps, the learned page size, refused sizes, ignored skip."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from support.helpers import run_once, sandbox_lock_ids, sandbox_owner_ids
from support.history import assert_history_consistent, count_rows
from support.sync_checks import _assert_matches_api

from exporter.db.schema import api_paging, bound_lock_versions, bound_locks, owner_accounts
from exporter.sandbox.server import Sandbox, SandboxRequest


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


def test_a_new_cap_as_long_as_a_list_that_really_ends_there_removes_nothing(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=6, owners=2, locks_per_owner=4) as fake:
        run_once(fake, db_url, tmp_path, tapkey={"page_size": 10})
        assert _paging_row(engine) == (4, None)
        first, _ = sandbox_owner_ids(fake)
        for lock_id in sandbox_lock_ids(fake, first)[:2]:
            fake.unbind(lock_id)  # the first owner's list really ends at 2 rows now
        fake.max_top = 2  # silently: the second owner's 4 locks are cut to 2

        cut = run_once(fake, db_url, tmp_path, tapkey={"page_size": 10, "workers": 1})

        # Every list ended on a page of 2, below the 4 learned before. The one check per run
        # (the owner list's end, the longest) proved nothing about the cap, and confirming the
        # first owner's list alone would not have either: the second owner's 2 locks past the
        # cut were removed in a succeeded run. Each list that removes rows is confirmed now.
        assert cut.status == "partial" and cut.counts.removed == 0, cut.error
        assert "cuts pages at 2 rows" in (cut.error or "")
        assert count_rows(engine, bound_locks) == 8
        assert_history_consistent(engine)

        after = run_once(fake, db_url, tmp_path, tapkey={"page_size": 10})

        assert after.status == "succeeded" and after.counts.removed == 2
        _assert_matches_api(engine, fake, after)


def test_a_lock_moved_behind_a_new_cap_in_another_list_is_not_removed(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=6, owners=3, locks_per_owner=6) as fake:
        run_once(fake, db_url, tmp_path, tapkey={"page_size": 7})
        assert _paging_row(engine) == (6, None)
        _, source, target = sandbox_owner_ids(fake)
        moved = sandbox_lock_ids(fake, source)[0]
        fake.move(moved, target)  # appended: the target's list is 7 locks long now
        fake.max_top = 6  # silently: the target's list is cut to its 6 stored locks

        cut = run_once(fake, db_url, tmp_path, tapkey={"page_size": 7, "workers": 1})

        # The first owner's list really ends at 6 rows and the target's was cut there; both
        # held every stored lock, so neither removes anything of its own. The one check per
        # run confirmed the first: the moved lock, missing from its old list, was removed as
        # unbound in a succeeded run. Once a list lacks stored ids, every end as long as the
        # longest page is confirmed, and a cut list holds back every removal.
        assert cut.status == "partial" and cut.counts.removed == 0, cut.error
        assert "cuts pages at 6 rows" in (cut.error or "")
        assert_history_consistent(engine)

        after = run_once(fake, db_url, tmp_path, tapkey={"page_size": 7})

        assert after.status == "succeeded" and after.counts.removed == 0
        with engine.connect() as conn:
            kinds = conn.execute(
                select(bound_lock_versions.c.change_type)
                .where(bound_lock_versions.c.id == moved)
                .order_by(bound_lock_versions.c.valid_from)
            ).scalars()
            assert list(kinds) == ["created", "updated"]  # moved, never unbound
        _assert_matches_api(engine, fake, after)


@pytest.mark.xfail(
    strict=True,
    reason="open: only one of several ends tied with the longest page is confirmed per run",
)
def test_a_new_lock_behind_a_new_cap_as_long_as_another_list_is_not_missed(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=6, owners=2, locks_per_owner=6) as fake:
        run_once(fake, db_url, tmp_path, tapkey={"page_size": 7})
        _, target = sandbox_owner_ids(fake)
        fake.bind_new(target)  # 7 locks: the 7th is new
        fake.max_top = 6  # silently: the target's list is cut to its 6 stored locks

        result = run_once(fake, db_url, tmp_path, tapkey={"page_size": 7, "workers": 1})

        # Both lists end on a page of 6 holding every stored lock (rule 3); the one check per
        # run confirms the first, which really ends there, and the run succeeds without the
        # new lock. Confirming every end tied with the longest page finds the cap, at one
        # request per tied list (uniform lists: one per list).
        assert result.status == "partial" or result.counts.created == 1, result.error


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
