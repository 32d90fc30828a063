"""The fixed words the database stores: run and owner statuses, change types, removal reasons,
and the names the change feed gives what changed.

StrEnums, so a member is the very string that is written and compared (`RunStatus.FAILED ==
"failed"`); the values are part of the schema (CHECK-free VARCHAR columns read by BI users) and
must never change.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "BindingEnd",
    "ChangeEntity",
    "ChangeType",
    "GrantState",
    "OwnerStatus",
    "RemovalReason",
    "RunStatus",
]


class RunStatus(StrEnum):
    """`sync_runs.status`: how a run ended (`running` until it does)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"  # some owner accounts failed or had removals held back
    FAILED = "failed"


class OwnerStatus(StrEnum):
    """`sync_run_owners.status`: whether one owner account's locks were fetched completely."""

    COMPLETE = "complete"
    FAILED = "failed"


class ChangeType(StrEnum):
    """`*_versions.change_type`: what a version records."""

    CREATED = "created"
    UPDATED = "updated"
    REMOVED = "removed"
    RESTORED = "restored"


class RemovalReason(StrEnum):
    """`*_versions.removal_reason` of a `removed` version."""

    UNBOUND = "unbound"  # the lock (or card) is no longer bound to the owner account
    OWNER_REMOVED = "owner_removed"  # the owner account itself is gone
    DELETED = "deleted"  # a contact or grant its owner account no longer lists


class BindingEnd(StrEnum):
    """`lock_binding_history.end_reason` of a binding that ended without a removal (a removal
    ends it with its `RemovalReason`)."""

    MOVED = "moved"  # the bound lock id went to another owner account
    PHYSICAL_LOCK_CHANGED = "physical_lock_changed"  # the bound lock id names another device


class GrantState(StrEnum):
    """`grants.state` as Tapkey sends it; only an `Ok` grant gives access."""

    OK = "Ok"


class ChangeEntity(StrEnum):
    """What a change is of, as the change feed names it (`changes --entity`, its `entity`)."""

    OWNER = "owner"
    LOCK = "lock"
    CONTACT = "contact"
    CARD = "card"
    GRANT = "grant"
