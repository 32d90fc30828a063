"""What a run reports: counts by kind of change, per-owner outcomes and the run's result.

Plain data, written by the sync engine and read by the CLI, the daemon and its metrics, which need
the result without the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

#: The entities with history whose changes a run counts ([tapkey] entities' names, in order).
COUNTED_ENTITIES = ("locks", "contacts", "cards", "grants")


@dataclass
class Counts:
    """Changes of one entity (locks, contacts, ...) by kind."""

    created: int = 0
    updated: int = 0
    removed: int = 0
    restored: int = 0
    unchanged: int = 0
    skipped: int = 0

    def add(self, other: Counts) -> None:
        """Add another set of counts to this one."""
        # Spelled out: called once per owner and entity, where a loop over the fields with
        # getattr/setattr cost a run of 1,000 owners with every entity 0.05 s of CPU.
        self.created += other.created
        self.updated += other.updated
        self.removed += other.removed
        self.restored += other.restored
        self.unchanged += other.unchanged
        self.skipped += other.skipped

    def as_dict(self) -> dict[str, int]:
        """The counts by column name."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class Change:
    """One change the run made (or, with dry_run, would make)."""

    entity: str  # "owner", "lock", "contact", "card" or "grant"
    id: str
    change_type: str
    owner_account_id: str | None
    changed_fields: tuple[str, ...] | None = None
    removal_reason: str | None = None
    title: str | None = None


@dataclass
class OwnerOutcome:
    """How one owner's fetch went."""

    owner_account_id: str
    status: str  # "complete" or "failed"
    locks_seen: int = 0
    counts: Counts = field(default_factory=Counts)
    fetched_at: datetime | None = None
    error: str | None = None


@dataclass
class RunResult:
    """The outcome of one run, as recorded in `sync_runs`."""

    run_id: int | None
    status: str
    trigger: str
    started_at: datetime
    finished_at: datetime | None = None
    owners_seen: int = 0
    locks_seen: int = 0
    counts: Counts = field(default_factory=Counts)
    api_requests: int = 0
    error: str | None = None
    owners: list[OwnerOutcome] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    dry_run: bool = False
    # Removals the deletion guard held back: owner id -> locks kept (see RemovalGuard).
    held_back: dict[str, int] = field(default_factory=dict)
    # Access entities synced ([tapkey] entities): name -> changes by kind (exporter.sync.access).
    access: dict[str, Counts] = field(default_factory=dict)
    # New log entries stored, and the owners whose log failed (id -> error); see log_entries.
    log_entries: int = 0
    log_failures: dict[str, str] = field(default_factory=dict)

    def entity_counts(self) -> dict[str, Counts]:
        """Changes by kind per entity synced: locks (`counts`) first, then `access`'s."""
        return {"locks": self.counts, **self.access}


@dataclass(frozen=True)
class SyncProgress:
    """Where a run is: owners applied of those listed, locks seen and API requests so far."""

    owners_done: int
    owners_total: int
    locks_seen: int
    api_requests: int
