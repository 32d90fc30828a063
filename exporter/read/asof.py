"""Instants on the read side: `--as-of`, `--since` and `--until` values, and the versions valid
at an instant."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, Engine, FromClause, func, select

from exporter.config.values import parse_duration
from exporter.db.engine import connect
from exporter.db.schema import sync_runs
from exporter.errors import UsageError

__all__ = [
    "AsOf",
    "missing_run",
    "parse_instant",
    "parse_period",
    "resolve_as_of",
    "stored_run_id",
    "valid_at",
]


# -- instants -------------------------------------------------------------------------------------


def parse_instant(text: str, *, now: datetime) -> datetime:
    """An ISO-8601 timestamp (naive means UTC) or a duration back from `now` ("7d", "1h30m")."""
    value = text.strip()
    try:
        # RFC 3339 allows a lower-case t and z, which fromisoformat refuses.
        moment = datetime.fromisoformat(value.upper())
    except ValueError:
        try:
            return now - timedelta(seconds=parse_duration(value))
        except ValueError:
            raise UsageError(
                f"cannot read {text!r} as a time: give an ISO-8601 timestamp such as "
                "2026-03-01 or 2026-03-01T12:00:00Z (UTC unless it has an offset), or a duration "
                "back from now such as 7d, 12h or 1h30m"
            ) from None
        except OverflowError:  # "100000000d": before the year 1
            raise _out_of_range(text) from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is in the year 0 in UTC
        raise _out_of_range(text) from None


def _out_of_range(text: str) -> UsageError:
    return UsageError(
        f"{text!r} is outside the times the exporter can show (the years 1 to 9999 in UTC); "
        "give a later or shorter time"
    )


def parse_period(
    since: str | None, until: str | None, *, now: datetime
) -> tuple[datetime | None, datetime | None]:
    """`--since` and `--until` as instants (None where not given)."""
    return (
        parse_instant(since, now=now) if since else None,
        parse_instant(until, now=now) if until else None,
    )


@dataclass(frozen=True)
class AsOf:
    """The instant an inventory was asked for, and the run it came from (for a run id).

    `first_run_at` is the start of the first run when `at` is before it: nothing was recorded
    then, which an empty inventory alone does not say.
    """

    at: datetime
    run_id: int | None = None
    first_run_at: datetime | None = None


def resolve_as_of(engine: Engine, text: str, *, now: datetime) -> AsOf:
    """`--as-of`: a run id means that run's `finished_at`; else a timestamp or a duration."""
    value = text.strip()
    if not (value.isascii() and value.isdigit()):  # "²" is a digit to str.isdigit
        at = parse_instant(value, now=now)
        with connect(engine) as conn:
            first = conn.execute(select(func.min(sync_runs.c.started_at))).scalar_one_or_none()
        return AsOf(at, first_run_at=first if first is not None and at < first else None)
    run_id = int(value)
    row = None
    if stored_run_id(run_id):
        with connect(engine) as conn:
            row = conn.execute(
                select(sync_runs.c.finished_at, sync_runs.c.status).where(sync_runs.c.id == run_id)
            ).one_or_none()
    if row is None:
        raise _missing_run_or_date(value)
    if row.finished_at is None:
        raise UsageError(
            f"run {run_id} has no recorded end (it is running, or was abandoned); give a "
            "timestamp instead"
        )
    return AsOf(row.finished_at, run_id)


def _missing_run_or_date(value: str) -> UsageError:
    """No run `value`; digits that read as a day (20260301, ISO's basic form) get the form
    that means a time, since digits alone mean a run id."""
    try:
        day = datetime.strptime(value, "%Y%m%d").date() if len(value) == 8 else None
    except ValueError:
        day = None
    if day is None:
        return missing_run(int(value))
    return UsageError(
        f"there is no run {value}; for the day {day.isoformat()} write it with dashes "
        "(digits alone are a run id)"
    )


def valid_at(table: FromClause, at: datetime) -> ColumnElement[bool]:
    """The versions of `table` valid at `at`: valid_from <= at < valid_to (or open)."""
    return (table.c.valid_from <= at) & (table.c.valid_to.is_(None) | (table.c.valid_to > at))


# sync_runs.id is an INTEGER: 32 bits on PostgreSQL and MariaDB.
_MAX_RUN_ID = 2**31 - 1


def stored_run_id(run_id: int) -> bool:
    """Whether `run_id` is a value sync_runs.id can hold; another is no run (and a database
    refuses it as a parameter instead of finding nothing)."""
    return 1 <= run_id <= _MAX_RUN_ID


def missing_run(run_id: int) -> UsageError:
    """The error for a run id that names no run."""
    return UsageError(f"there is no run {run_id}; `exporter runs` lists the runs")
