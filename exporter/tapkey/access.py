"""Access data payloads -> records: contacts, bound cards and grants (issue 15).

Each entity is described by its fields (`FieldSpec`: column, JSON key, type, VARCHAR length), so
one parser serves all three; a record is its id, its tracked values and the text the database
keeps to recognise it unchanged next time (`Privacy.stored_text`). As for locks, an element that
cannot be read is reported, not guessed at, and a value longer than its column skips the element.

Privacy (`[privacy] contact_identifier`) is applied here, before anything is stored or logged:
`keep` stores the identifier and the exact payload text; `hash` stores an HMAC-SHA256 of the
identifier (hex) under a key of its own; `drop` stores NULL. With `hash` or `drop` the payload
text of an element that may hold an identifier (contacts; grants may embed their contact) is
stored only as a keyed digest, which still recognises an unchanged element, and a contact's
free texts about the person (`title`, usually the name, and `comment`) are not stored at all:
pseudonymising the address is pointless next to the person's name.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from exporter.tapkey.fields import (
    MAX_ID_LENGTH,
    BadValue,
    bool_field,
    date_field,
    element_too_long,
    int32_field,
    padded_id,
    str_field,
    unstorable_text,
)

__all__ = [
    "CARD_FIELDS",
    "CONTACT_FIELDS",
    "GRANT_FIELDS",
    "AccessRecord",
    "EntityRoute",
    "FieldSpec",
    "OwnerEntities",
    "Privacy",
    "parse_element",
]

Kind = Literal["str", "bool", "int", "date", "id"]
_READERS: Final = {
    "str": str_field,
    "bool": bool_field,
    "int": int32_field,  # INTEGER columns
    "date": date_field,
    "id": str_field,
}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One tracked column: the JSON keys it is read from (the first present one), its type, the
    length of its VARCHAR column (None: unbounded text), and whether it is free text about a
    person (stored only under [privacy] keep, NULL otherwise)."""

    column: str
    keys: tuple[str, ...]
    kind: Kind = "str"
    length: int | None = None
    personal: bool = False


# The owner comes from the URL (as for locks), so owner_account_id has no spec.
CONTACT_FIELDS: Final = (
    FieldSpec("ip_id", ("ipId",), length=255),
    # Older payloads name it `email`.
    FieldSpec("identifier", ("identifier", "email"), length=255),
    # A contact's title is the person's name as the admin typed it; comments are notes about them.
    FieldSpec("title", ("title",), personal=True),
    FieldSpec("comment", ("comment",), personal=True),
)
CARD_FIELDS: Final = (
    FieldSpec("title", ("title",)),
    FieldSpec("label", ("label",), length=255),
    FieldSpec("uid", ("uid",), length=255),
    FieldSpec("physical_card_id", ("physicalCardId",), length=255),
    FieldSpec("is_active", ("isActive",), "bool"),
    FieldSpec("bind_date", ("bindDate",), "date"),
    FieldSpec("unbind_date", ("unbindDate",), "date"),
    FieldSpec("nof_grants_capacity", ("nofGrantsCapacity",), "int"),
)
GRANT_FIELDS: Final = (
    FieldSpec("bound_lock_id", ("boundLockId",), "id", MAX_ID_LENGTH),
    FieldSpec("contact_id", ("contactId",), "id", MAX_ID_LENGTH),
    FieldSpec("bound_card_id", ("boundCardId",), "id", MAX_ID_LENGTH),
    FieldSpec("validity_from", ("validFrom",), "date"),
    FieldSpec("validity_before", ("validBefore",), "date"),
    FieldSpec("time_restriction_ical", ("timeRestrictionIcal",)),
    FieldSpec("state", ("state",), length=32),
    FieldSpec("active", ("active",), "bool"),
)


@dataclass(frozen=True, slots=True)
class EntityRoute:
    """How an access entity is listed: the route under /api/v1/Owners/{id}/ (Contacts,
    BoundCards, Grants), the scope it needs (named in a 403), the fields its elements are read
    into, whether its payload may carry a contact identifier ([privacy]), and its noun."""

    path: str
    scope: str
    fields: tuple[FieldSpec, ...]
    personal: bool
    noun: str = "element"

    def end_key(self, owner_id: str) -> str:
        """The key of one owner's list on this route among the list ends a run confirms
        (`PagingCheck.unproven`): apart from its lock list's (the owner id) and its other
        routes'."""
        return f"{self.path}/{owner_id}"


@dataclass(frozen=True)
class Privacy:
    """How identifiers and payload texts of personal data are stored (see the module docstring).

    `identifier_key` is the HMAC key of `hash`; `digest_key` keys the digests of payload texts
    (derived from the OAuth client secret, and under `hash` from its key: a new secret or key
    only makes every element look changed once, and the values decide whether a version is
    written). Neither is ever stored.
    """

    mode: Literal["keep", "hash", "drop"] = "keep"
    identifier_key: bytes | None = None
    digest_key: bytes = b""

    @classmethod
    def from_settings(
        cls, mode: Literal["keep", "hash", "drop"], key: bytes | None, client_secret: str
    ) -> Privacy:
        """The privacy of `[privacy]`, with the digest key derived from the client secret."""
        # v2: titles and comments of contacts are no longer stored under hash/drop. A digest
        # written before must not recognise its contact, so that the next run rewrites each one
        # without them (an update; older versions keep what was stored then).
        label = b"tapkey-exporter payload digest v2"
        if mode == "hash":
            # A digest must not outlive the setting that stored its element: switching between
            # hash and drop, or a new hash key, then makes every element look changed once and
            # its identifier is stored anew. `drop` keeps the label digests were made with.
            label += b" hash " + (key or b"")
        digest_key = hmac.new(client_secret.encode(), label, hashlib.sha256).digest()
        return cls(mode, key, digest_key)

    @property
    def keeps_texts(self) -> bool:
        """True when personal texts (payloads, contacts' titles and comments) are stored as
        received."""
        return self.mode == "keep"

    def identifier(self, value: str | None) -> str | None:
        """The identifier as stored: kept, its keyed hash (hex), or None."""
        if value is None or self.mode == "keep":
            return value
        if self.mode == "drop":
            return None
        assert self.identifier_key is not None  # PrivacySettings requires a key for hash
        return hmac.new(self.identifier_key, value.encode(), hashlib.sha256).hexdigest()

    def stored_text(self, raw: str, *, personal: bool) -> str:
        """What the database keeps of an element's text: the text, or for personal data under
        hash/drop a keyed digest of it (still equal for an unchanged element)."""
        if not personal or self.mode == "keep":
            return raw
        digest = hmac.new(self.digest_key, raw.encode(), hashlib.sha256).hexdigest()
        return f"hmac-sha256:{digest}"


@dataclass(slots=True)
class AccessRecord:
    """One element: its id, its tracked values by column (owner from the URL), and `raw`, the
    text the database keeps for it (`Privacy.stored_text`)."""

    id: str
    values: dict[str, Any]
    raw: str


@dataclass(frozen=True)
class OwnerEntities:
    """One owner's complete list of one entity, and what could not be read from it.

    The same contract as `records.OwnerLocks`: `records`, `unchanged_ids` and `skipped_ids`
    share no id; `unidentified_skips` means an element had no readable id, so nothing of that
    owner's list may be removed.
    """

    owner_id: str
    records: list[AccessRecord]
    skipped: int
    skipped_ids: frozenset[str]
    unidentified_skips: bool
    requests: int
    unchanged_ids: list[str] = field(default_factory=list)


def parse_element(
    obj: Any,
    element_id: str,
    owner_id: str,
    raw: str,
    stored: str,
    fields: tuple[FieldSpec, ...],
    privacy: Privacy,
) -> AccessRecord:
    """A record from one element; BadValue naming the field on a wrong type or too long a value.

    Messages name fields, never values: they are logged, and values may be personal data.
    """
    if not isinstance(obj, dict):
        raise BadValue("the element is not an object")
    too_long = (
        padded_id(element_id) or element_too_long("the element", raw) or unstorable_text(obj, raw)
    )
    if too_long is not None:
        raise BadValue(too_long)
    values: dict[str, Any] = {"owner_account_id": owner_id}
    for spec in fields:
        if spec.personal and not privacy.keeps_texts:
            # Never read: a value that is not stored cannot skip its element, nor reach a message.
            values[spec.column] = None
            continue
        key = next((k for k in spec.keys if obj.get(k) is not None), spec.keys[0])
        value = _READERS[spec.kind](obj, key)
        if spec.length is not None and isinstance(value, str) and len(value) > spec.length:
            raise BadValue(
                f"{key} is {len(value):,} characters long, more than the {spec.length:,} the "
                "exporter stores"
            )
        values[spec.column] = value
    if "identifier" in values:
        values["identifier"] = privacy.identifier(values["identifier"])
    return AccessRecord(element_id, values, stored)
