"""Tapkey payloads -> typed records: the element splitter and the per-record validation.

A page body must be a JSON array. Each element keeps its exact text (`raw`) and is parsed into a
record; an element that cannot be read is reported, not guessed at, so the sync engine can leave
the stored lock untouched and, if its id is unknown, make no removals for that owner.
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from exporter.errors import PayloadError

__all__ = [
    "HealthReading",
    "LockRecord",
    "OwnerLocks",
    "OwnerRecord",
    "lock_id_hex",
]

#: Ids longer than this cannot be stored (VARCHAR(64)); such an element counts as unidentified.
MAX_ID_LENGTH: Final = 64
#: The longest element (its JSON text, in UTF-8 bytes) the exporter stores: a longer lock is
#: skipped, a longer owner fails. The text holds every free text of the element (title,
#: description, owner name) at least once, so this bounds them too: a row stays well within what
#: MariaDB takes in one statement (max_allowed_packet, 16 MiB by default) and every value within
#: its MEDIUMTEXT columns (16 MiB), the same on every database.
MAX_ELEMENT_BYTES: Final = 4 * 1024 * 1024
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


class BadValue(ValueError):
    """A field of an element has the wrong type; the message names the field."""


# For parse_lock's quick test: no UTF-8 character takes more than 4 bytes.
_SURELY_SHORT: Final = MAX_ELEMENT_BYTES // 4
_VARCHAR: Final = 255
_TARGET_TYPE: Final = MAX_FIELD_LENGTHS["targetType"]
assert all(MAX_FIELD_LENGTHS[k] == _VARCHAR for k in MAX_FIELD_LENGTHS if k != "targetType")


def _too_long(what: str, length: int, limit: int, unit: str = "characters") -> str:
    return f"{what} is {length:,} {unit} long, more than the {limit:,} the exporter stores"


def _element_too_long(what: str, raw: str) -> str | None:
    """Why the element text `raw` is too long to store, or None."""
    if len(raw) <= _SURELY_SHORT:
        return None
    size = len(raw.encode())
    return _too_long(what, size, MAX_ELEMENT_BYTES, "bytes") if size > MAX_ELEMENT_BYTES else None


def _check_lengths(raw: str, fields: tuple[tuple[str, str | None], ...]) -> None:
    """BadValue if the element or one of `fields` (name, value) is longer than it may be."""
    too_long = _element_too_long("the element", raw)
    if too_long is not None:
        raise BadValue(too_long)
    for name, value in fields:
        if value is not None and len(value) > MAX_FIELD_LENGTHS[name]:
            raise BadValue(_too_long(name, len(value), MAX_FIELD_LENGTHS[name]))


def element_id(value: Any) -> str | None:
    if isinstance(value, dict):
        ident = value.get("id")
        if isinstance(ident, str) and 0 < len(ident) <= MAX_ID_LENGTH:
            return ident
    return None


def _str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise BadValue(f"{key} is not a string")


def _int(obj: dict[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise BadValue(f"{key} is not an integer")


def _bool(obj: dict[str, Any], key: str) -> bool | None:
    value = obj.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise BadValue(f"{key} is not true/false")


def _date(obj: dict[str, Any], key: str) -> datetime | None:
    """ISO-8601 with `Z` or an offset -> aware UTC (a value without an offset is taken as UTC)."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadValue(f"{key} is not a date string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadValue(f"{key} is not an ISO-8601 date") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


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
            ("id", _str),
            ("physicalLockId", _str),
            ("timestamp", _date),
            ("type", _str),
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


def parse_lock(obj: dict[str, Any], lock_id: str, owner_id: str, raw: str) -> LockRecord:
    """A LockRecord from one element (a hot path: 100,000 per crawl); BadValue on a wrong type."""
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
        model = _str(lock_type, "modelName")
        manufacturer = _int(lock_type, "manufacturerId")
    else:
        raise BadValue("lockType is not an object")
    active = get("active")
    if active is not None and type(active) is not bool:
        raise BadValue("active is not true/false")
    hex_id = lock_id_hex(physical) if physical else None
    # One comparison per field on the hot path; the precise check only when one may be too long.
    if (
        len(raw) > _SURELY_SHORT
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
    health = get("healthStatuses")
    return LockRecord(
        id=lock_id,
        # A lock listed under /Owners/X/BoundLocks belongs to X for this fetch even if its
        # ownerAccountId says otherwise (a move caught half-way): trust the URL's owner.
        owner_account_id=owner_id,
        title=title,
        description=description,
        physical_lock_id=physical,
        lock_id_hex=hex_id,
        lock_type_id=type_id,
        lock_model_name=model,
        manufacturer_id=manufacturer,
        active=active,
        bind_date=_date(obj, "bindDate"),
        unbind_date=_date(obj, "unbindDate"),
        rcl_serial_no=_int(obj, "rclSerialNo"),
        rcl_date=_date(obj, "rclDate"),
        target_type=target_type,
        raw=raw,
        health=None if health is None else _health(health),
    )


_DECODER = json.JSONDecoder()
# The C scanner behind JSONDecoder.raw_decode, called without raw_decode's Python wrapper.
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
_WHITESPACE = frozenset(" \t\n\r")
# What may follow an element: optional whitespace, then "," (and whitespace) or the closing "]".
_SEPARATOR = re.compile(r"[ \t\n\r]*([,\]])[ \t\n\r]*").match


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\n\r":
        pos += 1
    return pos


def split_array(text: str, where: str) -> list[tuple[Any, str]]:
    """The elements of a JSON array with each element's exact source text (never re-serialized)."""
    pos = _skip_ws(text, 1 if text.startswith("\ufeff") else 0)
    if not text.startswith("[", pos):
        try:
            value = json.loads(text)
        except ValueError:
            raise PayloadError(f"{where} returned a body that is not JSON") from None
        kind = "a JSON object" if isinstance(value, dict) else f"JSON {type(value).__name__}"
        raise PayloadError(f"{where} returned {kind} where a JSON list was expected")
    elements: list[tuple[Any, str]] = []
    pos = _skip_ws(text, pos + 1)
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            try:
                value, end = _SCAN(text, pos)
            except (StopIteration, ValueError):  # StopIteration: no value at `pos`
                raise PayloadError(
                    f"{where} returned invalid or truncated JSON (element {len(elements) + 1})"
                ) from None
            elements.append((value, text[pos:end]))
            # Fast path for compact JSON: a "," right before the next element.
            if text.startswith(",", end) and text[end + 1 : end + 2] not in _WHITESPACE:
                pos = end + 1
                continue
            separator = _SEPARATOR(text, end)
            if separator is None:
                raise PayloadError(f"{where} returned invalid or truncated JSON (unclosed list)")
            pos = separator.end()
            if separator[1] == "]":
                break
    if _skip_ws(text, pos) != len(text):
        raise PayloadError(f"{where} returned invalid JSON (data after the list)")
    return elements


class KnownTexts:
    """An owner's stored payload texts by lock id, and the pages made only of them.

    Most pages of most runs are stored texts joined by commas, and are recognised without JSON
    parsing: first as the stored texts from `$skip` on in the order the database returned them
    (usually the order they were stored in, which is the API's order for every lock bound since:
    one string comparison), else by walking the page from stored text to stored text, each found
    by its first characters (any order: a lock bound or unbound earlier in the list, a database
    that returns rows in key order). Either way the page is proved to be exactly those texts, and
    each stored text is one non-empty JSON value whose id is its key, so the page holds exactly
    those values. Pages that are not (changed or indented elements) go to the element scan.
    """

    # Lengths tried for the prefix that tells stored texts apart (see `_prefixes`).
    _PREFIX_LENGTHS: Final = (48, 96, 192, 384)

    def __init__(self, by_id: Mapping[str, str]) -> None:
        self.by_id = by_id
        usable = all(by_id.values())  # an empty text (raw was NULL) stands for nothing
        self._ids = list(by_id) if usable else []
        self._texts = list(by_id.values()) if usable else []
        self._by_prefix: dict[str, tuple[str, str]] | None = None
        self._prefix_length = 0

    def __bool__(self) -> bool:
        return bool(self.by_id)

    def page(
        self, text: str, skip: int, top: int
    ) -> tuple[list[str | None], list[tuple[Any, str]]] | None:
        """The ids and (value, text) elements of a page made only of stored texts, else None.

        The value of an element recognised without parsing is None: only its text is needed, as
        an element equal to its stored text is not parsed again.
        """
        end = min(skip + top, len(self._texts))
        if skip < end and text == f"[{','.join(self._texts[skip:end])}]":
            return list(self._ids[skip:end]), [(None, t) for t in self._texts[skip:end]]
        # Where the walk can run, it finds every page `_page_in_any_order` would, unparsed.
        return self._walk(text) if self._prefixes() else self._page_in_any_order(text)

    def _walk(self, text: str) -> tuple[list[str | None], list[tuple[Any, str]]] | None:
        """The page as stored texts in any order, found without parsing; None if it is not."""
        by_prefix = self._prefixes()
        if not (text.startswith("[") and text.endswith("]")):
            return None
        ids: list[str | None] = []
        elements: list[tuple[Any, str]] = []
        pos, last = 1, len(text) - 1
        length = self._prefix_length
        while pos < last:  # at the start of an element
            found = by_prefix.get(text[pos : pos + length])
            if found is None or not text.startswith(found[1], pos):
                return None
            ids.append(found[0])
            elements.append((None, found[1]))
            pos += len(found[1])
            if pos == last:
                return ids, elements
            if text[pos] != ",":
                return None
            pos += 1
        return ([], []) if text == "[]" else None

    def _prefixes(self) -> dict[str, tuple[str, str]]:
        """(id, text) of the stored texts by their first characters, as many as the shortest
        tried length that tells them all apart. Empty when none does, or when a text is shorter
        than that: then pages are not walked."""
        if self._by_prefix is None:
            self._by_prefix = {}
            shortest = min(map(len, self._texts), default=0)
            for length in self._PREFIX_LENGTHS:
                if length > shortest:
                    break
                by_prefix = {
                    t[:length]: (i, t) for i, t in zip(self._ids, self._texts, strict=True)
                }
                if len(by_prefix) == len(self._texts):
                    self._by_prefix, self._prefix_length = by_prefix, length
                    break
        return self._by_prefix

    def _page_in_any_order(
        self, text: str
    ) -> tuple[list[str | None], list[tuple[Any, str]]] | None:
        # Stored texts in another order (locks bound later, a reordered list): one `json.loads`
        # for the ids and one string comparison instead of a scan per element.
        try:
            values = json.loads(text)
        except ValueError:
            return None
        if not isinstance(values, list):
            return None
        ids: list[str | None] = []
        texts: list[str] = []
        for value in values:
            lock_id = element_id(value)
            stored = self.by_id.get(lock_id) if lock_id is not None else None
            if stored is None:
                return None
            ids.append(lock_id)
            texts.append(stored)
        if text != f"[{','.join(texts)}]":
            return None
        return ids, list(zip(values, texts, strict=True))


def parse_owner(value: Any, owner_id: str | None, raw: str) -> OwnerRecord:
    """An owner element; any unreadable owner fails the list (removals depend on it).

    An owner the database cannot hold (an id or element longer than it stores) is not unreadable:
    it comes back with a `problem`, and the run fails that owner alone.
    """
    if owner_id is None:
        ident = value.get("id") if isinstance(value, dict) else None
        if isinstance(ident, str) and len(ident) > MAX_ID_LENGTH:
            problem = _too_long("its id", len(ident), MAX_ID_LENGTH)
            return OwnerRecord(ident, None, None, raw, problem)
        raise PayloadError(
            "GET /api/v1/Owners returned an owner without a readable id; the owner list cannot be "
            "trusted, so nothing is synced"
        )
    too_long = _element_too_long("its element", raw)
    if too_long is not None:
        return OwnerRecord(owner_id, None, None, raw, too_long)
    try:
        return OwnerRecord(owner_id, _str(value, "name"), _bool(value, "active"), raw)
    except BadValue as exc:
        raise PayloadError(f"GET /api/v1/Owners: owner {owner_id}: {exc}") from None
