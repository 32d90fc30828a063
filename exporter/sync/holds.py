"""Removals the deletion guard holds back, kept between runs (the table `guard_holds`).

A run that holds removals back still stores the rows that arrived with them (an owner's list
that lost 20 locks and gained 25 others): judged against the larger count stored afterwards, the
same removals would go through on the next plain run, unconfirmed. So the first run that holds
them back records a hold per entity and owner (`owners` and owner id '' for the owner list) with
the count it judged against (`base`), and later runs judge that owner against `base` instead of
what is stored now, until its removals are confirmed or no longer due.

- `load` reads every hold in one statement when a run starts (the table is usually empty);
- `judged_counts` gives the counts the guard judges an entity's owners against;
- `settle` (pure) decides, after the plan, which holds are added, kept and cleared: an owner
  that was judged and held back keeps (or gets) its hold, one judged and not held back loses it,
  one not judged (its fetch failed) keeps it; a removed owner's holds all go;
- `write` applies that in the transaction of the removals it belongs to. Dry runs only read.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, insert, select, update

from exporter.db.inlists import chunks
from exporter.db.schema import guard_holds
from exporter.terminal import visible as _visible

OWNER_LIST = "owners"  # the owner list's hold, under LIST_ID
LIST_ID = ""
LOCKS = "locks"  # the access entities' holds go by their names (contacts, cards, grants)


@dataclass(frozen=True)
class Hold:
    """Held-back removals of one entity of one owner (or of the owner list)."""

    base: int  # the count they were first judged against
    since_run_id: int  # the run that first held them back


# (entity, owner id) -> its hold
Holds = Mapping[tuple[str, str], Hold]


def load(conn: Connection) -> dict[tuple[str, str], Hold]:
    """Every hold."""
    t = guard_holds.c
    rows = conn.execute(select(t.entity, t.owner_account_id, t.base, t.since_run_id))
    return {(entity, owner): Hold(base, run) for entity, owner, base, run in rows}


def judged_counts(
    holds: Holds, entity: str, before: Mapping[str, int]
) -> tuple[Mapping[str, int], dict[str, int]]:
    """The counts the guard judges `entity`'s owners against: a hold's base where the owner has
    one, else what was stored `before` the run; and the run each of those holds began in."""
    held = {owner: hold for (name, owner), hold in holds.items() if name == entity}
    if not held:
        return before, {}
    counts = {**before, **{owner: hold.base for owner, hold in held.items()}}
    return counts, {owner: hold.since_run_id for owner, hold in held.items()}


@dataclass(frozen=True)
class Settlement:
    """What one judgement changes in `guard_holds` for one entity."""

    entity: str
    new: Mapping[str, int]  # owner -> base of a hold that begins now
    kept: tuple[str, ...] = ()  # owners still held back since an earlier run
    cleared: tuple[str, ...] = ()  # owners judged and no longer held back
    removed_owners: tuple[str, ...] = ()  # owners removed: every hold of theirs goes

    def __bool__(self) -> bool:
        return bool(self.new or self.kept or self.cleared or self.removed_owners)


def settle(
    holds: Holds,
    entity: str,
    *,
    judged: Collection[str],
    held: Collection[str],
    counts: Mapping[str, int],
    removed_owners: Collection[str] = (),
) -> Settlement:
    """The holds of `entity` after a judgement: `judged` the owners the guard judged, `held`
    those it held back, `counts` what it judged them against (judged_counts); the holds of
    `removed_owners` (of any entity) go."""
    return Settlement(
        entity,
        new={o: counts.get(o, 0) for o in sorted(held) if (entity, o) not in holds},
        kept=tuple(sorted(o for o in held if (entity, o) in holds)),
        cleared=tuple(sorted(o for o in judged if o not in held and (entity, o) in holds)),
        removed_owners=tuple(sorted({o for _, o in holds if o in removed_owners})),
    )


def write(conn: Connection, settlement: Settlement, t: datetime, run_id: int) -> None:
    """Apply a settlement (in the transaction of the removals it belongs to)."""
    c = guard_holds.c
    entity = settlement.entity
    if settlement.new:
        rows = [
            {
                "entity": entity,
                "owner_account_id": owner_id,
                "base": base,
                "since_run_id": run_id,
                "updated_at": t,
            }
            for owner_id, base in settlement.new.items()
        ]
        conn.execute(insert(guard_holds), rows)
    for chunk in chunks(list(settlement.kept)):
        conn.execute(
            update(guard_holds)
            .where(c.entity == entity, c.owner_account_id.in_(chunk))
            .values(updated_at=t)
        )
    for chunk in chunks(list(settlement.cleared)):
        conn.execute(delete(guard_holds).where(c.entity == entity, c.owner_account_id.in_(chunk)))
    for chunk in chunks(list(settlement.removed_owners)):
        conn.execute(delete(guard_holds).where(c.owner_account_id.in_(chunk)))


def describe(holds: Holds, *, shown: int = 5) -> str:
    """The holds in one line, oldest first (`exporter check`)."""
    if not holds:
        return "none: no removals are held back"
    ordered = sorted(holds.items(), key=lambda item: (item[1].since_run_id, item[0]))
    parts = [
        f"{_what(entity, owner)} (since run {hold.since_run_id})"
        for (entity, owner), hold in ordered[:shown]
    ]
    more = f" and {len(holds) - shown} more" if len(holds) > shown else ""
    return (
        f"{len(holds)} held-back removal(s) wait for confirmation: {', '.join(parts)}{more}; "
        "see docs/operations.md, Confirming mass removals"
    )


def _what(entity: str, owner_id: str) -> str:
    if entity == OWNER_LIST:
        return "the owner list"
    # Owner ids come from the API: escaped, so that the line stays one line.
    return f"{entity} of owner {_visible(owner_id, keep_layout=False)}"
