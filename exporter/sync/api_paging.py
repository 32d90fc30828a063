"""The `api_paging` table: what each API server's paging is known to do, kept between runs."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, delete, insert, select

from exporter.db.schema import api_paging
from exporter.tapkey.paging import PageSizes


def load(conn: Connection, api_url: str) -> PageSizes:
    """What earlier runs learned about the server at `api_url` (nothing yet: PageSizes())."""
    row = conn.execute(
        select(api_paging.c.honoured_page_size, api_paging.c.max_top).where(
            api_paging.c.api_url == api_url
        )
    ).first()
    return PageSizes() if row is None else PageSizes(row.honoured_page_size, row.max_top)


def save(conn: Connection, api_url: str, sizes: PageSizes, now: datetime) -> None:
    """Keep `sizes` for `api_url` (call in a transaction, under the writer lock)."""
    # Delete and insert: one statement on every database, and the writer lock rules out a race.
    conn.execute(delete(api_paging).where(api_paging.c.api_url == api_url))
    conn.execute(
        insert(api_paging).values(
            api_url=api_url,
            honoured_page_size=sizes.honoured,
            max_top=sizes.max_top,
            updated_at=now,
        )
    )


def describe(sizes: PageSizes) -> str:
    """One line for `exporter check`."""
    if sizes.honoured is None:
        known = "page size not known yet: each list's short last page is confirmed by a request"
    else:
        known = (
            f"the server returns full pages of {sizes.honoured}: a shorter page ends a list "
            "without a confirming request"
        )
    if sizes.max_top is not None:
        known += f"; it refused a larger $top, so at most {sizes.max_top} are asked for"
    return known
