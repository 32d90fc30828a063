"""The BI views: their SQL (plain SQL every database accepts) and what they and their columns mean.

The migrations create the views from frozen copies of `VIEWS` (a view changes only with a new
migration); PostgreSQL stores `VIEW_COMMENTS` as view and column comments, docs/schema.md has them
for the others.
"""

from __future__ import annotations

from exporter.db.descriptions import COLUMN_COMMENTS, CURRENT_LOCK_COLUMNS
from exporter.db.schema import LOCK_TRACKED
from exporter.kinds import BindingEnd, ChangeType

_LOCK_VIEW_COLUMNS = ", ".join(f"l.{c}" for c in CURRENT_LOCK_COLUMNS)

# Plain SQL that PostgreSQL, MariaDB/MySQL and SQLite all accept unchanged.
VIEWS: dict[str, str] = {
    "current_bound_locks": (
        f"SELECT {_LOCK_VIEW_COLUMNS}, o.name AS owner_name "
        "FROM bound_locks l LEFT JOIN owner_accounts o ON o.id = l.owner_account_id "
        "WHERE l.removed_at IS NULL"
    ),
    "bound_lock_changes": (
        "SELECT v.version_id, v.id AS bound_lock_id, v.change_type, v.changed_fields, "
        "v.removal_reason, v.valid_from AS changed_at, v.valid_to, v.run_id, "
        "r.trigger AS run_trigger, r.status AS run_status, "
        "v.owner_account_id, o.name AS owner_name, v.title, v.description, "
        "v.physical_lock_id, v.lock_type_id, v.lock_model_name, v.manufacturer_id, v.active, "
        "v.bind_date, v.unbind_date, v.target_type "
        "FROM bound_lock_versions v JOIN sync_runs r ON r.id = v.run_id "
        "LEFT JOIN owner_accounts o ON o.id = v.owner_account_id"
    ),
}

# The previous version of a lock version is the one of the same lock that ended when it began
# (versions are contiguous). A self-join says that in plain SQL, and unlike LAG() it lets a filter
# on changed_at reach the index instead of numbering every version first.
_PREVIOUS = "p.id = v.id AND p.valid_to = v.valid_from"
# The customer-facing hex id is kept on bound_locks for the lock's current physical id only.
_HEX = "CASE WHEN l.physical_lock_id = {0}.physical_lock_id THEN l.lock_id_hex END"
_REMOVED = ChangeType.REMOVED
_SAME_HOLDING = (
    "{0}.owner_account_id = s.owner_account_id "
    "AND COALESCE({0}.physical_lock_id, '') = COALESCE(s.physical_lock_id, '')"
)

VIEWS.update(
    {
        "bound_lock_change_feed": (
            "SELECT v.version_id, p.version_id AS previous_version_id, v.id AS bound_lock_id, "
            f"{_HEX.format('v')} AS lock_id_hex, v.valid_from AS changed_at, v.run_id, "
            "v.change_type, v.changed_fields, v.removal_reason, "
            "po.name AS old_owner_name, o.name AS new_owner_name, "
            + ", ".join(f"p.{f} AS old_{f}, v.{f} AS new_{f}" for f in LOCK_TRACKED)
            + " FROM bound_lock_versions v "
            f"LEFT JOIN bound_lock_versions p ON {_PREVIOUS} "
            "LEFT JOIN bound_locks l ON l.id = v.id "
            "LEFT JOIN owner_accounts o ON o.id = v.owner_account_id "
            "LEFT JOIN owner_accounts po ON po.id = p.owner_account_id"
        ),
        "lock_binding_history": (
            "SELECT h.physical_lock_id, h.lock_id_hex, h.bound_lock_id, h.owner_account_id, "
            "o.name AS owner_name, h.held_from, h.held_to, "
            f"CASE WHEN e.change_type = '{_REMOVED}' THEN e.removal_reason "
            f"WHEN e.owner_account_id <> h.owner_account_id THEN '{BindingEnd.MOVED}' "
            f"WHEN e.version_id IS NOT NULL THEN '{BindingEnd.PHYSICAL_LOCK_CHANGED}' "
            "END AS end_reason, "
            "h.bind_date, h.title "
            "FROM (SELECT s.physical_lock_id, "
            f"{_HEX.format('s')} AS lock_id_hex, "
            "s.id AS bound_lock_id, s.owner_account_id, s.valid_from AS held_from, s.bind_date, "
            "s.title, (SELECT MIN(n.valid_from) FROM bound_lock_versions n "
            "WHERE n.id = s.id AND n.valid_from > s.valid_from "
            f"AND (n.change_type = '{_REMOVED}' OR NOT ({_SAME_HOLDING.format('n')}))) AS held_to "
            "FROM bound_lock_versions s "
            "LEFT JOIN bound_lock_versions p ON p.id = s.id AND p.valid_to = s.valid_from "
            "LEFT JOIN bound_locks l ON l.id = s.id "
            f"WHERE s.change_type <> '{_REMOVED}' AND (p.version_id IS NULL "
            f"OR p.change_type = '{_REMOVED}' OR NOT ({_SAME_HOLDING.format('p')}))) h "
            "LEFT JOIN bound_lock_versions e "
            "ON e.id = h.bound_lock_id AND e.valid_from = h.held_to "
            "LEFT JOIN owner_accounts o ON o.id = h.owner_account_id"
        ),
        # Present at the day's last instant T = day_end - 1us: valid_from <= T < valid_to.
        "daily_inventory": (
            "SELECT c.day, v.owner_account_id, o.name AS owner_name, v.lock_model_name, "
            "COUNT(*) AS locks "
            "FROM calendar_days c JOIN bound_lock_versions v ON v.valid_from < c.day_end "
            "AND (v.valid_to IS NULL OR v.valid_to >= c.day_end) "
            "LEFT JOIN owner_accounts o ON o.id = v.owner_account_id "
            f"WHERE v.change_type <> '{_REMOVED}' "
            "AND c.day_end > (SELECT MIN(r.started_at) FROM sync_runs r) "
            "AND c.day_start <= (SELECT MAX(r.started_at) FROM sync_runs r) "
            "GROUP BY c.day, v.owner_account_id, o.name, v.lock_model_name"
        ),
        # An opening is a TriggerLock command (Tapkey's own filter for openings), counted on the
        # UTC day the lock recorded it (lockTimestamp), not the day Tapkey received it.
        "lock_openings_daily": (
            "SELECT c.day, e.owner_account_id, o.name AS owner_name, e.bound_lock_id, "
            "l.lock_id_hex, l.title, COUNT(*) AS openings, "
            "MIN(e.lock_timestamp) AS first_opening_at, MAX(e.lock_timestamp) AS last_opening_at "
            "FROM log_entries e JOIN calendar_days c ON c.day_start <= e.lock_timestamp "
            "AND e.lock_timestamp < c.day_end "
            "LEFT JOIN bound_locks l ON l.id = e.bound_lock_id "
            "LEFT JOIN owner_accounts o ON o.id = e.owner_account_id "
            "WHERE e.log_type = 'Command' AND e.command = 'TriggerLock' "
            "GROUP BY c.day, e.owner_account_id, o.name, e.bound_lock_id, l.lock_id_hex, l.title"
        ),
        "current_lock_health": (
            "SELECT h.bound_lock_id, l.lock_id_hex, l.title, l.owner_account_id, "
            "o.name AS owner_name, h.type, h.value, h.value_number, h.value_status, "
            "h.reading_at, h.seen_at "
            "FROM lock_health_readings h JOIN bound_locks l ON l.id = h.bound_lock_id "
            "LEFT JOIN owner_accounts o ON o.id = l.owner_account_id "
            "WHERE l.removed_at IS NULL AND h.reading_at = (SELECT MAX(x.reading_at) "
            "FROM lock_health_readings x WHERE x.bound_lock_id = h.bound_lock_id "
            "AND x.type = h.type)"
        ),
    }
)

# Access data (issue 15). A grant goes to a contact or to a card: both are joined, one is NULL.
_GRANT_HOLDER_JOINS = (
    "LEFT JOIN owner_accounts o ON o.id = g.owner_account_id "
    "LEFT JOIN bound_locks l ON l.id = g.bound_lock_id "
    "LEFT JOIN contacts c ON c.id = g.contact_id "
    "LEFT JOIN bound_cards k ON k.id = g.bound_card_id"
)
VIEWS.update(
    {
        "current_grants": (
            "SELECT g.id AS grant_id, g.owner_account_id, o.name AS owner_name, "
            "g.bound_lock_id, l.title AS lock_title, l.lock_id_hex, "
            "g.contact_id, c.title AS contact_title, c.identifier AS contact_identifier, "
            "g.bound_card_id, k.title AS card_title, k.label AS card_label, "
            "g.validity_from, g.validity_before, g.time_restriction_ical, g.state, g.active, "
            "g.first_seen_at, g.updated_at "
            f"FROM grants g {_GRANT_HOLDER_JOINS} WHERE g.removed_at IS NULL"
        ),
        "grant_changes": (
            "SELECT g.version_id, g.id AS grant_id, g.change_type, g.changed_fields, "
            "g.removal_reason, g.valid_from AS changed_at, g.valid_to, g.run_id, "
            "g.owner_account_id, o.name AS owner_name, g.bound_lock_id, l.title AS lock_title, "
            "g.contact_id, c.title AS contact_title, g.bound_card_id, k.title AS card_title, "
            "g.validity_from, g.validity_before, g.time_restriction_ical, g.state, g.active "
            f"FROM grant_versions g {_GRANT_HOLDER_JOINS}"
        ),
        # Which physical lock a grant's bound lock id stood for, and when (lock_binding_history).
        "grant_lock_bindings": (
            "SELECT g.id AS grant_id, g.state, g.removed_at AS grant_removed_at, g.contact_id, "
            "g.bound_card_id, h.bound_lock_id, h.physical_lock_id, h.lock_id_hex, "
            "h.owner_account_id, h.owner_name, h.held_from, h.held_to, h.end_reason, "
            "h.title AS lock_title "
            "FROM grants g JOIN lock_binding_history h ON h.bound_lock_id = g.bound_lock_id"
        ),
    }
)


# -- descriptions ----------------------------------------------------------------------------------

# Column descriptions the views repeat: a view column means what its source column means.
_LOCK_VERSIONS = COLUMN_COMMENTS["bound_lock_versions"]
_GRANT_VERSIONS = COLUMN_COMMENTS["grant_versions"]

_FEED_FIELDS = {
    "owner_account_id": "owner account id",
    "title": "title",
    "description": "description",
    "physical_lock_id": "physical lock id",
    "lock_type_id": "lock type id",
    "lock_model_name": "lock model name",
    "manufacturer_id": "manufacturer id",
    "active": "active flag",
    "bind_date": "bind date",
    "unbind_date": "unbind date",
    "target_type": "target type",
}

# View name -> (comment, {column: comment}). PostgreSQL stores them; docs/schema.md has the rest.
VIEW_COMMENTS: dict[str, tuple[str, dict[str, str]]] = {
    "current_bound_locks": (
        "The locks present now, with their owner account name.",
        {
            **{name: COLUMN_COMMENTS["bound_locks"][name] for name in CURRENT_LOCK_COLUMNS},
            "owner_name": "Current name of the owner account.",
        },
    ),
    "bound_lock_changes": (
        "Every lock version with its run and the current name of its owner account.",
        {
            "version_id": "bound_lock_versions.version_id",
            "bound_lock_id": "The bound lock (bound_locks.id).",
            "change_type": _LOCK_VERSIONS["change_type"],
            "changed_fields": _LOCK_VERSIONS["changed_fields"],
            "removal_reason": _LOCK_VERSIONS["removal_reason"],
            "changed_at": "When the change was observed (UTC) - the version valid_from.",
            "valid_to": _LOCK_VERSIONS["valid_to"],
            "run_id": _LOCK_VERSIONS["run_id"],
            "run_trigger": "What started the run.",
            "run_status": "How the run ended.",
            "owner_account_id": _LOCK_VERSIONS["owner_account_id"],
            "owner_name": "Current name of the owner account.",
            **{k: _LOCK_VERSIONS[k] for k in LOCK_TRACKED if k != "owner_account_id"},
        },
    ),
    "bound_lock_change_feed": (
        "One row per lock change with the previous and the new value of every tracked attribute. "
        "The previous version is the version of the same lock that ended when this one began.",
        {
            "version_id": "bound_lock_versions.version_id of the new version.",
            "previous_version_id": "version_id of the previous version; NULL for created.",
            "bound_lock_id": "The bound lock (bound_locks.id).",
            "lock_id_hex": (
                "Customer-facing lock id (12-34-BF-FB); NULL if the version has an older "
                "physical lock id."
            ),
            "changed_at": "When the change was observed (UTC).",
            "run_id": _LOCK_VERSIONS["run_id"],
            "change_type": _LOCK_VERSIONS["change_type"],
            "changed_fields": _LOCK_VERSIONS["changed_fields"],
            "removal_reason": _LOCK_VERSIONS["removal_reason"],
            "old_owner_name": "Current name of the previous owner account.",
            "new_owner_name": "Current name of the owner account in this version.",
            **{
                f"{side}_{field}": f"{label.capitalize()} {when}."
                for field, label in _FEED_FIELDS.items()
                for side, when in (
                    ("old", "before the change (NULL for created)"),
                    ("new", "after the change"),
                )
            },
        },
    ),
    "lock_binding_history": (
        "Which owner account held each physical lock, under which bound lock id, from when to "
        "when. A period ends when the lock is removed, moves to another owner account or its "
        "physical lock id changes.",
        {
            "physical_lock_id": "TLCP id of the physical lock (Base64, as the API gives it).",
            "lock_id_hex": (
                "Customer-facing lock id such as 12-34-BF-FB; NULL for an older physical lock "
                "id of the lock."
            ),
            "bound_lock_id": "The bound lock id of this binding (bound_locks.id).",
            "owner_account_id": "The owner account that held the lock.",
            "owner_name": "Current name of that owner account.",
            "held_from": "Start of the period, inclusive (UTC), as observed by a run.",
            "held_to": "End of the period, exclusive (UTC); NULL while it lasts.",
            "end_reason": (
                "Why the period ended - unbound, owner_removed, moved (another owner account "
                "lists the same bound lock id) or physical_lock_changed; NULL while it lasts."
            ),
            "bind_date": "Bind date reported by Tapkey at the start of the period (UTC).",
            "title": "Lock title at the start of the period.",
        },
    ),
    "daily_inventory": (
        "Locks present at the end of each UTC day, per owner account and lock model, from the "
        "day of the first run to the day of the latest run. Filter on day for speed.",
        {
            "day": "The day (UTC); counts are as of its last instant.",
            "owner_account_id": "The owner account.",
            "owner_name": "Current name of the owner account.",
            "lock_model_name": "Lock model name.",
            "locks": "Locks present at the end of the day.",
        },
    ),
    "lock_openings_daily": (
        "Openings per lock per UTC day - log entries with log_type Command and command "
        "TriggerLock, counted on the day the lock recorded them (lock_timestamp).",
        {
            "day": "The day (UTC) the lock recorded the openings.",
            "owner_account_id": "The owner account whose log lists them.",
            "owner_name": "Current name of the owner account.",
            "bound_lock_id": "The bound lock (bound_locks.id).",
            "lock_id_hex": "Customer-facing lock id such as 12-34-BF-FB (current).",
            "title": "Current lock title.",
            "openings": "Openings recorded that day.",
            "first_opening_at": "The first opening of the day (UTC).",
            "last_opening_at": "The last opening of the day (UTC).",
        },
    ),
    "current_lock_health": (
        "The latest health reading of each type for every present lock (highest reading_at).",
        {
            "bound_lock_id": "The bound lock (bound_locks.id).",
            "lock_id_hex": "Customer-facing lock id such as 12-34-BF-FB.",
            "title": "Lock title.",
            "owner_account_id": "The owner account the lock is bound to.",
            "owner_name": "Current name of the owner account.",
            "type": COLUMN_COMMENTS["lock_health_readings"]["type"],
            "value": COLUMN_COMMENTS["lock_health_readings"]["value"],
            "value_number": COLUMN_COMMENTS["lock_health_readings"]["value_number"],
            "value_status": COLUMN_COMMENTS["lock_health_readings"]["value_status"],
            "reading_at": COLUMN_COMMENTS["lock_health_readings"]["reading_at"],
            "seen_at": COLUMN_COMMENTS["lock_health_readings"]["seen_at"],
        },
    ),
    "current_grants": (
        "The grants listed now, with lock title, owner account name and the contact or card "
        "they go to. A grant gives access when state is Ok and now is within its validity.",
        {
            "grant_id": "The grant (grants.id).",
            "owner_account_id": _GRANT_VERSIONS["owner_account_id"],
            "owner_name": "Current name of the owner account.",
            "bound_lock_id": _GRANT_VERSIONS["bound_lock_id"],
            "lock_title": "Current title of the lock.",
            "lock_id_hex": "Customer-facing lock id such as 12-34-BF-FB.",
            "contact_id": _GRANT_VERSIONS["contact_id"],
            "contact_title": "Current name of the contact.",
            "contact_identifier": "Current identifier of the contact, as [privacy] stores it.",
            "bound_card_id": _GRANT_VERSIONS["bound_card_id"],
            "card_title": "Current title of the card.",
            "card_label": "Current label of the card.",
            "validity_from": _GRANT_VERSIONS["validity_from"],
            "validity_before": _GRANT_VERSIONS["validity_before"],
            "time_restriction_ical": _GRANT_VERSIONS["time_restriction_ical"],
            "state": _GRANT_VERSIONS["state"],
            "active": _GRANT_VERSIONS["active"],
            "first_seen_at": "When a run first saw the grant (UTC).",
            "updated_at": "When a tracked attribute last changed (UTC).",
        },
    ),
    "grant_changes": (
        "Every grant version with the current names of its owner account, lock, contact and "
        "card. A revocation is an updated version whose changed_fields holds state.",
        {
            "version_id": "grant_versions.version_id",
            "grant_id": "The grant (grants.id).",
            "change_type": _LOCK_VERSIONS["change_type"],
            "changed_fields": _LOCK_VERSIONS["changed_fields"],
            "removal_reason": _GRANT_VERSIONS["removal_reason"],
            "changed_at": "When the change was observed (UTC) - the version valid_from.",
            "valid_to": _LOCK_VERSIONS["valid_to"],
            "run_id": _LOCK_VERSIONS["run_id"],
            "owner_account_id": _GRANT_VERSIONS["owner_account_id"],
            "owner_name": "Current name of the owner account.",
            "bound_lock_id": _GRANT_VERSIONS["bound_lock_id"],
            "lock_title": "Current title of the lock.",
            "contact_id": _GRANT_VERSIONS["contact_id"],
            "contact_title": "Current name of the contact.",
            "bound_card_id": _GRANT_VERSIONS["bound_card_id"],
            "card_title": "Current title of the card.",
            **{
                name: _GRANT_VERSIONS[name]
                for name in (
                    "validity_from",
                    "validity_before",
                    "time_restriction_ical",
                    "state",
                    "active",
                )
            },
        },
    ),
    "grant_lock_bindings": (
        "Each grant with the binding periods of its bound lock (lock_binding_history) - which "
        "physical lock the grant stood for, under which owner account, from when to when.",
        {
            "grant_id": "The grant (grants.id).",
            "state": "Current state of the grant.",
            "grant_removed_at": "When the grant was removed (UTC); NULL while listed.",
            "contact_id": _GRANT_VERSIONS["contact_id"],
            "bound_card_id": _GRANT_VERSIONS["bound_card_id"],
            "bound_lock_id": "The bound lock of the grant and of this binding period.",
            "physical_lock_id": "TLCP id of the physical lock (Base64, as the API gives it).",
            "lock_id_hex": "Customer-facing lock id such as 12-34-BF-FB.",
            "owner_account_id": "The owner account that held the lock.",
            "owner_name": "Current name of that owner account.",
            "held_from": "Start of the binding period, inclusive (UTC).",
            "held_to": "End of the binding period, exclusive (UTC); NULL while it lasts.",
            "end_reason": "Why the binding period ended (see lock_binding_history).",
            "lock_title": "Lock title at the start of the period.",
        },
    ),
}
