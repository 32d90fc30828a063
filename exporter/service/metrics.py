"""Prometheus metrics: the daemon's counters of its own runs, and gauges read from the database.

The database gauges are read at each scrape, so every replica reports the same state.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from exporter.db.schema import bound_locks, owner_accounts, sync_runs
from exporter.errors import first_line
from exporter.kinds import ChangeType, RunStatus
from exporter.results import COUNTED_ENTITIES

if TYPE_CHECKING:
    from exporter.results import RunResult

log = logging.getLogger(__name__)

_PREFIX = "tapkey_exporter"
RUN_STATUSES = (RunStatus.SUCCEEDED, RunStatus.PARTIAL, RunStatus.FAILED)
CHANGE_KINDS = tuple(ChangeType)
# Runs take seconds for a small inventory and minutes for 100,000 locks.
_DURATION_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf"))


class Metrics:
    """The daemon's metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        counter = self._counter
        self.runs = counter(
            "runs",
            "Sync runs this process started (one sync_runs row each), by final status.",
            "status",
        )
        self.run_duration = Histogram(
            f"{_PREFIX}_run_duration_seconds",
            "Wall time of the runs this process started.",
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.changes = counter(
            "changes",
            "Changes written by this process's runs, by entity (locks, contacts, cards, grants) "
            "and kind.",
            "entity",
            "kind",
        )
        self.skipped_locks = counter(
            "skipped_locks", "Lock records this process's runs could not read and skipped."
        )
        self.api_requests = counter(
            "api_requests", "Tapkey Management API requests sent by this process, retries included."
        )
        self.api_retries = counter(
            "api_retries", "Tapkey API requests repeated after a 429, a 5xx or a network error."
        )
        self.lock_skips = counter(
            "lock_skips",
            "Scheduled slots skipped because another run held the database's writer lock.",
        )
        self.slot_errors = counter(
            "slot_errors",
            "Scheduled slots that failed before a run could start (no sync_runs row), by error.",
            "error",
        )
        self.last_success = Gauge(
            f"{_PREFIX}_last_success_timestamp_seconds",
            "Unix time at which a run of this process last finished as succeeded.",
            registry=self.registry,
        )
        for status in RUN_STATUSES:
            self.runs.labels(status)
        for entity in COUNTED_ENTITIES:
            for kind in CHANGE_KINDS:
                self.changes.labels(entity, kind)

    def _counter(self, name: str, documentation: str, *labels: str) -> Counter:
        return Counter(f"{_PREFIX}_{name}", documentation, labels, registry=self.registry)

    def record_run(self, result: RunResult | None, *, status: str, duration: float) -> None:
        """Count one run that got a sync_runs row (`result` is None if it raised)."""
        self.runs.labels(status).inc()
        self.run_duration.observe(duration)
        if result is None:
            return
        for entity, entity_counts in result.entity_counts().items():
            counts = entity_counts.as_dict()
            for kind in CHANGE_KINDS:
                self.changes.labels(entity, kind).inc(counts[kind])
        self.skipped_locks.inc(result.counts.skipped)
        if status == RunStatus.SUCCEEDED:
            finished = result.finished_at or datetime.now(UTC)
            self.last_success.set(finished.timestamp())

    def record_api(self, requests: int, retries: int) -> None:
        """Add one slot's API request and retry counts."""
        self.api_requests.inc(requests)
        self.api_retries.inc(retries)

    def watch_database(self, engine: Engine) -> None:
        """Also report what the database holds, read at each scrape."""
        self.registry.register(_DatabaseCollector(engine))


class _DatabaseCollector(Collector):
    """Gauges read from the database at scrape time, so every replica reports the same state."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterable[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            f"{_PREFIX}_database_up", "1 if the last scrape could read the database, else 0."
        )
        try:
            with self._engine.connect() as conn:
                locks = conn.execute(
                    select(func.count())
                    .select_from(bound_locks)
                    .where(bound_locks.c.removed_at.is_(None))
                ).scalar_one()
                owners = conn.execute(
                    select(func.count())
                    .select_from(owner_accounts)
                    .where(owner_accounts.c.removed_at.is_(None))
                ).scalar_one()
                last = last_success(conn)
        except SQLAlchemyError as exc:
            log.warning("metrics: cannot read the database: %s", first_line(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield _gauge("locks_present", "Bound locks present in the database now.", locks)
        yield _gauge("owners_present", "Owner accounts present in the database now.", owners)
        if last is not None:
            yield _gauge(
                "database_last_success_timestamp_seconds",
                "Unix time at which the database's newest succeeded run (of any replica) finished.",
                last.timestamp(),
            )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{_PREFIX}_{name}", documentation, value=value)


def last_success(conn: Any) -> datetime | None:
    """When the database's newest succeeded run finished (None before the first)."""
    # The writer lock serializes runs, so the highest id is also the newest run.
    finished: datetime | None = conn.execute(
        select(sync_runs.c.finished_at)
        .where(sync_runs.c.status == RunStatus.SUCCEEDED)
        .order_by(sync_runs.c.id.desc())
        .limit(1)
    ).scalar()
    return finished
