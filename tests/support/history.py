"""Checks that a stored history is exact, written once and used by every sync test."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, Table, select

from exporter.db.schema import (
    CARD_TRACKED,
    CONTACT_TRACKED,
    GRANT_TRACKED,
    LOCK_TRACKED,
    OWNER_TRACKED,
    REMOVAL_REASONS,
    bound_card_versions,
    bound_cards,
    bound_lock_versions,
    bound_locks,
    contact_versions,
    contacts,
    grant_versions,
    grants,
    owner_account_versions,
    owner_accounts,
    sync_run_owners,
    sync_runs,
)
from exporter.results import RunResult
from exporter.sandbox.server import Sandbox

#: Current table, version table and tracked columns of each entity with a history.
HISTORIES: dict[str, tuple[Table, Table, tuple[str, ...]]] = {
    "owners": (owner_accounts, owner_account_versions, OWNER_TRACKED),
    "locks": (bound_locks, bound_lock_versions, LOCK_TRACKED),
    "contacts": (contacts, contact_versions, CONTACT_TRACKED),
    "cards": (bound_cards, bound_card_versions, CARD_TRACKED),
    "grants": (grants, grant_versions, GRANT_TRACKED),
}


def _fields(value: Any) -> list[str] | None:
    if isinstance(value, str):
        parsed: list[str] = json.loads(value)
        return parsed
    return value  # type: ignore[no-any-return]


def _check_entity_versions(
    current: Table, versions: Table, tracked: tuple[str, ...], engine: Engine
) -> None:
    with engine.connect() as conn:
        rows = conn.execute(
            select(versions).order_by(versions.c.id, versions.c.valid_from)
        ).mappings()
        by_id: dict[str, list[Any]] = defaultdict(list)
        for row in rows:
            by_id[row["id"]].append(row)
        current_rows = {r["id"]: r for r in conn.execute(select(current)).mappings()}
        run_ids = set(conn.execute(select(sync_runs.c.id)).scalars())
    assert set(by_id) == set(current_rows), "every entity has versions and a current row"
    for entity_id, chain in by_id.items():
        assert chain[0]["change_type"] == "created", (entity_id, chain[0]["change_type"])
        for before, after in itertools.pairwise(chain):
            assert before["valid_from"] < after["valid_from"], f"{entity_id}: versions not ordered"
            assert before["valid_to"] == after["valid_from"], f"{entity_id}: gap or overlap"
            if after["change_type"] == "restored":
                assert before["change_type"] == "removed", f"{entity_id}: restore without removal"
            else:
                assert before["change_type"] != "removed", f"{entity_id}: change after removal"
            if after["change_type"] in ("updated", "restored"):
                diff = [f for f in tracked if before[f] != after[f]]
                assert _fields(after["changed_fields"]) == diff, (entity_id, after["change_type"])
                if after["change_type"] == "updated":
                    assert diff, f"{entity_id}: an update that changed nothing"
            if after["change_type"] == "removed":
                assert all(before[f] == after[f] for f in tracked), f"{entity_id}: removal values"
                assert after["removal_reason"] in REMOVAL_REASONS
        for version in chain:
            assert version["run_id"] in run_ids
            if version["change_type"] in ("created", "removed"):
                assert version["changed_fields"] is None
        last = chain[-1]
        assert last["valid_to"] is None, f"{entity_id}: no open version"
        row = current_rows[entity_id]
        for name in tracked:
            assert row[name] == last[name], f"{entity_id}: current {name} disagrees with history"
        if last["change_type"] == "removed":
            assert row["removed_at"] == last["valid_from"], f"{entity_id}: removed_at"
        else:
            assert row["removed_at"] is None, f"{entity_id}: present but removed_at set"


def assert_history_consistent(engine: Engine) -> None:
    """One open version per entity, contiguous intervals, and current tables matching them."""
    for current, versions, tracked in HISTORIES.values():
        _check_entity_versions(current, versions, tracked, engine)


def rows_at(engine: Engine, entity: str, at: datetime) -> dict[str, dict[str, Any]]:
    """The rows of `entity` (a HISTORIES key) present at `at`, from its version table alone."""
    _, v, tracked = HISTORIES[entity]
    return _versions_at(engine, v, tracked, at)


def expected_access(
    payloads: dict[str, list[dict[str, Any]]],
    entity: str,
    identifier: Any = None,
    *,
    texts: bool = True,
) -> dict[str, dict[str, Any]]:
    """What the API shows (per owner id, a sandbox payload list) in `entity`'s tracked columns.

    `identifier` maps a contact's identifier to what is stored (default: kept); without `texts`
    a contact's title and comment are not stored ([privacy] hash and drop).
    """
    expected: dict[str, dict[str, Any]] = {}
    for owner_id, items in payloads.items():
        for item in items:
            if entity == "contacts":
                value = item.get("identifier", item.get("email"))
                values = {
                    "ip_id": item["ipId"],
                    "identifier": identifier(value) if identifier else value,
                    "title": item["title"] if texts else None,
                    "comment": item["comment"] if texts else None,
                }
            elif entity == "cards":
                values = {
                    "title": item["title"],
                    "label": item["label"],
                    "uid": item["uid"],
                    "physical_card_id": item["physicalCardId"],
                    "is_active": item["isActive"],
                    "bind_date": _api_time(item["bindDate"]),
                    "unbind_date": _api_time(item["unbindDate"]),
                    "nof_grants_capacity": item["nofGrantsCapacity"],
                }
            else:
                values = {
                    "bound_lock_id": item["boundLockId"],
                    "contact_id": item["contactId"],
                    "bound_card_id": item["boundCardId"],
                    "validity_from": _api_time(item["validFrom"]),
                    "validity_before": _api_time(item["validBefore"]),
                    "time_restriction_ical": item["timeRestrictionIcal"],
                    "state": item["state"],
                    "active": item["active"],
                }
            expected[item["id"]] = {"owner_account_id": owner_id, **values}
    return expected


def locks_at(engine: Engine, at: datetime) -> dict[str, dict[str, Any]]:
    """The locks present at `at`, from the version table alone."""
    return _versions_at(engine, bound_lock_versions, LOCK_TRACKED, at)


def _versions_at(
    engine: Engine, v: Table, tracked: Sequence[str], at: datetime
) -> dict[str, dict[str, Any]]:
    query = (
        select(v)
        .where(v.c.valid_from <= at)
        .where((v.c.valid_to.is_(None)) | (v.c.valid_to > at))
        .where(v.c.change_type != "removed")
    )
    with engine.connect() as conn:
        return {
            row["id"]: {name: row[name] for name in tracked}
            for row in conn.execute(query).mappings()
        }


def _api_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def expected_locks(snapshot: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """What the API shows (a sandbox snapshot) in the tracked columns' terms."""
    expected: dict[str, dict[str, Any]] = {}
    for owner_id, locks in snapshot.items():
        for lock in locks:
            lock_type = lock.get("lockType") or {}
            expected[lock["id"]] = {
                "owner_account_id": owner_id,
                "title": lock["title"],
                "description": lock["description"],
                "physical_lock_id": lock["physicalLockId"],
                "lock_type_id": lock["lockTypeId"],
                "lock_model_name": lock_type.get("modelName"),
                "manufacturer_id": lock_type.get("manufacturerId"),
                "active": lock["active"],
                "bind_date": _api_time(lock["bindDate"]),
                "unbind_date": _api_time(lock["unbindDate"]),
                "target_type": lock["targetType"],
            }
    return expected


def count_rows(engine: Engine, table: Table) -> int:
    """Rows in `table`."""
    with engine.connect() as conn:
        return len(conn.execute(select(table.c[table.primary_key.columns.keys()[0]])).all())


def run_row(engine: Engine, run_id: int | None) -> dict[str, Any]:
    """The sync_runs row of `run_id`."""
    with engine.connect() as conn:
        return dict(
            conn.execute(select(sync_runs).where(sync_runs.c.id == run_id)).mappings().one()
        )


def run_owner_row(engine: Engine, run_id: int | None, owner_id: str) -> dict[str, Any]:
    """The sync_run_owners row of `owner_id` in `run_id`."""
    query = select(sync_run_owners).where(
        sync_run_owners.c.run_id == run_id, sync_run_owners.c.owner_account_id == owner_id
    )
    with engine.connect() as conn:
        return dict(conn.execute(query).mappings().one())


def stored_locks(engine: Engine, owner_id: str | None = None) -> dict[str, dict[str, Any]]:
    """Current rows (all columns but `raw`) with their version rows: what "left as stored" means."""
    query = select(bound_locks)
    if owner_id is not None:
        query = query.where(bound_locks.c.owner_account_id == owner_id)
    with engine.connect() as conn:
        rows = {r["id"]: dict(r) for r in conn.execute(query).mappings()}
        for lock_id, row in rows.items():
            row.pop("raw")
            row["versions"] = [
                dict(v)
                for v in conn.execute(
                    select(bound_lock_versions)
                    .where(bound_lock_versions.c.id == lock_id)
                    .order_by(bound_lock_versions.c.valid_from)
                ).mappings()
            ]
    return rows


def assert_converged(engine: Engine, fake: Sandbox, result: RunResult) -> None:
    """`result` succeeded and the database holds exactly the API's state, with a sound history."""
    assert result.status == "succeeded", result.error
    assert result.finished_at is not None
    assert locks_at(engine, result.finished_at) == expected_locks(fake.snapshot())
    assert_history_consistent(engine)


def run_statuses(engine: Engine) -> list[tuple[str, str | None]]:
    """(status, error) of every run, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(select(sync_runs.c.status, sync_runs.c.error).order_by(sync_runs.c.id))
        return [(status, error) for status, error in rows]


def assert_counts_match_versions(engine: Engine, run_id: int | None) -> None:
    """The lock counts of `run_id` in sync_runs and each sync_run_owners row are the lock
    version rows it wrote, and the run's totals are its owners' sums."""
    kinds = ("created", "updated", "restored", "removed")
    v = bound_lock_versions.c
    with engine.connect() as conn:
        written = conn.execute(
            select(v.owner_account_id, v.change_type).where(v.run_id == run_id)
        ).all()
        owners = [
            dict(r)
            for r in conn.execute(
                select(sync_run_owners).where(sync_run_owners.c.run_id == run_id)
            ).mappings()
        ]
    run = run_row(engine, run_id)
    by_kind = {kind: sum(1 for _, k in written if k == kind) for kind in kinds}
    assert {kind: run[kind] for kind in kinds} == by_kind, f"run {run_id}: counts vs versions"
    for name in ("locks_seen", "unchanged", "skipped", "created", "updated", "restored"):
        assert run[name] == sum(o[name] for o in owners), f"run {run_id}: {name} vs its owners"
    for row in owners:
        owner = row["owner_account_id"]
        mine = {kind: sum(1 for o, k in written if o == owner and k == kind) for kind in kinds}
        assert {kind: row[kind] for kind in kinds} == mine, f"run {run_id} owner {owner}"
        if row["status"] == "complete":
            confirmed = row["created"] + row["updated"] + row["restored"] + row["unchanged"]
            assert confirmed <= row["locks_seen"], f"run {run_id} owner {owner}: more than seen"
        else:
            assert not any(mine.values()), f"run {run_id} owner {owner}: failed but wrote"
