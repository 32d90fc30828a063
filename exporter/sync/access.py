"""Syncing access data (contacts, bound cards, grants): the lock contract for three more entities.

After the locks, each entity enabled in `[tapkey] entities` is fetched for every listed owner
account (`workers` at a time) and written with the same rules as bound locks (exporter.sync.engine):

- each owner's creates, updates and restores in one transaction of its own; an element whose
  stored text equals the received one is unchanged without becoming a record, and an owner with
  nothing to write gets no transaction;
- removals after every owner of the entity was applied, in one transaction: an element is
  removed only if no complete fetch of this run returned it and its owner's fetch was complete
  to a proven end (reason `deleted`, for a card `unbound`; list ends are confirmed as the
  locks' are, exporter.tapkey.paging), or if its owner account was removed
  (`owner_removed`); the deletion guard holds back mass removals per owner as for locks;
- a fetch that fails (a 403 for a missing scope or co-admin right, a 5xx, a bad page) changes
  nothing for that entity of that owner and makes the run `partial`; locks and the other
  entities go on. Only an AuthError (no token at all) ends the run.

A grant whose state changes to Revoked is an update like any other change of a tracked field.
An element listed by two owners in one run stays with the owner it is stored under if that owner
lists it too, whichever list came in first (else a slow answer moved it back and forth, making
versions of changes that never happened); otherwise it moves to the owner listing it.

This module describes the entities and what the run hands the access phase; the phase itself is
exporter.sync.access_sync, one entity's writes and removals exporter.sync.entity_sync.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from sqlalchemy import Engine, Table

from exporter.config.settings import ENTITY_SCOPES
from exporter.db.schema import (
    CARD_TRACKED,
    CONTACT_TRACKED,
    GRANT_TRACKED,
    bound_card_versions,
    bound_cards,
    contact_versions,
    contacts,
    grant_versions,
    grants,
)
from exporter.kinds import RemovalReason
from exporter.results import Change, Counts
from exporter.sync.guard import RemovalGuard
from exporter.sync.holds import Holds
from exporter.sync.versions import VersionedTable
from exporter.tapkey.access import (
    CARD_FIELDS,
    CONTACT_FIELDS,
    GRANT_FIELDS,
    EntityRoute,
    FieldSpec,
    OwnerEntities,
    Privacy,
)
from exporter.tapkey.paging import PagingCheck


@dataclass(frozen=True)
class AccessEntity:
    """What the engine needs to know about one entity: route, tables, fields and wording."""

    name: str  # as in [tapkey] entities
    noun: str  # one of them, in messages and dry-run changes
    path: str  # the route under /api/v1/Owners/{id}/
    current: Table
    versions: Table
    tracked: tuple[str, ...]
    fields: tuple[FieldSpec, ...]
    removal_reason: RemovalReason
    personal: bool  # its payload may carry a contact identifier ([privacy])

    @property
    def scope(self) -> str:
        """The scope its route needs."""
        return ENTITY_SCOPES[self.name]

    @property
    def tables(self) -> VersionedTable:
        """Its tables as `write_diff` writes them (new rows: id, tracked, raw, times)."""
        new_columns = ("id", *self.tracked, "raw", "first_seen_at", "updated_at")
        return VersionedTable(self.current, self.versions, self.tracked, new_columns)

    @property
    def route(self) -> EntityRoute:
        """How the client lists it."""
        return EntityRoute(self.path, self.scope, self.fields, self.personal, self.noun)


ACCESS_ENTITIES: dict[str, AccessEntity] = {
    entity.name: entity
    for entity in (
        AccessEntity(
            "contacts", "contact", "Contacts", contacts, contact_versions, CONTACT_TRACKED,
            CONTACT_FIELDS, RemovalReason.DELETED, personal=True,
        ),
        AccessEntity(
            "cards", "card", "BoundCards", bound_cards, bound_card_versions, CARD_TRACKED,
            CARD_FIELDS, RemovalReason.UNBOUND, personal=False,
        ),
        AccessEntity(
            "grants", "grant", "Grants", grants, grant_versions, GRANT_TRACKED, GRANT_FIELDS,
            RemovalReason.DELETED, personal=True,  # a grant may embed its contact
        ),
    )
}  # fmt: skip


@dataclass(frozen=True)
class AccessOptions:
    """Which access entities a run syncs (names of ACCESS_ENTITIES) and how privacy applies."""

    entities: tuple[str, ...] = ()
    privacy: Privacy = field(default_factory=Privacy)

    @classmethod
    def of(cls, entities: Sequence[str], privacy: Privacy) -> AccessOptions:
        """The options for `[tapkey] entities` (other entities than these three are ignored)."""
        return cls(tuple(name for name in entities if name in ACCESS_ENTITIES), privacy)


class AccessSource(Protocol):
    """What the engine needs from the Tapkey API client for access data."""

    @property
    def granted_scopes(self) -> frozenset[str] | None: ...

    def list_owner_entities(
        self, owner_id: str, route: EntityRoute, privacy: Privacy, known: Mapping[str, str]
    ) -> OwnerEntities: ...


@dataclass
class AccessContext:
    """The run's pieces the access phase uses (owned by exporter.sync's run)."""

    engine: Engine
    source: AccessSource
    clock: Callable[[], datetime]
    run_id: int
    dry_run: bool
    stop: threading.Event
    guard: RemovalGuard
    workers: int
    check_lock: Callable[[], None]
    changes: list[Change]  # dry runs list what they would change here
    # Confirms the ends of the lists read since the locks' were confirmed (the API client's
    # confirm_paging, the page size it learns kept): an access list cut by a new silent cap
    # must not turn into removals.
    confirm_paging: Callable[[], PagingCheck]
    # Removals held back by earlier runs (exporter.sync.holds), read when the run started.
    holds: Holds = field(default_factory=dict)


@dataclass
class AccessOutcome:
    """How one entity went: its counts, failed owners (id -> error) and held-back removals."""

    entity: str
    counts: Counts = field(default_factory=Counts)
    failed: dict[str, str] = field(default_factory=dict)
    held: list[str] = field(default_factory=list)
    held_back: dict[str, int] = field(default_factory=dict)
    unproven: str | None = None  # why list ends were not proven (their removals wait)

    def problems(self) -> list[str]:
        """One line per distinct failure (naming its owners) and per held-back removal."""
        by_error: dict[str, list[str]] = {}
        for owner_id, error in self.failed.items():
            by_error.setdefault(error, []).append(owner_id)
        lines = []
        for error, owners in by_error.items():
            if len(owners) == 1:
                lines.append(f"{self.entity} of owner {owners[0]}: {error}")
            else:
                shown = ", ".join(owners[:3]) + (", ..." if len(owners) > 3 else "")
                lines.append(f"{self.entity} of {len(owners)} owners ({shown}): {error}")
        return lines + self.held + ([self.unproven] if self.unproven else [])
