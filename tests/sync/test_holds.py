"""Held-back removals between runs: which count the guard judges against, which holds change."""

from __future__ import annotations

import pytest

from exporter.sync import holds
from exporter.sync.guard import RemovalGuard
from exporter.sync.holds import Hold, Settlement
from exporter.sync.plan import plan_removals

HELD = {("locks", "o1"): Hold(base=20, since_run_id=7), ("contacts", "o2"): Hold(14, 8)}


def test_an_owner_with_a_hold_is_judged_against_its_base() -> None:
    counts, since = holds.judged_counts(HELD, "locks", {"o1": 45, "o3": 9})

    assert counts == {"o1": 20, "o3": 9} and since == {"o1": 7}
    assert holds.judged_counts(HELD, "cards", {"o1": 3}) == ({"o1": 3}, {})


@pytest.mark.parametrize(
    ("judged", "held", "removed", "expected"),
    [
        pytest.param({"o1", "o3"}, set(), set(), Settlement("locks", {}, (), ("o1",)), id="clear"),
        pytest.param(
            {"o1", "o3"}, {"o1", "o3"}, set(), Settlement("locks", {"o3": 9}, ("o1",)), id="hold"
        ),
        # o1 failed this run: not judged, so its hold stays.
        pytest.param({"o3"}, set(), set(), Settlement("locks", {}), id="not-judged-kept"),
        pytest.param(
            set(), set(), {"o2"}, Settlement("locks", {}, removed_owners=("o2",)), id="removed"
        ),
    ],
)
def test_a_judgement_settles_the_holds(
    judged: set[str], held: set[str], removed: set[str], expected: Settlement
) -> None:
    counts = {"o1": 20, "o3": 9}

    settled = holds.settle(
        HELD, "locks", judged=judged, held=held, counts=counts, removed_owners=removed
    )

    assert settled == expected
    assert bool(settled) == (expected != Settlement("locks", {}))


def test_a_held_message_names_the_run_whose_count_it_judges_against() -> None:
    rows = [("o1", f"l{i}", None) for i in range(45)]
    seen = {f"l{i}" for i in range(20, 45)}  # 20 of the 20 stored locks gone, 25 new ones

    plan = plan_removals(rows, seen, guard=RemovalGuard(), before={"o1": 20}, held_since={"o1": 7})

    assert plan.held_back == {"o1": 20}
    assert plan.messages == (
        "owner o1: held back the removal of 20 of its locks (more than 50% of the 20 it had "
        "when these removals were first held back in run 7, and more than 10); if they are "
        "really gone, confirm with `exporter run-once --allow-mass-removal-owner o1`",
    )


def test_open_holds_are_described_in_one_line_with_ids_escaped() -> None:
    held = {**HELD, ("owners", ""): Hold(3, 5), ("grants", "o\x1b[2J\n"): Hold(11, 9)}

    line = holds.describe(held)

    assert line == (
        "4 held-back removal(s) wait for confirmation: the owner list (since run 5), locks of "
        "owner o1 (since run 7), contacts of owner o2 (since run 8), grants of owner "
        "o\\x1b[2J\\n (since run 9); see docs/operations.md, Confirming mass removals"
    )
    assert holds.describe({}) == "none: no removals are held back"
