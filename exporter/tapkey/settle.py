"""A list's rows sorted out: one copy of each id, duplicates with different contents skipped.

Shared by the lock list and the access lists (`TapkeyClient.list_bound_locks`,
`list_owner_entities`): both turn the (id, record or stored text) rows of a whole list into
records, unchanged ids and a count of what was skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from exporter.tapkey.access import AccessRecord
from exporter.tapkey.records import LockRecord

__all__ = ["Settled", "log_skips", "settle"]

log = logging.getLogger(__name__)


def _text(item: LockRecord | AccessRecord | str) -> str:
    return item if isinstance(item, str) else item.raw


R = TypeVar("R", LockRecord, AccessRecord)


@dataclass(slots=True)
class Settled(Generic[R]):
    """A list's rows sorted out: records, unchanged ids and what was skipped."""

    records: list[R]
    unchanged: list[str]
    skipped: int
    skipped_ids: frozenset[str]
    unidentified: int


def settle(
    rows: Sequence[tuple[str | None, R | str | None]], problems: dict[str, str]
) -> Settled[R]:
    """Keep one copy of each id; an id listed twice with different contents, or unreadable, is
    skipped entirely (left as stored), and so is an element without a readable id."""
    first: dict[str, R | str | None] = {}
    copies: dict[str, int] = {}
    conflicting: set[str] = set()
    unidentified = 0
    for item_id, item in rows:
        if item_id is None:
            unidentified += 1
        elif item_id not in first:
            first[item_id], copies[item_id] = item, 1
        else:
            copies[item_id] += 1
            kept = first[item_id]
            if item is None or kept is None or _text(item) != _text(kept):
                conflicting.add(item_id)
    records: list[R] = []
    unchanged: list[str] = []
    skipped_ids: set[str] = set()
    skipped = unidentified
    for item_id, kept in first.items():
        if kept is None or item_id in conflicting:
            skipped += copies[item_id]
            skipped_ids.add(item_id)
            problems.setdefault(item_id, "listed more than once with different contents")
            continue
        skipped += copies[item_id] - 1
        if isinstance(kept, str):
            unchanged.append(item_id)
        else:
            records.append(kept)
    return Settled(records, unchanged, skipped, frozenset(skipped_ids), unidentified)


def log_skips(owner_id: str, settled: Settled[Any], problems: dict[str, str], what: str) -> None:
    """Warn once per list about the elements skipped, with the first few reasons."""
    if not settled.skipped:
        return
    details = "; ".join(f"{k}: {v}" for k, v in list(problems.items())[:5])
    log.warning(
        "owner %s: skipped %d unreadable or duplicate %s elements (%d without a readable id)%s",
        owner_id,
        settled.skipped,
        what,
        settled.unidentified,
        f"; {details}" if details else "",
    )
