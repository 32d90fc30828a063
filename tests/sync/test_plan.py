"""The run's decisions over plain data: an owner's diff, which owners to read, the removal plan."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from exporter.kinds import ChangeType, RemovalReason
from exporter.results import Counts
from exporter.sync.guard import RemovalGuard
from exporter.sync.plan import diff_owner, owners_to_read, plan_removals

GONE_AT = datetime(2026, 1, 1, tzinfo=UTC)
TRACKED = ("owner_account_id", "title")


@dataclass(frozen=True)
class Row:
    """A fetched record: tracked `title`, current-only `raw`."""

    id: str
    title: str = "Door"
    raw: str = "{}"
    owner: str = "o1"
    extra: dict[str, Any] = field(default_factory=dict)


def _stored(
    title: str = "Door", raw: str = "{}", owner: str = "o1", removed: bool = False
) -> dict[str, Any]:
    return {
        "owner_account_id": owner,
        "title": title,
        "raw": raw,
        "removed_at": GONE_AT if removed else None,
    }


def _diff(records: Sequence[Row], stored: Mapping[str, Mapping[str, Any]]) -> Any:
    return diff_owner(
        records,
        stored,
        tracked=TRACKED,
        values=lambda r: {"owner_account_id": r.owner, "title": r.title},
        current=lambda r: {"raw": r.raw},
    )


@pytest.mark.parametrize(
    ("record", "stored", "kind", "fields", "refresh", "unchanged"),
    [
        pytest.param(Row("a"), {}, ChangeType.CREATED, (), False, 0, id="created"),
        pytest.param(Row("a"), {"a": _stored()}, None, (), False, 1, id="unchanged"),
        pytest.param(
            Row("a", raw='{"x":1}'), {"a": _stored()}, None, (), True, 1, id="refresh-only-raw"
        ),
        pytest.param(
            Row("a", title="Gate", raw='{"x":1}'),
            {"a": _stored()},
            ChangeType.UPDATED,
            ("title",),
            False,
            0,
            id="updated-title",
        ),
        pytest.param(
            Row("a", owner="o2", title="Gate"),
            {"a": _stored()},
            ChangeType.UPDATED,
            ("owner_account_id", "title"),
            False,
            0,
            id="moved-and-renamed",
        ),
        pytest.param(
            Row("a"), {"a": _stored(removed=True)}, ChangeType.RESTORED, (), False, 0,
            id="restored-unchanged",
        ),
        pytest.param(
            Row("a", title="Gate"),
            {"a": _stored(removed=True)},
            ChangeType.RESTORED,
            ("title",),
            False,
            0,
            id="restored-changed",
        ),
    ],
)  # fmt: skip
def test_one_record_against_its_stored_row(
    record: Row,
    stored: dict[str, Any],
    kind: ChangeType | None,
    fields: tuple[str, ...],
    refresh: bool,
    unchanged: int,
) -> None:
    diff = _diff([record], stored)
    assert diff.in_order([record]) == ([(record, kind, fields)] if kind else [])
    assert diff.created == ((record,) if kind == ChangeType.CREATED else ())
    assert [r for r, _ in diff.refresh] == ([record] if refresh else [])
    assert diff.unchanged == unchanged


def test_a_diff_keeps_the_fetched_order_and_the_new_values() -> None:
    records = [Row("c"), Row("b", title="Gate"), Row("a", raw="new"), Row("d")]
    stored = {"b": _stored(), "a": _stored(), "d": _stored(removed=True)}

    diff = _diff(records, stored)

    assert [(record.id, kind) for record, kind, _ in diff.in_order(records)] == [
        ("c", ChangeType.CREATED),
        ("b", ChangeType.UPDATED),
        ("d", ChangeType.RESTORED),
    ]
    assert diff.counts() == Counts(created=1, updated=1, restored=1, unchanged=1)
    (updated,) = diff.of(ChangeType.UPDATED)
    assert updated.values == {"owner_account_id": "o1", "title": "Gate"}
    assert updated.current == {"raw": "{}"}
    assert diff.refresh == ((records[2], {"raw": "new"}),)
    assert diff.unchanged == 1


@pytest.mark.parametrize(
    ("present", "confirmed", "dry_run", "expected"),
    [
        pytest.param({"o1": 3, "o2": 2}, {"o1": 3, "o2": 2}, False, [], id="all-confirmed"),
        pytest.param({"o1": 3, "o2": 2}, {"o1": 3, "o2": 1}, False, ["o2"], id="one-unseen"),
        pytest.param({"o1": 3}, {}, False, ["o1"], id="vanished-owner-with-rows"),
        pytest.param({}, {}, False, [], id="no-rows-nothing-to-read"),
        pytest.param({"o1": 3, "o2": 2}, {"o1": 3, "o2": 2}, True, ["o1", "o2"], id="dry-run"),
    ],
)
def test_owners_are_read_row_by_row_only_when_their_counts_differ(
    present: dict[str, int], confirmed: dict[str, int], dry_run: bool, expected: list[str]
) -> None:
    assert owners_to_read({"o2", "o1"}, present, confirmed, dry_run=dry_run) == expected


def _rows(owner: str, count: int) -> list[tuple[str, str, str | None]]:
    return [(owner, f"{owner}-{i:02}", f"Door {i}") for i in range(count)]


GUARD = RemovalGuard(max_fraction=0.5, min_count=10)


# Owner o1 had `before` locks; `gone` of them are unseen now. Held back only when gone is more
# than min_count AND more than max_fraction of before, and the owner is not confirmed.
@pytest.mark.parametrize(
    ("gone", "before", "guard", "held"),
    [
        pytest.param(10, 10, GUARD, False, id="gone-equal-to-min-count"),
        pytest.param(11, 12, GUARD, True, id="one-over-min-count"),
        pytest.param(11, 22, GUARD, False, id="fraction-exactly-max"),
        pytest.param(12, 22, GUARD, True, id="fraction-just-over-max"),
        pytest.param(5, 5, GUARD, False, id="all-gone-but-few"),
        pytest.param(30, 30, RemovalGuard(allow_all=True), False, id="allow-all"),
        pytest.param(30, 30, RemovalGuard(allow_owners=frozenset({"o1"})), False, id="confirmed"),
        pytest.param(30, 30, RemovalGuard(allow_owners=frozenset({"o2"})), True, id="other-ok"),
        pytest.param(3, 4, RemovalGuard(max_fraction=0.5, min_count=2), True, id="lower-min-count"),
    ],
)
def test_the_guard_holds_back_an_owner_losing_too_many_locks(
    gone: int, before: int, guard: RemovalGuard, held: bool
) -> None:
    rows = _rows("o1", before)
    seen = {row_id for _, row_id, _ in rows[gone:]}

    plan = plan_removals(rows, seen, guard=guard, before={"o1": before})

    if held:
        assert plan.removals == ()
        assert plan.held_back == {"o1": gone}
        assert plan.removed_per_owner == {}
        (message,) = plan.messages
        assert message.startswith(f"owner o1: held back the removal of {gone} of its {before} ")
        assert plan.owner_notes == {"o1": message}
    else:
        assert [r.id for r in plan.removals] == [row_id for _, row_id, _ in rows[:gone]]
        assert {r.reason for r in plan.removals} == {RemovalReason.UNBOUND}
        assert plan.removed_per_owner == {"o1": gone}
        assert plan.held_back == {} and plan.messages == () and plan.owner_notes == {}


# `vanished` of `owners_before` owners left the owner list, each with 20 stored locks.
@pytest.mark.parametrize(
    ("vanished", "owners_before", "guard", "kept"),
    [
        pytest.param(1, 2, GUARD, False, id="fraction-exactly-max"),
        pytest.param(2, 3, GUARD, True, id="fraction-over-max"),
        pytest.param(2, 3, RemovalGuard(allow_all=True), False, id="allow-all"),
        pytest.param(2, 3, RemovalGuard(allow_owners=frozenset({"v0"})), True, id="one-confirmed"),
    ],
)
def test_vanished_owners_are_judged_by_the_owner_rule_alone(
    vanished: int, owners_before: int, guard: RemovalGuard, kept: bool
) -> None:
    gone = {f"v{i}": _rows(f"v{i}", 20) for i in range(vanished)}

    plan = plan_removals(
        [row for rows in gone.values() for row in rows],
        set(),
        guard=guard,
        before=dict.fromkeys(gone, 20),  # all of its locks go: the lock rule would hold them
        vanished=set(gone),
        owners_before=owners_before,
    )

    confirmed = {o for o in gone if guard.confirmed(o)}
    removed = set(gone) if not kept else confirmed
    assert set(plan.owners) == removed
    assert {r.owner_account_id for r in plan.removals} == removed
    assert {r.reason for r in plan.removals} <= {RemovalReason.OWNER_REMOVED}
    assert plan.held_back == {o: 20 for o in set(gone) - removed}
    if kept:
        (message,) = plan.messages
        assert message.startswith(
            f"owner list: held back the removal of {len(gone) - len(removed)}"
        )
        assert plan.owner_notes == {}  # vanished owners have no run row to note it on
    else:
        assert plan.messages == ()


def test_a_plan_lists_removals_by_owner_and_joins_notes_to_held_back_messages() -> None:
    present = [("o2", "b1", "B1"), ("o2", "b2", None), *_rows("o1", 12), ("v1", "v1-a", "V")]
    seen = {"b2"}

    plan = plan_removals(
        present,
        seen,
        guard=GUARD,
        before={"o1": 12, "o2": 2},
        reason=RemovalReason.DELETED,
        vanished={"v1"},
        owners_before=4,
        notes={"o1": "lock also listed by another owner", "o2": "unrelated"},
        what="grants",
    )

    assert [(r.id, r.owner_account_id, r.reason, r.title) for r in plan.removals] == [
        ("b1", "o2", RemovalReason.DELETED, "B1"),
        ("v1-a", "v1", RemovalReason.OWNER_REMOVED, "V"),
    ]
    assert plan.ids(RemovalReason.DELETED) == ["b1"]
    assert plan.owners == ("v1",)
    assert plan.removed_per_owner == {"o2": 1, "v1": 1}
    (message,) = plan.messages
    assert "of its 12 grants" in message
    assert plan.owner_notes == {"o1": f"lock also listed by another owner; {message}"}
