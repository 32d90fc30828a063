"""One version as a change: the version before it, the fields that differ, streamed per table.

Every entity with history (owner accounts, bound locks, contacts, bound cards, grants) keeps its
versions in a table of the same shape: the tracked attributes, `valid_from`/`valid_to`, `run_id`,
`change_type`, `removal_reason`. The previous version of a version is the one of the same entity
that ended when it began; a change's fields are the tracked attributes that differ from it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any, cast

from sqlalchemy import ColumnElement, Connection, Select, Table, select

from exporter.db.schema import (
    CARD_TRACKED,
    CONTACT_TRACKED,
    GRANT_TRACKED,
    bound_card_versions,
    contact_versions,
    grant_versions,
)
from exporter.kinds import ChangeEntity, ChangeType
from exporter.read.inventory import Row, id_order
from exporter.read.streaming import stream

# Compared per row: a module constant, not an Enum attribute lookup (four times slower).
_CREATED = ChangeType.CREATED


@dataclass(frozen=True)
class FieldChange:
    """One tracked attribute that differs from the previous version."""

    field: str
    old: Any
    new: Any


@dataclass(frozen=True)
class ChangeRow:
    """One version of an entity (a lock, an owner account, a contact, a card or a grant), with
    what changed against the previous one."""

    # A ChangeEntity as plain str: the CSV writer takes columns of exact str on its fast path.
    entity: str
    version_id: int
    id: str
    changed_at: datetime
    valid_to: datetime | None
    run_id: int
    change_type: str
    removal_reason: str | None
    owner_account_id: str | None
    owner_name: str | None
    title: str | None
    lock_id_hex: str | None = None
    lock_model_name: str | None = None
    previous_version_id: int | None = None
    changes: tuple[FieldChange, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The fields by name, `changes` as a list of {field, old, new}."""
        # Not dataclasses.asdict: it deep-copies every value, a cost a feed of a million pays.
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["changes"] = [{"field": c.field, "old": c.old, "new": c.new} for c in self.changes]
        return data


# A version row's values of ChangeRow's fields from version_id to removal_reason, in order.
_VERSION_VALUES = itemgetter(
    "version_id", "id", "valid_from", "valid_to", "run_id", "change_type", "removal_reason"
)
_Version = tuple[int, str, datetime, datetime | None, int, str, str | None]


@dataclass(frozen=True)
class AccessHistory:
    """An access entity's version table as the change feed reads it."""

    versions: Table
    tracked: tuple[str, ...]
    title: str | None  # the column shown as its title (a grant has none)


# By the entity's name in the change feed (the singular of `[tapkey] entities`).
ACCESS_HISTORIES: dict[str, AccessHistory] = {
    ChangeEntity.CONTACT: AccessHistory(contact_versions, CONTACT_TRACKED, "title"),
    ChangeEntity.CARD: AccessHistory(bound_card_versions, CARD_TRACKED, "title"),
    ChangeEntity.GRANT: AccessHistory(grant_versions, GRANT_TRACKED, None),
}


def with_previous(table: Table, tracked: Sequence[str]) -> Select[Any]:
    """Versions of `table`, each with the tracked values of the version before it.

    Versions of one entity are contiguous: the previous one ended when this one began (the
    `bound_lock_change_feed` view joins them the same way).
    """
    previous = table.alias("previous")
    return select(
        *table.c,
        previous.c.version_id.label("previous_version_id"),
        *(previous.c[name].label(f"previous_{name}") for name in tracked),
    ).select_from(
        table.outerjoin(
            previous,
            (previous.c.id == table.c.id) & (previous.c.valid_to == table.c.valid_from),
        )
    )


def change_row(
    entity: str,
    row: Row,
    tracked: Sequence[str],
    owner_id: str,
    names: Mapping[str, str | None],
    **described: Any,
) -> ChangeRow:
    """A version row (with its previous version's values) as a change of an element of
    `owner_id` (named from `names`); `described` says more of it (its title, ...)."""
    previous = row["previous_version_id"] if row["change_type"] != _CREATED else None
    changes: tuple[FieldChange, ...] = ()
    if previous is not None:
        changes = tuple(
            FieldChange(name, row[f"previous_{name}"], row[name])
            for name in tracked
            if row[f"previous_{name}"] != row[name]
        )
    version = cast(_Version, _VERSION_VALUES(row))
    return ChangeRow(
        str(entity),
        *version,
        previous_version_id=previous,
        changes=changes,
        owner_account_id=owner_id,
        owner_name=names.get(owner_id),
        **described,
    )


def access_changes(
    conn: Connection,
    entity: str,
    condition: ColumnElement[bool],
    names: Mapping[str, str | None],
) -> Iterator[ChangeRow]:
    """The versions of an access entity (ACCESS_HISTORIES) matching `condition` as changes, by
    time and id, streamed: nothing else may run on `conn` until they are all read."""
    history = ACCESS_HISTORIES[entity]
    v = history.versions
    query = (
        with_previous(v, history.tracked)
        .where(condition)
        .order_by(v.c.valid_from, id_order(v.c.id, conn.dialect.name))
    )
    columns = query.selected_columns.keys()
    for values in stream(conn, query):
        row = dict(zip(columns, values, strict=True))
        title = row[history.title] if history.title is not None else None
        yield change_row(entity, row, history.tracked, row["owner_account_id"], names, title=title)
