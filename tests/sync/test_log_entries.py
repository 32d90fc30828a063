"""Log entries: read incrementally from the sandbox, stored exactly once, on every database.

The oracle is the sandbox's own list: after every run the stored entries of an owner are exactly
the entries its LogEntries route lists (each field and the raw text), minus those retention
drops, and the watermark never runs ahead of what is stored.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text, update
from support import doc_sql
from support.helpers import make_settings, subprocess_env
from typer.testing import CliRunner

from exporter import cli
from exporter.cli import app
from exporter.config.loader import load_settings
from exporter.config.sections import SyncSettings
from exporter.config.settings import Settings
from exporter.db.engine import make_engine
from exporter.db.schema import log_entries, log_entry_watermarks
from exporter.errors import ConfigError, PagingError
from exporter.read.log_view import LogRow
from exporter.results import RunResult
from exporter.sandbox.server import Fault, Sandbox
from exporter.service import job
from exporter.service.check import run_checks
from exporter.sync.log_paging import (
    MAX_RESTARTS,
    LogEntry,
    LogPager,
    Row,
    Watermark,
    next_watermark,
)

SCOPES = "read:owneraccounts read:core:entities read:logs"
# A clock for the runs: the sandbox's entries are from around 2025-01-01.
NOW = datetime(2025, 1, 2, tzinfo=UTC)


def settings_for(fake: Sandbox, db_url: str, tmp_path: Path, **tapkey: Any) -> Settings:
    """Settings that read log entries from `fake` (with scope read:logs)."""
    options: dict[str, Any] = {"entities": ("locks", "log_entries"), "scopes": SCOPES}
    return make_settings(fake, db_url, tmp_path, **{**options, **tapkey})


def run(settings: Settings, now: datetime = NOW) -> RunResult:
    """One run-once at `now` (later runs get later instants from the run's clock anyway)."""
    return job.run_once(settings, now=lambda: now)


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def stored_entries(engine: Engine) -> dict[tuple[str, str], dict[str, Any]]:
    """Every stored entry by (owner, id): its columns."""
    with engine.connect() as conn:
        rows = conn.execute(select(log_entries)).mappings().all()
    return {(row["owner_account_id"], row["id"]): dict(row) for row in rows}


def listed_entries(
    fake: Sandbox, keep: Callable[[dict[str, Any]], bool] = lambda e: True
) -> dict[tuple[str, str], dict[str, Any]]:
    """Every entry the sandbox lists now, by (owner, id)."""
    return {
        (owner["id"], entry["id"]): entry
        for owner in fake.owners_payload()
        for entry in fake.log_entries_payload(owner["id"])
        if keep(entry)
    }


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


# -- the view and the documented query -------------------------------------------------------------


def test_lock_openings_daily_counts_trigger_lock_commands_per_lock_and_day(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=9, owners=2, locks_per_owner=4, log_entries_per_owner=80) as fake:
        run(settings_for(fake, db_url, tmp_path))
        listed = listed_entries(fake)
    expected = Counter(
        (_instant(e["lockTimestamp"]).date().isoformat(), e["boundLockId"])
        for e in listed.values()
        if e["logType"] == "Command" and e["command"] == "TriggerLock"
    )
    assert any(e["command"] != "TriggerLock" for e in listed.values())  # some are not openings
    with engine.connect() as conn:
        viewed = conn.execute(
            text("SELECT day, bound_lock_id, openings, title FROM lock_openings_daily")
        ).all()
        # The example of docs/schema.md, verbatim.
        queries = doc_sql.queries("`lock_openings_daily`")
        documented = [conn.execute(text(query)).all() for query in queries]
    assert {(str(day), lock): n for day, lock, n, _ in viewed} == dict(expected)
    assert all(title for *_, title in viewed)  # joined to the lock
    assert documented[0] and all(row for row in documented)
    total = sum(row.openings for row in documented[0])
    assert total == sum(n for (day, _), n in expected.items() if day >= "2024-12-01")


# -- exporter log ---------------------------------------------------------------------------------


@pytest.fixture
def log_db(db_url: str, engine: Engine, tmp_path: Path) -> tuple[str, dict[tuple[str, str], Any]]:
    """A database holding one run's log entries; the sandbox's entries by (owner, id)."""
    with Sandbox(seed=12, owners=2, locks_per_owner=3, log_entries_per_owner=15) as fake:
        run(settings_for(fake, db_url, tmp_path))
        return db_url, listed_entries(fake)


def _log(db_url: str, tmp_path: Path, *args: str) -> Any:
    config = tmp_path / "config.toml"
    config.write_text("")
    env = {"EXPORTER_CONFIG": str(config), "EXPORTER_DATABASE__URL": db_url}
    # Tables 250 columns wide: rich fixes the console width when it is created (import time).
    saved, cli.out.width = cli.out._width, 250
    try:
        return CliRunner().invoke(app, ["log", *args], env=env)
    finally:
        cli.out._width = saved


def _newest_first(entries: Iterable[dict[str, Any]]) -> list[str]:
    keyed = sorted(
        entries,
        key=lambda e: (_instant(e["lockTimestamp"]), _instant(e["receivedAt"]), e["id"]),
    )
    # Ties in both times are ordered by id ascending, within the descending order.
    ordered = sorted(
        keyed, key=lambda e: (_instant(e["lockTimestamp"]), _instant(e["receivedAt"])), reverse=True
    )
    return [e["id"] for e in ordered]


def test_log_json_and_csv_list_every_entry_newest_first(
    log_db: tuple[str, dict[tuple[str, str], Any]], tmp_path: Path
) -> None:
    db_url, listed = log_db
    result = _log(db_url, tmp_path, "--format", "json", "--limit", "0")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["id"] for r in rows] == _newest_first(listed.values())
    for row in rows:
        entry = listed[(row["owner_account_id"], row["id"])]
        assert row["command"] == entry["command"] and row["entry_no"] == entry["entryNo"]
        assert _instant(row["lock_timestamp"]) == _instant(entry["lockTimestamp"])
        assert row["title"]  # the lock's title, joined
    csv_result = _log(db_url, tmp_path, "--format", "csv", "--limit", "0")
    assert csv_result.exit_code == 0
    csv_rows = list(csv.DictReader(io.StringIO(csv_result.stdout)))
    assert [r["id"] for r in csv_rows] == [r["id"] for r in rows]
    assert list(csv_rows[0]) == list(LogRow._fields)
    three = json.loads(_log(db_url, tmp_path, "--format", "json", "--limit", "3").stdout)
    assert [r["id"] for r in three] == [r["id"] for r in rows[:3]]


def test_log_by_lock_prefix_and_since(
    log_db: tuple[str, dict[tuple[str, str], Any]], tmp_path: Path
) -> None:
    db_url, listed = log_db
    lock_id = next(iter(listed.values()))["boundLockId"]
    result = _log(db_url, tmp_path, "--lock", lock_id[:8], "--format", "json", "--limit", "0")
    assert result.exit_code == 0, result.output
    of_lock = [e for e in listed.values() if e["boundLockId"] == lock_id]
    assert [r["id"] for r in json.loads(result.stdout)] == _newest_first(of_lock)
    since = sorted(_instant(e["lockTimestamp"]) for e in listed.values())[-4]
    recent = _log(db_url, tmp_path, "--since", since.isoformat(), "--format", "json")
    assert len(json.loads(recent.stdout)) == 4
    table = _log(db_url, tmp_path, "--lock", lock_id[:8])
    assert table.exit_code == 0
    assert f"{len(of_lock)} log entries" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lock", "no-such-lock"], "no bound lock has the id"),
        (["--since", "yesterday"], "cannot read 'yesterday' as a time"),
        (["--since", "1d", "--until", "2d"], "swap them"),
        (["--format", "xml"], "must be one of table, csv, json"),
    ],
)
def test_log_bad_input_is_one_line_and_exit_2(
    log_db: tuple[str, dict[tuple[str, str], Any]], tmp_path: Path, args: list[str], message: str
) -> None:
    result = _log(log_db[0], tmp_path, *args)
    assert result.exit_code == 2
    assert message in result.output


def test_log_output_escapes_what_the_api_sent(
    log_db: tuple[str, dict[tuple[str, str], Any]], tmp_path: Path
) -> None:
    db_url = log_db[0]
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                update(log_entries).values(log_type="\x1b[31mRed", command="=HYPERLINK(1)")
            )
    finally:
        engine.dispose()
    table = _log(db_url, tmp_path, "--limit", "1")
    assert "\\x1b[31mRed" in table.stdout and "\x1b" not in table.stdout
    cells = list(csv.DictReader(io.StringIO(_log(db_url, tmp_path, "--format", "csv").stdout)))
    assert cells[0]["command"] == "'=HYPERLINK(1)"
    raw = _log(db_url, tmp_path, "--format", "csv", "--csv-raw").stdout
    assert next(csv.DictReader(io.StringIO(raw)))["command"] == "=HYPERLINK(1)"


# -- the pager's decisions, without a server ------------------------------------------------

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _row(n: int, *, at: int | None = None) -> Row:
    """Entry e<n>, received `at` (default n) minutes after T0."""
    received = T0 + timedelta(minutes=n if at is None else at)
    entry = LogEntry(f"e{n:03d}", n, received, received, "L", None, None, "Command", None, "{}")
    return Row(entry.id, entry)


def _pager(watermark: Watermark | None = None, *, now: datetime = T0) -> LogPager:
    return LogPager(watermark or Watermark(), top=4, now=now, overlap=timedelta(minutes=10))


def test_the_first_request_filters_on_the_watermark_minus_the_overlap() -> None:
    assert _pager().first().params == {
        "$filter": "receivedAt gt 1970-01-01T00:00:00.000000Z",
        "$top": "4",
        "$skip": "0",
    }
    mark = Watermark(T0 + timedelta(minutes=30), "e030")
    assert _pager(mark).first().params["$filter"] == "receivedAt gt 2025-01-01T00:20:00.000000Z"


def test_a_refused_filter_is_not_asked_for_again_within_a_day() -> None:
    mark = Watermark(T0, "e000", list_position=17, filter_refused_at=T0)
    soon = _pager(mark, now=T0 + timedelta(hours=23)).first()
    assert (soon.params, soon.anchor) == ({"$top": "4", "$skip": "16"}, "e000")
    later = _pager(mark, now=T0 + timedelta(days=1)).first()
    assert "$filter" in later.params


@pytest.mark.parametrize(
    ("rows", "ends", "why"),
    [
        pytest.param([], True, "an empty page", id="empty"),
        pytest.param([_row(28), _row(30)], True, "short, ends at the watermark", id="at-mark"),
        pytest.param([_row(30), _row(31)], False, "short, with a new entry", id="new"),
        pytest.param([_row(25), _row(26)], False, "short of the watermark (a cap)", id="capped"),
        pytest.param([_row(n) for n in (27, 28, 29, 30)], False, "a full page", id="full"),
    ],
)
def test_when_a_filtered_read_ends(rows: list[Row], ends: bool, why: str) -> None:
    pager = _pager(Watermark(T0 + timedelta(minutes=30), "e030"))
    decision = pager.page(pager.first(), rows)
    assert (decision.next is None) == ends, why
    if decision.next is not None:  # the next page starts at the last row, which must be first
        assert decision.next.anchor == rows[-1].ident
        assert decision.next.params["$skip"] == str(len(rows) - 1)


def test_pages_overlap_and_a_page_of_only_the_overlap_row_ends_the_read() -> None:
    pager = _pager()
    first = pager.page(pager.first(), [_row(n) for n in range(4)])
    assert first.next is not None
    last = pager.page(first.next, [_row(3)])
    assert (last.rows, last.next) == ([], None)
    assert pager.newest == (T0 + timedelta(minutes=3), "e003")


def test_a_list_that_shifted_is_read_again_then_fails() -> None:
    pager = _pager()
    request = pager.first()
    for _ in range(MAX_RESTARTS):
        decision = pager.page(request, [_row(n) for n in range(4)])
        assert decision.next is not None
        decision = pager.page(decision.next, [_row(9), _row(10)])  # not the overlap row
        assert decision.next is not None and decision.next.skip == 0 and decision.rows == []
        request = decision.next
    decision = pager.page(request, [_row(n) for n in range(4)])
    assert decision.next is not None
    with pytest.raises(PagingError, match="kept changing"):
        pager.page(decision.next, [_row(9)])


def test_a_server_ignoring_skip_fails_at_once() -> None:
    pager = _pager()
    rows = [_row(n) for n in range(4)]
    decision = pager.page(pager.first(), rows)
    assert decision.next is not None
    with pytest.raises(PagingError, match="ignored \\$skip"):
        pager.page(decision.next, rows)


def test_a_stale_position_reads_the_whole_log() -> None:
    mark = Watermark(T0, "e005", list_position=6, filter_refused_at=T0)
    pager = _pager(mark, now=T0 + timedelta(hours=1))
    decision = pager.page(pager.first(), [_row(7), _row(8)])  # e005 is no longer at 6
    assert decision.next is not None
    assert (decision.next.skip, decision.next.anchor, pager.restarts) == (0, None, 0)


def test_the_watermark_waits_for_the_end_of_an_unordered_read() -> None:
    written = Watermark()
    pager = _pager()
    decision = pager.page(pager.first(), [_row(5), _row(2, at=2), _row(6), _row(7)])
    assert not pager.ordered and decision.next is not None
    assert next_watermark(pager, written, done=False) == Watermark(filter_refused_at=None)
    done = next_watermark(pager, written, done=True)
    assert (done.received_at, done.last_id) == (T0 + timedelta(minutes=7), "e007")


def test_a_400_stating_a_limit_asks_for_the_same_page_at_that_size() -> None:
    pager = _pager(Watermark(T0 + timedelta(minutes=30), "e030"))
    decision = pager.page(pager.first(), [_row(n) for n in (27, 28, 29, 30)])
    assert decision.next is not None
    again = pager.refused(decision.next, 3)
    assert again is not None and pager.use_filter
    assert (again.skip, again.anchor, again.filtered) == (3, "e030", True)
    assert again.params == {**decision.next.params, "$top": "3"}
    assert pager.refused(again, None) is None  # half of 3 is below 2: the owner's log fails


def test_a_400_without_a_limit_past_the_first_request_halves_the_top() -> None:
    pager = _pager()
    decision = pager.page(pager.first(), [_row(n) for n in range(4)])
    assert decision.next is not None
    smaller = pager.refused(decision.next, None)
    assert smaller is not None and smaller.filtered and pager.refused_at is None
    assert smaller.params == {**decision.next.params, "$top": "2"}
    follow = pager.page(smaller, [_row(3), _row(4)])  # a page of the new $top is full
    assert follow.next is not None and follow.next.params["$top"] == "2"


def test_a_400_without_a_limit_to_the_first_request_is_a_refused_filter() -> None:
    pager = _pager()
    unfiltered = pager.refused(pager.first(), None)
    assert unfiltered is not None and not unfiltered.filtered
    assert unfiltered.params == {"$top": "4", "$skip": "0"} and pager.refused_at == T0
    pager.answered(unfiltered)
    assert pager.refused_at == T0  # answered at the same $top: the filter it was


def test_a_filter_refusal_that_a_smaller_top_cures_is_not_kept() -> None:
    pager = _pager()
    unfiltered = pager.refused(pager.first(), None)
    assert unfiltered is not None
    smaller = pager.refused(unfiltered, None)  # refused again without the filter: the $top
    assert smaller is not None and smaller.params == {"$top": "2", "$skip": "0"}
    pager.answered(smaller)
    assert pager.refused_at is None
    assert next_watermark(pager, Watermark(), done=True).filter_refused_at is None


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
