"""Log entries: read incrementally from the sandbox, stored exactly once, on every database.

The oracle is the sandbox's own list: after every run the stored entries of an owner are exactly
the entries its LogEntries route lists (each field and the raw text), minus those retention
drops, and the watermark never runs ahead of what is stored.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from support.helpers import subprocess_env
from support.log_entries import NOW, SCOPES, _instant, listed_entries, run, settings_for

from exporter.config.loader import load_settings
from exporter.config.sections import SyncSettings
from exporter.db.schema import log_entries, log_entry_watermarks
from exporter.errors import ConfigError
from exporter.sandbox.server import Fault, Sandbox
from exporter.service import job
from exporter.service.check import run_checks


def stored_entries(engine: Engine) -> dict[tuple[str, str], dict[str, Any]]:
    """Every stored entry by (owner, id): its columns."""
    with engine.connect() as conn:
        rows = conn.execute(select(log_entries)).mappings().all()
    return {(row["owner_account_id"], row["id"]): dict(row) for row in rows}


def assert_exact(engine: Engine, fake: Sandbox, **kwargs: Any) -> None:
    """The stored entries are the listed ones, field by field, and each was stored once."""
    stored = stored_entries(engine)
    listed = listed_entries(fake, **kwargs)
    assert set(stored) == set(listed)
    for key, entry in listed.items():
        row = stored[key]
        assert json.loads(row["raw"]) == entry
        assert row["entry_no"] == entry["entryNo"]
        assert row["lock_timestamp"] == _instant(entry["lockTimestamp"])
        assert row["received_at"] == _instant(entry["receivedAt"])
        assert (row["bound_lock_id"], row["bound_card_id"], row["contact_id"]) == (
            entry["boundLockId"],
            entry["boundCardId"],
            entry["contactId"],
        )
        assert (row["log_type"], row["command"]) == (entry["logType"], entry["command"])
    assert_watermarks_covered(engine, fake)


def assert_watermarks_covered(engine: Engine, fake: Sandbox) -> None:
    """Every listed entry up to an owner's watermark (receivedAt, id) is stored."""
    stored = set(stored_entries(engine))
    with engine.connect() as conn:
        marks = conn.execute(select(log_entry_watermarks)).mappings().all()
    for mark in marks:
        if mark["received_at"] is None:
            continue
        owner = mark["owner_account_id"]
        key = (mark["received_at"], mark["last_id"])
        for entry in fake.log_entries_payload(owner):
            if (_instant(entry["receivedAt"]), entry["id"]) <= key:
                assert (owner, entry["id"]) in stored, (owner, entry["id"], key)


def newest_received(fake: Sandbox, owner_id: str) -> datetime:
    """receivedAt of the owner's newest listed entry."""
    return _instant(fake.log_entries_payload(owner_id)[-1]["receivedAt"])


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# -- exactness ------------------------------------------------------------------------------------


@pytest.mark.parametrize("received_at_filter", [True, False], ids=["filter", "no-filter"])
def test_log_entries_are_exact_after_late_arrivals_and_overlaps(
    db_url: str, engine: Engine, tmp_path: Path, received_at_filter: bool
) -> None:
    with Sandbox(
        seed=5, owners=3, locks_per_owner=4, received_at_filter=received_at_filter
    ) as fake:
        settings = settings_for(fake, db_url, tmp_path, page_size=4)
        first = run(settings)
        assert first.status == "succeeded", first.error
        assert first.log_entries == len(listed_entries(fake)) > 0
        assert_exact(engine, fake)
        owner = fake.owners_payload()[0]["id"]
        for generation in range(4):
            # Stamped before the newest stored entry, listed only now: inside the overlap.
            slotted = newest_received(fake, owner) - timedelta(minutes=3 + generation)
            fake.append_log_entries(owner, 2, received_at=_iso(slotted))
            fake.advance(changes=2, access=6)  # online entries, late backlogs, grants, ...
            fake.append_log_entries(owner, 3, late=True)  # old lockTimestamp, new receivedAt
            result = run(settings)
            assert result.status == "succeeded", result.error
            assert_exact(engine, fake)
        again = run(settings)
        assert again.log_entries == 0
        assert_exact(engine, fake)


def test_a_rerun_with_no_new_entries_costs_one_request_per_owner(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=3, owners=4, locks_per_owner=3, log_entries_per_owner=30) as fake:
        settings = settings_for(fake, db_url, tmp_path, page_size=10)
        run(settings)
        fake.reset_counters()
        result = run(settings)
        assert result.log_entries == 0
        assert fake.requests["logs"] == 4
        fake.advance(changes=0, access=8)
        fake.reset_counters()
        run(settings)
        assert_exact(engine, fake)
        fake.reset_counters()
        run(settings)
        assert fake.requests["logs"] == 4


def test_a_server_refusing_the_filter_is_paged_from_the_stored_position(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    # Each owner's first read: the 400, then the whole log; later runs start at the stored
    # position of the newest entry (one request when nothing is new), and the filter is
    # tried again a day later.
    with Sandbox(
        seed=3, owners=3, locks_per_owner=3, log_entries_per_owner=30, received_at_filter=False
    ) as fake:
        settings = settings_for(fake, db_url, tmp_path, page_size=10)
        run(settings)
        assert_exact(engine, fake)
        fake.reset_counters()
        run(settings, NOW + timedelta(hours=1))
        assert fake.requests["logs"] == 3
        owner = fake.owners_payload()[1]["id"]
        fake.append_log_entries(owner, 4)
        fake.reset_counters()
        result = run(settings, NOW + timedelta(hours=2))
        assert result.log_entries == 4
        assert fake.requests["logs"] == 4  # one more for the owner with new entries
        assert_exact(engine, fake)
        fake.received_at_filter = True
        fake.reset_counters()
        run(settings, NOW + timedelta(days=1, hours=1))  # the refusal is a day old: ask again
        assert fake.requests["logs"] == 3
        fake.reset_counters()
        run(settings, NOW + timedelta(days=1, hours=2))
        assert fake.requests["logs"] == 3
        with engine.connect() as conn:
            refused = conn.execute(select(log_entry_watermarks.c.filter_refused_at)).scalars()
            assert set(refused) == {None}
        assert_exact(engine, fake)


def test_entries_slotted_in_before_the_stored_position_are_found(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    # Without the filter, an entry listed before the stored position moves the watermark entry
    # down the list: the anchor check sees it and the whole log is read once.
    with Sandbox(
        seed=8, owners=2, locks_per_owner=3, log_entries_per_owner=20, received_at_filter=False
    ) as fake:
        settings = settings_for(fake, db_url, tmp_path, page_size=6)
        run(settings)
        owner = fake.owners_payload()[0]["id"]
        early = _instant(fake.log_entries_payload(owner)[3]["receivedAt"])
        fake.append_log_entries(owner, 2, received_at=_iso(early + timedelta(milliseconds=1)))
        result = run(settings, NOW + timedelta(hours=1))
        assert result.log_entries == 2
        assert_exact(engine, fake)


def test_a_server_capping_top_silently_loses_nothing(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    # $top 10 asked, 3 served: short pages do not prove the end of a list. More entries than
    # the cap within the overlap window must not stall the log either.
    with Sandbox(seed=4, owners=2, locks_per_owner=3, log_entries_per_owner=25) as fake:
        settings = settings_for(fake, db_url, tmp_path, page_size=10)
        fake.max_top = 3
        for _ in range(3):
            run(settings)
        owner = fake.owners_payload()[0]["id"]
        moment = newest_received(fake, owner) + timedelta(seconds=1)
        fake.append_log_entries(owner, 5, received_at=_iso(moment))  # one instant: ties
        fake.append_log_entries(owner, 4)
        results = [run(settings, NOW + timedelta(hours=n)) for n in range(1, 5)]
        assert sum(r.log_entries for r in results) == 9
        assert_exact(engine, fake)


@pytest.mark.parametrize(
    ("states_limit", "filter_works"),
    [
        pytest.param(True, True, id="limit-stated"),
        pytest.param(False, True, id="no-limit"),
        pytest.param(True, False, id="limit-stated-filter-refused"),
        pytest.param(False, False, id="no-limit-filter-refused"),
    ],
)
def test_a_log_refusing_a_large_top_steps_down_and_loses_nothing(
    db_url: str, engine: Engine, tmp_path: Path, states_limit: bool, filter_works: bool
) -> None:
    # The lock lists take $top 10; LogEntries answers OData's MaxTop 400 above 4. The log reader
    # asks again with a smaller $top instead of failing the owner's log, and keeps the filter
    # unless the server refuses the filter too.
    with Sandbox(
        seed=6,
        owners=3,
        locks_per_owner=3,
        log_entries_per_owner=25,
        received_at_filter=filter_works,
    ) as fake:
        fake.refuse_top, fake.refuse_top_routes = 4, frozenset({"logs"})
        fake.refuse_top_states_limit = states_limit
        tops: list[int | None] = []
        fake.hooks.append(
            lambda request: tops.append(request.top) if request.route == "logs" else None
        )
        settings = settings_for(fake, db_url, tmp_path, page_size=10)
        result = run(settings)
        assert (result.status, result.log_failures) == ("succeeded", {})
        assert_exact(engine, fake)
        owner = fake.owners_payload()[2]["id"]
        fake.append_log_entries(owner, 7)
        tops.clear()
        result = run(settings, NOW + timedelta(hours=1))
        assert result.log_entries == 7
        assert_exact(engine, fake)
        assert tops and max(t or 0 for t in tops) <= 4  # the smaller $top was kept: no 400
        # A refused filter is remembered (without a stated limit, from the second run on: in
        # the first, a smaller $top cured the 400s, so the filter's refusal was unproven).
        with engine.connect() as conn:
            refused = set(conn.execute(select(log_entry_watermarks.c.filter_refused_at)).scalars())
        assert (refused == {None}) == filter_works


# -- failures -------------------------------------------------------------------------------------


def test_a_token_without_read_logs_makes_the_run_partial(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=2, owners=2, locks_per_owner=3) as fake:
        settings = settings_for(
            fake, db_url, tmp_path, scopes="read:owneraccounts read:core:entities"
        )
        result = run(settings)
        assert result.status == "partial"
        assert result.error is not None and "read:logs" in result.error
        assert result.counts.created == 6  # the locks went on
        assert stored_entries(engine) == {}
        assert set(result.log_failures) == {o["id"] for o in fake.owners_payload()}


def test_a_denied_log_changes_nothing_for_that_owner_and_the_rest_goes_on(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=2, owners=3, locks_per_owner=3) as fake:
        settings = settings_for(fake, db_url, tmp_path)
        run(settings)
        denied = fake.owners_payload()[1]["id"]
        with engine.connect() as conn:
            before = conn.execute(select(log_entry_watermarks)).mappings().all()
        fake.advance(changes=0, access=10)
        fake.append_log_entries(denied, 3)
        fake.deny(denied, "logs")
        result = run(settings)
        assert result.status == "partial"
        assert result.error is not None and denied in result.error and "403" in result.error
        assert "may not read the logs" in result.error
        assert list(result.log_failures) == [denied]
        stored = set(stored_entries(engine))
        assert {k for k in listed_entries(fake) if k[0] != denied} <= stored
        with engine.connect() as conn:
            after = conn.execute(select(log_entry_watermarks)).mappings().all()
        assert [m for m in after if m["owner_account_id"] == denied] == [
            m for m in before if m["owner_account_id"] == denied
        ]
        fake.allow(denied, "logs")
        assert run(settings).status == "succeeded"
        assert_exact(engine, fake)


# -- crash safety ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_killed_while_reading_logs_loses_nothing(
    db_url: str, engine: Engine, request: pytest.FixtureRequest
) -> None:
    # SIGKILL lands after a random number of log requests (pages of 5, each written with the
    # watermark it reaches): after every kill the watermarks cover only stored entries, and one
    # clean run ends with exactly the listed entries, each stored once.
    rng = random.Random(f"log-crash:{request.node.callspec.id}")
    with Sandbox(seed=11, owners=4, locks_per_owner=3, log_entries_per_owner=40) as fake:
        fake.add_fault(Fault("logs", kind="delay", delay=0.01, times=None))
        env = subprocess_env(fake, db_url)
        env.update(
            EXPORTER_TAPKEY__PAGE_SIZE="5",
            EXPORTER_TAPKEY__WORKERS="2",
            EXPORTER_TAPKEY__ENTITIES="locks,log_entries",
            EXPORTER_TAPKEY__SCOPES=SCOPES,
        )
        for attempt in range(6):
            if attempt:
                fake.advance(changes=1, access=rng.randint(5, 15))
            base = fake.requests["logs"]
            target = rng.randint(1, 30)
            process = subprocess.Popen(
                [sys.executable, "-m", "exporter.cli", "run-once", "--quiet"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                deadline = time.monotonic() + 60
                while fake.requests["logs"] - base < target and process.poll() is None:
                    assert time.monotonic() < deadline, "run-once made no progress"
                    time.sleep(0.002)
                if process.poll() is None:
                    os.kill(process.pid, signal.SIGKILL)
            finally:
                process.wait(timeout=30)
            assert_watermarks_covered(engine, fake)
        fake.clear_faults()
        final = subprocess.run(
            [sys.executable, "-m", "exporter.cli", "run-once", "--quiet"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert final.returncode == 0, final.stderr
        assert_exact(engine, fake)


# -- retention ------------------------------------------------------------------------------------


def test_log_retention_keeps_the_entries_that_happened_within_it(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=6, owners=2, locks_per_owner=4, log_entries_per_owner=40) as fake:
        settings = settings_for(fake, db_url, tmp_path).model_copy(
            update={"sync": SyncSettings(log_retention="20d")}
        )
        for now in (NOW, NOW + timedelta(days=5)):
            fake.advance(changes=0, access=8)
            owner = fake.owners_payload()[0]["id"]
            fake.append_log_entries(owner, 4, late=True)
            result = run(settings, now)
            assert result.status == "succeeded", result.error
            cutoff = now - timedelta(days=20)
            kept = listed_entries(fake, keep=lambda e, c=cutoff: _instant(e["lockTimestamp"]) >= c)
            assert set(stored_entries(engine)) == set(kept)
            assert 0 < len(kept) < len(listed_entries(fake))
        # Nothing comes back on the next run, and nothing is stored twice.
        again = run(settings, NOW + timedelta(days=5, hours=1))
        assert again.log_entries == 0
        assert set(stored_entries(engine)) == set(kept)


# -- settings and check --------------------------------------------------------------------------


def test_entities_and_log_settings_from_the_environment(tmp_path: Path) -> None:
    env = {
        "EXPORTER_TAPKEY__ENTITIES": "locks, log_entries",
        "EXPORTER_SYNC__LOG_OVERLAP": "15m",
        "EXPORTER_SYNC__LOG_RETENTION": "400d",
    }
    settings = load_settings(None, env=env, cwd=tmp_path)
    assert settings.tapkey.entities == ("locks", "log_entries")
    options = job.log_options(settings)
    assert options is not None
    assert (options.overlap, options.retention) == (timedelta(minutes=15), timedelta(days=400))
    assert job.log_options(load_settings(None, env={}, cwd=tmp_path)) is None
    with pytest.raises(ConfigError, match="log_overlap"):
        load_settings(None, env={"EXPORTER_SYNC__LOG_OVERLAP": "0s"}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="entities"):
        load_settings(None, env={"EXPORTER_TAPKEY__ENTITIES": "locks,logs"}, cwd=tmp_path)


def test_check_names_read_logs_when_log_entries_are_read(db_url: str, tmp_path: Path) -> None:
    with Sandbox(seed=1, owners=1, locks_per_owner=1) as fake:
        scopes = "read:owneraccounts read:core:entities"
        token = {c.name: c for c in run_checks(settings_for(fake, db_url, tmp_path, scopes=scopes))}
        assert not token["token"].ok and "missing read:logs" in token["token"].detail
        token = {c.name: c for c in run_checks(settings_for(fake, db_url, tmp_path))}
        assert token["token"].ok
