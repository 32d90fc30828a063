"""The `exporter` command line: wiring and error-to-exit-code mapping only.

Exit codes (the same for every command):
    0 succeeded · 1 failed · 2 usage or configuration error · 3 partial (some owners failed)
    4 another run holds the database lock
    5 database unreachable, or schema not at the expected revision
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from exporter.config.loader import file_permissions_warning, load_settings, resolve_config_path
from exporter.config.settings import Settings, masked_url
from exporter.errors import ExporterError, UsageError
from exporter.kinds import OwnerStatus, RunStatus
from exporter.service import observability
from exporter.terminal import SafeConsole

# Each command imports what it needs (SQLAlchemy, the read side, the sync) when it runs: a
# `run-once` from cron sends its first request sooner without loading the reports' modules.
if TYPE_CHECKING:
    from sqlalchemy import Engine

    from exporter.results import RunResult, SyncProgress

app = typer.Typer(
    help="Sync Tapkey owner accounts and bound locks into SQL with exact change history.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema management.", no_args_is_help=True)
app.add_typer(db_app, name="db")


def _output_closed() -> NoReturn:
    """The reader of our output went away (`exporter locks | head -1`): end as SIGPIPE ends
    other tools, quietly (Python would print a traceback, typer and rich exit 1)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):  # what is still buffered goes nowhere instead of failing again at exit
        os.dup2(devnull, fd)
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGPIPE)
    raise SystemExit(1)  # no SIGPIPE (Windows)


class _Console(SafeConsole):
    def on_broken_pipe(self) -> None:
        """Rich's own handling exits 1."""
        _output_closed()


# Piped output has no terminal width; rich would assume 80 columns and wrap every table cell.
_PIPE_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
# No console markup or emoji codes: titles, names, descriptions and errors are data and may hold
# [brackets] or :colons:. SafeConsole shows their control characters escaped.
out = _Console(highlight=False, markup=False, emoji=False, soft_wrap=True, width=_PIPE_WIDTH)
# The sandbox's default client secret: published here and in the README, not a real one.
SANDBOX_SECRET = "sandbox-secret"
err = _Console(stderr=True, highlight=False, markup=False, emoji=False, soft_wrap=True)
log = logging.getLogger("exporter")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Config file (default: $EXPORTER_CONFIG, then ./config.toml; env-only works too).",
        show_default=False,
    ),
]
DatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="Use this database URL instead of the configured one.",
        show_default=False,
    ),
]
FormatOption = Annotated[str, typer.Option("--format", "-f", help="Output format: table or json.")]
QuietOption = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="Print nothing unless something went wrong (for cron)."),
]


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turn an ExporterError into one line on stderr and its exit code."""
    try:
        yield
    except ExporterError as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(exc.exit_code) from None
    except BrokenPipeError:
        _output_closed()
    except Exception as exc:
        # A database error no core function turned into one line (SQLAlchemy is loaded if it
        # raised one).
        sqlalchemy_errors = sys.modules.get("sqlalchemy.exc")
        if sqlalchemy_errors is None or not isinstance(exc, sqlalchemy_errors.SQLAlchemyError):
            raise
        from exporter.db import errors as db_errors

        failure = db_errors.store_error(exc)
        err.print(f"error: {failure}")
        raise typer.Exit(failure.exit_code) from None


def _settings(
    config: Path | None, *, database_url: str | None = None, quiet: bool = False
) -> Settings:
    overrides: dict[str, Any] = {}
    if database_url:
        overrides["database.url"] = database_url
    cwd = Path.cwd()
    path = resolve_config_path(config, os.environ, cwd)
    settings = load_settings(path, env=os.environ, cwd=cwd, overrides=overrides)
    _setup_logging(settings)
    if quiet and logging.getLogger().level < logging.WARNING:
        # Cron mails whatever a job prints: --quiet keeps INFO progress lines out of stderr too.
        logging.getLogger().setLevel(logging.WARNING)
    warning = file_permissions_warning(settings)
    if warning:
        log.warning("%s", warning)
    return settings


def _logging_only(config: Path | None) -> None:
    """Load and check the configuration like every command, but use only [logging]."""
    with _errors():
        _settings(config)


def _setup_logging(settings: Settings) -> None:
    observability.setup_logging(settings.logging)


def _check_format(fmt: str, allowed: tuple[str, ...] = ("table", "json")) -> None:
    if fmt not in allowed:
        raise typer.BadParameter(f"must be one of {', '.join(allowed)} (got {fmt!r})")


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
    from exporter.service import progress  # rich's display: imported only for run-once

    if not progress.wanted(
        is_terminal=err.is_terminal, quiet=quiet, log_format=settings.logging.format
    ):
        yield None
        return
    with progress.ProgressBar(err) as update:
        yield update


@app.command("run-once")
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
    from exporter.service import job

    _check_format(fmt)
    with _errors():
        settings = _settings(config, database_url=database_url, quiet=quiet)
        with (
            observability.run_scope() as scope,
            _stop_on_signals() as stop,
            _progress_bar(settings, quiet=quiet) as progress,
        ):
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
            )
    if fmt == "json":
        with _errors():
            _print_result_json(result, settings)
    elif not quiet or result.status != RunStatus.SUCCEEDED:
        _print_result(result)
    if result.status == RunStatus.FAILED and result.error:
        err.print(f"error: {result.error}")
    elif result.held_back and result.error:
        err.print(f"warning: {result.error}")
    raise typer.Exit(job.EXIT_CODES[result.status])


def _print_result_json(result: RunResult, settings: Settings) -> None:
    """The result as JSON; a run's changes are read back from the database as they are written."""
    from exporter.read import inventory as report
    from exporter.read import render
    from exporter.service import job

    data = dataclasses.asdict(result)
    data["duration_seconds"] = (
        (result.finished_at - result.started_at).total_seconds() if result.finished_at else None
    )
    if result.dry_run or result.run_id is None:  # a dry run's changes exist only in memory
        render.write_json(data, out.file)
        return
    engine = job.make_engine(settings, create=False)
    try:
        with report.open_run_changes(engine, result.run_id) as changes:
            data["changes"] = map(dataclasses.asdict, changes)
            render.write_json(data, out.file)
    finally:
        engine.dispose()


def _print_result(result: RunResult) -> None:
    from rich.table import Table

    title = "Dry run (nothing written)" if result.dry_run else f"Run {result.run_id}"
    table = Table(title=f"{title}: {result.status}", show_header=False)
    duration = (
        f"{(result.finished_at - result.started_at).total_seconds():.2f} s"
        if result.finished_at
        else "-"
    )
    rows: list[tuple[str, object]] = [
        ("duration", duration),
        ("owners seen", result.owners_seen),
        ("locks seen", result.locks_seen),
        *result.counts.as_dict().items(),
        ("API requests", result.api_requests),
    ]
    for entity, counts in result.access.items():  # [tapkey] entities beyond locks
        changed = ", ".join(f"{k} {v}" for k, v in counts.as_dict().items() if v)
        rows.append((entity, changed or "none"))
    failed = [o for o in result.owners if o.status == OwnerStatus.FAILED]
    if failed:
        rows.append(("failed owners", len(failed)))
    if result.log_entries or result.log_failures:
        rows.append(("new log entries", result.log_entries))
    if result.log_failures:
        rows.append(("owners whose log failed", len(result.log_failures)))
    for name, value in rows:
        table.add_row(name, str(value))
    out.print(table)
    if result.dry_run and result.changes:
        changes = Table(title="Changes that would be written")
        for column in ("entity", "id", "change", "owner", "fields / reason", "title"):
            changes.add_column(column)
        for change in result.changes:
            detail = ", ".join(change.changed_fields or ()) or (change.removal_reason or "")
            changes.add_row(
                change.entity,
                change.id,
                change.change_type,
                change.owner_account_id or "",
                detail,
                change.title or "",
            )
        out.print(changes)
    if not logging.getLogger("exporter.sync.engine").isEnabledFor(logging.WARNING):
        # Otherwise the sync has logged each of them already (cron would mail them twice).
        for owner in failed:
            err.print(f"owner {owner.owner_account_id} failed: {owner.error}")
    if not logging.getLogger("exporter.sync.log_entries").isEnabledFor(logging.WARNING):
        for owner_id, error in result.log_failures.items():
            err.print(f"owner {owner_id}: log entries failed: {error}")


@app.command("check")
def check(config: ConfigOption = None, database_url: DatabaseOption = None) -> None:
    """Check the setup without writing anything: config, token and scopes, owners, database.

    Exit code: 2 if the configuration is incomplete, else 1 if Tapkey failed, else 5 if the
    database is unreachable or its schema not current, else 0.

    Example: exporter check --config /etc/tapkey-exporter/config.toml
    """
    from exporter.service import job

    with _errors():
        settings = _settings(config, database_url=database_url)
        results = job.check(settings)
    for result in results:
        label = "skip" if result.skipped else "ok" if result.ok else "FAILED"
        line = f"{label:<7}{result.name:<10}{result.detail}"
        (out if result.ok else err).print(line)
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
    from exporter.service import job

    with _errors():
        settings = _settings(config, database_url=database_url)
        engine = job.make_engine(settings)
        try:
            wait = max(settings.database.lock_timeout, migrate.UPGRADE_LOCK_WAIT)
            migrate.upgrade(engine, lock_timeout=wait)
            revision = migrate.current_revision(engine)
        finally:
            engine.dispose()
    out.print(f"{masked_url(settings.database.url)} is at revision {revision} (head)")


@db_app.command("current")
def db_current(config: ConfigOption = None, database_url: DatabaseOption = None) -> None:
    """Show the database's schema revision and whether it is current (exit 5 if not).

    Example: exporter db current
    """
    from exporter.db import migrate
    from exporter.service import job

    with _errors():
        settings = _settings(config, database_url=database_url)
        engine = job.make_engine(settings, create=False)
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
    out.print(f"{masked_url(settings.database.url)}: revision {revision or 'none'}, {state}")
    if revision != head:
        raise typer.Exit(5)


@app.command("serve")
def serve(config: ConfigOption = None) -> None:
    """Run the sync on a schedule until stopped, with optional /healthz, /livez and /metrics.

    Replicas may share a database: a replica that finds the writer lock held skips that slot.

    SIGTERM/SIGINT ends the current run as failed/interrupted and exits 0; a second one exits now.

    Example: exporter serve --config /etc/tapkey-exporter/config.toml
    """
    from exporter.service.scheduler import serve as serve_daemon

    with _errors():
        settings = _settings(config)
        code = serve_daemon(settings)
    raise typer.Exit(code)


@app.command("sandbox")
def sandbox(
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1 (0 picks a free one).")
    ] = 8765,
    seed: Annotated[int, typer.Option(help="Seed for the generated inventory.")] = 1,
    owners: Annotated[int, typer.Option(min=0, help="Owner accounts.")] = 3,
    locks_per_owner: Annotated[int, typer.Option(min=0, help="Bound locks per owner.")] = 5,
    client_id: Annotated[str, typer.Option(help="Accepted client id.")] = "sandbox-client",
    client_secret: Annotated[
        str, typer.Option(help="Accepted client secret.", envvar="SANDBOX_CLIENT_SECRET")
    ] = SANDBOX_SECRET,
    token_lifetime: Annotated[float, typer.Option(min=1, help="Token lifetime, seconds.")] = 3600,
    max_top: Annotated[
        int | None, typer.Option(min=1, help="Silently cap $top at this many rows.")
    ] = None,
    refuse_top: Annotated[
        int | None,
        typer.Option(min=1, help="Answer a larger $top with OData's MaxTop error (HTTP 400)."),
    ] = None,
    latency: Annotated[
        float,
        typer.Option(min=0, help="Seconds before every answer, like a server across the internet."),
    ] = 0.0,
    config: ConfigOption = None,
) -> None:
    """Serve a fake Tapkey (token endpoint + Owners + BoundLocks) on 127.0.0.1 until Ctrl-C.

    Each owner also has Contacts, BoundCards, Grants and LogEntries.
    The client is granted read:owneraccounts, read:core:entities, read:grants, read:logs.

    Of the configuration only \\[logging] is used. Example:
    exporter sandbox --port 8765 --owners 5 --locks-per-owner 20
    """
    from exporter.sandbox.server import Sandbox, serve_forever

    _logging_only(config)

    fake = Sandbox(
        seed=seed,
        owners=owners,
        locks_per_owner=locks_per_owner,
        client_id=client_id,
        client_secret=client_secret,
        token_lifetime=token_lifetime,
        max_top=max_top,
        refuse_top=refuse_top,
        latency=latency,
        port=port,
    )
    with _errors():
        try:
            fake.start()
        except OSError as exc:
            raise UsageError(
                f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}; choose another "
                "--port (0 picks a free one)"
            ) from None
    out.print(
        f"Sandbox serving {owners} owners x {locks_per_owner} locks (and contacts, cards, grants,"
        f" log entries) at {fake.base_url}"
    )
    out.print("Point the exporter at it with:")
    out.print(f"  export EXPORTER_TAPKEY__TOKEN_URL={fake.token_url}")
    out.print(f"  export EXPORTER_TAPKEY__API_BASE_URL={fake.base_url}")
    out.print(f"  export EXPORTER_TAPKEY__CLIENT_ID={client_id}")
    if client_secret == SANDBOX_SECRET:  # public, so it can be shown; a chosen one is not
        out.print(f"  export EXPORTER_TAPKEY__CLIENT_SECRET={client_secret}")
    else:
        out.print("  # export EXPORTER_TAPKEY__CLIENT_SECRET=<the secret given to --client-secret>")
    serve_forever(fake)


@app.command("demo")
def demo(
    generations: Annotated[
        int, typer.Option(min=1, max=20, help="Sandbox generations (syncs after the first load).")
    ] = 3,
    database: Annotated[
        Path, typer.Option("--db", help="SQLite file for the demo (recreated).")
    ] = Path("demo.db"),
    config: ConfigOption = None,
) -> None:
    """Run the exporter against an in-process sandbox into ./demo.db and show the history.

    Never touches the configured database: of the configuration only \\[logging] is used.
    Example: exporter demo --generations 3
    """
    from exporter.demo import run_demo

    _logging_only(config)
    with _errors():
        prog = sys.argv[0] if Path(sys.argv[0]).name == "exporter" else "exporter"
        run_demo(database.resolve(), generations=generations, console=out, prog=prog)


# -- read commands: parse the options, call one report function, render --------------------------

ReadFormatOption = Annotated[
    str, typer.Option("--format", "-f", help="Output format: table, csv or json.")
]
CsvRawOption = Annotated[
    bool,
    typer.Option(
        "--csv-raw",
        help="CSV: write text exactly as stored; without it a cell starting with =, +, -, @, "
        "tab or CR gets a leading ' (a spreadsheet would run it as a formula).",
    ),
]


@contextlib.contextmanager
def _reader(
    config: Path | None, database_url: str | None, *, usage: Callable[[], None] | None = None
) -> Iterator[Engine]:
    """An engine on the configured database, whose schema must be current.

    `usage` checks the command's arguments once the configuration is known to be good (a bad
    configuration is reported first, as by every command).
    """
    from exporter.db import migrate
    from exporter.service import job

    settings = _settings(config, database_url=database_url)
    if usage is not None:
        usage()
    engine = job.make_engine(settings, create=False)
    try:
        migrate.require_current(engine)
        yield engine
    finally:
        engine.dispose()


@app.command("locks")
def locks(
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
    owner: Annotated[
        str | None, typer.Option(help="Only this owner account (id or name).", show_default=False)
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Only this lock model name or lock type id.", show_default=False),
    ] = None,
    search: Annotated[
        str | None,
        typer.Option(help="Text in the title, description, ids or model.", show_default=False),
    ] = None,
    include_removed: Annotated[
        bool, typer.Option("--include-removed", help="Also show removed locks.")
    ] = False,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="Show the inventory as it was then: a run id (its end), an ISO-8601 time "
            "(UTC unless it has an offset) or a duration back from now (7d).",
            show_default=False,
        ),
    ] = None,
    fmt: ReadFormatOption = "table",
    csv_raw: CsvRawOption = False,
) -> None:
    """Show the lock inventory grouped by owner account, now or as it was at --as-of.

    Example: exporter locks --owner "Office Vienna" --as-of 2026-03-01T00:00:00Z
    """
    from exporter.read import asof, render
    from exporter.read import inventory as report

    _check_format(fmt, render.FORMATS)
    with _errors(), _reader(config, database_url) as engine:
        when = asof.resolve_as_of(engine, as_of, now=datetime.now(UTC)) if as_of else None
        with report.open_inventory(
            engine,
            as_of=when,
            owner=owner,
            model=model,
            search=search,
            include_removed=include_removed,
            with_owners=fmt != "csv",
        ) as inventory:
            if fmt == "json":
                render.write_json(render.inventory_json(inventory), out.file)
            elif fmt == "csv":
                render.inventory_csv(inventory, out.file, raw=csv_raw)
            else:
                filtered = model is not None or search is not None
                render.inventory_table(
                    inventory, out, include_removed=include_removed, filtered=filtered
                )


@app.command("history")
def history(
    lock: Annotated[
        str,
        typer.Argument(
            help="A bound lock id, a lock id such as 12-34-BF-FB (every binding of that "
            "device), a physical lock id as the API gives it, or the start of a bound lock id.",
            show_default=False,
        ),
    ],
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
    fmt: ReadFormatOption = "table",
    csv_raw: CsvRawOption = False,
) -> None:
    """Show every version of a lock: what changed (old -> new), when, in which run, and why.

    Example: exporter history 12-34-BF-FB
    """
    from exporter.read import changelog, render

    _check_format(fmt, render.FORMATS)
    with _errors(), _reader(config, database_url) as engine:
        result = changelog.lock_history(engine, lock)
        if fmt == "json":
            render.write_json(render.history_json(result), out.file)
        elif fmt == "csv":
            render.changes_csv(result.versions, out.file, raw=csv_raw)
        else:
            render.history_table(result, out)


@app.command("access")
def access(
    lock: Annotated[
        str | None,
        typer.Argument(
            help="A bound lock id, a lock id such as 12-34-BF-FB, a physical lock id, or the "
            "start of a bound lock id (as for `exporter history`).",
            show_default=False,
        ),
    ] = None,
    contact: Annotated[
        str | None,
        typer.Option(
            "--contact",
            help="Instead of a lock: what this contact can open (its id, the start of its id, "
            "or its identifier as stored).",
            show_default=False,
        ),
    ] = None,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="As it was then: a run id (its end), an ISO-8601 time (UTC unless it has an "
            "offset) or a duration back from now (7d).",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
    fmt: ReadFormatOption = "table",
    csv_raw: CsvRawOption = False,
) -> None:
    """Show who can open a lock, or with --contact what a person can open: the grants in force
    (state Ok, within their validity), now or at --as-of. Needs grants in \\[tapkey] entities.

    Example: exporter access 12-34-BF-FB --as-of 2026-03-01T00:00:00Z
    """
    from exporter.read import access as access_report
    from exporter.read import access_render, asof, render

    _check_format(fmt, render.FORMATS)

    def one_subject() -> None:
        if (lock is None) == (contact is None):
            raise UsageError("give either a LOCK or --contact ID (one of the two)")

    with _errors(), _reader(config, database_url, usage=one_subject) as engine:
        now = datetime.now(UTC)
        when = asof.resolve_as_of(engine, as_of, now=now) if as_of else None
        if lock is not None:
            answer = access_report.who_can_open(engine, lock, now=now, as_of=when)
        else:
            assert contact is not None
            answer = access_report.what_can_open(engine, contact, now=now, as_of=when)
        if fmt == "json":
            render.write_json(access_render.access_json(answer), out.file)
        elif fmt == "csv":
            access_render.access_csv(answer, out.file, raw=csv_raw)
        else:
            access_render.access_table(answer, out)


@app.command("changes")
def changes(
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="From this ISO-8601 time (UTC unless it has an offset) or this long ago (7d).",
            show_default=False,
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(help="Before this time (same forms as --since).", show_default=False),
    ] = None,
    run: Annotated[
        int | None, typer.Option("--run", help="Only changes of this run.", show_default=False)
    ] = None,
    owner: Annotated[
        str | None,
        typer.Option(
            help="Only changes that concern this owner account (id or name).", show_default=False
        ),
    ] = None,
    kind: Annotated[
        list[str] | None,
        typer.Option(
            help="Only these kinds: created, updated, removed, restored (repeat or separate "
            "with commas).",
            show_default=False,
        ),
    ] = None,
    fmt: ReadFormatOption = "table",
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="No title, and nothing at all when nothing changed."),
    ] = False,
    csv_raw: CsvRawOption = False,
) -> None:
    """Show the change feed: one line per change with the fields that changed.

    Example: exporter changes --since 7d --kind removed,restored
    """
    from exporter.read import asof, changelog, render

    _check_format(fmt, render.FORMATS)
    kinds = {k.strip() for value in kind or () for k in value.split(",") if k.strip()}
    now = datetime.now(UTC)
    with (
        _errors(),
        _reader(config, database_url) as engine,
        changelog.open_changes(
            engine,
            since=asof.parse_instant(since, now=now) if since else None,
            until=asof.parse_instant(until, now=now) if until else None,
            run_id=run,
            owner=owner,
            kinds=kinds,
        ) as feed,
    ):
        rows = iter(feed.rows)
        first = next(rows, None)
        if quiet and first is None:
            return
        rows = itertools.chain([first] if first is not None else [], rows)
        if fmt == "json":
            render.write_json(map(changelog.ChangeRow.as_dict, rows), out.file)
        elif fmt == "csv":
            render.changes_csv(rows, out.file, raw=csv_raw)
        else:
            feed = dataclasses.replace(feed, rows=rows)
            render.changes_table(feed, out, titled=not quiet)


@app.command("log")
def log_command(
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
    lock: Annotated[
        str | None,
        typer.Option(
            help="Only this lock: a bound lock id or its start, a lock id such as 12-34-BF-FB, "
            "or a physical lock id.",
            show_default=False,
        ),
    ] = None,
    owner: Annotated[
        str | None, typer.Option(help="Only this owner account (id or name).", show_default=False)
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Events (lockTimestamp) from this ISO-8601 time (UTC unless it has an offset) "
            "or this long ago (7d).",
            show_default=False,
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(help="Events before this time (same forms as --since).", show_default=False),
    ] = None,
    limit: Annotated[
        int, typer.Option(min=0, help="How many entries, newest first (0: all of them).")
    ] = 100,
    fmt: ReadFormatOption = "table",
    csv_raw: CsvRawOption = False,
) -> None:
    """Show stored log entries (openings and other lock events), newest event first.

    Needs \\[tapkey] entities with log_entries. Example: exporter log --lock 12-34-BF-FB --since 7d
    """
    from exporter.read import asof, log_view, render

    _check_format(fmt, render.FORMATS)
    now = datetime.now(UTC)
    with (
        _errors(),
        _reader(config, database_url) as engine,
        log_view.open_log(
            engine,
            lock=lock,
            owner=owner,
            since=asof.parse_instant(since, now=now) if since else None,
            until=asof.parse_instant(until, now=now) if until else None,
            limit=limit or None,
        ) as feed,
    ):
        if fmt == "json":
            log_view.log_json(feed.rows, out.file)
        elif fmt == "csv":
            log_view.log_csv(feed.rows, out.file, raw=csv_raw)
        else:
            log_view.log_table(feed, out)


runs_app = typer.Typer(
    help="List recent runs with status, duration, counts and error summary; "
    "`exporter runs show ID` shows one run per owner account. "
    "Example: exporter runs --limit 5 --quiet"
)
app.add_typer(runs_app, name="runs")


@runs_app.callback(invoke_without_command=True)
def runs(
    ctx: typer.Context,
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
    limit: Annotated[int, typer.Option(min=1, help="How many runs, newest first.")] = 20,
    status: Annotated[
        str | None,
        typer.Option(
            help="Only runs with this status (succeeded, partial, failed, running).",
            show_default=False,
        ),
    ] = None,
    fmt: ReadFormatOption = "table",
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet", "-q", help="Only runs that did not succeed; nothing if none (for cron)."
        ),
    ] = False,
    csv_raw: CsvRawOption = False,
) -> None:
    """List recent runs with status, duration, counts and error summary.

    Example: exporter runs --limit 5; exporter runs show 42 --format json
    """
    from exporter.read import render
    from exporter.read import runs as read_runs

    if ctx.invoked_subcommand is not None:
        return
    _check_format(fmt, render.FORMATS)
    with _errors(), _reader(config, database_url) as engine:
        rows = read_runs.runs(engine, limit=limit, status=status)
    if quiet:
        rows = [row for row in rows if row.status != RunStatus.SUCCEEDED]
        if not rows:
            return
    with _errors():
        if fmt == "json":
            render.write_json([row.as_dict() for row in rows], out.file)
        elif fmt == "csv":
            rendered = (row.as_dict() for row in rows)
            render.write_csv(rendered, render.RUN_COLUMNS, out.file, raw=csv_raw)
        else:
            render.runs_table(rows, out)


@runs_app.command("show")
def runs_show(
    run_id: Annotated[int, typer.Argument(help="The run id (see `exporter runs`).")],
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
    fmt: ReadFormatOption = "table",
    csv_raw: CsvRawOption = False,
) -> None:
    """Show one run with the outcome of every owner account (CSV: one row per owner).

    Example: exporter runs show 42
    """
    from exporter.read import render
    from exporter.read import runs as read_runs

    _check_format(fmt, render.FORMATS)
    with _errors(), _reader(config, database_url) as engine:
        detail = read_runs.run_detail(engine, run_id)
    with _errors():
        if fmt == "json":
            render.write_json(render.run_detail_json(detail), out.file)
        elif fmt == "csv":
            rows = (o.as_dict() for o in detail.owners)
            render.write_csv(rows, render.RUN_OWNER_COLUMNS, out.file, raw=csv_raw)
        else:
            render.run_detail_table(detail, out)


def main() -> None:
    """Console-script entry point; a usage error (unknown option, bad value) is one line, exit 2."""
    try:
        code = app(standalone_mode=False)
        sys.stdout.flush()  # what is still buffered, while a closed pipe can be handled
    except BrokenPipeError:
        _output_closed()
    except typer.TyperException as exc:  # typer's click usage errors all derive from it
        # NoArgsIsHelpError: the help text was already printed.
        if type(exc).__name__ != "NoArgsIsHelpError":
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            err.print(f"error: {exc.format_message()}{hint}")
        raise SystemExit(getattr(exc, "exit_code", 2)) from None
    except typer.Abort:
        err.print("aborted")
        raise SystemExit(1) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
