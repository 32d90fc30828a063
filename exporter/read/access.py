"""Who can open a lock, and what a contact can open: now, or as of a run or an instant.

A grant gives access at T when it is listed at T (its version valid at T is not removed), its
state is Ok, T is within [validity_from, validity_before) (NULL: unbounded) and its bound lock is
present at T (an unbound lock id opens nothing); its weekly time restriction is shown, not
evaluated. Now reads the current tables; an earlier T reads the version
tables (the same rule as the README's SQL recipe). Names (lock title, contact, card, owner) are
the current ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

from sqlalchemy import ColumnElement, Connection, Engine, Table, or_, select

from exporter.db.engine import connect
from exporter.db.inlists import chunks
from exporter.db.schema import (
    bound_cards,
    bound_lock_versions,
    bound_locks,
    contacts,
    grant_versions,
    grants,
)
from exporter.errors import UsageError
from exporter.kinds import ChangeType, GrantState
from exporter.read.asof import AsOf, valid_at
from exporter.read.changelog import find_locks, ids_starting_with, utf8_argument
from exporter.read.inventory import owner_names


class AccessRow(NamedTuple):
    """One grant that gives access, in the order of the CSV columns."""

    grant_id: str
    owner_account_id: str
    owner_name: str | None
    bound_lock_id: str | None
    lock_title: str | None
    contact_id: str | None
    contact_title: str | None
    contact_identifier: str | None
    bound_card_id: str | None
    card_title: str | None
    card_label: str | None
    validity_from: datetime | None
    validity_before: datetime | None
    time_restriction_ical: str | None
    state: str | None


@dataclass(frozen=True)
class AccessAnswer:
    """The grants giving access to one lock (or of one contact) at `at`."""

    subject: Literal["lock", "contact"]
    query: str
    # The bound lock ids (every binding of a device), or the contact ids (one, or every
    # contact with the identifier asked for).
    ids: list[str]
    title: str | None
    at: datetime
    as_of: AsOf | None  # None: now
    rows: list[AccessRow]
    bound: bool  # for a lock: whether one of its bound lock ids was present then


def who_can_open(engine: Engine, key: str, *, now: datetime, as_of: AsOf | None) -> AccessAnswer:
    """The grants giving access to the lock `key` (as `exporter history` takes it)."""
    with connect(engine) as conn:
        ids = find_locks(conn, key)
        title = conn.execute(select(bound_locks.c.title).where(bound_locks.c.id == ids[0])).scalar()
        rows = _grants(conn, "bound_lock_id", ids, now if as_of is None else as_of.at, as_of)
        bound = bool(_present_locks(conn, set(ids), as_of))
    at = now if as_of is None else as_of.at
    return AccessAnswer("lock", key, ids, title, at, as_of, rows, bound)


def what_can_open(
    engine: Engine,
    key: str,
    *,
    now: datetime,
    as_of: AsOf | None,
    stored_identifier: Callable[[str], str | None] = str,
) -> AccessAnswer:
    """The grants giving the contact `key` (id, identifier, or start of an id) access.

    An identifier names a person, who is a contact of each owner account that added them (a
    contact id per account): the grants of every contact with that identifier are shown.
    `stored_identifier` gives an identifier as the database holds it ([privacy]: as it is, its
    keyed hash, or None when identifiers are not stored).
    """
    with connect(engine) as conn:
        contact_ids = _find_contacts(conn, key, stored_identifier)
        title = None
        if len(contact_ids) == 1:
            query = select(contacts.c.title).where(contacts.c.id == contact_ids[0])
            title = conn.execute(query).scalar()
        at = now if as_of is None else as_of.at
        rows = _grants(conn, "contact_id", contact_ids, at, as_of)
    return AccessAnswer("contact", key, contact_ids, title, at, as_of, rows, True)


def _find_contacts(
    conn: Connection, key: str, stored_identifier: Callable[[str], str | None]
) -> list[str]:
    """The contact with the id `key`, else every contact with the identifier `key` (as stored),
    else the one whose id starts with `key`."""
    wanted = utf8_argument(key)
    if conn.execute(select(contacts.c.id).where(contacts.c.id == wanted)).first() is not None:
        return [wanted]
    identifier = stored_identifier(wanted) if wanted else None
    if identifier is not None:
        query = select(contacts.c.id).where(contacts.c.identifier == identifier)
        found = [str(i) for i in conn.execute(query.order_by(contacts.c.id)).scalars()]
        if found:
            return found
    ids = ids_starting_with(conn, wanted, contacts, "contact") if wanted else []
    if not ids:
        unstored = " (identifiers are not stored: [privacy] contact_identifier = drop)"
        raise UsageError(
            f"no contact has the id or identifier {key!r}{'' if identifier else unstored}; list "
            "contacts with SELECT id, identifier, title FROM contacts"
        )
    return ids


def _in_force(table: Table, at: datetime) -> ColumnElement[bool]:
    return (
        (table.c.state == GrantState.OK)
        & or_(table.c.validity_from.is_(None), table.c.validity_from <= at)
        & or_(table.c.validity_before.is_(None), table.c.validity_before > at)
    )


def _grants(
    conn: Connection, column: str, ids: list[str], at: datetime, as_of: AsOf | None
) -> list[AccessRow]:
    listed: ColumnElement[bool]
    if as_of is None:
        table: Table = grants
        listed = grants.c.removed_at.is_(None)
    else:
        table = grant_versions
        listed = valid_at(grant_versions, at) & (grant_versions.c.change_type != ChangeType.REMOVED)
    names = owner_names(conn)
    found: list[dict[str, Any]] = []
    for chunk in chunks(ids):
        query = select(table).where(table.c[column].in_(chunk), listed, _in_force(table, at))
        found.extend(dict(row) for row in conn.execute(query).mappings())
    bound = _present_locks(conn, {g["bound_lock_id"] for g in found}, as_of)
    found = [g for g in found if g["bound_lock_id"] in bound]
    locks = _titles(conn, bound_locks, {g["bound_lock_id"] for g in found}, "title")
    people = _titles(conn, contacts, {g["contact_id"] for g in found}, "title", "identifier")
    cards = _titles(conn, bound_cards, {g["bound_card_id"] for g in found}, "title", "label")
    rows = []
    for g in found:
        contact_title, identifier = people.get(g["contact_id"], (None, None))
        card_title, label = cards.get(g["bound_card_id"], (None, None))
        rows.append(
            AccessRow(
                grant_id=g["id"],
                owner_account_id=g["owner_account_id"],
                owner_name=names.get(g["owner_account_id"]),
                bound_lock_id=g["bound_lock_id"],
                lock_title=locks.get(g["bound_lock_id"], (None,))[0],
                contact_id=g["contact_id"],
                contact_title=contact_title,
                contact_identifier=identifier,
                bound_card_id=g["bound_card_id"],
                card_title=card_title,
                card_label=label,
                validity_from=g["validity_from"],
                validity_before=g["validity_before"],
                time_restriction_ical=g["time_restriction_ical"],
                state=g["state"],
            )
        )
    rows.sort(key=lambda r: (r.lock_title or "", r.contact_title or r.card_title or "", r.grant_id))
    return rows


def _present_locks(conn: Connection, ids: set[str | None], as_of: AsOf | None) -> set[str]:
    """Which of the bound lock ids `ids` are present now, or at `as_of`."""
    wanted = sorted(i for i in ids if i is not None)
    present: set[str] = set()
    for chunk in chunks(wanted):
        if as_of is None:
            query = select(bound_locks.c.id).where(
                bound_locks.c.id.in_(chunk), bound_locks.c.removed_at.is_(None)
            )
        else:
            v = bound_lock_versions
            query = select(v.c.id).where(
                v.c.id.in_(chunk), valid_at(v, as_of.at), v.c.change_type != ChangeType.REMOVED
            )
        present.update(conn.execute(query).scalars())
    return present


def _titles(
    conn: Connection, table: Table, ids: set[str | None], *columns: str
) -> dict[str, tuple[Any, ...]]:
    wanted = sorted(i for i in ids if i is not None)
    titles: dict[str, tuple[Any, ...]] = {}
    for chunk in chunks(wanted):
        query = select(table.c.id, *(table.c[c] for c in columns)).where(table.c.id.in_(chunk))
        for row in conn.execute(query):
            titles[row[0]] = tuple(row[1:])
    return titles
