"""The sandbox's data and the calls that change it: what tests, the demo and the benchmarks use
to make Tapkey's lists move between (or during) requests.

`SandboxControls` holds the seeded inventory (`exporter.sandbox.data`) and access data
(`exporter.sandbox.access`) behind one lock; `exporter.sandbox.server.Sandbox` adds the server.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any, Final, Unpack, cast

from exporter.sandbox.access import AccessData, ContactChoice, GrantChoice
from exporter.sandbox.access_routes import ACCESS_ROUTES, AccessRoute
from exporter.sandbox.data import SandboxChange, SandboxInventory
from exporter.sandbox.entities import epoch_ms
from exporter.sandbox.protocol import Route

__all__ = ["DENIABLE_ROUTES", "SandboxControls"]

# The routes of one owner, which `deny` can close to one owner.
DENIABLE_ROUTES: Final[tuple[Route, ...]] = ("locks", *ACCESS_ROUTES)


class SandboxControls:
    """The seeded owners, locks and access data, and the calls that change them (thread-safe)."""

    def __init__(
        self,
        *,
        seed: int,
        owners: int,
        locks_per_owner: int,
        contacts_per_owner: int,
        cards_per_owner: int,
        grants_per_owner: int,
        log_entries_per_owner: int,
        received_at_filter: bool,
    ) -> None:
        self._lock = threading.RLock()
        self._data = SandboxInventory(seed=seed, owners=owners, locks_per_owner=locks_per_owner)
        self._access = AccessData(
            self._data,
            contacts_per_owner=contacts_per_owner,
            cards_per_owner=cards_per_owner,
            grants_per_owner=grants_per_owner,
            log_entries_per_owner=log_entries_per_owner,
        )
        self._denied: set[tuple[str, str]] = set()  # (owner id, route) answered 403
        self.received_at_filter = received_at_filter  # False: 400 to $filter on receivedAt

    # -- data ------------------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """How many times advance() has run."""
        return self._data.generation

    def advance(self, changes: int = 5, *, access: int = 0) -> list[SandboxChange]:
        """Start the next generation: `changes` random lock and owner changes, then `access`
        changes of access data (kinds in ACCESS_CHANGE_KINDS), all seed-deterministic.

        The two kinds draw from separate random streams: `access` changes nothing about which
        lock and owner changes a seed gives.
        """
        with self._lock:
            applied = self._data.advance(changes)
            return applied + self._access.advance(access)

    def owners_payload(self) -> list[dict[str, Any]]:
        """The owner list the API returns now (a fresh copy)."""
        with self._lock:
            data = self._data.owners_json()
        return cast(list[dict[str, Any]], json.loads(data))

    def locks_payload(self, owner_id: str) -> list[dict[str, Any]]:
        """An owner's bound locks as the API returns them (also for a hidden owner; a copy)."""
        with self._lock:
            data = self._data.locks_json(self._data.owner(owner_id).id)
        return cast(list[dict[str, Any]], json.loads(data))

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """``{owner_id: locks_payload(owner_id)}`` for every visible owner, in /Owners order."""
        with self._lock:
            pages = {o.id: self._data.locks_json(o.id) for o in self._data.visible_owners()}
        return {owner_id: json.loads(page) for owner_id, page in pages.items()}

    def unbind(self, lock_id: str) -> None:
        """Unbind a lock: it leaves its owner's list and later locks move up."""
        with self._lock:
            self._data.unbind(lock_id)

    def bind_new(self, owner_id: str) -> str:
        """Bind a new lock at the end of the owner's list; returns its bound lock id."""
        with self._lock:
            return self._data.bind_new(owner_id).id

    def rename(self, lock_id: str, title: str) -> None:
        """Change a lock's title."""
        with self._lock:
            self._data.rename(lock_id, title)

    def move(self, lock_id: str, owner_id: str) -> None:
        """Move a bound lock (same id) to the end of another owner's list."""
        with self._lock:
            self._data.move(lock_id, owner_id)

    def list_also(self, lock_id: str, owner_id: str) -> None:
        """Also list a bound lock under `owner_id`, a move caught half-way; `move` completes it."""
        with self._lock:
            self._data.list_also(lock_id, owner_id)

    def update_lock(self, lock_id: str, **fields: Any) -> None:
        """Set lock fields by API name, e.g. ``update_lock(id, description="x", rclSerialNo=4)``."""
        with self._lock:
            self._data.update_lock(lock_id, fields)

    def rebind(self, lock: str | Mapping[str, Any], owner_id: str) -> str:
        """Bind a lock to `owner_id`; returns the bound lock id now listed there.

        With a bound lock id: Tapkey's rebind, the old binding ends and a NEW bound lock id with
        the same physicalLockId is appended to the owner's list. With a lock payload (a dict from
        locks_payload, say of a lock unbound since): that very lock, same id, is bound again.
        """
        with self._lock:
            if isinstance(lock, str):
                return self._data.rebind(lock, owner_id).id
            return self._data.bind_payload(lock, owner_id).id

    def update_owner(
        self, owner_id: str, *, name: str | None = None, active: bool | None = None
    ) -> None:
        """Rename an owner and/or set its active flag."""
        with self._lock:
            self._data.update_owner(owner_id, name=name, active=active)

    def hide_owner(self, owner_id: str) -> None:
        """Hide an owner: gone from /Owners, 403 on its locks (co-admin rights lost)."""
        with self._lock:
            self._data.set_owner_visible(owner_id, False)

    def show_owner(self, owner_id: str) -> None:
        """Make a hidden owner visible again, with its current locks."""
        with self._lock:
            self._data.set_owner_visible(owner_id, True)

    def deny(self, owner_id: str, route: Route) -> None:
        """Answer 403 ``forbidden`` on one route of one owner (a limited admin role, say)."""
        if route not in DENIABLE_ROUTES:
            raise ValueError(f"route must be one of locks, {', '.join(ACCESS_ROUTES)}")
        with self._lock:
            self._data.owner(owner_id)
            self._denied.add((owner_id, route))

    def allow(self, owner_id: str, route: Route) -> None:
        """Undo `deny`."""
        with self._lock:
            self._denied.discard((owner_id, route))

    # -- access data (see exporter.sandbox.access) -------------------------------------------------

    def contacts_payload(self, owner_id: str) -> list[dict[str, Any]]:
        """An owner's contacts as the API lists them (also for a hidden owner; a copy)."""
        return self._access_payload("contacts", owner_id)

    def cards_payload(self, owner_id: str) -> list[dict[str, Any]]:
        """An owner's bound cards as the API lists them (a copy)."""
        return self._access_payload("cards", owner_id)

    def grants_payload(self, owner_id: str) -> list[dict[str, Any]]:
        """An owner's grants, revoked ones included, as the API lists them (a copy)."""
        return self._access_payload("grants", owner_id)

    def log_entries_payload(self, owner_id: str) -> list[dict[str, Any]]:
        """An owner's log entries as the API lists them: by receivedAt, then id (a copy)."""
        return self._access_payload("logs", owner_id)

    def _access_payload(self, route: AccessRoute, owner_id: str) -> list[dict[str, Any]]:
        with self._lock:
            data = self._access.page_json(route, self._data.owner(owner_id).id)
        return cast(list[dict[str, Any]], json.loads(data))

    def add_contact(self, owner_id: str, **contact: Unpack[ContactChoice]) -> str:
        """Append a contact (seeded name and email unless given); returns its id.

        `legacy_email` sends it as an older payload: ``email`` instead of ``identifier``.
        """
        with self._lock:
            return self._access.add_contact(owner_id, **contact).id

    def update_contact(
        self, contact_id: str, *, title: str | None = None, identifier: str | None = None
    ) -> None:
        """Rename a contact and/or change its identifier (``email`` in an older payload)."""
        with self._lock:
            self._access.update_contact(contact_id, title=title, identifier=identifier)

    def remove_contact(self, contact_id: str) -> None:
        """Remove a contact; later ones move up (grants and log entries naming it stay)."""
        with self._lock:
            self._access.remove_contact(contact_id)

    def bind_card(self, owner_id: str, *, title: str | None = None) -> str:
        """Bind a new card at the end of the owner's BoundCards; returns its id."""
        with self._lock:
            return self._access.bind_card(owner_id, title=title).id

    def unbind_card(self, card_id: str) -> None:
        """Unbind a card: it leaves BoundCards, as on Tapkey (grants naming it stay)."""
        with self._lock:
            self._access.unbind_card(card_id)

    def add_grant(self, owner_id: str, **grant: Unpack[GrantChoice]) -> str:
        """Append an Ok grant; returns its id.

        Without `lock_id` one of the owner's locks is drawn (seeded), without `contact_id` and
        `card_id` one of its contacts or cards; the validity fields are as given (ISO texts).
        """
        with self._lock:
            return self._access.add_grant(owner_id, **grant).id

    def revoke_grant(self, grant_id: str) -> None:
        """Revoke a grant: state Revoked, active false; it stays listed."""
        with self._lock:
            self._access.revoke_grant(grant_id)

    def remove_grant(self, grant_id: str) -> None:
        """Remove a grant from the list; later ones move up."""
        with self._lock:
            self._access.remove_grant(grant_id)

    def append_log_entries(
        self, owner_id: str, count: int = 1, *, late: bool = False, received_at: str | None = None
    ) -> list[str]:
        """Receive `count` log entries of the owner's locks now; returns their ids.

        Tapkey's receive clock moves forward, so they are listed last. `late`: one lock's
        backlog, lockTimestamp hours or days before receivedAt. `received_at` (ISO-8601, e.g.
        ``2025-01-01T05:00:00.000Z``) receives them all at that instant instead: ties with
        entries already listed, or entries slotted in before them.
        """
        at = None if received_at is None else epoch_ms(received_at)
        with self._lock:
            entries = self._access.append_log_entries(owner_id, count, late=late, received_at=at)
        return [entry.id for entry in entries]
