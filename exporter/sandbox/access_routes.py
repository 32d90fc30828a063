"""The sandbox's access routes as the API serves them: which lists there are, what ``$filter``
may compare on each, and a filtered page of one owner's list."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from operator import attrgetter
from typing import Any, Final, Literal

from exporter.sandbox.entities import Record, encode
from exporter.sandbox.odata import Filter, FilterError, PropertyKind, matches, parse_filter
from exporter.sandbox.values import json_page

__all__ = ["ACCESS_ROUTES", "AccessRoute", "page_json", "route_filter"]

AccessRoute = Literal["contacts", "cards", "grants", "logs"]
ACCESS_ROUTES: Final[tuple[AccessRoute, ...]] = ("contacts", "cards", "grants", "logs")

# What $filter may compare on each route: property -> (kind, record attribute).
_FILTERABLE: Final[dict[AccessRoute, dict[str, tuple[PropertyKind, str]]]] = {
    "contacts": {"id": ("string", "id")},
    "cards": {"id": ("string", "id")},
    "grants": {
        "id": ("string", "id"),
        "boundLockId": ("string", "bound_lock_id"),
        "contactId": ("string", "contact_id"),
        "boundCardId": ("string", "bound_card_id"),
        "state": ("string", "state"),
    },
    "logs": {
        "id": ("string", "id"),
        "boundLockId": ("string", "bound_lock_id"),
        "logType": ("string", "log_type"),
        "command": ("string", "command"),
        "receivedAt": ("datetime", "received_ms"),
        "lockTimestamp": ("datetime", "lock_ms"),
    },
}
# ASP.NET OData's words for a property that cannot be filtered on.
_NOT_FILTERABLE = "The property 'receivedAt' cannot be used in the $filter query option."


def route_filter(route: AccessRoute, text: str, *, received_at: bool = True) -> Filter:
    """A route's ``$filter`` (FilterError outside the subset, or on receivedAt when off)."""
    properties = {name: kind for name, (kind, _) in _FILTERABLE[route].items()}
    parsed = parse_filter(text, properties)
    if not received_at and any(c.name == "receivedAt" for group in parsed for c in group):
        raise FilterError(_NOT_FILTERABLE)
    return parsed


def page_json(
    route: AccessRoute,
    records: Sequence[Record],
    skip: int = 0,
    top: int | None = None,
    parsed: Filter | None = None,
) -> bytes:
    """A page of a list on `route`, filtered first, encoded as the API sends it."""
    if parsed is not None:
        getters = {name: attrgetter(attr) for name, (_, attr) in _FILTERABLE[route].items()}
        records = [r for r in records if matches(parsed, _values(getters, r))]
    return json_page(records, skip, top, encode)


def _values(getters: Mapping[str, Callable[[Any], Any]], record: Any) -> Callable[[str], Any]:
    return lambda name: getters[name](record)
