"""Logging setup, Prometheus metrics and the `/healthz`, `/livez` and `/metrics` HTTP endpoint.

Every log line written by a run carries that run's id (`sync_runs.id`): the scheduler opens a
`run_scope()` around each slot and binds the id once the run row exists. The scope is a context
variable, so lines of other threads (the HTTP endpoint's) never carry it; the run's fetch threads
run in a copy of its context (`exporter.sync.crawl`), so theirs do.

`/healthz` reads the database rather than this process's memory, so a replica that keeps losing
the writer lock to its peers is still healthy while the database is kept fresh.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from socketserver import ThreadingMixIn
from typing import IO, TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from exporter.config.sections import LoggingSettings
from exporter.db.schema import bound_locks, owner_accounts, sync_runs
from exporter.errors import ConfigError, first_line
from exporter.kinds import ChangeType, RunStatus
from exporter.results import COUNTED_ENTITIES
from exporter.terminal import json_visible, visible

if TYPE_CHECKING:
    from exporter.results import RunResult

log = logging.getLogger(__name__)

# --- logging ------------------------------------------------------------------------------------


class RunScope:
    """The run in progress in this process; `bind` is handed to the sync as `on_started`."""

    def __init__(self) -> None:
        self.run_id: int | None = None

    def bind(self, run_id: int) -> None:
        """Tag every following log line with `run_id`."""
        self.run_id = run_id


# Per context, not per process: the /healthz and /metrics threads log while a run is in progress.
_current: contextvars.ContextVar[RunScope | None] = contextvars.ContextVar("run", default=None)


@contextlib.contextmanager
def run_scope() -> Iterator[RunScope]:
    """Mark the lines logged inside the block (in this context) as belonging to one run."""
    scope = RunScope()
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)


class RunIdFilter(logging.Filter):
    """Adds `record.run_id` (None outside a run, or before the run row exists)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "run_id", None) is None:
            scope = _current.get()
            record.run_id = scope.run_id if scope is not None else None
        return True


def _utc_time(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class TextFormatter(logging.Formatter):
    """`2025-01-31T12:00:00.123Z INFO exporter.sync.engine run=42: message` (UTC times).

    Messages quote API text: control characters are shown escaped, newlines too (one record,
    one line); a traceback keeps its lines.
    """

    def format(self, record: logging.LogRecord) -> str:
        run_id = getattr(record, "run_id", None)
        run = f" run={run_id}" if run_id is not None else ""
        message = visible(record.getMessage(), keep_layout=False)
        line = f"{_utc_time(record)} {record.levelname} {record.name}{run}: {message}"
        if record.exc_info:
            line += "\n" + visible(self.formatException(record.exc_info))
        if record.stack_info:
            line += "\n" + visible(self.formatStack(record.stack_info))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, run_id (in a run), exception."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": _utc_time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        run_id = getattr(record, "run_id", None)
        if run_id is not None:
            data["run_id"] = run_id
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json_visible(json.dumps(data, ensure_ascii=False, default=str))


def setup_logging(settings: LoggingSettings, *, stream: IO[str] | None = None) -> None:
    """Send all logging to stderr (or `stream`) as text or JSON lines, at `settings.level`."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    handler.addFilter(RunIdFilter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(settings.level)
    # APScheduler reports every job start and finish, Alembic every schema check, at INFO: two
    # lines per run that say nothing our own lines do not.
    quiet = logging.DEBUG if settings.level == "DEBUG" else logging.WARNING
    for name in ("apscheduler", "alembic"):
        logging.getLogger(name).setLevel(quiet)


# --- metrics ------------------------------------------------------------------------------------

_PREFIX = "tapkey_exporter"
RUN_STATUSES = (RunStatus.SUCCEEDED, RunStatus.PARTIAL, RunStatus.FAILED)
CHANGE_KINDS = tuple(ChangeType)
# Runs take seconds for a small inventory and minutes for 100,000 locks.
_DURATION_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf"))


class Metrics:
    """The daemon's metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs = Counter(
            f"{_PREFIX}_runs",
            "Sync runs this process started (one sync_runs row each), by final status.",
            ["status"],
            registry=r,
        )
        self.run_duration = Histogram(
            f"{_PREFIX}_run_duration_seconds",
            "Wall time of the runs this process started.",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.changes = Counter(
            f"{_PREFIX}_changes",
            "Changes written by this process's runs, by entity (locks, contacts, cards, grants) "
            "and kind.",
            ["entity", "kind"],
            registry=r,
        )
        self.skipped_locks = Counter(
            f"{_PREFIX}_skipped_locks",
            "Lock records this process's runs could not read and skipped.",
            registry=r,
        )
        self.api_requests = Counter(
            f"{_PREFIX}_api_requests",
            "Tapkey Management API requests sent by this process, retries included.",
            registry=r,
        )
        self.api_retries = Counter(
            f"{_PREFIX}_api_retries",
            "Tapkey API requests repeated after a 429, a 5xx or a network error.",
            registry=r,
        )
        self.lock_skips = Counter(
            f"{_PREFIX}_lock_skips",
            "Scheduled slots skipped because another run held the database's writer lock.",
            registry=r,
        )
        self.slot_errors = Counter(
            f"{_PREFIX}_slot_errors",
            "Scheduled slots that failed before a run could start (no sync_runs row), by error.",
            ["error"],
            registry=r,
        )
        self.last_success = Gauge(
            f"{_PREFIX}_last_success_timestamp_seconds",
            "Unix time at which a run of this process last finished as succeeded.",
            registry=r,
        )
        for status in RUN_STATUSES:
            self.runs.labels(status)
        for entity in COUNTED_ENTITIES:
            for kind in CHANGE_KINDS:
                self.changes.labels(entity, kind)

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
                last = _last_success(conn)
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


def _last_success(conn: Any) -> datetime | None:
    # The writer lock serializes runs, so the highest id is also the newest run.
    finished: datetime | None = conn.execute(
        select(sync_runs.c.finished_at)
        .where(sync_runs.c.status == RunStatus.SUCCEEDED)
        .order_by(sync_runs.c.id.desc())
        .limit(1)
    ).scalar()
    return finished


# --- /healthz -----------------------------------------------------------------------------------


def health(
    engine: Engine, *, max_age: float, now: Callable[[], datetime]
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body): 200 while the newest succeeded run is younger than `max_age`."""
    try:
        with engine.connect() as conn:
            last = _last_success(conn)
    except SQLAlchemyError as exc:
        log.warning("healthz: cannot read the database: %s", first_line(exc))
        return 503, {"status": "unavailable", "reason": "cannot read the database"}
    body: dict[str, Any] = {"max_age_seconds": max_age}
    if last is None:
        return 503, {"status": "stale", "reason": "no succeeded run yet", **body}
    age = (now() - last).total_seconds()
    body.update(last_success=last.isoformat().replace("+00:00", "Z"), age_seconds=round(age, 3))
    if age > max_age:
        reason = f"the last succeeded run finished {age:.0f} s ago (limit {max_age:g} s)"
        return 503, {"status": "stale", "reason": reason, **body}
    return 200, {"status": "ok", **body}


# --- HTTP endpoint ------------------------------------------------------------------------------

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def make_app(
    engine: Engine,
    metrics: Metrics,
    *,
    max_age: float,
    live: Callable[[], bool] = lambda: True,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> WsgiApp:
    """The WSGI app: `/healthz` and `/livez` (JSON), `/metrics` (Prometheus text), else 404.

    `/livez` asks only whether the process serves (`live()`: false once it is shutting down), never
    Tapkey or the database: a liveness probe on it does not restart pods during an outage.
    """
    metrics_app = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            status, body = health(engine, max_age=max_age, now=now)
        elif path == "/livez":
            status, body = (200, {"status": "ok"}) if live() else (503, {"status": "stopping"})
        else:
            error = {"error": "try /healthz, /livez or /metrics"}
            return _json(start_response, "404 Not Found", error)
        phrase = "OK" if status == 200 else "Service Unavailable"
        return _json(start_response, f"{status} {phrase}", body)

    return app


def _json(start_response: Callable[..., Any], status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode() + b"\n"
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(data))),
        ("Cache-Control", "no-store"),
    ]
    start_response(status, headers)
    return [data]


class _Handler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        # Probes arrive every few seconds: keep access lines out of the log unless debugging.
        log.debug("http %s " + format, self.address_string(), *args)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class HttpEndpoint:
    """Serves a WSGI app on `host:port` from a daemon thread."""

    def __init__(self, app: WsgiApp, host: str, port: int) -> None:
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            server_class = _Server6 if family == socket.AF_INET6 else _Server
            self._server = make_server(host, port, app, server_class, _Handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on [http] listen {host}:{port}: {exc.strerror or exc}; "
                "pick a free port or an address of this host"
            ) from None
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="http-endpoint",
            daemon=True,
        )

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); the port is the real one when 0 was asked for."""
        host, port = self._server.server_address[:2]
        return (host if isinstance(host, str) else host.decode()), int(port)

    def start(self) -> None:
        """Start serving in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()
