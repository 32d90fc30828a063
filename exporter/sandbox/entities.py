"""The sandbox's access records (contact, bound card, grant, log entry), their JSON and values.

Each record keeps its encoded JSON until it changes (`json`, dropped by whoever changes it).
The ``new_*`` functions draw realistic, seed-deterministic values from the `random.Random`
they are given. Like the rest of the sandbox, this module imports nothing from the exporter.
"""

from __future__ import annotations

import base64
import datetime as dt
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from exporter.sandbox.values import ENCODER, guid, iso

__all__ = [
    "GRANT_OK",
    "GRANT_REVOKED",
    "CardRecord",
    "ContactRecord",
    "GrantRecord",
    "LogEntryRecord",
    "OwnerAccess",
    "Record",
    "encode",
    "epoch_ms",
    "new_card",
    "new_contact",
    "person_name",
    "time_restriction",
]

_FIRST = ("Anna", "Ben", "Clara", "David", "Elif", "Felix", "Greta", "Hannah", "Ivan", "Jana")
_LAST = ("Huber", "Wagner", "Gruber", "Novak", "Steiner", "Moser", "Hofer", "Berger", "Leitner")
_COMMENTS = ("Night shift.", "Contractor until summer.", "Facility management.", "Intern.", None)
_CARD_USES = ("Visitor badge", "Cleaning crew", "Courier", "Spare card", "Maintenance")
_DAY_SETS = ("MO,TU,WE,TH,FR", "SA,SU", "MO,WE,FR", "TU,TH")
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# A grant's states as Tapkey names them (the exporter's kinds.GrantState; the sandbox imports none).
GRANT_OK: Final = "Ok"
GRANT_REVOKED: Final = "Revoked"


@dataclass(slots=True)
class _Cached:
    """A record that keeps its encoded JSON (`encode`) until it changes."""

    json: bytes | None = field(default=None, kw_only=True)  # dropped by whoever changes it


@dataclass(slots=True)
class ContactRecord(_Cached):
    """A contact; a `legacy_email` one is sent as an older payload: `email` for `identifier`."""

    id: str
    owner_id: str
    ip_id: str  # "tapkey" for Tapkey users, whose identifier is their email
    identifier: str
    title: str
    comment: str | None
    legacy_email: bool = False


@dataclass(slots=True)
class CardRecord(_Cached):
    """A bound card (an unbound card leaves the list, so `unbindDate` is always null)."""

    id: str
    owner_id: str
    label: str
    uid: str
    is_active: bool
    physical_card_id: str
    bind_date: str
    title: str
    capacity: int  # nofGrantsCapacity


@dataclass(slots=True)
class LogEntryRecord(_Cached):
    """A log entry (times in epoch milliseconds); it never changes once received."""

    id: str
    owner_id: str
    entry_no: int
    lock_ms: int
    received_ms: int
    bound_lock_id: str
    contact_id: str | None
    bound_card_id: str | None
    log_type: str
    command: str | None


@dataclass(slots=True)
class GrantRecord(_Cached):
    """A grant of one bound lock to a contact or a bound card (one of the two ids is None)."""

    id: str
    owner_id: str
    bound_lock_id: str
    contact_id: str | None
    bound_card_id: str | None
    valid_from: str | None = None
    valid_before: str | None = None
    ical: str | None = None  # timeRestrictionIcal
    state: str = GRANT_OK
    active: bool = True


Record = ContactRecord | CardRecord | GrantRecord | LogEntryRecord


@dataclass(slots=True)
class OwnerAccess:
    """One owner's lists: dicts in list order; log entries sorted by (received_ms, id)."""

    contacts: dict[str, ContactRecord] = field(default_factory=dict)
    cards: dict[str, CardRecord] = field(default_factory=dict)
    grants: dict[str, GrantRecord] = field(default_factory=dict)
    log_entries: list[LogEntryRecord] = field(default_factory=list)


def encode(record: Record) -> bytes:
    """The record as the API sends it (cached in `record.json` until it is dropped)."""
    if record.json is None:
        record.json = ENCODER.encode(_DICTS[type(record)](record)).encode()
    return record.json


def epoch_ms(iso: str) -> int:
    """Epoch milliseconds of an ISO-8601 UTC text such as 2024-05-01T12:00:00.000Z."""
    moment = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return (moment - _EPOCH) // dt.timedelta(milliseconds=1)


def person_name(rng: random.Random) -> str:
    """A person's name such as 'Anna Huber'."""
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


def new_contact(rng: random.Random, owner_id: str) -> ContactRecord:
    """A contact, mostly a Tapkey user, some as older payloads; its identifier is left empty."""
    tapkey_user = rng.random() < 0.8
    return ContactRecord(
        id=guid(rng),
        owner_id=owner_id,
        ip_id="tapkey" if tapkey_user else "sandbox.partner-idp",
        identifier="",
        title=person_name(rng),
        comment=rng.choice(_COMMENTS),
        legacy_email=tapkey_user and rng.random() < 0.25,
    )


def new_card(rng: random.Random, owner_id: str, bind_ms: int) -> CardRecord:
    """A bound card: mostly NXP 7-byte UIDs (04 ...), some 4-byte MIFARE Classic ones."""
    size = 7 if rng.random() < 0.8 else 4
    uid = (b"\x04" + rng.randbytes(6)) if size == 7 else rng.randbytes(4)
    return CardRecord(
        id=guid(rng),
        owner_id=owner_id,
        label=f"{rng.randrange(10000):04d}",  # the number printed on the card
        uid=uid.hex().upper(),
        is_active=rng.random() < 0.95,
        # Like a physicalLockId: Base64 of a 2-byte little-endian length and the bytes.
        physical_card_id=base64.b64encode(size.to_bytes(2, "little") + uid).decode("ascii"),
        bind_date=iso(bind_ms),
        title=f"{rng.choice(_CARD_USES)} {rng.randint(1, 30)}",
        capacity=rng.choice((8, 16, 32)) if size == 7 else 4,
    )


def time_restriction(rng: random.Random, start_ms: int) -> str:
    """A weekly time restriction as iCalendar lines (CRLF-separated, as iCalendar has them)."""
    day = (_EPOCH + dt.timedelta(milliseconds=start_ms)).strftime("%Y%m%d")
    start, hours = rng.randint(6, 10), rng.randint(4, 10)
    return (
        f"DTSTART;TZID=Europe/Vienna:{day}T{start:02d}0000\r\n"
        f"DTEND;TZID=Europe/Vienna:{day}T{start + hours:02d}0000\r\n"
        f"RRULE:FREQ=WEEKLY;BYDAY={rng.choice(_DAY_SETS)}"
    )


def _contact_dict(contact: ContactRecord) -> dict[str, Any]:
    return {
        "comment": contact.comment,
        "id": contact.id,
        "ipId": contact.ip_id,
        "email" if contact.legacy_email else "identifier": contact.identifier,
        "ownerId": contact.owner_id,
        "title": contact.title,
    }


def _card_dict(card: CardRecord) -> dict[str, Any]:
    return {
        "bindDate": card.bind_date,
        "id": card.id,
        "isActive": card.is_active,
        "label": card.label,
        "nofGrantsCapacity": card.capacity,
        "physicalCardId": card.physical_card_id,
        "title": card.title,
        "uid": card.uid,
        "unbindDate": None,
    }


def _grant_dict(grant: GrantRecord) -> dict[str, Any]:
    return {
        "active": grant.active,
        "boundCard": None,  # embeddable objects: the sandbox never embeds them
        "boundCardId": grant.bound_card_id,
        "boundLock": None,
        "boundLockId": grant.bound_lock_id,
        "contact": None,
        "contactId": grant.contact_id,
        "id": grant.id,
        "owner": None,
        "state": grant.state,
        "timeRestrictionIcal": grant.ical,
        "validBefore": grant.valid_before,
        "validFrom": grant.valid_from,
    }


def _log_entry_dict(entry: LogEntryRecord) -> dict[str, Any]:
    return {
        "boundCardId": entry.bound_card_id,
        "boundLockId": entry.bound_lock_id,
        "command": entry.command,
        "contactId": entry.contact_id,
        "entryNo": entry.entry_no,
        "id": entry.id,
        "lockTimestamp": iso(entry.lock_ms),
        "logType": entry.log_type,
        "receivedAt": iso(entry.received_ms),
    }


_DICTS: Final[dict[type, Callable[[Any], dict[str, Any]]]] = {
    ContactRecord: _contact_dict,
    CardRecord: _card_dict,
    GrantRecord: _grant_dict,
    LogEntryRecord: _log_entry_dict,
}
