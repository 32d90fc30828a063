"""The sandbox's log entries: Tapkey's receive clock and each lock's log.

Locks are offline-first: an event is recorded at the lock (``lockTimestamp``, the lock's next
``entryNo``) and reaches Tapkey when a phone syncs the lock (``receivedAt``), seconds or days
later. A lock uploads its log in ``entryNo`` order, so per lock ``entryNo``, ``lockTimestamp``
and ``receivedAt`` grow together; Tapkey's receive clock only moves forward, so new entries are
listed after every older one. Log types other than ``Command`` and commands other than
``TriggerLock`` are sandbox inventions. Like the rest of the sandbox, this module imports
nothing from the exporter and is not thread-safe.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Mapping
from dataclasses import dataclass

from exporter.sandbox.data import SandboxInventory
from exporter.sandbox.entities import GrantRecord, LogEntryRecord, OwnerAccess, epoch_ms
from exporter.sandbox.values import DAY_MS, HOUR_MS, MS_2025, guid

__all__ = ["LogBook"]

_OTHER_LOG_TYPES = ("BatteryWarning", "ClockSync", "DoorAjar")


@dataclass(slots=True)
class _LockLog:
    entry_no: int  # the lock's last entryNo
    lock_ms: int  # the lock's last lockTimestamp


class LogBook:
    """Writes log entries into the owners' lists, sorted by (receivedAt, id)."""

    def __init__(self, inventory: SandboxInventory, owners: Mapping[str, OwnerAccess]) -> None:
        self._inventory = inventory
        self._owners = owners  # the grants say who opens a lock; log_entries is written
        self._locks: dict[str, _LockLog] = {}  # by bound lock id
        self._received_ms = 0  # Tapkey's receive clock: it only moves forward

    def seed(self, owner_id: str, count: int, rng: random.Random) -> None:
        """The owner's history: events of the 30 days before 2025, uploaded per lock in order."""
        locks = self._inventory.owners[owner_id].locks
        start, end = MS_2025 - 30 * DAY_MS, MS_2025 - 6 * DAY_MS  # late ones: up to 5 days
        events: dict[str, list[int]] = {}
        for _ in range(count if locks else 0):
            lock_id = rng.choice(locks)
            low = max(start, epoch_ms(self._inventory.locks[lock_id].bind_date) + 60_000)
            if low < end:  # a lock bound in the last days has no history yet
                events.setdefault(lock_id, []).append(rng.randrange(low, end))
        for lock_id, times in events.items():
            log = self._locks[lock_id] = _LockLog(rng.randint(0, 300), 0)
            received = 0
            for lock_ms in sorted(times):
                if rng.random() < 0.12:  # the lock was offline: uploaded hours or days later
                    delay = rng.randrange(2 * HOUR_MS, 5 * DAY_MS)
                else:
                    delay = rng.randrange(500, 300_000)
                # A lock uploads in entryNo order: later events come with or after its backlog.
                received = max(lock_ms + delay, received + rng.randrange(1, 50))
                self._record(owner_id, lock_id, log, lock_ms, received, rng)
            self._received_ms = max(self._received_ms, received)

    def receive(
        self,
        owner_id: str,
        count: int,
        rng: random.Random,
        *,
        late: bool = False,
        received_at: int | None = None,
    ) -> list[LogEntryRecord] | None:
        """Receive `count` entries now, in the current generation; None without a bound lock.

        Not `late`: entries of random locks, each seconds to minutes after it happened.
        `late`: one lock's backlog (the quietest of up to three drawn), spread over the hours
        or days before, as late as the lock's last entry allows. `received_at` (epoch ms)
        receives all at that instant instead of on the forward-moving clock (for ties and
        out-of-order arrivals; the per-lock order then need not hold).
        """
        locks = self._inventory.owners[owner_id].locks
        if not locks:
            return None
        generation_start = MS_2025 + self._inventory.generation * HOUR_MS
        self._received_ms = max(self._received_ms, generation_start)
        plan: list[tuple[str, int | None]]
        if late:
            lock_id = min(rng.sample(locks, min(3, len(locks))), key=self._last_lock_ms)
            now = self._received_ms if received_at is None else received_at
            low = max(self._last_lock_ms(lock_id) + 1000, now - 5 * DAY_MS)
            high = max(low + count + 1, now - 2 * HOUR_MS)
            plan = [(lock_id, t) for t in sorted(rng.randrange(low, high) for _ in range(count))]
        else:
            plan = [(rng.choice(locks), None) for _ in range(count)]
        entries: list[LogEntryRecord] = []
        for lock_id, planned in plan:
            if received_at is None:  # one upload takes milliseconds; online locks trickle in
                self._received_ms += rng.randrange(1, 200) if late else rng.randrange(1000, 180_000)
            received = self._received_ms if received_at is None else received_at
            lock_ms = received - rng.randrange(500, 300_000) if planned is None else planned
            log = self._locks.get(lock_id) or _LockLog(0, self._last_lock_ms(lock_id))
            self._locks[lock_id] = log
            lock_ms = min(max(lock_ms, log.lock_ms + 1), received)
            entries.append(self._record(owner_id, lock_id, log, lock_ms, received, rng))
        return entries

    def _last_lock_ms(self, lock_id: str) -> int:
        log = self._locks.get(lock_id)
        return log.lock_ms if log else epoch_ms(self._inventory.locks[lock_id].bind_date)

    def _record(
        self,
        owner_id: str,
        lock_id: str,
        log: _LockLog,
        lock_ms: int,
        received_ms: int,
        rng: random.Random,
    ) -> LogEntryRecord:
        """The lock's next entry, in the owner's sorted list: mostly a grant holder opening it."""
        log.entry_no += 1
        log.lock_ms = max(log.lock_ms, lock_ms)
        entry_id = guid(rng)  # drawn first: the seed's data stays as it was
        log_type = "Command"
        command: str | None = "TriggerLock"
        holder: GrantRecord | None = None
        draw = rng.random()
        if draw < 0.1:
            log_type, command = rng.choice(_OTHER_LOG_TYPES), None
        else:
            if draw < 0.14:
                command = "LockDoor"  # not every command opens
            grants = self._owners[owner_id].grants.values()
            if holders := [g for g in grants if g.bound_lock_id == lock_id]:
                holder = rng.choice(holders)
        entry = LogEntryRecord(
            id=entry_id,
            owner_id=owner_id,
            entry_no=log.entry_no,
            lock_ms=lock_ms,
            received_ms=received_ms,
            bound_lock_id=lock_id,
            contact_id=holder.contact_id if holder else None,
            bound_card_id=holder.bound_card_id if holder else None,
            log_type=log_type,
            command=command,
        )
        bisect.insort(self._owners[owner_id].log_entries, entry, key=_log_key)
        return entry


def _log_key(entry: LogEntryRecord) -> tuple[int, str]:
    return entry.received_ms, entry.id
