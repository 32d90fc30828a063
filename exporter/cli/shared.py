"""What every command shares: the consoles (built at first use, see `exporter.cli.console`), the
common options, settings, and the mapping of errors to one line on stderr and an exit code."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from exporter.config.loader import file_permissions_warning, load_settings, resolve_config_path
from exporter.config.settings import Settings
from exporter.errors import ExporterError
from exporter.service.logging import setup_logging

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from exporter.cli.console import CliConsole


def output_closed() -> NoReturn:
    """The reader of our output went away (`exporter locks | head -1`): end as SIGPIPE ends
    other tools, quietly (Python would print a traceback, typer and rich exit 1)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):  # what is still buffered goes nowhere instead of failing again at exit
        os.dup2(devnull, fd)
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGPIPE)
    raise SystemExit(1)  # no SIGPIPE (Windows)


def may_be_terminal(stream: IO[str]) -> bool:
    """False where a rich console on `stream` is surely not a terminal (then rich is not needed
    to tell): not a TTY, and neither TTY_COMPATIBLE nor FORCE_COLOR says otherwise."""
    if "TTY_COMPATIBLE" in os.environ or "FORCE_COLOR" in os.environ:
        return True
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# Piped output has no terminal width; rich would assume 80 columns and wrap every table cell.
_PIPE_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
# No console markup or emoji codes: titles, names, descriptions and errors are data and may hold
# [brackets] or :colons:. SafeConsole shows their control characters escaped.
_PLAIN: dict[str, Any] = {"highlight": False, "markup": False, "emoji": False, "soft_wrap": True}
_CONSOLES: dict[str, dict[str, Any]] = {
    "out": {**_PLAIN, "width": _PIPE_WIDTH},
    "err": {**_PLAIN, "stderr": True},
}
_building = threading.Lock()

if TYPE_CHECKING:
    out: CliConsole  # stdout
    err: CliConsole  # stderr: errors, warnings, the progress bar


def __getattr__(name: str) -> Any:
    """`out` and `err`, each built at its first use: write `shared.out`, not `from ... import out`.

    rich and a console cost more than a run's first request may wait for, and run-once --quiet,
    `serve` and `check` mostly print nothing with them.
    """
    if name not in _CONSOLES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _console(name)


def _console(name: str) -> CliConsole:
    with _building:  # two threads printing first get one console
        console: CliConsole | None = globals().get(name)
        if console is None:
            from exporter.cli.console import CliConsole

            console = globals()[name] = CliConsole(**_CONSOLES[name])
    return console


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
# The largest LIMIT every database takes (a signed 64-bit integer): a --limit above it would fail
# as a database error instead of reading as the usage error it is.
MAX_LIMIT = 2**63 - 1
FormatOption = Annotated[str, typer.Option("--format", "-f", help="Output format: table or json.")]
QuietOption = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="Print nothing unless something went wrong (for cron)."),
]
ReadFormatOption = Annotated[
    str, typer.Option("--format", "-f", help="Output format: table, csv or json.")
]
OwnerOption = Annotated[
    str | None, typer.Option(help="Only this owner account (id or name).", show_default=False)
]
AsOfOption = Annotated[
    str | None,
    typer.Option(
        "--as-of",
        help="As it was then: a run id (its end), an ISO-8601 time (UTC unless it has an "
        "offset) or a duration back from now (7d).",
        show_default=False,
    ),
]
SinceOption = Annotated[
    str | None,
    typer.Option(
        help="From this ISO-8601 time (UTC unless it has an offset) or this long ago (7d).",
        show_default=False,
    ),
]
UntilOption = Annotated[
    str | None,
    typer.Option(help="Before this time (same forms as --since).", show_default=False),
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
def errors() -> Iterator[None]:
    """Turn an ExporterError into one line on stderr and its exit code."""
    try:
        yield
    except ExporterError as exc:
        _console("err").print(f"error: {exc}")
        raise typer.Exit(exc.exit_code) from None
    except BrokenPipeError:
        output_closed()
    except Exception as exc:
        # A database error no core function turned into one line (SQLAlchemy is loaded if it
        # raised one).
        sqlalchemy_errors = sys.modules.get("sqlalchemy.exc")
        if sqlalchemy_errors is None or not isinstance(exc, sqlalchemy_errors.SQLAlchemyError):
            raise
        from exporter.db import errors as db_errors

        failure = db_errors.store_error(exc)
        _console("err").print(f"error: {failure}")
        raise typer.Exit(failure.exit_code) from None


def settings(
    config: Path | None, *, database_url: str | None = None, quiet: bool = False
) -> Settings:
    """The settings from the config file, EXPORTER_* and the flags; logging set up from them."""
    overrides: dict[str, Any] = {}
    if database_url:
        overrides["database.url"] = database_url
    cwd = Path.cwd()
    path = resolve_config_path(config, os.environ, cwd)
    loaded = load_settings(path, env=os.environ, cwd=cwd, overrides=overrides)
    setup_logging(loaded.logging)
    if quiet and logging.getLogger().level < logging.WARNING:
        # Cron mails whatever a job prints: --quiet keeps INFO progress lines out of stderr too.
        logging.getLogger().setLevel(logging.WARNING)
    warning = file_permissions_warning(loaded)
    if warning:
        log.warning("%s", warning)
    return loaded


def logging_only(config: Path | None) -> None:
    """Load and check the configuration like every command, but use only [logging]."""
    with errors():
        settings(config)


def check_format(fmt: str, allowed: tuple[str, ...] = ("table", "json")) -> None:
    """A usage error (exit 2) unless --format is one of `allowed`."""
    if fmt not in allowed:
        raise typer.BadParameter(
            f"must be one of {', '.join(allowed)} (got {fmt!r})", param_hint="'--format'"
        )


@contextlib.contextmanager
def reader(
    config: Path | None, database_url: str | None, *, usage: Callable[[], None] | None = None
) -> Iterator[Engine]:
    """An engine on the configured database, whose schema must be current.

    `usage` checks the command's arguments once the configuration is known to be good (a bad
    configuration is reported first, as by every command).
    """
    with database_reader(settings(config, database_url=database_url), usage=usage) as engine:
        yield engine


@contextlib.contextmanager
def database_reader(
    loaded: Settings, *, usage: Callable[[], None] | None = None
) -> Iterator[Engine]:
    """`reader` for settings already loaded (a command that needs more of them)."""
    from exporter.db import engine as db_engine
    from exporter.db import migrate

    if usage is not None:
        usage()
    # Not preflight.make_engine: importing the sync's side (requests, OAuth) took 0.1 s.
    database = loaded.database
    engine = db_engine.make_engine(database.url, schema=database.schema_name, create=False)
    try:
        migrate.require_current(engine)
        yield engine
    finally:
        engine.dispose()
