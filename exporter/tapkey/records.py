"""Tapkey payloads -> typed records: owners and bound locks (with their health readings).

A page body must be a JSON array (split by exporter.tapkey.page_text; fields are read by
exporter.tapkey.fields). Each element keeps its exact text (`raw`) and is parsed into a record; an
element that cannot be read is reported, not guessed at, so the sync engine can leave the stored
lock untouched and, if its id is unknown, make no removals for that owner.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from exporter.errors import PayloadError
from exporter.tapkey.fields import (
    MAX_ID_LENGTH,
    SURELY_SHORT,
    BadValue,
    bool_field,
    date_field,
    date_value,
    element_too_long,
    int32,
    int_field,
    padded_id,
    str_field,
    too_long,
    unstorable_text,
)

__all__ = [
    "HealthReading",
    "LockRecord",
    "OwnerLocks",
    "OwnerRecord",
    "lock_id_hex",
]

#: Lock fields stored in VARCHAR columns, and their length (schema.py; a test keeps them equal).
#: A longer value makes the lock skipped, left as stored: a value is never cut.
MAX_FIELD_LENGTHS: Final = {
    "physicalLockId": 255,
    "lockTypeId": 255,
    "lockType.modelName": 255,
    "targetType": 64,
    "lock_id_hex": 255,  # derived from physicalLockId
}


@dataclass(frozen=True, slots=True)
class HealthReading:
    """One `healthStatuses` entry (a hint: locks are offline-first)."""

    id: str | None
    physical_lock_id: str | None
    timestamp: datetime | None
    type: str | None
    value: str | float | None
    value_status: str | None


@dataclass(frozen=True, slots=True)
class OwnerRecord:
    """An owner account from /Owners; `problem` says why the database cannot hold it (if so)."""

    id: str
    name: str | None
    active: bool | None
    raw: str
    problem: str | None = None


# Not frozen, but treat it as read-only: a frozen dataclass's __init__ sets each field through
# object.__setattr__, which made building a record ~8x slower (0.3 s per 100,000 locks).
@dataclass(slots=True)
class LockRecord:
    """A bound lock from /Owners/{id}/BoundLocks; `raw` is its JSON text exactly as received."""

    id: str
    owner_account_id: str
    title: str | None
    description: str | None
    physical_lock_id: str | None
    lock_id_hex: str | None
    lock_type_id: str | None
    lock_model_name: str | None
    manufacturer_id: int | None
    active: bool | None
    bind_date: datetime | None
    unbind_date: datetime | None
    rcl_serial_no: int | None
    rcl_date: datetime | None
    target_type: str | None
    raw: str
    health: tuple[HealthReading, ...] | None = None


@dataclass(frozen=True, slots=True)
class OwnerLocks:
    """One owner's complete lock list, and what could not be read from it.

    `records`, `unchanged_ids` and `skipped_ids` share no id: an id listed twice with different
    contents, or once unreadable, is skipped entirely (the engine leaves that lock as stored). An
    identical copy is kept once and the extra copies are only counted in `skipped`.
    `unidentified_skips` means an element had no readable id, so the engine cannot tell which
    stored lock it was.
    """

    owner_id: str
    records: list[LockRecord]
    skipped: int
    skipped_ids: frozenset[str]
    unidentified_skips: bool
    requests: int
    # Locks whose text equals the stored text (see TapkeyClient.list_bound_locks): no record.
    unchanged_ids: list[str] = field(default_factory=list)


def lock_id_hex(physical_lock_id: str) -> str | None:
    """The customer-facing TLCP lock id: `BAASNL/7` -> `12-34-BF-FB`; None if undecodable.

    The API's `physicalLockId` is Base64 of a 2-byte little-endian length followed by the id bytes;
    URL-safe and unpadded Base64 are accepted too.
    """
    text = physical_lock_id.strip()
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    try:
        # What base64.b64decode(validate=True) does, minus its wrapper (hot path: every lock).
        data = binascii.a2b_base64(text + "=" * (-len(text) % 4), strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    if len(data) < 3 or data[0] | data[1] << 8 != len(data) - 2:
        return None
    return data[2:].hex("-").upper()


# -- parsing -------------------------------------------------------------------------------------


_VARCHAR: Final = 255
_TARGET_TYPE: Final = MAX_FIELD_LENGTHS["targetType"]
assert all(MAX_FIELD_LENGTHS[k] == _VARCHAR for k in MAX_FIELD_LENGTHS if k != "targetType")


def _check_lengths(raw: str, fields: tuple[tuple[str, str | None], ...]) -> None:
    """BadValue if the element or one of `fields` (name, value) is longer than it may be."""
    problem = element_too_long("the element", raw)
    if problem is not None:
        raise BadValue(problem)
    for name, value in fields:
        if value is not None and len(value) > MAX_FIELD_LENGTHS[name]:
            raise BadValue(too_long(name, len(value), MAX_FIELD_LENGTHS[name]))


def _health(value: Any) -> tuple[HealthReading, ...] | None:
    """Health readings are hints: a malformed reading loses only its bad fields, never the lock."""
    if not isinstance(value, list):
        return None
    readings = []
    for item in value:
        if not isinstance(item, dict):
            continue
        fields: list[Any] = []
        for key, reader in (
            ("id", str_field),
            ("physicalLockId", str_field),
            ("timestamp", date_field),
            ("type", str_field),
        ):
            try:
                fields.append(reader(item, key))
            except BadValue:
                fields.append(None)
        reading = item.get("value")
        if isinstance(reading, bool) or not isinstance(reading, str | int | float):
            reading = None
        status = item.get("valueStatus")
        readings.append(
            HealthReading(
                id=fields[0],
                physical_lock_id=fields[1],
                timestamp=fields[2],
                type=fields[3],
                value=reading,
                value_status=status if isinstance(status, str) else None,
            )
        )
    return tuple(readings)


_STRING_FIELDS: Final = (
    "title",
    "description",
    "physicalLockId",
    "lockTypeId",
    "targetType",
    "ownerAccountId",
)


def _not_a_string(obj: dict[str, Any]) -> BadValue:
    key = next(k for k in _STRING_FIELDS if not isinstance(obj.get(k), str | None))
    return BadValue(f"{key} is not a string")


# parse_lock builds records positionally.
assert LockRecord.__match_args__[:3] == ("id", "owner_account_id", "title")
assert LockRecord.__match_args__[-3:] == ("target_type", "raw", "health")


def parse_lock(obj: dict[str, Any], lock_id: str, owner_id: str, raw: str) -> LockRecord:
    """A LockRecord from one element (a hot path: 100,000 per crawl); BadValue on a wrong type.

    Every field is read and checked once, inline where the value has the expected JSON type; the
    shared readers (exporter.tapkey.fields) only run for what is not, and name the problem.
    """
    # One character compared per lock; the message only for a lock that has the space.
    if lock_id[-1] == " " and (padded := padded_id(lock_id)) is not None:
        raise BadValue(padded)
    get = obj.get
    title = get("title")
    description = get("description")
    physical = get("physicalLockId")
    type_id = get("lockTypeId")
    target_type = get("targetType")
    listed_owner = get("ownerAccountId")  # type-checked only: the URL's owner is used (below)
    for value in (title, description, physical, type_id, target_type, listed_owner):
        if value is not None and type(value) is not str:
            raise _not_a_string(obj)
    lock_type = get("lockType")
    if lock_type is None:
        model, manufacturer = None, None
    elif type(lock_type) is dict:
        model = lock_type.get("modelName")
        if model is not None and type(model) is not str:
            model = str_field(lock_type, "modelName")
        manufacturer = lock_type.get("manufacturerId")
        if manufacturer is not None and type(manufacturer) is not int:
            manufacturer = int_field(lock_type, "manufacturerId")
        manufacturer = int32(manufacturer, "lockType.manufacturerId")
    else:
        raise BadValue("lockType is not an object")
    active = get("active")
    if active is not None and type(active) is not bool:
        raise BadValue("active is not true/false")
    hex_id = lock_id_hex(physical) if physical else None
    # One comparison per field on the hot path; the precise check only when one may be too long.
    if (
        len(raw) > SURELY_SHORT
        or (physical is not None and len(physical) > _VARCHAR)
        or (type_id is not None and len(type_id) > _VARCHAR)
        or (model is not None and len(model) > _VARCHAR)
        or (target_type is not None and len(target_type) > _TARGET_TYPE)
        or (hex_id is not None and len(hex_id) > _VARCHAR)
    ):
        _check_lengths(
            raw,
            (
                ("physicalLockId", physical),
                ("lockTypeId", type_id),
                ("lockType.modelName", model),
                ("targetType", target_type),
                ("lock_id_hex", hex_id),
            ),
        )
    if "\\" in raw and (unstorable := unstorable_text(obj, raw)) is not None:
        raise BadValue(unstorable)
    # In the order the fields were always checked, so an element's first problem stays the same.
    bind_date = get("bindDate")
    if bind_date is not None:
        bind_date = date_value(bind_date, "bindDate")
    unbind_date = get("unbindDate")
    if unbind_date is not None:
        unbind_date = date_value(unbind_date, "unbindDate")
    serial = get("rclSerialNo")
    if serial is not None and type(serial) is not int:
        serial = int_field(obj, "rclSerialNo")
    serial = int32(serial, "rclSerialNo")
    rcl_date = get("rclDate")
    if rcl_date is not None:
        rcl_date = date_value(rcl_date, "rclDate")
    health = get("healthStatuses")
    # Positional, in field order (keywords cost a tenth of the record's time). A lock listed
    # under /Owners/X/BoundLocks belongs to X for this fetch even if its ownerAccountId says
    # otherwise (a move caught half-way): the URL's owner is its owner_account_id.
    return LockRecord(
        lock_id,
        owner_id,
        title,
        description,
        physical,
        hex_id,
        type_id,
        model,
        manufacturer,
        active,
        bind_date,
        unbind_date,
        serial,
        rcl_date,
        target_type,
        raw,
        None if health is None else _health(health),
    )


def parse_owner(value: Any, owner_id: str | None, raw: str) -> OwnerRecord:
    """An owner element; any unreadable owner fails the list (removals depend on it).

    An owner the database cannot hold (an id or element longer than it stores, an id ending with
    a space: `padded_id`) is not unreadable: it comes back with a `problem`, and the run fails
    that owner alone.
    """
    if owner_id is None:
        ident = value.get("id") if isinstance(value, dict) else None
        if isinstance(ident, str) and len(ident) > MAX_ID_LENGTH:
            problem = too_long("its id", len(ident), MAX_ID_LENGTH)
            return OwnerRecord(ident, None, None, raw, problem)
        raise PayloadError(
            "GET /api/v1/Owners returned an owner without a readable id; the owner list cannot be "
            "trusted, so nothing is synced"
        )
    unstorable = (
        padded_id(owner_id) or element_too_long("its element", raw) or unstorable_text(value, raw)
    )
    if unstorable is not None:
        return OwnerRecord(owner_id, None, None, raw, unstorable)
    try:
        return OwnerRecord(owner_id, str_field(value, "name"), bool_field(value, "active"), raw)
    except BadValue as exc:
        raise PayloadError(f"GET /api/v1/Owners: owner {owner_id}: {exc}") from None
