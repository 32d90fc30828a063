"""The sandbox's access data: contacts, bound cards, grants and log entries of each owner account.

`AccessData` sits next to the `SandboxInventory` (owners and bound locks) it refers to. It is drawn
from the same seed through random streams of its own, so it changes no owner, lock or lock
change of any seed; with every size 0 it generates nothing.

Lists and their order (stable within a generation, so ``$top``/``$skip`` pages fit together):

- contacts, bound cards, grants: creation order; removing one moves later ones up a place.
- log entries: by ``receivedAt`` (when Tapkey received them), then ``id``; new entries come
  last, and ``lockTimestamp`` can be days older (see `exporter.sandbox.logs`).

References between lists are not kept in step: a grant or log entry may name a contact, card
or lock that has since gone (on the real API the lists are read at different moments anyway).
Revoked grants stay listed (``state`` ``Revoked``, ``active`` false); an unbound card leaves
the list. Nothing here is thread-safe: `exporter.sandbox.server.Sandbox` serialises access.

The routes, their ``$filter`` and pages are `exporter.sandbox.access_routes`; the seeded random
changes of each generation are `exporter.sandbox.access_changes`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Final, TypedDict, TypeVar

from exporter.sandbox import access_changes
from exporter.sandbox.access_routes import AccessRoute, page_json, route_filter
from exporter.sandbox.data import SandboxChange, SandboxInventory
from exporter.sandbox.entities import (
    GRANT_REVOKED,
    CardRecord,
    ContactRecord,
    GrantRecord,
    LogEntryRecord,
    OwnerAccess,
    Record,
    new_card,
    new_contact,
    time_restriction,
)
from exporter.sandbox.logs import LogBook
from exporter.sandbox.odata import Filter
from exporter.sandbox.values import DAY_MS, HOUR_MS, MS_2025, guid, iso, set_given

__all__ = [
    "AccessData",
    "ContactChoice",
    "GrantChoice",
    "OwnerAccess",
]

_DOMAINS = ("example.com", "example.org", "example.net")
_MS_2019: Final = 1_546_300_800_000  # cards were bound in 2019-2024
_MS_2023: Final = 1_672_531_200_000  # initial grants were made in 2023-2024
_R = TypeVar("_R")


class ContactChoice(TypedDict, total=False):
    """What `AccessData.add_contact` lets a caller choose (defaults there)."""

    title: str | None
    identifier: str | None
    ip_id: str
    legacy_email: bool


class GrantChoice(TypedDict, total=False):
    """What `AccessData.add_grant` lets a caller choose (each left out is drawn or none)."""

    lock_id: str | None
    contact_id: str | None
    card_id: str | None
    valid_from: str | None
    valid_before: str | None
    time_restriction_ical: str | None


class AccessData:
    """Contacts, bound cards, grants and log entries per owner of `inventory`, seeded."""

    def __init__(
        self,
        inventory: SandboxInventory,
        *,
        contacts_per_owner: int,
        cards_per_owner: int,
        grants_per_owner: int,
        log_entries_per_owner: int,
    ) -> None:
        sizes = (contacts_per_owner, cards_per_owner, grants_per_owner, log_entries_per_owner)
        if min(sizes) < 0:
            raise ValueError("contacts, cards, grants and log entries per owner must be >= 0")
        self.inventory = inventory
        self.owners = {owner_id: OwnerAccess() for owner_id in inventory.owners}
        self.contacts: dict[str, ContactRecord] = {}  # every listed one, by id
        self.cards: dict[str, CardRecord] = {}
        self.grants: dict[str, GrantRecord] = {}
        self.log_book = LogBook(inventory, self.owners)
        self._emails: set[str] = set()
        self._direct_rng = random.Random(f"tapkey-sandbox-access-direct:{inventory.seed}")
        if not any(sizes):
            return
        rng = random.Random(f"tapkey-sandbox-access:{inventory.seed}")
        for owner_id in inventory.owners:
            for _ in range(contacts_per_owner):
                self.draw_contact(owner_id, rng)
            for _ in range(cards_per_owner):
                self.draw_card(owner_id, rng, rng.randrange(_MS_2019, MS_2025))
            for _ in range(grants_per_owner):
                self.draw_grant(owner_id, rng, rng.randrange(_MS_2023, MS_2025))
            self.log_book.seed(owner_id, log_entries_per_owner, rng)
        for grant in self.grants.values():
            if rng.random() < 0.15:
                grant.state, grant.active = GRANT_REVOKED, False

    # -- reading -------------------------------------------------------------------------------

    def parse_filter(self, route: AccessRoute, text: str, *, received_at: bool = True) -> Filter:
        """A route's ``$filter`` (FilterError outside the subset, or on receivedAt when off)."""
        return route_filter(route, text, received_at=received_at)

    def page_json(
        self,
        route: AccessRoute,
        owner_id: str,
        skip: int = 0,
        top: int | None = None,
        parsed: Filter | None = None,
    ) -> bytes:
        """A page of one owner's list, filtered first, encoded as the API sends it."""
        return page_json(route, self.records(route, owner_id), skip, top, parsed)

    def records(self, route: AccessRoute, owner_id: str) -> Sequence[Record]:
        """One owner's list on `route`, in list order (KeyError if the owner is unknown)."""
        lists = self.owners[owner_id]
        if route == "logs":
            return lists.log_entries
        if route == "contacts":
            return list(lists.contacts.values())
        return list((lists.cards if route == "cards" else lists.grants).values())

    def contact(self, contact_id: str) -> ContactRecord:
        """A listed contact by id (KeyError naming it)."""
        return _get(self.contacts, contact_id, "contact")

    def card(self, card_id: str) -> CardRecord:
        """A bound card by id (KeyError naming it)."""
        return _get(self.cards, card_id, "bound card")

    def grant(self, grant_id: str) -> GrantRecord:
        """A listed grant by id (KeyError naming it)."""
        return _get(self.grants, grant_id, "grant")

    # -- direct mutations (seeded draws come from a stream of their own) --------------------------

    def add_contact(
        self,
        owner_id: str,
        *,
        title: str | None = None,
        identifier: str | None = None,
        ip_id: str = "tapkey",
        legacy_email: bool = False,
    ) -> ContactRecord:
        """A new contact at the end of the owner's list (a seeded name and email if not given)."""
        self.inventory.owner(owner_id)
        contact = self.draw_contact(owner_id, self._direct_rng)
        if contact.ip_id != ip_id and identifier is None:  # an email only for Tapkey users
            contact.ip_id = ip_id
            identifier = self.new_identifier(contact, self._direct_rng)
        contact.ip_id, contact.legacy_email = ip_id, legacy_email
        self.update_contact(contact.id, title=title, identifier=identifier)
        return contact

    def update_contact(
        self, contact_id: str, *, title: str | None = None, identifier: str | None = None
    ) -> None:
        """Rename a contact and/or change its identifier (a Tapkey user's email)."""
        set_given(self.contact(contact_id), title=title, identifier=identifier)

    def remove_contact(self, contact_id: str) -> None:
        """Remove a contact from its owner's list (grants naming it stay as they are)."""
        contact = self.contacts.pop(self.contact(contact_id).id)
        del self.owners[contact.owner_id].contacts[contact_id]

    def bind_card(self, owner_id: str, *, title: str | None = None) -> CardRecord:
        """Bind a new card at the end of the owner's list."""
        self.inventory.owner(owner_id)
        card = self.draw_card(owner_id, self._direct_rng, self.now_ms(self._direct_rng))
        card.title = card.title if title is None else title
        return card

    def unbind_card(self, card_id: str) -> None:
        """Unbind a card: it leaves the BoundCards list (grants naming it stay as they are)."""
        card = self.cards.pop(self.card(card_id).id)
        del self.owners[card.owner_id].cards[card_id]

    def add_grant(
        self,
        owner_id: str,
        *,
        lock_id: str | None = None,
        contact_id: str | None = None,
        card_id: str | None = None,
        valid_from: str | None = None,
        valid_before: str | None = None,
        time_restriction_ical: str | None = None,
    ) -> GrantRecord:
        """A new Ok grant at the end of the owner's list, with the validity given (default none).

        Without `lock_id` one of the owner's locks is drawn; without `contact_id` and `card_id`
        one of its contacts or cards. ValueError if there is nothing to draw from.
        """
        self.inventory.owner(owner_id)
        rng = self._direct_rng
        if contact_id is not None and card_id is not None:
            raise ValueError("a grant goes to a contact or a card, not both")
        if lock_id is not None:
            self.inventory.lock(lock_id)
        elif locks := self.inventory.owners[owner_id].locks:
            lock_id = rng.choice(locks)
        else:
            raise ValueError(f"owner {owner_id!r} has no bound lock to grant")
        if contact_id is not None:
            self.contact(contact_id)
        elif card_id is not None:
            self.card(card_id)
        elif holder := self._draw_holder(owner_id, rng):
            contact_id, card_id = holder
        else:
            raise ValueError(f"owner {owner_id!r} has no contact or card to grant to")
        grant = GrantRecord(guid(rng), owner_id, lock_id, contact_id, card_id,
                            valid_from, valid_before, time_restriction_ical)  # fmt: skip
        self.grants[grant.id] = self.owners[owner_id].grants[grant.id] = grant
        return grant

    def revoke_grant(self, grant_id: str) -> None:
        """Revoke a grant: state Revoked, active false, still listed."""
        grant = self.grant(grant_id)
        grant.state, grant.active, grant.json = GRANT_REVOKED, False, None

    def remove_grant(self, grant_id: str) -> None:
        """Remove a grant from its owner's list; later grants move up a place."""
        grant = self.grants.pop(self.grant(grant_id).id)
        del self.owners[grant.owner_id].grants[grant_id]

    def append_log_entries(
        self, owner_id: str, count: int, *, late: bool = False, received_at: int | None = None
    ) -> list[LogEntryRecord]:
        """Receive `count` new log entries of the owner's locks now (see `LogBook.receive`)."""
        self.inventory.owner(owner_id)
        if count < 0:
            raise ValueError("count must be >= 0")
        entries = self.log_book.receive(
            owner_id, count, self._direct_rng, late=late, received_at=received_at
        )
        if entries is None:
            raise ValueError(f"owner {owner_id!r} has no bound lock to log")
        return entries

    # -- generations -----------------------------------------------------------------------------

    def advance(self, changes: int) -> list[SandboxChange]:
        """Apply `changes` seeded random access changes in the inventory's current generation."""
        return access_changes.advance(self, changes)

    # -- seeded records (also drawn by `access_changes`) -------------------------------------------

    def now_ms(self, rng: random.Random) -> int:
        """A deterministic instant in the current generation's hour (as for locks)."""
        return MS_2025 + self.inventory.generation * HOUR_MS + rng.randrange(HOUR_MS)

    def draw_contact(self, owner_id: str, rng: random.Random) -> ContactRecord:
        contact = new_contact(rng, owner_id)
        contact.identifier = self.new_identifier(contact, rng)
        self.contacts[contact.id] = self.owners[owner_id].contacts[contact.id] = contact
        return contact

    def new_identifier(self, contact: ContactRecord, rng: random.Random) -> str:
        """A new identifier: an unused email for a Tapkey user, an opaque user id otherwise."""
        if contact.ip_id != "tapkey":
            return f"user-{rng.getrandbits(40):010x}"
        base, domain = contact.title.lower().replace(" ", "."), rng.choice(_DOMAINS)
        email, number = f"{base}@{domain}", 1
        while email in self._emails:
            number += 1
            email = f"{base}{number}@{domain}"
        self._emails.add(email)
        return email

    def draw_card(self, owner_id: str, rng: random.Random, bind_ms: int) -> CardRecord:
        card = new_card(rng, owner_id, bind_ms)
        self.cards[card.id] = self.owners[owner_id].cards[card.id] = card
        return card

    def draw_grant(self, owner_id: str, rng: random.Random, created_ms: int) -> GrantRecord | None:
        """A seeded grant of one of the owner's locks, or None without a lock or a holder."""
        locks = self.inventory.owners[owner_id].locks
        holder = self._draw_holder(owner_id, rng) if locks else None
        if holder is None:
            return None
        grant = GrantRecord(guid(rng), owner_id, rng.choice(locks), *holder)
        shape = rng.random()
        if shape >= 0.4:  # else unrestricted
            grant.valid_from = iso(created_ms)
        if 0.4 <= shape < 0.75:
            grant.valid_before = iso(created_ms + rng.randrange(7, 365) * DAY_MS)
        elif shape >= 0.75:
            grant.ical = time_restriction(rng, created_ms)
        self.grants[grant.id] = self.owners[owner_id].grants[grant.id] = grant
        return grant

    def _draw_holder(
        self, owner_id: str, rng: random.Random
    ) -> tuple[str, None] | tuple[None, str] | None:
        """(contact id, None) or (None, card id) of the owner, mostly a contact; None if neither."""
        lists = self.owners[owner_id]
        if not (lists.contacts or lists.cards):
            return None
        if not lists.contacts or (lists.cards and rng.random() < 0.3):
            return None, rng.choice(list(lists.cards))
        return rng.choice(list(lists.contacts)), None


def _get(records: Mapping[str, _R], record_id: str, what: str) -> _R:
    try:
        return records[record_id]
    except KeyError:
        raise KeyError(f"no {what} {record_id!r}") from None
