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
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from operator import attrgetter
from typing import Any, Final, Literal, TypeVar

from exporter.sandbox.data import SandboxChange, SandboxInventory
from exporter.sandbox.entities import (
    CardRecord,
    ContactRecord,
    GrantRecord,
    LogEntryRecord,
    OwnerAccess,
    Record,
    encode,
    new_card,
    new_contact,
    person_name,
    time_restriction,
)
from exporter.sandbox.logs import LogBook
from exporter.sandbox.odata import Filter, FilterError, PropertyKind, matches, parse_filter
from exporter.sandbox.values import DAY_MS, HOUR_MS, MS_2025, different, guid, iso, json_page

__all__ = ["ACCESS_CHANGE_KINDS", "ACCESS_ROUTES", "AccessData", "AccessRoute", "OwnerAccess"]

AccessRoute = Literal["contacts", "cards", "grants", "logs"]
ACCESS_ROUTES: Final[tuple[AccessRoute, ...]] = ("contacts", "cards", "grants", "logs")

# How often each kind is drawn by AccessData.advance (inapplicable draws are redrawn).
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

# What $filter may compare on each route: property -> (kind, record attribute).
_FILTERABLE: Final[dict[AccessRoute, dict[str, tuple[PropertyKind, str]]]] = {
    "contacts": {"id": ("string", "id")},
    "cards": {"id": ("string", "id")},
    "grants": {
        "id": ("string", "id"),
        "boundLockId": ("string", "bound_lock_id"),
        "contactId": ("string", "contact_id"),
        "boundCardId": ("string", "bound_card_id"),
        "state": ("string", "state"),
    },
    "logs": {
        "id": ("string", "id"),
        "boundLockId": ("string", "bound_lock_id"),
        "logType": ("string", "log_type"),
        "command": ("string", "command"),
        "receivedAt": ("datetime", "received_ms"),
        "lockTimestamp": ("datetime", "lock_ms"),
    },
}
# ASP.NET OData's words for a property that cannot be filtered on.
_NOT_FILTERABLE = "The property 'receivedAt' cannot be used in the $filter query option."
_DOMAINS = ("example.com", "example.org", "example.net")
_MS_2019: Final = 1_546_300_800_000  # cards were bound in 2019-2024
_MS_2023: Final = 1_672_531_200_000  # initial grants were made in 2023-2024
_R = TypeVar("_R")


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
        self._inventory = inventory
        self.owners = {owner_id: OwnerAccess() for owner_id in inventory.owners}
        self.contacts: dict[str, ContactRecord] = {}  # every listed one, by id
        self.cards: dict[str, CardRecord] = {}
        self.grants: dict[str, GrantRecord] = {}
        self._logs = LogBook(inventory, self.owners)
        self._emails: set[str] = set()
        self._direct_rng = random.Random(f"tapkey-sandbox-access-direct:{inventory.seed}")
        if not any(sizes):
            return
        rng = random.Random(f"tapkey-sandbox-access:{inventory.seed}")
        for owner_id in inventory.owners:
            for _ in range(contacts_per_owner):
                self._add_contact(owner_id, rng)
            for _ in range(cards_per_owner):
                self._add_card(owner_id, rng, rng.randrange(_MS_2019, MS_2025))
            for _ in range(grants_per_owner):
                self._add_grant(owner_id, rng, rng.randrange(_MS_2023, MS_2025))
            self._logs.seed(owner_id, log_entries_per_owner, rng)
        for grant in self.grants.values():
            if rng.random() < 0.15:
                grant.state, grant.active = "Revoked", False

    # -- reading -------------------------------------------------------------------------------

    def parse_filter(self, route: AccessRoute, text: str, *, received_at: bool = True) -> Filter:
        """A route's ``$filter`` (FilterError outside the subset, or on receivedAt when off)."""
        properties = {name: kind for name, (kind, _) in _FILTERABLE[route].items()}
        parsed = parse_filter(text, properties)
        if not received_at and any(c.name == "receivedAt" for group in parsed for c in group):
            raise FilterError(_NOT_FILTERABLE)
        return parsed

    def page_json(
        self,
        route: AccessRoute,
        owner_id: str,
        skip: int = 0,
        top: int | None = None,
        parsed: Filter | None = None,
    ) -> bytes:
        """A page of one owner's list, filtered first, encoded as the API sends it."""
        records = self.records(route, owner_id)
        if parsed is not None:
            getters = {name: attrgetter(attr) for name, (_, attr) in _FILTERABLE[route].items()}
            records = [r for r in records if matches(parsed, _values(getters, r))]
        return json_page(records, skip, top, encode)

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
        self._inventory.owner(owner_id)
        contact = self._add_contact(owner_id, self._direct_rng)
        if contact.ip_id != ip_id and identifier is None:  # an email only for Tapkey users
            contact.ip_id = ip_id
            identifier = self._identifier(contact, self._direct_rng)
        contact.ip_id, contact.legacy_email = ip_id, legacy_email
        self.update_contact(contact.id, title=title, identifier=identifier)
        return contact

    def update_contact(
        self, contact_id: str, *, title: str | None = None, identifier: str | None = None
    ) -> None:
        """Rename a contact and/or change its identifier (a Tapkey user's email)."""
        contact = self.contact(contact_id)
        if title is not None:
            contact.title = title
        if identifier is not None:
            contact.identifier = identifier
        contact.json = None

    def remove_contact(self, contact_id: str) -> None:
        """Remove a contact from its owner's list (grants naming it stay as they are)."""
        contact = self.contacts.pop(self.contact(contact_id).id)
        del self.owners[contact.owner_id].contacts[contact_id]

    def bind_card(self, owner_id: str, *, title: str | None = None) -> CardRecord:
        """Bind a new card at the end of the owner's list."""
        self._inventory.owner(owner_id)
        card = self._add_card(owner_id, self._direct_rng, self._now_ms(self._direct_rng))
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
        self._inventory.owner(owner_id)
        rng = self._direct_rng
        if contact_id is not None and card_id is not None:
            raise ValueError("a grant goes to a contact or a card, not both")
        if lock_id is not None:
            self._inventory.lock(lock_id)
        elif locks := self._inventory.owners[owner_id].locks:
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
        grant.state, grant.active, grant.json = "Revoked", False, None

    def remove_grant(self, grant_id: str) -> None:
        """Remove a grant from its owner's list; later grants move up a place."""
        grant = self.grants.pop(self.grant(grant_id).id)
        del self.owners[grant.owner_id].grants[grant_id]

    def append_log_entries(
        self, owner_id: str, count: int, *, late: bool = False, received_at: int | None = None
    ) -> list[LogEntryRecord]:
        """Receive `count` new log entries of the owner's locks now (see `LogBook.receive`)."""
        self._inventory.owner(owner_id)
        if count < 0:
            raise ValueError("count must be >= 0")
        entries = self._logs.receive(
            owner_id, count, self._direct_rng, late=late, received_at=received_at
        )
        if entries is None:
            raise ValueError(f"owner {owner_id!r} has no bound lock to log")
        return entries

    # -- generations -----------------------------------------------------------------------------

    def advance(self, changes: int) -> list[SandboxChange]:
        """Apply `changes` seeded random access changes in the inventory's current generation."""
        inventory = self._inventory
        rng = random.Random(f"tapkey-sandbox-access:{inventory.seed}:{inventory.generation}")
        kinds, weights = list(_ACCESS_WEIGHTS), list(_ACCESS_WEIGHTS.values())
        owner_ids = list(inventory.owners)
        applied: list[SandboxChange] = []
        for _ in range(changes):
            for _attempt in range(100):  # redraw what does not apply (no grant to revoke, ...)
                change = self._apply(rng.choices(kinds, weights)[0], rng.choice(owner_ids), rng)
                if change is not None:
                    applied.append(change)
                    break
        return applied

    def _apply(self, kind: str, owner_id: str, rng: random.Random) -> SandboxChange | None:
        lists = self.owners[owner_id]
        if kind == "contact_add":
            contact = self._add_contact(owner_id, rng)
            return SandboxChange(kind, owner_id, None, f"contact {contact.title!r}", contact.id)
        if kind == "card_bind":
            card = self._add_card(owner_id, rng, self._now_ms(rng))
            return SandboxChange(kind, owner_id, None, f"card {card.uid}", card.id)
        if kind == "grant_add":
            grant = self._add_grant(owner_id, rng, self._now_ms(rng))
            if grant is None:
                return None
            return SandboxChange(kind, owner_id, grant.bound_lock_id, "grant added", grant.id)
        if kind in ("log_entries", "log_entries_late"):
            late = kind == "log_entries_late"
            entries = self._logs.receive(owner_id, rng.randint(1, 4), rng, late=late)
            if not entries:
                return None
            lock_id = entries[0].bound_lock_id if late else None
            return SandboxChange(kind, owner_id, lock_id, f"{len(entries)} entries", entries[0].id)
        if kind in ("grant_revoke", "grant_remove"):
            revoke = kind == "grant_revoke"
            grants = [g for g in lists.grants.values() if g.state == "Ok" or not revoke]
            if not grants:
                return None
            grant = rng.choice(grants)
            (self.revoke_grant if revoke else self.remove_grant)(grant.id)
            detail = "grant revoked" if revoke else f"grant removed (state {grant.state})"
            return SandboxChange(kind, owner_id, grant.bound_lock_id, detail, grant.id)
        if kind.startswith("contact_") and lists.contacts:
            contact = rng.choice(list(lists.contacts.values()))
            if kind == "contact_rename":
                old = contact.title
                self.update_contact(contact.id, title=different(old, lambda: person_name(rng)))
                detail = f"title {old!r} -> {contact.title!r}"
            elif kind == "contact_identifier":
                old = contact.identifier
                self.update_contact(contact.id, identifier=self._identifier(contact, rng))
                detail = f"identifier {old!r} -> {contact.identifier!r}"
            else:
                self.remove_contact(contact.id)
                detail = f"contact {contact.title!r} removed"
            return SandboxChange(kind, owner_id, None, detail, contact.id)
        if kind == "card_unbind" and lists.cards:
            card = rng.choice(list(lists.cards.values()))
            self.unbind_card(card.id)
            return SandboxChange(kind, owner_id, None, f"card {card.uid} unbound", card.id)
        return None

    # -- creating records ------------------------------------------------------------------------

    def _now_ms(self, rng: random.Random) -> int:
        """A deterministic instant in the current generation's hour (as for locks)."""
        return MS_2025 + self._inventory.generation * HOUR_MS + rng.randrange(HOUR_MS)

    def _add_contact(self, owner_id: str, rng: random.Random) -> ContactRecord:
        contact = new_contact(rng, owner_id)
        contact.identifier = self._identifier(contact, rng)
        self.contacts[contact.id] = self.owners[owner_id].contacts[contact.id] = contact
        return contact

    def _identifier(self, contact: ContactRecord, rng: random.Random) -> str:
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

    def _add_card(self, owner_id: str, rng: random.Random, bind_ms: int) -> CardRecord:
        card = new_card(rng, owner_id, bind_ms)
        self.cards[card.id] = self.owners[owner_id].cards[card.id] = card
        return card

    def _add_grant(self, owner_id: str, rng: random.Random, created_ms: int) -> GrantRecord | None:
        """A seeded grant of one of the owner's locks, or None without a lock or a holder."""
        locks = self._inventory.owners[owner_id].locks
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


def _values(getters: Mapping[str, Callable[[Any], Any]], record: Any) -> Callable[[str], Any]:
    return lambda name: getters[name](record)


def _get(records: Mapping[str, _R], record_id: str, what: str) -> _R:
    try:
        return records[record_id]
    except KeyError:
        raise KeyError(f"no {what} {record_id!r}") from None
