"""IN lists every database accepts: long id lists are sent in slices.

SQLite caps bound parameters per statement (999 in old builds) and long IN lists make slow plans
on the server databases, so the read side and the sync both query ids `IN_LIST_SIZE` at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

__all__ = ["IN_LIST_SIZE", "chunks"]

IN_LIST_SIZE = 500

_T = TypeVar("_T")


def chunks(items: Sequence[_T], size: int = IN_LIST_SIZE) -> Iterator[Sequence[_T]]:
    """`items` in slices of at most `size` (by default small enough for an IN list)."""
    if size < 1:
        raise ValueError(f"size must be at least 1 (got {size})")
    for start in range(0, len(items), size):
        yield items[start : start + size]
