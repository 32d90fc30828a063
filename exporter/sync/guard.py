"""The deletion guard: hold back removals when a run would remove suspiciously much."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from exporter.errors import UsageError


@dataclass(frozen=True)
class RemovalGuard:
    """The deletion guard: when a run would remove suspiciously much, hold the removals back.

    An owner that is still listed but returns more than `max_fraction` of its stored locks AND
    more than `min_count` fewer than stored keeps them; so do the owners that vanished when the
    owner list loses more than `max_fraction` of its owners (a vanished owner is judged only by
    that rule). Held-back removals leave the run `partial`; `allow_all` or an owner id in
    `allow_owners` confirms them (`--allow-mass-removal`, `--allow-mass-removal-owner`).
    """

    max_fraction: float = 0.5
    min_count: int = 10
    allow_all: bool = False
    allow_owners: frozenset[str] = frozenset()

    def confirmed(self, owner_id: str) -> bool:
        """True when removals of this owner's locks (or of the owner) were confirmed."""
        return self.allow_all or owner_id in self.allow_owners

    def too_many_locks(self, gone: int, stored: int) -> bool:
        """True when `gone` of an owner's `stored` locks is a mass removal."""
        return gone > self.min_count and gone > self.max_fraction * stored

    def too_many_owners(self, gone: int, stored: int) -> bool:
        """True when `gone` of `stored` owners vanishing at once is a mass removal."""
        return stored > 0 and gone > self.max_fraction * stored


def locks_held_message(
    guard: RemovalGuard,
    owner_id: str,
    gone: int,
    stored: int,
    *,
    what: str = "locks",
    since: int | None = None,
) -> str:
    """Why an owner's removals (of locks, or `what`) were held back, and how to confirm them.

    `since`: the run that first held them back, when `stored` is the count they were judged
    against then (exporter.sync.holds) rather than the count stored before this run.
    """
    if since is None:
        why = (
            f"{gone} of its {stored} {what} (more than {guard.max_fraction:.0%} and more than "
            f"{guard.min_count} gone at once)"
        )
    else:
        why = (
            f"{gone} of its {what} (more than {guard.max_fraction:.0%} of the {stored} it had "
            f"when these removals were first held back in run {since}, and more than "
            f"{guard.min_count})"
        )
    return (
        f"owner {owner_id}: held back the removal of {why}; if they are really gone, confirm "
        f"with `exporter run-once --allow-mass-removal-owner {owner_id}`"
    )


def owners_held_message(
    guard: RemovalGuard,
    kept: set[str],
    stored: int,
    gone: Mapping[str, Sequence[object]],
    *,
    since: int | None = None,
    removed_since: int = 0,
) -> str:
    """Why vanished owners were kept, and how to confirm their removal (`since` as for
    locks_held_message; `removed_since` owners of that hold were confirmed one by one since)."""
    ids = sorted(kept)
    shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
    locks = sum(len(gone.get(owner_id, ())) for owner_id in ids)
    if since is None:
        what = f"{len(ids)} of {stored} owner accounts ({shown}) and their {locks} locks"
        why = f"more than {guard.max_fraction:.0%} of the owners vanished at once"
    else:
        what = f"{len(ids)} owner accounts ({shown}) and their {locks} locks"
        why = (
            f"more than {guard.max_fraction:.0%} of the {stored} owner accounts stored when "
            f"these removals were first held back in run {since}"
        )
        if removed_since:
            why += f", counting the {removed_since} removed since"
    return (
        f"owner list: held back the removal of {what} ({why}); if they are really gone, confirm "
        "with `exporter run-once --allow-mass-removal` (or --allow-mass-removal-owner ID for each)"
    )


def resolve_owner_ids(given: Iterable[str], known: Collection[str]) -> frozenset[str]:
    """The owner ids `given` names (`--allow-mass-removal-owner`): each an id of `known`, or the
    start of exactly one (in any case when no id starts with it as typed); else UsageError."""
    resolved = set()
    for text in given:
        if text in known:
            resolved.add(text)
            continue
        starting = sorted(i for i in known if i.startswith(text)) or sorted(
            i for i in known if i.lower().startswith(text.lower())
        )
        option = f"--allow-mass-removal-owner {text!r}"
        if not starting or not text:
            raise UsageError(
                f"{option} names no owner account in the database; give the id from the "
                "held-back message (`exporter runs show RUN_ID` repeats it)"
            )
        if len(starting) > 1:
            shown = ", ".join(starting[:5]) + (", ..." if len(starting) > 5 else "")
            raise UsageError(
                f"{option} is the start of {len(starting)} owner account ids ({shown}); "
                "give more of it"
            )
        resolved.add(starting[0])
    return frozenset(resolved)
