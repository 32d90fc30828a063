"""store.insert_many, the bulk path new locks take, stores exactly what Core's INSERT stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine, Table, insert, select

from exporter.schema import bound_lock_versions, bound_locks, sync_runs
from exporter.store import insert_many

T = datetime(2026, 11, 28, 6, 30, 1, 123456, tzinfo=UTC)
# Values a text format must escape or convert: tabs, newlines, backslashes, quotes, non-ASCII,
# a timestamp in another zone, NULLs, a large integer.
AWKWARD = {
    "owner_account_id": "owner-1",
    "title": 'Tür\t"Süd"\\\n2',
    "description": None,
    "physical_lock_id": "AbC+/d==",
    "lock_type_id": "TKY-1",
    "lock_model_name": "\\N",
    "manufacturer_id": 2_000_000_000,
    "active": False,
    "bind_date": datetime(2020, 2, 29, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=2))),
    "unbind_date": None,
    "target_type": "lock",
}
PLAIN = {**AWKWARD, "title": "Door", "active": True, "manufacturer_id": None, "bind_date": T}


def _rows(engine: Engine, table: Table, key: str, prefix: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(table).where(table.c.id.startswith(prefix)).order_by(table.c.id)
        ).all()
    return [{k: v for k, v in row._asdict().items() if k != key} for row in rows]


def _insert_both(engine: Engine, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert `rows` once with Core (ids prefixed "core-") and once with insert_many ("bulk-")."""
    columns = tuple(rows[0])
    with engine.begin() as conn:
        conn.execute(insert(table), [{**row, "id": f"core-{row['id']}"} for row in rows])
        insert_many(
            conn,
            table,
            columns,
            [tuple(f"bulk-{v}" if k == "id" else v for k, v in row.items()) for row in rows],
        )


def _strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**row, "id": row["id"].split("-", 1)[1]} for row in rows]


def test_new_lock_rows_match_core_insert(engine: Engine) -> None:
    rows = [
        {"id": f"{i}", **values, "lock_id_hex": "12-34", "raw": f'{{"id":"{i}"}}'}
        | {"rcl_serial_no": None, "rcl_date": T, "first_seen_at": T, "updated_at": T}
        for i, values in enumerate((AWKWARD, PLAIN, AWKWARD))
    ]
    _insert_both(engine, bound_locks, rows)

    core = _rows(engine, bound_locks, "", "core-")
    assert len(core) == 3
    assert _strip(_rows(engine, bound_locks, "", "bulk-")) == _strip(core)
    assert core[0]["bind_date"] == AWKWARD["bind_date"]
    assert core[0]["title"] == AWKWARD["title"]


def test_version_rows_with_a_json_column_match_core_insert(engine: Engine) -> None:
    # changed_fields is JSON (JSONB on PostgreSQL): not a binary COPY type, so the text path.
    with engine.begin() as conn:
        run_id = conn.execute(
            insert(sync_runs)
            .values(started_at=T, status="running", trigger="manual")
            .returning(sync_runs.c.id)
        ).scalar_one()
    rows = [
        {"id": "v1", **AWKWARD, "valid_from": T, "valid_to": None, "change_type": "updated"}
        | {"changed_fields": ["title", "active"], "removal_reason": None, "run_id": run_id},
        {"id": "v2", **PLAIN, "valid_from": T, "valid_to": T, "change_type": "created"}
        | {"changed_fields": None, "removal_reason": None, "run_id": run_id},
    ]
    _insert_both(engine, bound_lock_versions, rows)

    core = _rows(engine, bound_lock_versions, "version_id", "core-")
    assert [row["changed_fields"] for row in core] == [["title", "active"], None]
    assert _strip(_rows(engine, bound_lock_versions, "version_id", "bulk-")) == _strip(core)
