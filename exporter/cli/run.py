"""The sync commands: `run-once`, `check`, `serve`, `db upgrade`, `db current`."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from exporter.cli import shared
from exporter.cli.shared import (
    ConfigOption,
    DatabaseOption,
    FormatOption,
    QuietOption,
    check_format,
    errors,
    log,
    may_be_terminal,
)
from exporter.cli.shared import settings as load
from exporter.config.settings import Settings
from exporter.config.urls import masked_url
from exporter.kinds import RunStatus
from exporter.service.logging import run_scope

if TYPE_CHECKING:
    from exporter.results import RunResult, SyncProgress

db_app = typer.Typer(help="Database schema management.", no_args_is_help=True)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """SIGTERM/SIGINT stop the run at once (requests in flight abandoned), recorded as failed
    ("interrupted").

    A run killed mid-crawl stays `running` until the next run finds it; stopping it cleanly
    records why at once. A second signal acts as it would without this handler.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signal handlers can only be set from the main thread
        return

    def handle(signum: int, _frame: object) -> None:
        if stop.is_set():
            signal.signal(signum, previous[signal.Signals(signum)])
            signal.raise_signal(signum)
            return
        log.warning(
            "%s: stopping the run (send it again to exit at once)", signal.strsignal(signum)
        )
        stop.set()

    previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _progress_bar(
    settings: Settings, *, quiet: bool
) -> Iterator[Callable[[SyncProgress], None] | None]:
    """The sync's progress callback drawing a bar on stderr, or None where none is wanted."""
    if quiet or settings.logging.format == "json" or not may_be_terminal(sys.stderr):
        # No bar (progress.wanted would say so too): rich stays unimported until output.
        yield None
        return
    from exporter.service import progress  # rich's display: imported only for a bar

    if not progress.wanted(
        is_terminal=shared.err.is_terminal, quiet=quiet, log_format=settings.logging.format
    ):
        yield None
        return
    with progress.ProgressBar(shared.err) as update:
        yield update


def run_once(
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would change; write nothing.")
    ] = False,
    allow_client_change: Annotated[
        bool,
        typer.Option(
            "--allow-client-change",
            help="Accept a database filled by another OAuth client (see docs/operations.md).",
        ),
    ] = False,
    allow_mass_removal: Annotated[
        bool,
        typer.Option(
            "--allow-mass-removal",
            help="Confirm every removal the deletion guard held back (see docs/operations.md).",
        ),
    ] = False,
    allow_mass_removal_owner: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-mass-removal-owner",
            metavar="OWNER_ID",
            help="Confirm the held-back removals of this owner account only (its id or the "
            "start of it; repeatable).",
            show_default=False,
        ),
    ] = None,
    fmt: FormatOption = "table",
    quiet: QuietOption = False,
) -> None:
    """Run one sync now and print a summary.

    When an owner suddenly lists far fewer locks than stored, or the owner list loses more than
    half of its owners, those removals are held back (exit 3) until confirmed with
    --allow-mass-removal or --allow-mass-removal-owner OWNER_ID.

    At a terminal a progress bar on stderr shows owners done, locks, requests, rate and time
    left (not with --quiet, JSON logs, or when stderr is not a terminal).

    Example: exporter run-once --config /etc/tapkey-exporter/config.toml
    """
    from exporter.service import preflight

    check_format(fmt)
    with errors():
        settings = load(config, database_url=database_url, quiet=quiet)
        with (
            run_scope() as scope,
            _stop_on_signals() as stop,
            _progress_bar(settings, quiet=quiet) as progress,
        ):
            # Configuration and schema first, then the token request: the tables and the sync
            # are loaded and prepared while it is in flight (docs/operations.md, "Start-up").
            # Owner ids to confirm are looked up in the database before any request is sent.
            preflight.check_run_config(settings)
            engine = preflight.open_database(settings, dry_run=dry_run)
            tokens = (
                None
                if allow_mass_removal_owner
                else preflight.start_token_request(settings, stop=stop)
            )
            from exporter.service import job

            result = job.run_once(
                settings,
                trigger="manual",
                stop=stop,
                dry_run=dry_run,
                allow_client_change=allow_client_change,
                on_started=scope.bind,
                allow_mass_removal=allow_mass_removal,
                allow_mass_removal_owners=allow_mass_removal_owner or (),
                progress=progress,
                engine=engine,
                tokens=tokens,
            )
    if fmt == "json":
        with errors():
            _print_json(result, settings)
    elif not quiet or result.status != RunStatus.SUCCEEDED:
        from exporter.read import run_render  # after the run: no start-up cost

        run_render.print_run_result(result, shared.out, shared.err)
    if result.status == RunStatus.FAILED and result.error:
        shared.err.print(f"error: {result.error}")
    elif result.held_back and result.error:
        shared.err.print(f"warning: {result.error}")
    raise typer.Exit(job.EXIT_CODES[result.status])


def _print_json(result: RunResult, settings: Settings) -> None:
    """The result as JSON; a run's changes are read back from the database as they are written."""
    from exporter.read import run_render
    from exporter.read import runs as runs_report
    from exporter.service import preflight

    if result.dry_run or result.run_id is None:  # a dry run's changes exist only in memory
        run_render.run_result_json(result, shared.out.file, None)
        return
    engine = preflight.make_engine(settings, create=False)
    try:
        with runs_report.open_run_changes(engine, result.run_id) as changes:
            run_render.run_result_json(result, shared.out.file, changes)
    finally:
        engine.dispose()


def check(config: ConfigOption = None, database_url: DatabaseOption = None) -> None:
    """Check the setup without writing anything: config, token and scopes, owners, database.

    Exit code: 2 if the configuration is incomplete, else 1 if Tapkey failed, else 5 if the
    database is unreachable or its schema not current, else 0.

    Example: exporter check --config /etc/tapkey-exporter/config.toml
    """
    from exporter.service.check import run_checks
    from exporter.terminal import visible

    with errors():
        settings = load(config, database_url=database_url)
        results = run_checks(settings)
    for result in results:
        label = "skip" if result.skipped else "ok" if result.ok else "FAILED"
        # One line per check: a detail may quote the API (an owner's name) and must not start
        # a line of its own that reads like another check's.
        line = f"{label:<7}{result.name:<10}{visible(result.detail, keep_layout=False)}"
        (shared.out if result.ok else shared.err).print(line)
    failures = [r.exit_code for r in results if not r.ok]
    # Configuration first (nothing else can be trusted), then Tapkey, then the database.
    code = next((c for c in (2, 1, 5) if c in failures), 1 if failures else 0)
    raise typer.Exit(code)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None, database_url: DatabaseOption = None) -> None:
    """Create or upgrade the database schema to the version this exporter needs.

    Example: exporter db upgrade --database-url postgresql://exporter@db/inventory
    """
    from exporter.db import migrate
    from exporter.service import preflight

    with errors():
        settings = load(config, database_url=database_url)
        engine = preflight.make_engine(settings)
        try:
            wait = max(settings.database.lock_timeout, migrate.UPGRADE_LOCK_WAIT)
            migrate.upgrade(engine, lock_timeout=wait)
            revision = migrate.current_revision(engine)
        finally:
            engine.dispose()
    shared.out.print(f"{masked_url(settings.database.url)} is at revision {revision} (head)")


@db_app.command("current")
def db_current(config: ConfigOption = None, database_url: DatabaseOption = None) -> None:
    """Show the database's schema revision and whether it is current (exit 5 if not).

    Example: exporter db current
    """
    from exporter.db import migrate
    from exporter.service import preflight

    with errors():
        settings = load(config, database_url=database_url)
        engine = preflight.make_engine(settings, create=False)
        try:
            revision = migrate.current_revision(engine)
        finally:
            engine.dispose()
    head = migrate.head_revision()
    state = (
        "up to date" if revision == head else f"behind (head is {head}; run `exporter db upgrade`)"
    )
    if revision is not None and not migrate.is_known_revision(revision):
        state = f"unknown to this exporter version (head is {head}; a newer exporter upgraded it?)"
    shared.out.print(f"{masked_url(settings.database.url)}: revision {revision or 'none'}, {state}")
    if revision != head:
        raise typer.Exit(5)


def serve(config: ConfigOption = None) -> None:
    """Run the sync on a schedule until stopped, with optional /healthz, /livez and /metrics.

    Replicas may share a database: a replica that finds the writer lock held skips that slot.

    SIGTERM/SIGINT ends the current run as failed/interrupted and exits 0; a second one exits now.

    Example: exporter serve --config /etc/tapkey-exporter/config.toml
    """
    from exporter.service.scheduler import serve as serve_daemon

    with errors():
        settings = load(config)
        code = serve_daemon(settings)
    raise typer.Exit(code)
