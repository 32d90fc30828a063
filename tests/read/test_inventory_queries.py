"""Read-side queries against a history made by real syncs: instants, inventory, changes, runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text
from support.helpers import make_settings
from support.inventory_data import InventoryDb

from exporter.db.schema import LOCK_TRACKED, bound_lock_versions
from exporter.errors import UsageError
from exporter.read import asof, changelog
from exporter.read import inventory as report
from exporter.read import runs as read_runs
from exporter.sandbox.server import Sandbox
from exporter.service import job

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def _tracked(lock: report.LockRow) -> dict[str, Any]:
    return {name: getattr(lock, name) for name in LOCK_TRACKED}


# -- instants -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given, expected",
    [
        pytest.param("2026-03-01", datetime(2026, 3, 1, tzinfo=UTC), id="date"),
        pytest.param("2026-03-01T12:30:00", datetime(2026, 3, 1, 12, 30, tzinfo=UTC), id="naive"),
        pytest.param("2026-03-01 12:30:00Z", datetime(2026, 3, 1, 12, 30, tzinfo=UTC), id="z"),
        pytest.param(
            "2026-03-01T14:30:00+02:00", datetime(2026, 3, 1, 12, 30, tzinfo=UTC), id="offset"
        ),
        # RFC 3339 allows the T and the Z in lower case.
        pytest.param("2026-03-01t12:30:00z", datetime(2026, 3, 1, 12, 30, tzinfo=UTC), id="lower"),
        pytest.param("7d", NOW - timedelta(days=7), id="days"),
        pytest.param("1h30m", NOW - timedelta(minutes=90), id="hours-minutes"),
    ],
)
def test_parse_instant_reads_iso_times_and_durations(given: str, expected: datetime) -> None:
    assert asof.parse_instant(given, now=NOW) == expected


@pytest.mark.parametrize("given", ["yesterday", "7", "2026-13-01", "", "-3d"])
def test_parse_instant_refuses_anything_else_in_one_line(given: str) -> None:
    with pytest.raises(UsageError, match="ISO-8601") as caught:
        asof.parse_instant(given, now=NOW)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "given",
    ["99999999999d", "1" + "0" * 40 + "s", "0001-01-01T00:00:00+05:00", "9999-12-31T23:00-14:00"],
)
def test_parse_instant_refuses_a_time_outside_the_years_1_to_9999(given: str) -> None:
    with pytest.raises(UsageError, match="the years 1 to 9999"):
        asof.parse_instant(given, now=NOW)


# -- the inventory --------------------------------------------------------------------------------


def test_inventory_as_of_each_run_is_exactly_what_the_sandbox_served(
    inventory_db: InventoryDb, db: Engine
) -> None:
    for generation in inventory_db.generations:
        as_of = asof.resolve_as_of(db, str(generation.run_id), now=NOW)
        assert as_of == asof.AsOf(generation.finished_at, generation.run_id)

        inventory = report.inventory(db, as_of=as_of)

        run = f"run {generation.run_id}"
        assert {lock.id: _tracked(lock) for lock in inventory.locks} == generation.locks, run
        assert {lock.id: lock.lock_id_hex for lock in inventory.locks} == generation.hexes, run
        assert {o.id: o.name for o in inventory.owners} == generation.owners, run
        assert all(
            lock.owner_name == generation.owners[lock.owner_account_id] for lock in inventory.locks
        ), run
        assert all(lock.removed_at is None for lock in inventory.locks)


def test_inventory_as_of_a_time_between_runs_is_the_earlier_run(
    inventory_db: InventoryDb, db: Engine
) -> None:
    second, third = inventory_db.generations[1:3]
    between = second.finished_at + (third.started_at - second.finished_at) / 2

    inventory = report.inventory(db, as_of=asof.AsOf(between))

    assert {lock.id: _tracked(lock) for lock in inventory.locks} == second.locks
    before_anything = report.inventory(db, as_of=asof.AsOf(datetime(2020, 1, 1, tzinfo=UTC)))
    assert before_anything.locks == [] and before_anything.owners == []


def test_a_change_belongs_to_the_instant_it_was_observed(
    inventory_db: InventoryDb, db: Engine
) -> None:
    # Half-open intervals: at valid_from the new version holds, a microsecond before the old one.
    rename = next(
        v
        for v in changelog.lock_history(db, inventory_db.renamed).versions
        if v.run_id == inventory_db.generations[2].run_id
    )
    tick = timedelta(microseconds=1)

    def title_at(at: datetime) -> str | None:
        locks = report.inventory(db, as_of=asof.AsOf(at)).locks
        (title,) = [lock.title for lock in locks if lock.id == inventory_db.renamed]
        return title

    assert title_at(rename.changed_at) == "Renamed Door"
    assert title_at(rename.changed_at - tick) == rename.changes[0].old != "Renamed Door"


def test_current_inventory_is_the_last_generation_sorted_by_owner_then_title(
    inventory_db: InventoryDb, db: Engine
) -> None:
    last = inventory_db.generations[-1]

    inventory = report.inventory(db)

    assert {lock.id: _tracked(lock) for lock in inventory.locks} == last.locks
    assert {lock.id: lock.lock_id_hex for lock in inventory.locks} == last.hexes
    keys = [
        ((lock.owner_name or "").casefold(), (lock.title or "").casefold())
        for lock in inventory.locks
    ]
    assert keys == sorted(keys)
    now = report.inventory(db, as_of=asof.AsOf(datetime.now(UTC)))
    assert (now.owners, now.locks) == (inventory.owners, inventory.locks)


def test_inventory_filters_by_owner_model_search_and_removed(
    inventory_db: InventoryDb, db: Engine
) -> None:
    owner_id, old_name, new_name = inventory_db.renamed_owner
    everything = report.inventory(db)
    own = [lock for lock in everything.locks if lock.owner_account_id == owner_id]

    assert report.inventory(db, owner=owner_id).locks == own
    assert report.inventory(db, owner=new_name.upper()).locks == own
    assert report.inventory(db, owner=old_name).locks == own  # a past name still finds it
    model = everything.locks[0].lock_model_name
    assert model is not None
    by_model = report.inventory(db, model=model.lower())
    assert by_model.locks == [lock for lock in everything.locks if lock.lock_model_name == model]
    assert {o.id for o in by_model.owners} == {lock.owner_account_id for lock in by_model.locks}
    searched = report.inventory(db, search="renamed door")
    assert [lock.id for lock in searched.locks] == [inventory_db.renamed]
    hex_id = searched.locks[0].lock_id_hex
    assert hex_id and report.inventory(db, search=hex_id[:5]).locks[0].id == inventory_db.renamed

    with_removed = report.inventory(db, include_removed=True)
    removed = [lock for lock in with_removed.locks if lock.removed_at is not None]
    assert removed and inventory_db.rebound[0] in {lock.id for lock in removed}
    assert [lock for lock in with_removed.locks if lock.removed_at is None] == everything.locks
    with pytest.raises(UsageError, match="no owner account"):
        report.inventory(db, owner="nobody at all")


# -- histories, changes, bindings -----------------------------------------------------------------


def test_history_of_a_hex_id_shows_every_bound_lock_of_the_device(
    inventory_db: InventoryDb, db: Engine
) -> None:
    old, new = inventory_db.rebound
    hex_id = next(g.hexes[new] for g in inventory_db.generations if new in g.hexes)
    assert hex_id is not None

    history = changelog.lock_history(db, hex_id.lower().replace("-", ""))

    assert {lock.id for lock in history.locks} == {old, new}
    assert [(b.bound_lock_id, b.end_reason) for b in history.bindings][-2:] == [
        (old, "unbound"),
        (new, None),
    ]
    # The same run saw the new binding (during its crawl) and the old one's end (after it).
    ended, began = history.bindings[-2].held_to, history.bindings[-1].held_from
    assert ended is not None and timedelta(0) < ended - began < timedelta(seconds=5)
    rebind_run = inventory_db.generations[3].run_id
    kinds = [(v.id, v.change_type) for v in history.versions if v.run_id == rebind_run]
    assert kinds == [(new, "created"), (old, "removed")]
    assert (history.versions[0].id, history.versions[0].change_type) == (old, "created")
    assert changelog.lock_history(db, old).locks == [
        lock for lock in history.locks if lock.id == old
    ]
    with pytest.raises(UsageError, match="no bound lock"):
        changelog.lock_history(db, "00-00-00-00")


def test_history_shows_old_and_new_values_and_why(inventory_db: InventoryDb, db: Engine) -> None:
    runs = [g.run_id for g in inventory_db.generations]
    moved, source, target = inventory_db.moved
    history = changelog.lock_history(db, moved)
    (move,) = [v for v in history.versions if v.run_id == runs[3]]
    assert (move.change_type, [(c.field, c.old, c.new) for c in move.changes]) == (
        "updated",
        [("owner_account_id", source, target)],
    )
    assert [(b.owner_account_id, b.end_reason) for b in history.bindings][-2:] == [
        (source, "moved"),
        (target, None),
    ]
    assert history.bindings[-2].held_to == move.changed_at == history.bindings[-1].held_from

    unbound = changelog.lock_history(db, inventory_db.unbound).versions
    assert [(v.change_type, v.removal_reason, v.run_id) for v in unbound][-2:] == [
        ("removed", "unbound", runs[3]),
        ("restored", None, runs[5]),
    ]
    assert unbound[0].change_type == "created"
    renamed = changelog.lock_history(db, inventory_db.renamed).versions
    (rename,) = [v for v in renamed if v.run_id == runs[2]]
    assert [(c.field, c.new) for c in rename.changes] == [("title", "Renamed Door")]


def test_changes_filter_by_time_run_owner_and_kind(inventory_db: InventoryDb, db: Engine) -> None:
    generations = inventory_db.generations
    everything = changelog.changes(db).rows
    assert everything == sorted(everything, key=lambda r: (r.changed_at, r.entity != "owner", r.id))
    assert {r.run_id for r in everything} <= {g.run_id for g in generations}

    third = generations[2]
    of_run = changelog.changes(db, run_id=third.run_id).rows
    assert of_run == [r for r in everything if r.run_id == third.run_id]
    assert (
        changelog.changes(db, since=third.started_at, until=generations[3].started_at).rows
        == of_run
    )
    since = changelog.changes(db, since=generations[-2].started_at).rows
    assert since == [r for r in everything if r.changed_at >= generations[-2].started_at]

    removed = changelog.changes(db, kinds={"removed"}).rows
    assert removed and all(r.change_type == "removed" for r in removed)
    lost = {r.id for r in removed if r.removal_reason == "owner_removed"}
    assert inventory_db.lost_owner in lost

    moved, source, target = inventory_db.moved
    for owner in (source, target):  # a move concerns both owners
        rows = changelog.changes(db, owner=owner, run_id=inventory_db.generations[3].run_id).rows
        assert (moved, "updated") in {(r.id, r.change_type) for r in rows}
    with pytest.raises(UsageError, match="unknown change kind"):
        changelog.changes(db, kinds={"deleted"})


def test_changes_compare_each_version_with_the_previous_one(db: Engine) -> None:
    rows = changelog.changes(db, entities=("lock",)).rows
    with db.connect() as conn:
        stored = {r["version_id"]: r for r in conn.execute(select(bound_lock_versions)).mappings()}
    by_lock: dict[str, list[Any]] = {}
    for version in sorted(stored.values(), key=lambda v: (v["id"], v["valid_from"])):
        by_lock.setdefault(version["id"], []).append(version)
    for row in rows:
        chain = by_lock[row.id]
        index = [v["version_id"] for v in chain].index(row.version_id)
        before = chain[index - 1] if index else None
        assert row.previous_version_id == (before["version_id"] if before else None)
        expected = [
            (f, before[f], chain[index][f])
            for f in LOCK_TRACKED
            if before and before[f] != chain[index][f]
        ]
        assert [(c.field, c.old, c.new) for c in row.changes] == expected
    assert {r.change_type for r in rows} == {"created", "updated", "removed", "restored"}


def test_a_new_physical_lock_id_ends_a_binding(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    settings = make_settings(sandbox, db_url, tmp_path)
    job.run_once(settings)
    owner = sandbox.owners_payload()[0]["id"]
    lock = sandbox.locks_payload(owner)[0]
    sandbox.update_lock(lock["id"], physicalLockId="BAASNL/7")
    job.run_once(settings)

    held = changelog.bindings(engine, [lock["id"]])

    assert [(b.physical_lock_id, b.end_reason) for b in held] == [
        (lock["physicalLockId"], "physical_lock_changed"),
        ("BAASNL/7", None),
    ]
    assert [(b.lock_id_hex) for b in held] == [None, "12-34-BF-FB"]  # hex of the current id only
    with engine.connect() as conn:
        viewed = conn.execute(
            text(
                "SELECT physical_lock_id, end_reason, lock_id_hex FROM lock_binding_history "
                "WHERE bound_lock_id = :id ORDER BY held_from"
            ),
            {"id": lock["id"]},
        ).all()
    assert [tuple(row) for row in viewed] == [
        (b.physical_lock_id, b.end_reason, b.lock_id_hex) for b in held
    ]
    assert [lock.id for lock in changelog.lock_history(engine, "12-34-bf-fb").locks] == [lock["id"]]


# -- runs -----------------------------------------------------------------------------------------


def test_runs_and_run_detail(inventory_db: InventoryDb, db: Engine) -> None:
    generations = inventory_db.generations
    runs = read_runs.runs(db, limit=None)
    assert [r.id for r in runs] == [g.run_id for g in reversed(generations)]
    assert [r.status for r in runs] == [g.status for g in reversed(generations)]
    assert all(r.duration_seconds is not None and r.duration_seconds >= 0 for r in runs)
    assert [r.id for r in read_runs.runs(db, limit=2)] == [g.run_id for g in generations[:-3:-1]]
    partial = read_runs.runs(db, status="partial")
    assert [r.id for r in partial] == [generations[6].run_id]
    assert partial[0].error and inventory_db.partial_owner in partial[0].error

    detail = read_runs.run_detail(db, generations[6].run_id)
    assert detail.owners[0].owner_account_id == inventory_db.partial_owner
    assert detail.owners[0].status == "failed" and "503" in (detail.owners[0].error or "")
    assert {o.status for o in detail.owners[1:]} == {"complete"}
    assert sum(o.locks_seen for o in detail.owners) == detail.run.locks_seen
    with pytest.raises(UsageError, match="no run 999"):
        read_runs.run_detail(db, 999)
