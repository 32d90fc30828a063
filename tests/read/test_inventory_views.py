"""The BI views and the documented SQL return what the read-side queries return."""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Integer, text
from support import doc_sql
from support.bi_views import _typed_view
from support.helpers import make_settings, sandbox_lock_ids, sandbox_owner_ids
from support.history import locks_at
from support.inventory_data import InventoryDb

from exporter.db import migrate
from exporter.db.engine import make_engine
from exporter.db.schema import LOCK_TRACKED, bound_lock_versions, metadata
from exporter.db.types import SQLITE_TIME_FORMAT, UTCDateTime
from exporter.db.views import VIEWS
from exporter.read import changelog, daily
from exporter.read import inventory as report
from exporter.sandbox.server import Sandbox
from exporter.service import job


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
        viewed = [daily.DailyCount(**row) for row in conn.execute(query).mappings()]
    expected = daily.daily_inventory(db)

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


def test_the_documented_change_feed_queries_find_a_lock_bound_again_elsewhere(
    sandbox: Sandbox, db_url: str, tmp_path: Path
) -> None:
    # A lock unbound in one run and bound again, same id, under another owner account and a new
    # title in a later run is a `restored` version: it changed owner and title all the same.
    owners = sandbox_owner_ids(sandbox)
    settings = make_settings(sandbox, db_url, tmp_path, max_retries=0)
    start = datetime(2026, 3, 2, 12, tzinfo=UTC)
    job.run_once(settings, now=lambda: start)
    again, moved, renamed = sandbox_lock_ids(sandbox, owners[0])[:3]
    payload = next(lock for lock in sandbox.locks_payload(owners[0]) if lock["id"] == again)
    sandbox.unbind(again)
    job.run_once(settings, now=lambda: start + timedelta(days=1))
    sandbox.rebind({**payload, "title": "Bound Again"}, owners[1])
    sandbox.move(moved, owners[2])
    sandbox.rename(renamed, "Renamed")
    job.run_once(settings, now=lambda: start + timedelta(days=2))

    engine = make_engine(db_url)
    try:
        feed = changelog.changes(engine, entities=("lock",)).rows
        names = changelog.changes(engine).owner_names
        backend = engine.dialect.name.replace("mysql", "mariadb")
        documented = doc_sql.queries("`bound_lock_change_feed`")
        [owners_query] = [q for q in documented if "old_owner_account_id <>" in q]
        [renames] = [q for q in documented if "old_title <> new_title" in q]
        march = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
        for example, at in zip(re.findall(r"TIMESTAMPTZ '[^']+'", renames), march, strict=True):
            renames = renames.replace(example, _literal(backend, at))
        with engine.connect() as conn:
            moves = conn.execute(text(owners_query)).mappings().all()
            titles = conn.execute(text(renames)).mappings().all()
    finally:
        engine.dispose()

    def changed(field: str) -> list[tuple[str, Any, Any]]:
        return sorted(
            (row.change_type, c.old, c.new) for row in feed for c in row.changes if c.field == field
        )

    assert changed("owner_account_id") == sorted(
        [("restored", owners[0], owners[1]), ("updated", owners[0], owners[2])]
    )
    assert sorted((m["old_owner_name"], m["new_owner_name"]) for m in moves) == sorted(
        (names[old], names[new]) for _, old, new in changed("owner_account_id")
    )
    assert len(changed("title")) == 2
    assert sorted((t["old_title"], t["new_title"]) for t in titles) == sorted(
        (old, new) for _, old, new in changed("title")
    )
