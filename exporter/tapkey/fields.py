"""Reading one field of a Tapkey element: typed readers, ids, and the lengths the exporter stores.

Shared by every payload parser (locks and owners in exporter.tapkey.records, the access lists in
exporter.tapkey.access, log entries in exporter.sync.log_paging): a value of the wrong type is a
`BadValue` naming the field, never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

__all__ = [
    "MAX_ELEMENT_BYTES",
    "MAX_ID_LENGTH",
    "SURELY_SHORT",
    "BadValue",
    "FieldReader",
    "bool_field",
    "date_field",
    "date_value",
    "element_id",
    "element_too_long",
    "int32",
    "int32_field",
    "int_field",
    "padded_id",
    "str_field",
    "too_long",
    "unstorable_text",
]

#: Ids longer than this cannot be stored (VARCHAR(64)); such an element counts as unidentified.
MAX_ID_LENGTH: Final = 64
#: The longest element (its JSON text, in UTF-8 bytes) the exporter stores: a longer lock is
#: skipped, a longer owner fails. The text holds every free text of the element (title,
#: description, owner name) at least once, so this bounds them too: a row stays well within what
#: MariaDB takes in one statement (max_allowed_packet, 16 MiB by default) and every value within
#: its MEDIUMTEXT columns (16 MiB), the same on every database.
MAX_ELEMENT_BYTES: Final = 4 * 1024 * 1024
_T = TypeVar("_T")


class BadValue(ValueError):
    """A field of an element has the wrong type; the message names the field."""


#: A text this short needs no byte count: no UTF-8 character takes more than 4 bytes.
SURELY_SHORT: Final = MAX_ELEMENT_BYTES // 4


def too_long(what: str, length: int, limit: int, unit: str = "characters") -> str:
    """The message for a value longer than the exporter stores."""
    return f"{what} is {length:,} {unit} long, more than the {limit:,} the exporter stores"


def element_too_long(what: str, raw: str) -> str | None:
    """Why the element text `raw` is too long to store, or None."""
    if len(raw) <= SURELY_SHORT:
        return None
    size = len(raw.encode())
    return too_long(what, size, MAX_ELEMENT_BYTES, "bytes") if size > MAX_ELEMENT_BYTES else None


def element_id(value: Any) -> str | None:
    """An element's `id` if it is a string the database can hold, else None."""
    if isinstance(value, dict):
        ident = value.get("id")
        if isinstance(ident, str) and 0 < len(ident) <= MAX_ID_LENGTH and "\x00" not in ident:
            return ident if ident.isascii() or not _UNSTORABLE.search(ident) else None
    return None


def padded_id(ident: str) -> str | None:
    """Why the id `ident` cannot be stored alike on every database, or None.

    MariaDB/MySQL compare ids with PAD SPACE (utf8mb4_bin ignores trailing spaces): there `X `
    and `X` are one key, so a list holding both stopped every run at the unique index on `id`,
    and a stored `X` looked up as `X ` was taken for it. Refused on every database, so that all
    hold the same.
    """
    if ident.endswith(" "):
        return "its id ends with a space, which MariaDB/MySQL cannot tell from the id without it"
    return None


# A page is decoded as strict UTF-8, which has no surrogates, and holds no raw NUL (JSON escapes
# control characters): a parsed text can hold either only through a JSON escape ("\udc00",
# "\u0000"); an escaped pair of surrogates is one character once parsed.
_UNSTORABLE_ESCAPE: Final = re.compile(r"\\u(?:[dD][89a-fA-F]|0000)")
_UNSTORABLE: Final = re.compile("[\x00\ud800-\udfff]")


def unstorable_text(value: Any, raw: str) -> str | None:
    """Why the element `value` (parsed from its text `raw`) cannot be stored alike on every
    database, or None: a text holding a lone UTF-16 surrogate (UTF-8, so no database, can encode
    it) or a NUL character (PostgreSQL's text cannot hold it).

    Names the field, never the value (values may be personal data).
    """
    # One character is searched with memchr: "\\u" took 12 times as long, a tenth of a parse.
    if "\\" not in raw or _UNSTORABLE_ESCAPE.search(raw) is None:
        return None
    found = _unstorable_key(value, "the element")
    if found is None:
        return None
    key, char = found
    if char == "\x00":
        return f"{key} holds a NUL character, which PostgreSQL cannot store"
    return f"{key} holds a lone UTF-16 surrogate, which no database stores"


def _unstorable_key(value: Any, key: str) -> tuple[str, str] | None:
    """The key of the first text in `value` holding an unstorable character (`key` for `value`
    itself), and that character."""
    if isinstance(value, str):
        match = _UNSTORABLE.search(value)
        return None if match is None else (key, match.group())
    if isinstance(value, list):
        return next(filter(None, (_unstorable_key(item, key) for item in value)), None)
    if isinstance(value, dict):
        for name, item in value.items():
            found = _unstorable_key(name, key) or _unstorable_key(item, name)
            if found is not None:
                return found
    return None


#: A reader of one typed field: (element, key) -> the value, None when absent or null.
FieldReader = Callable[[dict[str, Any], str], _T | None]


def _typed_field(kind: type[_T], what: str, *, excluded: tuple[type, ...] = ()) -> FieldReader[_T]:
    # One closure per type keeps the check inline: readers run for every field of every lock.
    def read(obj: dict[str, Any], key: str) -> _T | None:
        value = obj.get(key)
        if value is None or (isinstance(value, kind) and not isinstance(value, excluded)):
            return value
        raise BadValue(f"{key} is not {what}")

    read.__doc__ = f"A field of `obj` that is {what} (None when absent or null); BadValue if not."
    return read


str_field: Final = _typed_field(str, "a string")
# bool is a subclass of int in Python, not in JSON.
int_field: Final = _typed_field(int, "an integer", excluded=(bool,))
bool_field: Final = _typed_field(bool, "true/false")

#: The range of the INTEGER columns (32 bits on PostgreSQL and MariaDB; SQLite takes more).
INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1


def int32_field(obj: dict[str, Any], key: str) -> int | None:
    """An integer field stored in an INTEGER column (None when absent or null); BadValue if it
    is not an integer or does not fit (`int32`)."""
    return int32(int_field(obj, key), key)


def int32(value: int | None, key: str) -> int | None:
    """`value`, which an INTEGER column must hold; BadValue if it does not fit: PostgreSQL's
    binary COPY stored 2**31 as -2**31, and MariaDB refused the statement, failing the run."""
    if value is not None and not INT32_MIN <= value <= INT32_MAX:
        raise BadValue(f"{key} is out of the range the exporter stores (a 32-bit integer)")
    return value


def date_field(obj: dict[str, Any], key: str) -> datetime | None:
    """ISO-8601 with `Z` or an offset -> aware UTC (a value without an offset is taken as UTC)."""
    value = obj.get(key)
    return None if value is None else date_value(value, key)


def date_value(value: Any, key: str) -> datetime:
    """A field `key`'s value that is not null, as date_field reads it."""
    if not isinstance(value, str):
        raise BadValue(f"{key} is not a date string")
    try:
        moment = _fromisoformat(value)
    except ValueError:
        raise BadValue(f"{key} is not an ISO-8601 date") from None
    zone = moment.tzinfo
    if zone is UTC:  # `Z` and `+00:00` (what astimezone(UTC) would return as it is)
        return moment
    if zone is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is in year 0 in UTC: failed the run
        raise BadValue(f"{key} is out of the range of dates (years 1 to 9999 in UTC)") from None


_fromisoformat = datetime.fromisoformat
