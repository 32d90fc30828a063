"""What every table and column means: the text of the database comments and of the docs.

`exporter.db.schema` attaches these to the tables (PostgreSQL and MariaDB/MySQL store them as table
and column comments; SQLite has none); migration 0002 wrote the same text into existing databases.
The views' descriptions are in `exporter.db.views`. Keep the text free of quotes, colons, percent
signs and backslashes: it is written into DDL literally.
"""

from __future__ import annotations

# The bound_locks columns the current_bound_locks view shows (views.py builds the view from it).
CURRENT_LOCK_COLUMNS = (
    "id", "owner_account_id", "title", "description", "physical_lock_id", "lock_id_hex",
    "lock_type_id", "lock_model_name", "manufacturer_id", "active", "bind_date", "unbind_date",
    "rcl_serial_no", "rcl_date", "target_type", "first_seen_at", "updated_at",
)  # fmt: skip

_COUNTS = {
    "created": "Locks created (first seen).",
    "updated": "Locks whose tracked attributes changed.",
    "removed": "Locks removed (unbound, or their owner account vanished).",
    "restored": "Locks seen again after a removal.",
    "unchanged": "Locks fetched without a tracked change.",
    "skipped": (
        "Lock elements that could not be read, or held a value longer than the exporter stores, "
        "and were left as stored."
    ),
}

_LOCK_ATTRIBUTES = {
    "owner_account_id": "Owner account the lock is bound to (owner_accounts.id).",
    "title": "Lock title as shown in Tapkey.",
    "description": "Lock description.",
    "physical_lock_id": "TLCP id of the physical lock as the API gives it (Base64).",
    "lock_type_id": "Lock type id, e.g. TK.Td30.",
    "lock_model_name": "Lock model name (lockType.modelName).",
    "manufacturer_id": "Manufacturer id (lockType.manufacturerId).",
    "active": "Active flag from Tapkey.",
    "bind_date": "When the lock was bound to its owner account, per Tapkey (UTC).",
    "unbind_date": "Unbind date reported by Tapkey (UTC), usually NULL.",
    "target_type": "Target type from Tapkey, e.g. Lock.",
}

_VERSION = {
    "valid_from": "Start of this version, inclusive (UTC) - when a run observed the change.",
    "valid_to": "End of this version, exclusive (UTC); NULL for the current version.",
    "change_type": "created, updated, removed or restored.",
    "changed_fields": (
        "JSON array of the columns that differ from the previous version (updated, restored); "
        "NULL for created and removed."
    ),
    "removal_reason": (
        "For removed versions - unbound (its owner no longer lists it) or owner_removed (its "
        "owner account vanished); else NULL."
    ),
    "run_id": "The run that wrote this version (sync_runs.id).",
}

_CONTACT_ATTRIBUTES = {
    "owner_account_id": "Owner account whose contact list holds it (owner_accounts.id).",
    "ip_id": "Identity provider of the contact - tapkey for Tapkey users.",
    "identifier": (
        "The contact identifier (a Tapkey user email), kept, replaced by its keyed hash (hex) "
        "or NULL, per [privacy] contact_identifier."
    ),
    "title": "Contact name as shown in Tapkey.",
    "comment": "Comment on the contact.",
}

_CARD_ATTRIBUTES = {
    "owner_account_id": "Owner account the card is bound to (owner_accounts.id).",
    "title": "Card title as shown in Tapkey.",
    "label": "Label of the card, often the number printed on it.",
    "uid": "UID of the card chip (hex).",
    "physical_card_id": "Physical card id as the API gives it (Base64).",
    "is_active": "Active flag of the card from Tapkey.",
    "bind_date": "When the card was bound, per Tapkey (UTC).",
    "unbind_date": "Unbind date reported by Tapkey (UTC), usually NULL.",
    "nof_grants_capacity": "How many grants the card can carry.",
}

_GRANT_ATTRIBUTES = {
    "owner_account_id": "Owner account that issued the grant (owner_accounts.id).",
    "bound_lock_id": "The bound lock it opens (bound_locks.id).",
    "contact_id": "The contact it is granted to (contacts.id); NULL for a card grant.",
    "bound_card_id": "The bound card it is granted to (bound_cards.id); NULL for a contact grant.",
    "validity_from": "Start of the grant validity (validFrom, UTC); NULL without a start.",
    "validity_before": (
        "End of the grant validity, exclusive (validBefore, UTC); NULL without an end."
    ),
    "time_restriction_ical": "Weekly time restriction as iCalendar text; NULL without one.",
    "state": "Grant state from Tapkey - Ok, Revoked, ... (revoked grants stay listed).",
    "active": "Active flag of the grant from Tapkey.",
}


def _current(what: str) -> dict[str, str]:
    return {
        "raw": (
            f"The API payload of the {what} exactly as last received (JSON text); a keyed "
            "digest instead where [privacy] keeps identifiers out of the database."
        ),
        "first_seen_at": f"When a run first saw the {what} (UTC).",
        "removed_at": f"When the {what} was removed (UTC); NULL while present.",
        "updated_at": "When a tracked attribute last changed (UTC).",
    }


_ACCESS_VERSION = {
    **_VERSION,
    "removal_reason": (
        "For removed versions - deleted (a contact or grant its owner no longer lists), unbound "
        "(a card its owner no longer lists) or owner_removed (its owner account vanished); else "
        "NULL."
    ),
}

TABLE_COMMENTS: dict[str, str] = {
    "sync_runs": "One row per sync run - when it ran, how it ended and what it counted.",
    "sync_run_owners": "One row per owner account per run - how fetching its locks went.",
    "owner_accounts": "Every owner account (locking system) ever seen, in its current state.",
    "owner_account_versions": (
        "Every version of every owner account; a version is valid from valid_from (inclusive) "
        "to valid_to (exclusive)."
    ),
    "bound_locks": (
        "Every bound lock ever seen, in its current state; removed locks keep their row with "
        "removed_at set."
    ),
    "bound_lock_versions": (
        "Every version of every bound lock; a lock is present at T when its version valid at T "
        "(valid_from <= T < valid_to, or valid_to NULL) is not removed."
    ),
    "calendar_days": (
        "One row per UTC day from 2020-01-01 to 2099-12-31, for charts over time (see the "
        "daily_inventory view)."
    ),
    "lock_health_readings": (
        "Lock health readings (battery, temperature), one row per reading, stored when a reading "
        "with a new timestamp appears. Filled only with [tapkey] expand_health = true."
    ),
    "api_paging": (
        "What the exporter learned about the paging of each Tapkey API server it read, so that "
        "a short page ends a list without a confirming request. Not inventory data."
    ),
    "contacts": (
        "Every contact (a person who can be granted access) ever seen, in its current state. "
        "Filled with contacts in [tapkey] entities."
    ),
    "contact_versions": (
        "Every version of every contact (valid_from inclusive, valid_to exclusive)."
    ),
    "bound_cards": (
        "Every bound card ever seen, in its current state. Filled with cards in [tapkey] entities."
    ),
    "bound_card_versions": "Every version of every bound card.",
    "grants": (
        "Every grant (access of a contact or card to a lock) ever seen, in its current state; "
        "revoked grants keep state Revoked. Filled with grants in [tapkey] entities."
    ),
    "grant_versions": (
        "Every version of every grant; a grant is listed at T when its version valid at T is "
        "not removed, and gives access when its state is Ok and T is within its validity."
    ),
    "log_entries": (
        "Every log entry of every lock (openings and other events), one row per entry as "
        "Tapkey lists it, stored once and never changed. Filled only with [tapkey] entities "
        "including log_entries."
    ),
    "log_entry_watermarks": (
        "Per owner account, how far its log entries were read - the newest entry stored. The "
        "next run asks for what Tapkey received after it, minus [sync] log_overlap."
    ),
    "guard_holds": (
        "Removals the deletion guard holds back until they are confirmed, one row per entity "
        "and owner account: they are judged against the count stored when they were first held "
        "back. Not inventory data."
    ),
}

COLUMN_COMMENTS: dict[str, dict[str, str]] = {
    "api_paging": {
        "api_url": "The API base URL (no user info or query).",
        "honoured_page_size": (
            "A page size ($top) the server returned in full; NULL until one was seen, or after "
            "the server cut a page short below it."
        ),
        "max_top": "The largest $top the server accepted after refusing a larger one (HTTP 400).",
        "updated_at": "When this was last learned (UTC).",
    },
    "sync_runs": {
        "id": "Run number, increasing.",
        "started_at": "When the run started (UTC).",
        "finished_at": (
            "When the run ended (UTC); NULL while it runs, and for a run found abandoned (its "
            "end is unknown)."
        ),
        "status": "running, succeeded, partial (some owner accounts failed) or failed.",
        "trigger": "What started the run - manual, schedule or demo.",
        "owners_seen": "Owner accounts in the owner list.",
        "locks_seen": "Bound locks returned by the complete owner fetches.",
        **_COUNTS,
        "api_requests": "HTTP requests sent to Tapkey.",
        "error": "Why the run failed, or which owner accounts failed; NULL if it succeeded.",
        "client_id": "The OAuth client id the run used.",
    },
    "sync_run_owners": {
        "run_id": "The run (sync_runs.id).",
        "owner_account_id": "The owner account (owner_accounts.id).",
        "status": "complete or failed. An owner account was last seen at its last complete fetch.",
        "locks_seen": "Bound locks its list returned.",
        **_COUNTS,
        "fetched_at": "When its locks were written, or its fetch failed (UTC).",
        "error": (
            "Why its fetch failed; for a complete fetch, a note on what was held back (removals "
            "held by the deletion guard, locks another owner listed too in the run); NULL "
            "otherwise."
        ),
    },
    "owner_accounts": {
        "id": "Tapkey owner account id.",
        "name": "Owner account name.",
        "active": "Active flag from Tapkey.",
        "first_seen_at": "When a run first saw the owner account (UTC).",
        "last_seen_at": "The last complete fetch of its locks (UTC).",
        "removed_at": "When it vanished from the owner list (UTC); NULL while listed.",
        "updated_at": "When name or active last changed (UTC).",
    },
    "owner_account_versions": {
        "version_id": "Row id.",
        "id": "The owner account (owner_accounts.id).",
        "name": "Owner account name in this version.",
        "active": "Active flag in this version.",
        **_VERSION,
    },
    "bound_locks": {
        "id": "Tapkey bound lock id - one binding of a physical lock to one owner account.",
        **_LOCK_ATTRIBUTES,
        "lock_id_hex": "Customer-facing lock id - hex bytes such as 12-34-BF-FB.",
        "rcl_serial_no": "Revocation list serial number (kept current, not versioned).",
        "rcl_date": "Revocation list date (UTC; kept current, not versioned).",
        "raw": "The API payload of the lock exactly as last received (JSON text).",
        "first_seen_at": "When a run first saw the lock (UTC).",
        "removed_at": "When the lock was removed (UTC); NULL while present.",
        "updated_at": "When a tracked attribute last changed (UTC).",
    },
    "bound_lock_versions": {
        "version_id": "Row id.",
        "id": "The bound lock (bound_locks.id).",
        **_LOCK_ATTRIBUTES,
        **_VERSION,
    },
    "calendar_days": {
        "day": "The day (UTC).",
        "day_start": "Midnight at the start of the day (UTC).",
        "day_end": "Midnight at the end of the day (UTC), the next day_start.",
    },
    "lock_health_readings": {
        "reading_id": "Row id.",
        "bound_lock_id": "The bound lock that reported it (bound_locks.id).",
        "physical_lock_id": "TLCP id of the physical lock, from the reading.",
        "type": "BatteryVoltage, Temperature or BatteryWarningLevel.",
        "reading_at": (
            "When the lock measured the value (UTC), the timestamp of the reading itself."
        ),
        "value": "The value as Tapkey sends it (text), e.g. 2.95 or Low.",
        "value_number": "The value as a number when it is one (voltage, degrees), else NULL.",
        "value_status": "Ok, Outdated or Invalid, as Tapkey judged the reading when first seen.",
        "api_reading_id": "The reading id Tapkey gave it.",
        "seen_at": "When a run first stored the reading (UTC).",
        "run_id": "The run that stored it (sync_runs.id).",
    },
    "contacts": {"id": "Tapkey contact id.", **_CONTACT_ATTRIBUTES, **_current("contact")},
    "contact_versions": {
        "version_id": "Row id.",
        "id": "The contact (contacts.id).",
        **_CONTACT_ATTRIBUTES,
        **_ACCESS_VERSION,
    },
    "bound_cards": {"id": "Tapkey bound card id.", **_CARD_ATTRIBUTES, **_current("card")},
    "bound_card_versions": {
        "version_id": "Row id.",
        "id": "The bound card (bound_cards.id).",
        **_CARD_ATTRIBUTES,
        **_ACCESS_VERSION,
    },
    "grants": {"id": "Tapkey grant id.", **_GRANT_ATTRIBUTES, **_current("grant")},
    "grant_versions": {
        "version_id": "Row id.",
        "id": "The grant (grants.id).",
        **_GRANT_ATTRIBUTES,
        **_ACCESS_VERSION,
    },
    "log_entries": {
        "owner_account_id": "The owner account whose log lists the entry (owner_accounts.id).",
        "id": "Tapkey log entry id.",
        "entry_no": "The lock's own running number of the entry (entryNo).",
        "lock_timestamp": "When the lock recorded the event (UTC, the lock clock).",
        "received_at": (
            "When Tapkey received the entry (UTC) - minutes or days after lock_timestamp for "
            "a lock that was offline."
        ),
        "bound_lock_id": "The bound lock that recorded it (bound_locks.id).",
        "bound_card_id": "The bound card used, if any.",
        "contact_id": "The contact (person) who used the lock, if known.",
        "log_type": "Kind of entry, e.g. Command.",
        "command": "For Command entries the command, e.g. TriggerLock (an opening).",
        "raw": "The API payload of the entry exactly as received (JSON text).",
        "run_id": "The run that first stored it (sync_runs.id).",
    },
    "log_entry_watermarks": {
        "owner_account_id": "The owner account (owner_accounts.id).",
        "received_at": "receivedAt of the newest log entry stored for it (UTC); NULL if none.",
        "last_id": "Id of that entry.",
        "list_position": (
            "Where that entry is in the unfiltered list (rows up to and including it), for "
            "servers that refuse the receivedAt filter; NULL if unknown."
        ),
        "filter_refused_at": (
            "When the API last refused the receivedAt filter (HTTP 400) for it; the filter is "
            "tried again a day later. NULL if it was accepted."
        ),
        "updated_at": "When the watermark last moved (UTC).",
        "run_id": "The run that moved it last (sync_runs.id).",
    },
    "guard_holds": {
        "entity": "What is held back: owners (the owner list), locks, contacts, cards or grants.",
        "owner_account_id": "The owner account whose rows are held back; empty for the owner list.",
        "base": (
            "How many the owner (or the owner list) had stored when the removals were first held "
            "back: the count the deletion guard judges them against until they are confirmed."
        ),
        "since_run_id": "The run that first held them back (sync_runs.id).",
        "updated_at": "When a run last held them back (UTC).",
    },
}
