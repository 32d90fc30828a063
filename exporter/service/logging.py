"""Logging: text or JSON lines on stderr, each line of a run tagged with that run's id.

Every log line written by a run carries that run's id (`sync_runs.id`): the scheduler opens a
`run_scope()` around each slot and binds the id once the run row exists. The scope is a context
variable, so lines of other threads (the HTTP endpoint's) never carry it; the run's fetch threads
run in a copy of its context (`exporter.sync.crawl`), so theirs do.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any

from exporter.config.sections import LoggingSettings
from exporter.terminal import json_visible, visible


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
    # SQLAlchemy's pool logs a 60-line traceback at ERROR for each connection the server dropped
    # (MariaDB's KILL, a restart) that it then fails to reset or close, and discards anyway: the
    # run already reports the lost connection in one line, which is all cron should mail.
    pool = logging.DEBUG if settings.level == "DEBUG" else logging.CRITICAL
    logging.getLogger("sqlalchemy.pool").setLevel(pool)
