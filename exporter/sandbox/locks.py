"""A bound lock and an owner account as the sandbox keeps them, and a lock's JSON: shaped like
the documented example of Tapkey's BoundLocks route, with seeded health readings."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Final

from exporter.sandbox.values import HOUR_MS, MS_2025, guid, iso

__all__ = [
    "LOCK_FIELDS",
    "LOCK_TYPES",
    "SandboxLock",
    "SandboxOwner",
    "lock_dict",
    "lock_type_index",
]

# TK.Td30 is the lock type of Tapkey's documented example; the other entries are sandbox
# inventions with plausible names, so that lock types and model names vary.
LOCK_TYPES: Final[tuple[dict[str, Any], ...]] = tuple(
    {"id": type_id, "manufacturerId": maker, "modelName": model, "supportedTechnologies": tech}
    for type_id, maker, model, tech in (
        ("TK.Td30", 1, "Td30", ["nfc", "ble"]),
        ("TK.Cyl3", 1, "Smart Cylinder 3", ["nfc", "ble"]),
        ("TK.Pad2", 1, "Padlock P2", ["ble"]),
        ("SB.Wr1", 7, "Wall Reader WR1", ["nfc"]),
        ("SB.Lk5", 7, "Locker L5", ["nfc", "ble"]),
    )
)
# What `SandboxInventory.update_lock` may set: API field name -> SandboxLock attribute.
LOCK_FIELDS: Final[dict[str, str]] = {
    "title": "title",
    "description": "description",
    "active": "active",
    "bindDate": "bind_date",
    "physicalLockId": "physical_lock_id",
    "rclSerialNo": "rcl_serial_no",
    "rclDate": "rcl_date",
    "lastSeenRclSerialNo": "last_seen_rcl_serial_no",
    "lastSeenRclUpdateDate": "last_seen_rcl_update_date",
}
_HEALTH_TYPES = ("BatteryVoltage", "Temperature", "BatteryWarningLevel")
_VALUE_STATUSES = ("Ok", "Ok", "Ok", "Outdated", "Invalid")


@dataclass(slots=True)
class SandboxLock:
    """A bound lock; the cached JSON encodings are dropped by `SandboxInventory` on every change."""

    id: str
    owner_id: str
    title: str
    description: str | None
    physical_lock_id: str
    lock_type: int  # index into LOCK_TYPES
    active: bool
    bind_date: str
    rcl_serial_no: int | None
    rcl_date: str | None
    last_seen_rcl_serial_no: int | None
    last_seen_rcl_update_date: str | None
    health_key: int  # with health_rev, seeds the lock's health readings
    health_rev: int = 0
    json_plain: bytes | None = None
    json_health: bytes | None = None


@dataclass(slots=True)
class SandboxOwner:
    """An owner account; `locks` holds its bound lock ids in binding order."""

    id: str
    name: str
    active: bool
    visible: bool = True
    locks: list[str] = field(default_factory=list)
    json: bytes | None = None


def lock_type_index(type_id: str) -> int:
    """The index in LOCK_TYPES of a lockTypeId (ValueError naming the known ones)."""
    for index, lock_type in enumerate(LOCK_TYPES):
        if lock_type["id"] == type_id:
            return index
    raise ValueError(f"unknown lockTypeId {type_id!r}; known: {[t['id'] for t in LOCK_TYPES]}")


def health_readings(lock: SandboxLock) -> list[dict[str, Any]]:
    """The lock's health readings: deterministic per (health_key, health_rev)."""
    rng = random.Random(f"tapkey-sandbox-health:{lock.health_key}:{lock.health_rev}")
    readings = []
    for kind in _HEALTH_TYPES:
        if kind == "Temperature" and rng.random() < 0.4:
            continue  # not every lock model reports a temperature
        if kind == "BatteryVoltage":
            value = f"{rng.uniform(2.4, 3.3):.2f}"
        elif kind == "Temperature":
            value = f"{rng.uniform(-5.0, 35.0):.1f}"
        else:
            value = rng.choice(("None", "None", "None", "Low", "Critical"))
        readings.append(
            {
                "id": guid(rng),
                "physicalLockId": lock.physical_lock_id,
                "timestamp": iso(MS_2025 - rng.randrange(60 * 24 * HOUR_MS)),
                "type": kind,
                "value": value,
                "valueStatus": rng.choice(_VALUE_STATUSES),
            }
        )
    return readings


def lock_dict(lock: SandboxLock, health: bool) -> dict[str, Any]:
    """A bound lock shaped like the documented example of the BoundLocks route."""
    lock_type = LOCK_TYPES[lock.lock_type]
    return {
        "active": lock.active,
        "bindDate": lock.bind_date,
        "description": lock.description,
        "healthStatuses": health_readings(lock) if health else None,
        "id": lock.id,
        "lastSeenRclSerialNo": lock.last_seen_rcl_serial_no,
        "lastSeenRclUpdateDate": lock.last_seen_rcl_update_date,
        "lockType": lock_type,
        "lockTypeId": lock_type["id"],
        "membershipStatistics": None,
        "ownerAccountId": lock.owner_id,
        "physicalLockId": lock.physical_lock_id,
        "rclDate": lock.rcl_date,
        "rclSerialNo": lock.rcl_serial_no,
        "supportedFeatures": None,
        "targetType": "Lock",
        "title": lock.title,
        "unbindDate": None,
    }
