"""The sandbox's inventory: deterministic owners and bound locks (see `locks`), their changes and
their pages of JSON.

Everything here is derived from a seed with private `random.Random` instances (never the global
generator), so the same seed and the same sequence of calls give byte-identical payloads. Nothing
here is thread-safe: `exporter.sandbox.server.Sandbox` serialises access with its lock. Like the
sandbox itself, this module imports nothing from the exporter.
"""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from exporter.sandbox.locks import (
    LOCK_FIELDS,
    LOCK_TYPES,
    SandboxLock,
    SandboxOwner,
    lock_dict,
    lock_type_index,
)
from exporter.sandbox.values import (
    ENCODER,
    HOUR_MS,
    MS_2025,
    IdBag,
    different,
    guid,
    iso,
    json_page,
)

__all__ = ["CHANGE_KINDS", "SandboxChange", "SandboxInventory"]

# How often each change kind is drawn by SandboxInventory.advance (inapplicable draws are redrawn).
_CHANGE_WEIGHTS: Final[dict[str, int]] = {
    "rename": 3,  # lock title
    "description": 2,
    "active": 1,  # lock active toggled
    "unbind": 2,  # lock disappears from its owner's list
    "bind": 3,  # new bound lock appended to an owner's list
    "move": 2,  # same bound lock id, listed under another owner
    "rebind": 1,  # same physicalLockId, new bound lock id under another owner
    "owner_lost": 1,  # owner hidden: missing from /Owners, 403 on its locks
    "owner_regained": 2,  # hidden owner visible again, with its (possibly changed) locks
    "owner_rename": 1,
    "owner_active": 1,  # owner active toggled
    "rcl": 2,  # rclSerialNo/rclDate (and lastSeenRcl*): not a tracked attribute
    "health": 2,  # new health readings (only visible with expand=healthStatuses)
}
CHANGE_KINDS: Final[tuple[str, ...]] = tuple(_CHANGE_WEIGHTS)

_OWNER_KINDS = ("Office", "Warehouse", "Branch", "Clinic", "Campus", "Studio", "Depot", "Hotel")
_CITIES = ("Vienna", "Graz", "Linz", "Salzburg", "Innsbruck", "Munich", "Zurich", "Prague", "Milan")
_PLACES = ("Entrance", "Main", "Back", "Side", "Server", "Storage", "Bike", "Staff", "Archive")
_THINGS = ("Door", "Gate", "Room", "Cabinet", "Locker", "Cellar")
_DESCRIPTIONS = (
    "Ground floor, next to the reception.",
    "First floor, east wing.",
    "Delivery access for couriers.",
    "Staff only.",
    "Opened by the cleaning crew at 6 am.",
    "Battery replaced in spring.",
    "Fire door, keep closed.",
    "Shared with the neighbouring tenant.",
    None,  # Tapkey allows locks without a description
)
_MS_2018 = 1_514_764_800_000  # 2018-01-01T00:00:00Z: initial bindings fall in 2018-2024


@dataclass(frozen=True)
class SandboxChange:
    """One change applied by `advance` (kind is one of CHANGE_KINDS or ACCESS_CHANGE_KINDS).

    `entity_id` names the contact, bound card, grant or log entry an access change is about.
    """

    kind: str
    owner_id: str
    lock_id: str | None
    detail: str
    entity_id: str | None = None


class SandboxInventory:
    """Owners and their bound locks, generated from a seed and changed in seeded generations."""

    def __init__(self, *, seed: int, owners: int, locks_per_owner: int) -> None:
        if owners < 1:
            raise ValueError("the sandbox needs at least one owner")
        if locks_per_owner < 0:
            raise ValueError("locks_per_owner must not be negative")
        self.seed = seed
        self.generation = 0
        self.owners: dict[str, SandboxOwner] = {}  # in creation order: the /Owners order
        self.locks: dict[str, SandboxLock] = {}  # bound locks only
        self._lock_bag = IdBag()
        self._physical_ids: set[str] = set()  # every physicalLockId ever issued
        self._owner_names: set[str] = set()
        self._visible: list[SandboxOwner] | None = None
        # Locks also listed by a second owner (a move caught half-way): lock id -> that owner.
        self._also_listed: dict[str, str] = {}
        # Direct mutations (bind_new) draw from their own seeded stream.
        self._direct_rng = random.Random(f"tapkey-sandbox-direct:{seed}")
        rng = random.Random(seed)
        for _ in range(owners):
            owner = SandboxOwner(guid(rng), self._new_owner_name(rng), rng.random() < 0.95)
            self.owners[owner.id] = owner
            for _ in range(locks_per_owner):
                bind_ms = rng.randrange(_MS_2018, MS_2025)
                self._bind(self._new_lock(rng, owner.id, bind_ms))

    # -- reading -------------------------------------------------------------------------------

    def visible_owners(self) -> list[SandboxOwner]:
        """The owners /Owners lists, in creation order."""
        if self._visible is None:
            self._visible = [owner for owner in self.owners.values() if owner.visible]
        return self._visible

    def owners_json(self, skip: int = 0, top: int | None = None) -> bytes:
        """A page of the owner list, encoded as the API sends it."""
        return json_page(self.visible_owners(), skip, top, self._owner_json)

    def locks_json(
        self, owner_id: str, skip: int = 0, top: int | None = None, *, health: bool = False
    ) -> bytes:
        """A page of one owner's bound locks (KeyError if the owner is unknown)."""
        locks = self.locks
        return json_page(
            self.owners[owner_id].locks,
            skip,
            top,
            lambda i: self.lock_json(locks[i], health=health),
        )

    def lock_json(self, lock: SandboxLock, *, health: bool = False) -> bytes:
        """One lock encoded (and cached) with or without its health readings."""
        if health:
            if lock.json_health is None:
                lock.json_health = ENCODER.encode(lock_dict(lock, True)).encode()
            return lock.json_health
        if lock.json_plain is None:
            lock.json_plain = ENCODER.encode(lock_dict(lock, False)).encode()
        return lock.json_plain

    def _owner_json(self, owner: SandboxOwner) -> bytes:
        if owner.json is None:
            value = {"active": owner.active, "id": owner.id, "name": owner.name}
            owner.json = ENCODER.encode(value).encode()
        return owner.json

    # -- direct mutations ------------------------------------------------------------------------

    def lock(self, lock_id: str) -> SandboxLock:
        """A bound lock by id (KeyError naming it if it is not bound)."""
        try:
            return self.locks[lock_id]
        except KeyError:
            raise KeyError(f"no bound lock {lock_id!r}") from None

    def owner(self, owner_id: str) -> SandboxOwner:
        """An owner by id (KeyError naming it if unknown)."""
        try:
            return self.owners[owner_id]
        except KeyError:
            raise KeyError(f"no owner account {owner_id!r}") from None

    def unbind(self, lock_id: str) -> SandboxLock:
        """Remove a bound lock; later locks of its owner move up one place."""
        lock = self.lock(lock_id)
        self.owners[lock.owner_id].locks.remove(lock_id)
        if lock_id in self._also_listed:
            self.owners[self._also_listed.pop(lock_id)].locks.remove(lock_id)
        del self.locks[lock_id]
        self._lock_bag.remove(lock_id)
        return lock

    def bind_new(self, owner_id: str, rng: random.Random | None = None) -> SandboxLock:
        """Bind a new lock (new bound id, new physical id) at the end of the owner's list."""
        self.owner(owner_id)
        rng = rng or self._direct_rng
        lock = self._new_lock(rng, owner_id, self._now_ms(rng))
        lock.rcl_serial_no = lock.rcl_date = None
        lock.last_seen_rcl_serial_no = lock.last_seen_rcl_update_date = None
        self._bind(lock)
        return lock

    def rename(self, lock_id: str, title: str) -> None:
        """Change a lock's title."""
        lock = self.lock(lock_id)
        lock.title = title
        self._touch(lock)

    def move(self, lock_id: str, owner_id: str) -> None:
        """List the same bound lock under another owner (appended to its list)."""
        lock = self.lock(lock_id)
        target = self.owner(owner_id)
        if lock.owner_id == owner_id:
            return
        self.owners[lock.owner_id].locks.remove(lock_id)
        if self._also_listed.get(lock_id) == owner_id:
            del self._also_listed[lock_id]  # already in the target's list: the move completes
        else:
            target.locks.append(lock_id)
        lock.owner_id = owner_id
        self._touch(lock)

    def list_also(self, lock_id: str, owner_id: str) -> None:
        """List a bound lock under a second owner too, as a move caught half-way (see move)."""
        lock = self.lock(lock_id)
        self.owner(owner_id)
        if lock.owner_id == owner_id or lock_id in self._also_listed:
            raise ValueError(f"lock {lock_id!r} is already listed by {owner_id!r} or twice")
        self.owners[owner_id].locks.append(lock_id)
        self._also_listed[lock_id] = owner_id

    def set_owner_visible(self, owner_id: str, visible: bool) -> None:
        """Hide an owner (lost co-admin rights) or show it again."""
        owner = self.owner(owner_id)
        if not visible and owner.visible and len(self.visible_owners()) == 1:
            raise ValueError("the sandbox keeps at least one visible owner")
        owner.visible = visible
        self._visible = None

    def update_lock(self, lock_id: str, fields: Mapping[str, Any]) -> None:
        """Set lock fields by their API names (title, description, active, rclSerialNo, ...)."""
        lock = self.lock(lock_id)
        unknown = sorted(set(fields) - set(LOCK_FIELDS) - {"lockTypeId"})
        if unknown:
            allowed = ", ".join([*LOCK_FIELDS, "lockTypeId"])
            raise ValueError(f"cannot set {', '.join(unknown)}; settable: {allowed}")
        for name, value in fields.items():
            if name == "lockTypeId":
                lock.lock_type = lock_type_index(value)
            else:
                if name == "physicalLockId":
                    self._physical_ids.add(value)
                setattr(lock, LOCK_FIELDS[name], value)
        self._touch(lock)

    def update_owner(self, owner_id: str, *, name: str | None, active: bool | None) -> None:
        """Rename an owner and/or set its active flag."""
        owner = self.owner(owner_id)
        if name is not None:
            owner.name = name
        if active is not None:
            owner.active = active
        owner.json = None

    def rebind(self, lock_id: str, owner_id: str, rng: random.Random | None = None) -> SandboxLock:
        """Tapkey-style rebind: unbind, then bind the same physical lock under a NEW bound id."""
        old = self.lock(lock_id)
        self.owner(owner_id)
        self.unbind(lock_id)
        new = self._new_lock(
            rng or self._direct_rng, owner_id, self._now_ms(rng), old.physical_lock_id
        )
        new.lock_type = old.lock_type  # the same device
        new.rcl_serial_no = new.rcl_date = None
        new.last_seen_rcl_serial_no = new.last_seen_rcl_update_date = None
        self._bind(new)
        return new

    def bind_payload(self, payload: Mapping[str, Any], owner_id: str) -> SandboxLock:
        """Bind a lock exactly as given by an API payload (same id), e.g. to undo an unbind."""
        lock_id = str(payload["id"])
        if lock_id in self.locks:
            raise ValueError(f"lock {lock_id!r} is already bound")
        self.owner(owner_id)
        lock = SandboxLock(
            id=lock_id,
            owner_id=owner_id,
            title=payload["title"],
            description=payload.get("description"),
            physical_lock_id=payload["physicalLockId"],
            lock_type=lock_type_index(payload["lockTypeId"]),
            active=payload.get("active", True),
            bind_date=payload["bindDate"],
            rcl_serial_no=payload.get("rclSerialNo"),
            rcl_date=payload.get("rclDate"),
            last_seen_rcl_serial_no=payload.get("lastSeenRclSerialNo"),
            last_seen_rcl_update_date=payload.get("lastSeenRclUpdateDate"),
            health_key=int(hashlib.sha256(lock_id.encode()).hexdigest()[:16], 16),
        )
        self._physical_ids.add(lock.physical_lock_id)
        self._bind(lock)
        return lock

    # -- generations -----------------------------------------------------------------------------

    def advance(self, changes: int) -> list[SandboxChange]:
        """Start the next generation and apply `changes` seeded random changes."""
        self.generation += 1
        rng = random.Random(f"tapkey-sandbox-advance:{self.seed}:{self.generation}")
        kinds = list(_CHANGE_WEIGHTS)
        weights = list(_CHANGE_WEIGHTS.values())
        applied: list[SandboxChange] = []
        for _ in range(changes):
            for _attempt in range(100):  # redraw kinds that do not apply (no hidden owner, ...)
                change = self._apply(rng.choices(kinds, weights)[0], rng)
                if change is not None:
                    applied.append(change)
                    break
        return applied

    def _apply(self, kind: str, rng: random.Random) -> SandboxChange | None:
        owner_ids = list(self.owners)
        if kind == "bind":
            lock = self.bind_new(rng.choice(owner_ids), rng)
            return SandboxChange(kind, lock.owner_id, lock.id, f"bound {lock.physical_lock_id}")
        if kind.startswith("owner_"):
            return self._apply_owner(kind, rng)
        if not self._lock_bag:
            return None
        lock = self.locks[self._lock_bag.choice(rng)]
        old_owner = lock.owner_id
        if kind == "rename":
            old = lock.title
            lock.title = different(old, lambda: _title(rng))
            detail = f"title {old!r} -> {lock.title!r}"
        elif kind == "description":
            old_text = lock.description
            lock.description = different(old_text, lambda: rng.choice(_DESCRIPTIONS))
            detail = f"description {old_text!r} -> {lock.description!r}"
        elif kind == "active":
            lock.active = not lock.active
            detail = f"active -> {lock.active}"
        elif kind == "unbind":
            self.unbind(lock.id)
            return SandboxChange(kind, old_owner, lock.id, f"unbound {lock.physical_lock_id}")
        elif kind in ("move", "rebind"):
            others = [owner_id for owner_id in owner_ids if owner_id != old_owner]
            if not others:
                return None
            target = rng.choice(others)
            if kind == "move":
                self.move(lock.id, target)
                return SandboxChange(kind, target, lock.id, f"moved from owner {old_owner}")
            new = self.rebind(lock.id, target, rng)
            return SandboxChange(
                kind, target, new.id, f"rebound from {lock.id} of owner {old_owner}"
            )
        elif kind == "rcl":
            lock.rcl_serial_no = (lock.rcl_serial_no or 0) + 1
            lock.rcl_date = iso(self._now_ms(rng))
            if rng.random() < 0.5:
                lock.last_seen_rcl_serial_no = lock.rcl_serial_no
                lock.last_seen_rcl_update_date = lock.rcl_date
            detail = f"rclSerialNo -> {lock.rcl_serial_no}"
        elif kind == "health":
            lock.health_rev += 1
            detail = f"health readings revision {lock.health_rev}"
        else:
            raise ValueError(f"unknown change kind {kind!r}")
        self._touch(lock)
        return SandboxChange(kind, lock.owner_id, lock.id, detail)

    def _apply_owner(self, kind: str, rng: random.Random) -> SandboxChange | None:
        visible = self.visible_owners()
        if kind == "owner_lost":
            if len(visible) < 2:
                return None
            owner = rng.choice(visible)
            self.set_owner_visible(owner.id, False)
            return SandboxChange(kind, owner.id, None, "owner hidden")
        if kind == "owner_regained":
            hidden = [owner for owner in self.owners.values() if not owner.visible]
            if not hidden:
                return None
            owner = rng.choice(hidden)
            self.set_owner_visible(owner.id, True)
            return SandboxChange(kind, owner.id, None, "owner visible again")
        owner = self.owners[rng.choice(list(self.owners))]
        if kind == "owner_rename":
            old = owner.name
            owner.name = self._new_owner_name(rng)  # never the old name: it is still taken
            self._owner_names.discard(old)
            detail = f"name {old!r} -> {owner.name!r}"
        elif kind == "owner_active":
            owner.active = not owner.active
            detail = f"active -> {owner.active}"
        else:
            raise ValueError(f"unknown change kind {kind!r}")
        owner.json = None
        return SandboxChange(kind, owner.id, None, detail)

    # -- helpers ---------------------------------------------------------------------------------

    def _now_ms(self, rng: random.Random | None = None) -> int:
        """A deterministic instant inside the current generation's hour."""
        rng = rng or self._direct_rng
        return MS_2025 + self.generation * HOUR_MS + rng.randrange(HOUR_MS)

    def _bind(self, lock: SandboxLock) -> None:
        self.locks[lock.id] = lock
        self.owners[lock.owner_id].locks.append(lock.id)
        self._lock_bag.add(lock.id)

    def _touch(self, lock: SandboxLock) -> None:
        lock.json_plain = lock.json_health = None

    def _new_owner_name(self, rng: random.Random) -> str:
        base = f"{rng.choice(_OWNER_KINDS)} {rng.choice(_CITIES)}"
        name, number = base, 1
        while name in self._owner_names:
            number += 1
            name = f"{base} {number}"
        self._owner_names.add(name)
        return name

    def _new_physical_id(self, rng: random.Random) -> str:
        while True:
            size = rng.randint(4, 8)
            raw = size.to_bytes(2, "little") + rng.randbytes(size)
            physical = base64.b64encode(raw).decode("ascii")
            if physical not in self._physical_ids:
                self._physical_ids.add(physical)
                return physical

    def _new_lock(
        self, rng: random.Random, owner_id: str, bind_ms: int, physical: str | None = None
    ) -> SandboxLock:
        has_rcl = rng.random() < 0.7
        rcl_serial = rng.randint(1, 40) if has_rcl else None
        rcl_ms = bind_ms + rng.randrange(1, 90 * 24 * HOUR_MS)
        seen = has_rcl and rng.random() < 0.6
        return SandboxLock(
            id=guid(rng),
            owner_id=owner_id,
            title=_title(rng),
            description=rng.choice(_DESCRIPTIONS),
            physical_lock_id=physical or self._new_physical_id(rng),
            lock_type=rng.randrange(len(LOCK_TYPES)),
            active=rng.random() < 0.93,
            bind_date=iso(bind_ms),
            rcl_serial_no=rcl_serial,
            rcl_date=iso(rcl_ms) if has_rcl else None,
            last_seen_rcl_serial_no=rcl_serial if seen else None,
            last_seen_rcl_update_date=iso(rcl_ms + rng.randrange(HOUR_MS)) if seen else None,
            health_key=rng.getrandbits(64),
        )


def _title(rng: random.Random) -> str:
    return f"{rng.choice(_PLACES)} {rng.choice(_THINGS)} {rng.randint(1, 99)}"
