"""The sandbox's OData ``$filter`` subset: comparisons of one property with one literal.

Grammar (OData v4 keywords and property names are case-sensitive; spaces or tabs between
tokens; no parentheses, functions, ``not`` or ``null``)::

    filter     := comparison (( "and" | "or" ) comparison)*     "and" binds tighter than "or"
    comparison := property op literal
    op         := "eq" | "ne"                          for string properties
                | "eq" | "ne" | "gt" | "ge" | "lt" | "le"   for DateTimeOffset properties
    literal    := 'text' (a quote doubled: '')         for string properties
                | 2026-01-31T12:00:00.000Z              OData v4 DateTimeOffset: seconds and a
                                                        fraction (up to 12 digits) are optional;
                                                        Z or an offset such as +01:00 (%2B in a URL)

Anything else raises `FilterError`, which the sandbox answers with 400 and an OData error body.
Like the rest of the sandbox, this module imports nothing from the exporter.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["Comparison", "Filter", "FilterError", "PropertyKind", "matches", "parse_filter"]

PropertyKind = Literal["string", "datetime"]

_OPS: Final[dict[PropertyKind, frozenset[str]]] = {
    "string": frozenset({"eq", "ne"}),
    "datetime": frozenset({"eq", "ne", "gt", "ge", "lt", "le"}),
}
_COMPARISON = re.compile(
    r"(?P<name>[A-Za-z_]\w*)[ \t]+(?P<op>[a-z]+)[ \t]+(?P<value>'(?:[^']|'')*'|[^ \t()',]+)"
)
_JOIN = re.compile(r"[ \t]+(and|or)[ \t]+")
_DATETIME = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d)(?::(\d\d)(?:\.(\d{1,12}))?)?(?:([Zz])|([+-])(\d\d):(\d\d))"
)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_PS_PER_MS: Final = 1_000_000_000


class FilterError(ValueError):
    """A ``$filter`` outside the supported subset; the message says what and where."""


@dataclass(frozen=True)
class Comparison:
    """``name op value``; a DateTimeOffset value is picoseconds since the epoch (exact)."""

    name: str
    op: str
    value: str | int


# An OR of ANDs: ((a and b) or (c)).
Filter = tuple[tuple[Comparison, ...], ...]


def parse_filter(text: str, properties: Mapping[str, PropertyKind]) -> Filter:
    """Parse `text` for a route whose filterable properties are `properties` (else FilterError)."""
    groups: list[tuple[Comparison, ...]] = []
    current: list[Comparison] = []
    position, end = 0, len(text)
    if not text.strip():
        raise FilterError("the $filter is empty")
    while True:
        match = _COMPARISON.match(text, position)
        if match is None:
            raise FilterError(f"expected 'property operator value' at position {position}")
        current.append(_comparison(match, properties))
        position = match.end()
        if position == end:
            break
        join = _JOIN.match(text, position)
        if join is None:
            raise FilterError(f"expected ' and ' or ' or ' at position {position}")
        if join[1] == "or":
            groups.append(tuple(current))
            current = []
        position = join.end()
    groups.append(tuple(current))
    return tuple(groups)


def matches(parsed: Filter, value_of: Callable[[str], str | int | None]) -> bool:
    """Whether a record passes; `value_of(name)` gives its value (datetimes as epoch ms)."""
    return any(all(_holds(c, value_of(c.name)) for c in group) for group in parsed)


def _comparison(match: re.Match[str], properties: Mapping[str, PropertyKind]) -> Comparison:
    name, op, raw = match["name"], match["op"], match["value"]
    kind = properties.get(name)
    if kind is None:
        known = ", ".join(properties) or "none"
        raise FilterError(f"cannot filter on {name[:40]!r} here (filterable: {known})")
    if op not in _OPS[kind]:
        allowed = ", ".join(sorted(_OPS[kind]))
        raise FilterError(f"operator {op[:10]!r} is not supported for {name} (use {allowed})")
    if kind == "string":
        if not raw.startswith("'"):
            raise FilterError(f"{name} compares with a quoted string such as '{raw[:40]}'")
        return Comparison(name, op, raw[1:-1].replace("''", "'"))
    return Comparison(name, op, _datetime_ps(name, raw))


def _datetime_ps(name: str, raw: str) -> int:
    """An OData v4 DateTimeOffset literal as picoseconds since the epoch."""
    match = _DATETIME.fullmatch(raw)
    if match is None:
        raise FilterError(
            f"{name} compares with a DateTimeOffset such as 2026-01-31T12:00:00.000Z, "
            f"not {raw[:40]!r} (write + in an offset as %2B)"
        )
    year, month, day, hour, minute, second, fraction, _z, sign, off_h, off_m = match.groups()
    try:
        offset = dt.timedelta(hours=int(off_h or 0), minutes=int(off_m or 0))
        zone = dt.timezone(-offset if sign == "-" else offset)
        moment = dt.datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second or 0), tzinfo=zone
        )
    except ValueError as exc:
        raise FilterError(f"{name}: {raw[:40]!r} is not a valid date and time ({exc})") from None
    whole = (moment - _EPOCH) // dt.timedelta(seconds=1)
    return whole * 10**12 + int((fraction or "").ljust(12, "0"))


def _holds(comparison: Comparison, value: str | int | None) -> bool:
    expected = comparison.value
    if isinstance(expected, int) and isinstance(value, int):
        value *= _PS_PER_MS
    if comparison.op == "eq":
        return value == expected
    if comparison.op == "ne":
        return value != expected
    if not (isinstance(value, int) and isinstance(expected, int)):
        return False  # a null never compares greater or less
    if comparison.op == "gt":
        return value > expected
    if comparison.op == "ge":
        return value >= expected
    if comparison.op == "lt":
        return value < expected
    return value <= expected
