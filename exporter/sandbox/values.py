"""What every list of the sandbox shares: its clock (epoch milliseconds, ISO texts), seeded ids,
the JSON encoder, pages of a list, and seeded draws.

Imports nothing from the exporter, like the rest of the sandbox.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

__all__ = [
    "DAY_MS",
    "ENCODER",
    "HOUR_MS",
    "MS_2025",
    "IdBag",
    "different",
    "guid",
    "iso",
    "json_page",
]

_EPOCH = dt.datetime(1970, 1, 1)  # naive UTC: isoformat() then has no offset
# 2025-01-01T00:00:00Z: generation g happens in hour g after this.
MS_2025: Final = 1_735_689_600_000
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 24 * HOUR_MS
ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
_T = TypeVar("_T")


def iso(ms: int) -> str:
    """Milliseconds since the epoch as ISO-8601 UTC with milliseconds and a `Z`."""
    return (_EPOCH + dt.timedelta(milliseconds=ms)).isoformat(timespec="milliseconds") + "Z"


def guid(rng: random.Random) -> str:
    """A seeded version-4 GUID, as Tapkey's ids are."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def json_page(
    items: Sequence[_T], skip: int, top: int | None, encode: Callable[[_T], bytes]
) -> bytes:
    """The page ``$skip``/``$top`` select of a list, as the JSON array the API sends."""
    page = items[skip : None if top is None else skip + top]
    return b"[" + b",".join(map(encode, page)) + b"]"


def different(old: _T, draw: Callable[[], _T]) -> _T:
    """Draw until the value differs from `old` (every draw has several possible values)."""
    while True:
        value = draw()
        if value != old:
            return value


class IdBag:
    """Ids with O(1) add, remove and seeded random choice (insertion order is not kept)."""

    def __init__(self) -> None:
        self._items: list[str] = []
        self._index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: str) -> None:
        self._index[item] = len(self._items)
        self._items.append(item)

    def remove(self, item: str) -> None:
        position = self._index.pop(item)
        last = self._items.pop()
        if last != item:
            self._items[position] = last
            self._index[last] = position

    def choice(self, rng: random.Random) -> str:
        return self._items[rng.randrange(len(self._items))]
