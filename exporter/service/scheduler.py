"""`exporter serve`: APScheduler wiring that runs the sync on the `[schedule]` until a signal.

One job, run by one thread, never overlapping (`max_instances=1`); slots missed while a run
overruns or the host sleeps are coalesced into one run, never queued. Replicas are kept apart by
the database's writer lock, taken inside each run: the loser skips its slot and writes nothing.

Shutdown: the first SIGTERM/SIGINT stops scheduling and sets the stop event: the sync abandons
the requests in flight and stops within about a second (the owner being written commits or rolls
back as a whole), so the run ends as `failed`/`interrupted` and releases its lock; the daemon
waits up to `shutdown_timeout` for that and exits 0. A second signal exits at once; every write
being transactional, the database stays consistent, and the next run marks the abandoned run
`failed` (abandoned, no end time).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from datetime import UTC, datetime
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

from exporter.config.sections import ScheduleSettings
from exporter.config.settings import Settings
from exporter.errors import ExporterError, LockHeldError
from exporter.kinds import RunStatus
from exporter.results import RunResult
from exporter.service import http, job, preflight
from exporter.service.logging import run_scope
from exporter.service.metrics import Metrics
from exporter.tapkey.client import TapkeyClient

log = logging.getLogger(__name__)

JOB_ID = "sync"


def build_trigger(schedule: ScheduleSettings) -> BaseTrigger:
    """The APScheduler trigger for `[schedule]`: an interval (`every`) or a crontab (`cron`)."""
    jitter = schedule.jitter or None
    cron = schedule.cron_trigger()
    if cron is not None:
        cron.jitter = jitter
        return cron
    seconds = schedule.interval_seconds
    assert seconds is not None  # config guarantees `every` when `cron` is unset
    return IntervalTrigger(seconds=seconds, timezone=UTC, jitter=jitter)


def describe(schedule: ScheduleSettings) -> str:
    """The schedule in words, for the start-up line."""
    if schedule.cron is not None:
        when = f"cron {schedule.cron!r} ({schedule.timezone})"
    else:
        when = f"every {schedule.every}"
    if schedule.jitter:
        when += f", jitter up to {schedule.jitter:g} s"
    return when


# The longest the scheduler sleeps without looking at the wall clock.
CLOCK_CHECK = 30.0


class _WallClockScheduler(BlockingScheduler):  # type: ignore[misc]
    """A BlockingScheduler that looks at the wall clock at least every `clock_check` seconds.

    APScheduler sleeps until the next slot on the monotonic clock, which stands still while the
    host is suspended and ignores steps of the wall clock: after a suspend of an hour, the daemon
    woke an hour after its slot, too late for `misfire_grace_time`, and skipped a run it was
    awake for (a daily cron run was lost to any suspend during the day before).
    """

    def __init__(self, *, clock_check: float, **options: object) -> None:
        super().__init__(**options)
        self._clock_check = clock_check

    def _process_jobs(self) -> float:
        wait: float | None = super()._process_jobs()
        return self._clock_check if wait is None else min(wait, self._clock_check)


class _Shutdown(BaseException):
    """Raised in the main thread by the first signal to leave the scheduler loop."""


class Daemon:
    """The scheduled sync with its metrics, health endpoint and signal handling."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        # Serializes "is a run allowed to start" with "stop", so no run starts after shutdown began.
        self._gate = threading.Lock()
        self._signals = 0
        schedule = settings.schedule
        grace = max(1, math.ceil(schedule.misfire_grace_time))
        self.scheduler = _WallClockScheduler(
            # Several looks within the grace time, so a slot after a clock jump is not missed.
            clock_check=min(CLOCK_CHECK, grace / 4),
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": grace},
        )
        # Leaving next_run_time out lets the trigger pick the first slot (None would pause the job).
        first = {"next_run_time": datetime.now(UTC)} if schedule.run_on_start else {}
        self.scheduler.add_job(
            self.tick, build_trigger(schedule), id=JOB_ID, name="tapkey sync", **first
        )

    # -- one slot -------------------------------------------------------------------------------

    def tick(self) -> None:
        """Run one scheduled slot; never raises, so a failure never stops the schedule."""
        with self._gate:
            if self.stop.is_set():
                return
            self._idle.clear()
        try:
            self._slot()
            next_run = self._next_run_time()
            if next_run is not None and not self.stop.is_set():
                log.info("next run at %s", next_run.astimezone(UTC).isoformat(timespec="seconds"))
        except Exception:
            log.exception("unexpected error in the scheduled slot; the next slot runs as usual")
        finally:
            self._idle.set()

    def _slot(self) -> None:
        clients: list[TapkeyClient] = []
        result: RunResult | None = None
        started = time.monotonic()
        with run_scope() as scope:
            try:
                result = job.run_once(
                    self.settings,
                    trigger="schedule",
                    stop=self.stop,
                    on_started=scope.bind,
                    on_client=clients.append,
                )
            except LockHeldError:
                self.metrics.lock_skips.inc()
                log.info(
                    "skipped this slot: another exporter run (a replica or a manual run-once) "
                    "holds the database's writer lock; no run row written"
                )
            except ExporterError as exc:
                # Database unreachable, schema behind, client mismatch, unreadable secret: say
                # so and try again at the next slot.
                log.error(
                    "%s: %s (exit code %d); retrying at the next slot",
                    _what_failed(scope.run_id),
                    exc,
                    exc.exit_code,
                )
                if scope.run_id is None:
                    self.metrics.slot_errors.labels(type(exc).__name__).inc()
            except Exception as exc:
                log.exception(
                    "%s unexpectedly; retrying at the next slot", _what_failed(scope.run_id)
                )
                if scope.run_id is None:
                    self.metrics.slot_errors.labels(type(exc).__name__).inc()
            finally:
                for client in clients:
                    self.metrics.record_api(client.request_count, client.retry_count)
            if scope.run_id is not None:
                status = result.status if result is not None else RunStatus.FAILED
                self.metrics.record_run(result, status=status, duration=time.monotonic() - started)
            if result is not None:
                _log_result(result)

    def _next_run_time(self) -> datetime | None:
        scheduled = self.scheduler.get_job(JOB_ID)
        return None if scheduled is None else scheduled.next_run_time

    # -- lifecycle ------------------------------------------------------------------------------

    def run(self) -> int:
        """Schedule syncs until SIGTERM/SIGINT/SIGHUP; return the exit code (0 after a clean
        stop)."""
        graceful = [signal.SIGTERM, signal.SIGINT]
        # A closed terminal's hangup stops like SIGTERM (by default it killed the daemon mid-run,
        # leaving its run `running`), unless it is ignored, as under nohup: then it stays so.
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
            graceful.append(signal.SIGHUP)
        previous = {signum: signal.signal(signum, self._on_signal) for signum in graceful}
        try:
            try:
                log.info("exporter serve started: %s", describe(self.settings.schedule))
                self.scheduler.start()
            except _Shutdown:
                pass
            return self._shut_down()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            log.info("%s received: stopping (again to exit at once)", name)
            raise _Shutdown
        log.warning("%s received again: exiting now; the next run marks this one failed", name)
        logging.shutdown()
        os._exit(128 + signum)

    def _shut_down(self) -> int:
        with self._gate:
            self.stop.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        timeout = self.settings.schedule.shutdown_timeout
        if not self._idle.is_set():
            log.info("waiting up to %g s for the current run to stop", timeout)
        if not self._idle.wait(timeout):
            log.warning(
                "the current run did not stop within %g s; exiting anyway (the database stays "
                "consistent; the next run marks this one failed)",
                timeout,
            )
            logging.shutdown()
            os._exit(0)
        log.info("exporter serve stopped")
        return 0


def _what_failed(run_id: int | None) -> str:
    """The subject of a slot's error line: a run only if one was started (has a sync_runs row)."""
    return f"run {run_id} failed" if run_id is not None else "slot skipped, no run started"


def _log_result(result: RunResult) -> None:
    if result.status == RunStatus.FAILED and result.error == "interrupted":
        log.info("run %s stopped by the shutdown (recorded as failed/interrupted)", result.run_id)
    elif result.status == RunStatus.FAILED:
        log.error("run %s failed: %s", result.run_id, result.error)
    elif result.status == RunStatus.PARTIAL:
        log.warning("run %s partial: %s", result.run_id, result.error)


def serve(settings: Settings) -> int:
    """Run the daemon (with the HTTP endpoint when `[http] enabled`); return the exit code."""
    settings.tapkey.credentials()  # a missing client id or secret is a start-up error (exit 2)
    preflight.refuse_in_memory(settings)
    daemon = Daemon(settings)
    endpoint = None
    engine = None
    if settings.http.enabled:
        engine = preflight.make_engine(settings)
        daemon.metrics.watch_database(engine)
        app = http.make_app(
            engine,
            daemon.metrics,
            max_age=settings.http.healthz_max_age_seconds,
            live=lambda: not daemon.stop.is_set(),
        )
        endpoint = http.HttpEndpoint(app, settings.http.host, settings.http.port)
        endpoint.start()
        host, port = endpoint.address
        shown = f"[{host}]" if ":" in host else host
        log.info("serving /healthz, /livez and /metrics on http://%s:%d", shown, port)
    try:
        return daemon.run()
    finally:
        if endpoint is not None:
            endpoint.stop()
        if engine is not None:
            engine.dispose()
