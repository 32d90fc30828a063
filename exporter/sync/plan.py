"""Decisions of a run over plain data: what one owner's fetched list changes, and what is removed.

Nothing here reads or writes the database: the engine reads the stored rows, asks these functions
what to do, and writes the answer (exporter.sync.locks, exporter.sync.removals and
exporter.sync.entity_sync). The same rules serve locks and the access entities.

- `claim_listed`: which ids of a fetched list are its owner's this run (not listed first by
  another owner).
- `diff_owner`: a fetched list against the stored rows of its ids: which rows are created,
  updated or restored (with the tracked fields that changed), which only need their current-only
  columns rewritten (`refresh`: no version), and how many are unchanged.
- `owners_to_read`: which owners may still hold a present row this run did not see.
- `plan_removals`: which present rows no complete fetch returned are removed, and which the
  deletion guard (exporter.sync.guard) holds back.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from exporter.kinds import ChangeType, RemovalReason
from exporter.results import Counts
from exporter.sync.guard import RemovalGuard, locks_held_message, owners_held_message

_NONE: Mapping[str, Any] = MappingProxyType({})


class Identified(Protocol):
    """A fetched record: anything with an id."""

    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=Identified)
R_co = TypeVar("R_co", bound=Identified, covariant=True)


class Fetched(Protocol[R_co]):
    """One owner's fetched list (tapkey's OwnerLocks and OwnerEntities)."""

    @property
    def records(self) -> Sequence[R_co]: ...

    @property
    def unchanged_ids(self) -> Sequence[str]: ...

    @property
    def skipped_ids(self) -> AbstractSet[str]: ...


class Claimed(NamedTuple, Generic[R]):
    """What of one owner's fetched list is that owner's this run."""

    records: list[R]  # its records no owner before it listed
    unchanged: int  # its unchanged ids no owner before it listed
    twice: set[str]  # ids an owner before it listed too: they stay with that owner this run


class RowChange(NamedTuple, Generic[R]):
    """A fetched record whose stored row is updated or restored: a new version.

    `values` and `current` are its tracked and current-only columns, `fields` the tracked ones
    that changed.
    """

    record: R
    kind: ChangeType  # UPDATED or RESTORED
    fields: tuple[str, ...]
    values: Mapping[str, Any]
    current: Mapping[str, Any]


@dataclass(frozen=True)
class OwnerDiff(Generic[R]):
    """What one owner's fetched records change, each list in the order they were fetched."""

    # New rows: written from their records (a first load makes 100,000 of them, so they are
    # kept as they are, not wrapped).
    created: tuple[R, ...] = ()
    changes: tuple[RowChange[R], ...] = ()  # updated and restored rows
    # Present rows whose tracked fields are unchanged but a current-only column is not: the
    # row is rewritten, no version is made (they count as unchanged).
    refresh: tuple[tuple[R, Mapping[str, Any]], ...] = ()
    unchanged: int = 0

    def of(self, kind: ChangeType) -> list[RowChange[R]]:
        """The updated (or restored) rows."""
        return [change for change in self.changes if change.kind == kind]

    def counts(self) -> Counts:
        """Its rows by kind (created, updated, restored, unchanged)."""
        restored = sum(1 for change in self.changes if change.kind == ChangeType.RESTORED)
        return Counts(
            created=len(self.created),
            updated=len(self.changes) - restored,
            restored=restored,
            unchanged=self.unchanged,
        )

    def in_order(self, records: Sequence[R]) -> list[tuple[R, ChangeType, tuple[str, ...]]]:
        """Every change of `records` (the diffed ones) as (record, kind, changed fields), in
        fetched order: what a dry run lists."""
        created = {record.id for record in self.created}
        changed = {change.record.id: change for change in self.changes}
        listed: list[tuple[R, ChangeType, tuple[str, ...]]] = []
        for record in records:
            if record.id in created:
                listed.append((record, ChangeType.CREATED, ()))
            elif (change := changed.get(record.id)) is not None:
                listed.append((record, change.kind, change.fields))
        return listed


def claim_listed(seen: set[str], fetched: Fetched[R]) -> Claimed[R]:
    """Add the ids of an owner's list to `seen` (every id a fetch of this run listed) and return
    what is the owner's. An id an earlier owner listed too (a move caught half-way) stays with
    that owner until the next run, which sees the settled state."""
    seen.update(fetched.skipped_ids)
    twice = seen.intersection(fetched.unchanged_ids)
    seen.update(fetched.unchanged_ids)
    ids = [record.id for record in fetched.records]
    again = seen.intersection(ids)
    seen.update(ids)
    records = [record for record in fetched.records if record.id not in again]
    return Claimed(records, len(fetched.unchanged_ids) - len(twice), twice | again)


def diff_owner(
    records: Sequence[R],
    stored: Mapping[str, Mapping[str, Any]],
    *,
    tracked: Sequence[str],
    values: Callable[[R], Mapping[str, Any]],
    current: Callable[[R], Mapping[str, Any]],
) -> OwnerDiff[R]:
    """Diff fetched `records` against `stored` rows (by id: tracked and current-only columns and
    `removed_at`); `values`/`current` give a record's tracked and current-only columns.

    A record without a stored row is created; a removed row comes back restored; a present row
    whose tracked fields differ is updated; otherwise it is unchanged (refreshed if a current-only
    column differs). Only rows whose stored text differs are handed in (the caller's fast path).
    """
    created: list[R] = []
    changes: list[RowChange[R]] = []
    refresh: list[tuple[R, Mapping[str, Any]]] = []
    unchanged = 0
    for record in records:
        old = stored.get(record.id)
        if old is None:
            created.append(record)
            continue
        new = values(record)
        now = current(record)
        fields = tuple(name for name in tracked if old[name] != new[name])
        if old["removed_at"] is None and not fields:
            if any(old[name] != value for name, value in now.items()):
                refresh.append((record, now))
            unchanged += 1
            continue
        kind = ChangeType.RESTORED if old["removed_at"] is not None else ChangeType.UPDATED
        changes.append(RowChange(record, kind, fields, new, now))
    return OwnerDiff(tuple(created), tuple(changes), tuple(refresh), unchanged)


def owners_to_read(
    owner_ids: Collection[str],
    present: Mapping[str, int],
    confirmed: Mapping[str, int],
    *,
    dry_run: bool,
) -> list[str]:
    """The owners among `owner_ids` that may still have a present row this run did not see.

    Every row this run confirmed under an owner (unchanged, created, updated, restored) is
    present under it now, so an owner with exactly that many `present` rows has none left to
    remove; only the others are read row by row. A dry run wrote nothing, so there the stored
    counts prove nothing and every owner is read.
    """
    if dry_run:
        return sorted(owner_ids)
    return sorted(o for o in owner_ids if present.get(o, 0) != confirmed.get(o, 0))


@dataclass(frozen=True)
class Removal:
    """One row to remove, and why."""

    id: str
    owner_account_id: str
    reason: RemovalReason
    title: str | None = None


@dataclass(frozen=True)
class RemovalPlan:
    """What to remove, what the deletion guard holds back, and what to say about it."""

    removals: tuple[Removal, ...] = ()  # by owner id, each owner's rows in the order read
    owners: tuple[str, ...] = ()  # vanished owner accounts removed (sorted)
    removed_per_owner: Mapping[str, int] = field(default_factory=dict)
    held_back: Mapping[str, int] = field(default_factory=dict)  # owner -> rows kept
    messages: tuple[str, ...] = ()  # one per held-back group: why, and how to confirm it
    owner_notes: Mapping[str, str] = field(default_factory=dict)  # owner -> its run row's note

    def ids(self, reason: RemovalReason) -> list[str]:
        """The ids removed for `reason`, in plan order."""
        return [r.id for r in self.removals if r.reason == reason]


def plan_removals(
    present: Iterable[tuple[str, str, str | None]],
    seen: AbstractSet[str],
    *,
    guard: RemovalGuard,
    before: Mapping[str, int],
    reason: RemovalReason = RemovalReason.UNBOUND,
    vanished: AbstractSet[str] = frozenset(),
    owners_before: int = 0,
    notes: Mapping[str, str] = _NONE,
    what: str = "locks",
    held_since: Mapping[str, int] = _NONE,
    owners_held_since: int | None = None,
    owners_removed_since: int = 0,
) -> RemovalPlan:
    """Decide the removals after a crawl (the rules of exporter.sync.engine, step 4).

    `present`: the present rows (owner id, id, title) of the owners to judge, as stored (read
    one owner after another; streamed, so only the unseen ones are kept). A row in `seen` was
    returned by a complete fetch (or skipped with a readable id) and stays. The others go with
    `reason`, or `owner_removed` for an owner in `vanished` (gone from the owner list, which is
    removed too), unless the deletion guard holds them back:

    - an owner that is still listed and loses more than `guard.max_fraction` of the rows it had
      `before` the run and more than `guard.min_count` keeps them (`what` names them in the
      message);
    - when more than `max_fraction` of the `owners_before` vanish at once, the vanished owners
      and all their rows are kept; a vanished owner is judged by this rule alone;
    - `guard.confirmed(owner)` (allow_all, or the owner named) lets either go through.

    `before` and `owners_before` are the counts the guard judges against: what was stored when
    the removals were first held back for an owner in `held_since` (owner -> that run), or for
    the owner list with `owners_held_since`, else what was stored before this run
    (exporter.sync.holds); the messages say which. `owners_removed_since`: the owners removed
    (confirmed one by one) since the owner list's removals were first held back, which count as
    vanished: confirming some of the held-back owners does not let the others through. `notes`
    are notes already due on owners' run rows; an owner held back gets its message joined to
    its note.
    """
    gone: dict[str, list[tuple[str, str | None]]] = {}
    for owner_id, row_id, title in present:
        if row_id not in seen:
            gone.setdefault(owner_id, []).append((row_id, title))
    kept_owners: set[str] = set()
    if vanished and guard.too_many_owners(len(vanished) + owners_removed_since, owners_before):
        kept_owners = {owner_id for owner_id in vanished if not guard.confirmed(owner_id)}
    held_back: dict[str, int] = {}
    messages: list[str] = []
    if kept_owners:
        held_back.update({o: len(gone.get(o, ())) for o in kept_owners})
        messages.append(
            owners_held_message(
                guard,
                kept_owners,
                owners_before,
                gone,
                since=owners_held_since,
                removed_since=owners_removed_since,
            )
        )
    removals: list[Removal] = []
    per_owner: dict[str, int] = {}
    owner_notes: dict[str, str] = {}
    for owner_id, rows in sorted(gone.items()):
        if owner_id in kept_owners:
            continue
        stored = before.get(owner_id, 0)
        if (
            owner_id not in vanished
            and guard.too_many_locks(len(rows), stored)
            and not guard.confirmed(owner_id)
        ):
            held_back[owner_id] = len(rows)
            since = held_since.get(owner_id)
            message = locks_held_message(guard, owner_id, len(rows), stored, what=what, since=since)
            messages.append(message)
            owner_notes[owner_id] = "; ".join(n for n in (notes.get(owner_id), message) if n)
            continue
        why = RemovalReason.OWNER_REMOVED if owner_id in vanished else reason
        removals.extend(Removal(row_id, owner_id, why, title) for row_id, title in rows)
        per_owner[owner_id] = len(rows)
    return RemovalPlan(
        removals=tuple(removals),
        owners=tuple(sorted(vanished - kept_owners)),
        removed_per_owner=per_owner,
        held_back=held_back,
        messages=tuple(messages),
        owner_notes=owner_notes,
    )
