"""Read-side queries and the BI views, on every backend, against a history made by real syncs."""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import (
    Engine,
    Integer,
    String,
    column,
    create_engine,
    inspect,
    select,
    table,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from support import doc_sql
from support.helpers import (
    MARIADB_ADMIN,
    POSTGRES_ADMIN,
    database_name,
    make_settings,
    server_database,
)
from support.history import count_rows, locks_at
from support.inventory_data import InventoryDb

from exporter.db import migrate
from exporter.db.descriptions import COLUMN_COMMENTS, TABLE_COMMENTS
from exporter.db.engine import make_engine
from exporter.db.schema import (
    LOCK_TRACKED,
    bound_lock_versions,
    bound_locks,
    lock_health_readings,
    metadata,
    sync_run_owners,
    sync_runs,
)
from exporter.db.types import SQLITE_TIME_FORMAT, UTCDateTime
from exporter.db.views import VIEW_COMMENTS, VIEWS
from exporter.errors import UsageError
from exporter.read import asof, changelog
from exporter.read import inventory as report
from exporter.read import runs as read_runs
from exporter.sandbox.server import Fault, Sandbox
from exporter.service import job

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def db(inventory_db: InventoryDb) -> Iterator[Engine]:
    """An engine on the filled database."""
    engine = make_engine(inventory_db.url)
    yield engine
    engine.dispose()


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


# -- the views say the same in SQL ----------------------------------------------------------------


def _typed_view(name: str, **types: Any) -> Any:
    """A select over a view with result types, so every backend returns Python values."""
    columns = {c: types.get(c, String()) for c in _view_columns(name)}
    return select(table(name, *(column(c, t) for c, t in columns.items())))


def _view_columns(name: str) -> list[str]:
    return list(VIEW_COMMENTS[name][1])


def _lock_types(prefixes: tuple[str, ...]) -> dict[str, Any]:
    return {f"{p}{f}": bound_lock_versions.c[f].type for p in prefixes for f in LOCK_TRACKED}


def test_change_feed_view_returns_what_report_changes_returns(db: Engine) -> None:
    rows = {r.version_id: r for r in changelog.changes(db, entities=("lock",)).rows}
    feed = _typed_view(
        "bound_lock_change_feed",
        version_id=Integer(),
        previous_version_id=Integer(),
        run_id=Integer(),
        changed_at=UTCDateTime(),
        changed_fields=bound_lock_versions.c.changed_fields.type,
        **_lock_types(("old_", "new_")),
    )
    with db.connect() as conn:
        viewed = conn.execute(feed).mappings().all()
        names = dict(conn.execute(text("SELECT id, name FROM owner_accounts")).all())

    assert sorted(v["version_id"] for v in viewed) == sorted(rows)
    for view in viewed:
        row = rows[view["version_id"]]
        assert (
            view["previous_version_id"],
            view["bound_lock_id"],
            view["lock_id_hex"],
            view["changed_at"],
            view["run_id"],
            view["change_type"],
            view["removal_reason"],
            view["new_owner_name"],
        ) == (
            row.previous_version_id,
            row.id,
            row.lock_id_hex,
            row.changed_at,
            row.run_id,
            row.change_type,
            row.removal_reason,
            row.owner_name,
        )
        changed = {c.field: c for c in row.changes}
        for f in LOCK_TRACKED:
            if f in changed:
                assert (view[f"old_{f}"], view[f"new_{f}"]) == (changed[f].old, changed[f].new)
            elif row.previous_version_id is None:
                assert view[f"old_{f}"] is None
            else:
                assert view[f"old_{f}"] == view[f"new_{f}"]
        old_owner = view["old_owner_account_id"]
        assert view["old_owner_name"] == (names[old_owner] if old_owner else None)
        if row.change_type in ("updated", "restored"):
            assert view["changed_fields"] == list(changed)


def test_binding_history_view_returns_what_report_bindings_returns(db: Engine) -> None:
    expected = changelog.bindings(db)
    query = _typed_view(
        "lock_binding_history",
        held_from=UTCDateTime(),
        held_to=UTCDateTime(),
        bind_date=UTCDateTime(),
    )
    with db.connect() as conn:
        viewed = [changelog.Binding(**row) for row in conn.execute(query).mappings()]

    key = lambda b: (b.held_from, b.bound_lock_id)  # noqa: E731
    assert sorted(viewed, key=key) == expected
    assert {b.end_reason for b in expected} >= {None, "moved", "unbound", "owner_removed"}


def test_daily_inventory_view_counts_the_locks_present_at_the_end_of_each_day(
    inventory_db: InventoryDb, db: Engine
) -> None:
    query = _typed_view(
        "daily_inventory", day=metadata.tables["calendar_days"].c.day.type, locks=Integer()
    )
    with db.connect() as conn:
        viewed = [report.DailyCount(**row) for row in conn.execute(query).mappings()]
    expected = report.daily_inventory(db)

    key = lambda c: (c.day, c.owner_account_id, c.lock_model_name or "")  # noqa: E731
    assert sorted(viewed, key=key) == expected
    first = inventory_db.generations[0].started_at.date()
    last = inventory_db.generations[-1].started_at.date()
    assert {c.day for c in expected} == {
        first + timedelta(days=n) for n in range((last - first).days + 1)
    }
    for day in sorted({c.day for c in expected}):
        end = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
        present = locks_at(db, end - timedelta(microseconds=1))
        counted = Counter((v["owner_account_id"], v["lock_model_name"]) for v in present.values())
        assert {
            (c.owner_account_id, c.lock_model_name): c.locks for c in expected if c.day == day
        } == dict(counted)


def test_current_bound_locks_view_is_the_current_inventory(db: Engine) -> None:
    with db.connect() as conn:
        viewed = dict(conn.execute(text("SELECT id, owner_name FROM current_bound_locks")).all())
    assert viewed == {lock.id: lock.owner_name for lock in report.inventory(db).locks}


def _literal(backend: str, at: datetime) -> str:
    if backend == "postgresql":
        return f"TIMESTAMPTZ '{at.strftime('%Y-%m-%d %H:%M:%S.%f')}+00'"
    if backend == "mariadb":
        return f"'{at.strftime('%Y-%m-%d %H:%M:%S.%f')}'"
    return f"'{at.strftime(SQLITE_TIME_FORMAT)}'"


def test_the_documented_point_in_time_queries_give_the_as_of_inventory(
    inventory_db: InventoryDb, db: Engine
) -> None:
    # The SQL of docs/schema.md itself: by run id on all three databases, by a literal time on
    # the database it is written for.
    documented = doc_sql.queries("The inventory at a point in time, in plain SQL")
    [by_run] = [s for s in documented if "JOIN sync_runs r ON r.id = 42" in s]
    [by_time] = [s for s in documented if doc_sql.dialect(s) == inventory_db.backend]
    [example_time] = set(re.findall(r"(?:TIMESTAMPTZ )?'\d{4}-[^']+'", by_time))
    for generation in inventory_db.generations:
        queries = (
            by_time.replace(example_time, _literal(inventory_db.backend, generation.finished_at)),
            by_run.replace("r.id = 42", f"r.id = {generation.run_id}"),
        )
        for query in queries:
            with db.connect() as conn:
                rows = conn.execute(text(query)).mappings().all()
            assert {row["id"] for row in rows} == set(generation.locks), query


def test_every_example_query_of_the_schema_docs_runs(inventory_db: InventoryDb, db: Engine) -> None:
    # Read from docs/schema.md, not copied: a renamed column or view there fails here. '...'
    # stands for a lock id in the examples.
    with db.connect() as conn:
        lock_id = conn.execute(text("SELECT MIN(id) FROM bound_locks")).scalar_one()
        ran = 0
        for query in doc_sql.queries():
            if doc_sql.dialect(query) in (None, inventory_db.backend):
                conn.execute(text(query.replace("'...'", f"'{lock_id}'"))).all()
                ran += 1
    assert ran >= 11  # the parser found the examples


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


# -- schema: comments, migration, PostgreSQL schema and read-only role ---------------------------


def test_every_table_view_and_column_is_described(inventory_db: InventoryDb, db: Engine) -> None:
    inspector = inspect(db)
    for name, sql in VIEWS.items():
        columns = [c["name"] for c in inspector.get_columns(name)]
        assert columns == _view_columns(name), name
        assert sql  # every view of views.VIEWS exists in the database
    assert set(inspector.get_view_names()) == set(VIEWS)
    if inventory_db.backend == "sqlite":
        return  # SQLite stores no comments
    for name, table_comment in TABLE_COMMENTS.items():
        assert inspector.get_table_comment(name)["text"] == table_comment
        stored = {c["name"]: c.get("comment") for c in inspector.get_columns(name)}
        assert stored == COLUMN_COMMENTS[name], name
    if inventory_db.backend == "postgresql":
        for name, (view_comment, columns) in VIEW_COMMENTS.items():
            assert inspector.get_table_comment(name)["text"] == view_comment
            stored = {c["name"]: c.get("comment") for c in inspector.get_columns(name)}
            assert stored == columns, name


def test_migration_0002_downgrades_and_upgrades_again(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'down.db'}")
    try:
        migrate.upgrade(engine)
        with engine.connect() as conn:
            command.downgrade(migrate.alembic_config(conn), "0001")
            conn.commit()
        assert migrate.current_revision(engine) == "0001"
        assert "bound_lock_change_feed" not in inspect(engine).get_view_names()
        migrate.upgrade(engine)
        migrate.check_models(engine)
    finally:
        engine.dispose()


@pytest.fixture
def pg_database(worker_id: str) -> Iterator[str]:
    """An empty PostgreSQL database."""
    yield from server_database(POSTGRES_ADMIN, f"{database_name(worker_id)}_schema")


def test_a_configured_postgresql_schema_is_created_and_used(
    pg_database: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    settings = make_settings(sandbox, pg_database, tmp_path)
    settings = settings.model_copy(
        update={"database": settings.database.model_copy(update={"schema_name": "tapkey_bi"})}
    )
    engine = job.make_engine(settings)
    try:
        migrate.upgrade(engine)  # creates the schema, then everything in it
        migrate.check_models(engine)
        result = job.run_once(settings)
        assert result.status == "succeeded"
        assert len(report.inventory(engine).locks) == 15
    finally:
        engine.dispose()
    plain = create_engine(pg_database)
    try:
        with plain.connect() as conn:
            where = dict(
                conn.execute(
                    text(
                        "SELECT table_name, table_schema FROM information_schema.tables "
                        "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
                    )
                ).all()
            )
        assert set(where.values()) == {"tapkey_bi"}
        assert {*metadata.tables, *VIEWS, "alembic_version"} == set(where)
    finally:
        plain.dispose()


def test_the_documented_postgresql_read_only_role_can_read_but_not_write(
    pg_database: str, sandbox: Sandbox, tmp_path: Path, worker_id: str
) -> None:
    engine = make_engine(pg_database)
    migrate.upgrade(engine)
    engine.dispose()
    job.run_once(make_settings(sandbox, pg_database, tmp_path))
    role = f"tapkey_bi_{worker_id}".replace("-", "_")
    database = pg_database.rsplit("/", 1)[1]
    owner = make_url(pg_database).username
    engine = create_engine(pg_database)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
            # The statements of docs/schema.md, with the role, database and owner filled in.
            documented = doc_sql.statements("A read-only role for BI users")
            statements = [s for s in documented if "'@'" not in s]  # the MariaDB ones have a host
            assert len(statements) >= 5
            for statement in statements:
                statement = re.sub(r"\btapkey_bi\b", role, statement)
                statement = statement.replace("DATABASE tapkey ", f"DATABASE {database} ")
                statement = statement.replace("FOR ROLE exporter ", f"FOR ROLE {owner} ")
                conn.execute(text(statement))
            # A table of a later upgrade, created by the role the exporter connects as.
            conn.execute(text("CREATE TABLE a_later_table (id integer)"))
        try:
            with engine.connect() as conn:
                conn.execute(text(f"SET ROLE {role}"))
                for view in VIEWS:
                    conn.execute(text(f"SELECT * FROM {view}")).all()
                assert conn.execute(text("SELECT COUNT(*) FROM current_bound_locks")).scalar() == 15
                assert conn.execute(text("SELECT COUNT(*) FROM a_later_table")).scalar() == 0
                with pytest.raises(DBAPIError, match="permission denied"):
                    conn.execute(text("DELETE FROM bound_locks"))
                conn.rollback()
                conn.execute(text(f"SET ROLE {role}"))
                with pytest.raises(DBAPIError, match="permission denied"):
                    conn.execute(
                        text(
                            "INSERT INTO sync_runs (started_at, status, trigger, "
                            "owners_seen, locks_seen, created, updated, removed, "
                            "restored, unchanged, skipped, api_requests) VALUES "
                            "(now(), 'running', 'manual', 0,0,0,0,0,0,0,0,0)"
                        )
                    )
                conn.rollback()
        finally:
            with engine.begin() as conn:
                conn.execute(text(f"DROP OWNED BY {role}"))
                conn.execute(text(f"DROP ROLE {role}"))
    finally:
        engine.dispose()


@pytest.fixture
def mariadb_database(worker_id: str) -> Iterator[str]:
    """An empty MariaDB database."""
    yield from server_database(MARIADB_ADMIN, f"{database_name(worker_id)}_role")


def test_the_documented_mariadb_read_only_user_can_read_but_not_write(
    mariadb_database: str, sandbox: Sandbox, tmp_path: Path, worker_id: str
) -> None:
    engine = make_engine(mariadb_database)
    migrate.upgrade(engine)
    engine.dispose()
    job.run_once(make_settings(sandbox, mariadb_database, tmp_path))
    user = f"tapkey_bi_{worker_id}".replace("-", "_")
    url = make_url(mariadb_database)
    admin = create_engine(mariadb_database)
    try:
        with admin.begin() as conn:
            conn.execute(text(f"DROP USER IF EXISTS '{user}'@'%'"))
            # The statements of docs/schema.md, with the user and database names filled in.
            documented = doc_sql.statements("A read-only role for BI users")
            statements = [s for s in documented if "'@'" in s]
            assert len(statements) >= 2
            for statement in statements:
                statement = statement.replace("'tapkey_bi'@", f"'{user}'@")
                conn.execute(text(statement.replace(" tapkey.* ", f" {url.database}.* ")))
        reader = create_engine(url.set(username=user, password="change-me"))
        try:
            with reader.connect() as conn:
                for view in VIEWS:
                    conn.execute(text(f"SELECT * FROM {view}")).all()
                assert conn.execute(text("SELECT COUNT(*) FROM current_bound_locks")).scalar() == 15
                with pytest.raises(DBAPIError, match="denied"):
                    conn.execute(text("DELETE FROM bound_locks"))
        finally:
            reader.dispose()
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP USER IF EXISTS '{user}'@'%'"))
        admin.dispose()


def test_calendar_days_cover_2020_to_2099_on_every_backend(db: Engine) -> None:
    calendar = metadata.tables["calendar_days"]
    with db.connect() as conn:
        rows = conn.execute(select(calendar).order_by(calendar.c.day)).all()
    assert len(rows) == (date(2100, 1, 1) - date(2020, 1, 1)).days
    assert rows[0].day == date(2020, 1, 1) and rows[-1].day == date(2099, 12, 31)
    for row in rows[::97]:
        assert row.day_start == datetime.combine(row.day, datetime.min.time(), tzinfo=UTC)
        assert row.day_end == row.day_start + timedelta(days=1)


# -- lock health and retention (item 6) -----------------------------------------------------------


def _served_readings(engine: Engine) -> dict[tuple[str, str, datetime], dict[str, Any]]:
    """The readings in the payloads as received (bound_locks.raw), by (lock, type, timestamp)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(bound_locks.c.id, bound_locks.c.raw).where(bound_locks.c.removed_at.is_(None))
        ).all()
    served = {}
    for lock_id, raw in rows:
        for reading in json.loads(raw)["healthStatuses"] or ():
            at = datetime.fromisoformat(reading["timestamp"].replace("Z", "+00:00"))
            served[(lock_id, reading["type"], at)] = reading
    return served


def _stored_readings(engine: Engine) -> dict[tuple[str, str, datetime], dict[str, Any]]:
    with engine.connect() as conn:
        return {
            (r["bound_lock_id"], r["type"], r["reading_at"]): dict(r)
            for r in conn.execute(select(lock_health_readings)).mappings()
        }


def test_health_readings_are_stored_once_and_never_as_versions(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=27, owners=3, locks_per_owner=5) as fake:
        settings = make_settings(fake, db_url, tmp_path, expand_health=True)
        first = job.run_once(settings)
        served = _served_readings(engine)
        stored = _stored_readings(engine)
        assert served and set(stored) == set(served)
        for key, reading in served.items():
            row = stored[key]
            assert (row["value"], row["value_status"], row["api_reading_id"]) == (
                reading["value"],
                reading["valueStatus"],
                reading["id"],
            )
            assert row["run_id"] == first.run_id and row["physical_lock_id"]
            if reading["type"] == "BatteryVoltage":
                assert row["value_number"] == pytest.approx(float(reading["value"]))
            if reading["type"] == "BatteryWarningLevel":
                assert row["value_number"] is None
        versions = count_rows(engine, bound_lock_versions)

        again = job.run_once(settings)
        assert again.counts.unchanged == 15 and _stored_readings(engine) == stored

        (change,) = fake.advance(1)
        assert change.kind == "health"  # seed 27's first change
        third = job.run_once(settings)

        assert count_rows(engine, bound_lock_versions) == versions  # never a lock version
        assert third.counts.updated == 0 and third.counts.unchanged == 15
        now_stored = _stored_readings(engine)
        new = {k: v for k, v in now_stored.items() if k not in stored}
        assert new and {k[0] for k in new} == {change.lock_id}
        assert {v["run_id"] for v in new.values()} == {third.run_id}
        assert set(now_stored) == set(stored) | set(_served_readings(engine))

    query = _typed_view(
        "current_lock_health",
        reading_at=UTCDateTime(),
        seen_at=UTCDateTime(),
        value_number=lock_health_readings.c.value_number.type,
    )
    with engine.connect() as conn:
        latest = {(r["bound_lock_id"], r["type"]): r for r in conn.execute(query).mappings()}
    expected: dict[tuple[str, str], datetime] = {}
    for lock_id, kind, at in now_stored:
        expected[(lock_id, kind)] = max(at, expected.get((lock_id, kind), at))
    assert {k: v["reading_at"] for k, v in latest.items()} == expected


def test_a_health_value_longer_than_its_column_is_dropped_never_cut(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    # Readings are hints: a field longer than its column loses that field, the reading stays.
    owner = sandbox.owners_payload()[0]["id"]
    elements = sandbox.locks_payload(owner)
    lock = elements[0]["id"]
    reading = {
        "id": "r" * 65,
        "physicalLockId": "AAChsgq2",
        "timestamp": "2030-01-01T00:00:00Z",
        "type": "Temperature",
        "value": "7" * 300,
        "valueStatus": "S" * 33,
    }
    elements[0]["healthStatuses"] = [reading]
    sandbox.add_fault(Fault("locks", kind="body", body=json.dumps(elements), owner_id=owner))

    result = job.run_once(make_settings(sandbox, db_url, tmp_path, expand_health=True))

    assert result.status == "succeeded" and result.counts.skipped == 0
    [row] = [r for r in _stored_readings(engine).values() if r["bound_lock_id"] == lock]
    assert (row["type"], row["physical_lock_id"]) == ("Temperature", "AAChsgq2")
    assert (row["value"], row["value_status"], row["api_reading_id"]) == (None, None, None)
    assert row["value_number"] == pytest.approx(float("7" * 300))


def test_without_expand_health_nothing_is_asked_or_stored(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    job.run_once(make_settings(sandbox, db_url, tmp_path))
    assert count_rows(engine, lock_health_readings) == 0
    with engine.connect() as conn:
        raws = conn.execute(select(bound_locks.c.raw)).scalars().all()
    assert all(json.loads(raw)["healthStatuses"] is None for raw in raws)


def test_retention_keeps_history_the_latest_run_and_the_latest_readings(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    start = datetime(2031, 5, 1, tzinfo=UTC)
    with Sandbox(seed=27, owners=3, locks_per_owner=5) as fake:
        settings = make_settings(fake, db_url, tmp_path, expand_health=True)
        first = job.run_once(settings, now=lambda: start)
        idle = job.run_once(settings, now=lambda: start + timedelta(hours=1))
        fake.advance(1)  # new health readings for one lock
        health_only = job.run_once(settings, now=lambda: start + timedelta(hours=2))
        readings = _stored_readings(engine)
        versions = count_rows(engine, bound_lock_versions)

        keep = settings.model_copy(
            update={
                "sync": settings.sync.model_copy(
                    update={"run_retention": "1d", "health_retention": "1d"}
                )
            }
        )
        last = job.run_once(keep, now=lambda: start + timedelta(days=3))

    assert count_rows(engine, bound_lock_versions) == versions
    with engine.connect() as conn:
        runs = set(conn.execute(select(sync_runs.c.id)).scalars())
        outcomes = set(conn.execute(select(sync_run_owners.c.run_id)).scalars())
    # Every reading (taken in 2025) is older than a day: only the latest per lock and type stay.
    latest: dict[tuple[str, str], datetime] = {}
    for lock_id, kind, at in readings:
        latest[(lock_id, kind)] = max(at, latest.get((lock_id, kind), at))
    kept = {(k[0], k[1], at) for k, at in latest.items()}
    assert set(_stored_readings(engine)) == kept
    assert len(readings) > len(latest)
    # The idle run is referenced by nothing; the first wrote versions; the third stays while a
    # reading it stored does.
    read_by = {readings[key]["run_id"] for key in kept}
    assert runs == {first.run_id, last.run_id} | (read_by & {health_only.run_id})
    assert idle.run_id not in runs
    assert outcomes == {last.run_id}


def test_the_migrations_created_the_views_schema_py_describes() -> None:
    # Views are not compared by `alembic check`: hold the frozen copies to views.VIEWS here.
    # A later revision that changes a view must update this list of (revision, views).
    frozen: dict[str, str] = {}
    for name in (
        "0001_initial.py",
        "0002_bi_views.py",
        "0006_access_entities.py",
        "0007_log_entries.py",
    ):
        path = migrate.migrations_dir() / "versions" / name
        spec = importlib.util.spec_from_file_location(f"revision_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        frozen.update(module.VIEWS)
    assert frozen == VIEWS
