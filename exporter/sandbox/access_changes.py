"""The sandbox's seeded random changes of access data, a generation at a time.

Each draw picks a kind by its weight and an owner account; a draw that does not apply (no grant
to revoke, no lock to log) is drawn again.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Final

from exporter.sandbox.data import SandboxChange
from exporter.sandbox.entities import GRANT_OK, person_name
from exporter.sandbox.values import different

if TYPE_CHECKING:
    from exporter.sandbox.access import AccessData

__all__ = ["ACCESS_CHANGE_KINDS", "advance"]

# How often each kind is drawn by `advance` (inapplicable draws are redrawn).
_ACCESS_WEIGHTS: Final[dict[str, int]] = {
    "grant_add": 3,
    "grant_revoke": 2,  # state Ok -> Revoked, active false, still listed
    "grant_remove": 1,  # gone from the grants list
    "contact_add": 1,
    "contact_rename": 2,  # title
    "contact_identifier": 1,  # identifier (an older payload's email)
    "contact_remove": 1,
    "card_bind": 1,  # a new card at the end of the list
    "card_unbind": 1,  # gone from the list
    "log_entries": 4,  # a few entries of online locks
    "log_entries_late": 1,  # one lock's backlog, hours or days after it happened
}
ACCESS_CHANGE_KINDS: Final[tuple[str, ...]] = tuple(_ACCESS_WEIGHTS)


def advance(data: AccessData, changes: int) -> list[SandboxChange]:
    """Apply `changes` seeded random access changes in the inventory's current generation."""
    inventory = data.inventory
    rng = random.Random(f"tapkey-sandbox-access:{inventory.seed}:{inventory.generation}")
    kinds, weights = list(_ACCESS_WEIGHTS), list(_ACCESS_WEIGHTS.values())
    owner_ids = list(inventory.owners)
    applied: list[SandboxChange] = []
    for _ in range(changes):
        for _attempt in range(100):  # redraw what does not apply (no grant to revoke, ...)
            change = _apply(data, rng.choices(kinds, weights)[0], rng.choice(owner_ids), rng)
            if change is not None:
                applied.append(change)
                break
    return applied


def _apply(data: AccessData, kind: str, owner_id: str, rng: random.Random) -> SandboxChange | None:
    lists = data.owners[owner_id]
    if kind == "contact_add":
        contact = data.draw_contact(owner_id, rng)
        return SandboxChange(kind, owner_id, None, f"contact {contact.title!r}", contact.id)
    if kind == "card_bind":
        card = data.draw_card(owner_id, rng, data.now_ms(rng))
        return SandboxChange(kind, owner_id, None, f"card {card.uid}", card.id)
    if kind == "grant_add":
        grant = data.draw_grant(owner_id, rng, data.now_ms(rng))
        if grant is None:
            return None
        return SandboxChange(kind, owner_id, grant.bound_lock_id, "grant added", grant.id)
    if kind in ("log_entries", "log_entries_late"):
        late = kind == "log_entries_late"
        entries = data.log_book.receive(owner_id, rng.randint(1, 4), rng, late=late)
        if not entries:
            return None
        lock_id = entries[0].bound_lock_id if late else None
        return SandboxChange(kind, owner_id, lock_id, f"{len(entries)} entries", entries[0].id)
    if kind in ("grant_revoke", "grant_remove"):
        revoke = kind == "grant_revoke"
        grants = [g for g in lists.grants.values() if g.state == GRANT_OK or not revoke]
        if not grants:
            return None
        grant = rng.choice(grants)
        (data.revoke_grant if revoke else data.remove_grant)(grant.id)
        detail = "grant revoked" if revoke else f"grant removed (state {grant.state})"
        return SandboxChange(kind, owner_id, grant.bound_lock_id, detail, grant.id)
    if kind.startswith("contact_") and lists.contacts:
        contact = rng.choice(list(lists.contacts.values()))
        if kind == "contact_rename":
            old = contact.title
            data.update_contact(contact.id, title=different(old, lambda: person_name(rng)))
            detail = f"title {old!r} -> {contact.title!r}"
        elif kind == "contact_identifier":
            old = contact.identifier
            data.update_contact(contact.id, identifier=data.new_identifier(contact, rng))
            detail = f"identifier {old!r} -> {contact.identifier!r}"
        else:
            data.remove_contact(contact.id)
            detail = f"contact {contact.title!r} removed"
        return SandboxChange(kind, owner_id, None, detail, contact.id)
    if kind == "card_unbind" and lists.cards:
        card = rng.choice(list(lists.cards.values()))
        data.unbind_card(card.id)
        return SandboxChange(kind, owner_id, None, f"card {card.uid} unbound", card.id)
    return None
