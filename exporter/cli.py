"""The `exporter` command line: wiring and error-to-exit-code mapping only.

Exit codes (the same for every command):
    0 succeeded · 1 failed · 2 usage or configuration error · 3 partial (some owners failed)
    4 another run holds the database lock
    5 database unreachable, or schema not at the expected revision
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from exporter import job, store
from exporter.config import Settings, file_permissions_warning, load_settings, masked_url
from exporter.errors import ExporterError
from exporter.sync import RunResult

app = typer.Typer(
    help="Sync Tapkey owner accounts and bound locks into SQL with exact change history.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema management.", no_args_is_help=True)
app.add_typer(db_app, name="db")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
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
    typer.Option("--database-url", help="Override [database] url.", show_default=False),
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
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(exc.exit_code) from None


def _settings(config: Path | None, *, database_url: str | None = None) -> Settings:
    overrides: dict[str, Any] = {}
    if database_url:
        overrides["database.url"] = database_url
    settings = load_settings(config, env=os.environ, cwd=Path.cwd(), overrides=overrides)
    _setup_logging(settings)
    warning = file_permissions_warning(settings)
    if warning:
        log.warning("%s", warning)
    return settings


def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.logging.level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def _check_format(fmt: str, allowed: tuple[str, ...] = ("table", "json")) -> None:
    if fmt not in allowed:
        raise typer.BadParameter(f"must be one of {', '.join(allowed)} (got {fmt!r})")


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
            help="Accept a database filled by another OAuth client (see README).",
        ),
    ] = False,
    fmt: FormatOption = "table",
    quiet: QuietOption = False,
) -> None:
    """Run one sync now and print a summary.

    Example: exporter run-once --config /etc/tapkey-exporter/config.toml
    """
    _check_format(fmt)
    with _errors():
        settings = _settings(config, database_url=database_url)
        result = job.run_once(
            settings, trigger="manual", dry_run=dry_run, allow_client_change=allow_client_change
        )
    if fmt == "json":
        out.print_json(json.dumps(_result_json(result)))
    elif not quiet or result.status != "succeeded":
        _print_result(result)
    if result.status == "failed" and result.error:
        err.print(f"error: {result.error}", markup=False)
    raise typer.Exit(job.EXIT_CODES[result.status])


def _result_json(result: RunResult) -> dict[str, Any]:
    data = dataclasses.asdict(result)
    data["duration_seconds"] = (
        (result.finished_at - result.started_at).total_seconds() if result.finished_at else None
    )
    return json.loads(json.dumps(data, default=str))  # type: ignore[no-any-return]


def _print_result(result: RunResult) -> None:
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
    failed = [o for o in result.owners if o.status == "failed"]
    if failed:
        rows.append(("failed owners", len(failed)))
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
    for owner in failed:
        err.print(f"owner {owner.owner_account_id} failed: {owner.error}", markup=False)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None, database_url: DatabaseOption = None) -> None:
    """Create or upgrade the database schema to the version this exporter needs.

    Example: exporter db upgrade --database-url postgresql://exporter@db/inventory
    """
    with _errors():
        settings = _settings(config, database_url=database_url)
        engine = job.make_engine(settings)
        try:
            store.upgrade(engine)
            revision = store.current_revision(engine)
        finally:
            engine.dispose()
    out.print(f"{masked_url(settings.database.url)} is at revision {revision} (head)")


@db_app.command("current")
def db_current(config: ConfigOption = None, database_url: DatabaseOption = None) -> None:
    """Show the database's schema revision and whether it is current (exit 5 if not).

    Example: exporter db current
    """
    with _errors():
        settings = _settings(config, database_url=database_url)
        engine = job.make_engine(settings)
        try:
            revision = store.current_revision(engine)
        finally:
            engine.dispose()
    head = store.head_revision()
    state = (
        "up to date" if revision == head else f"behind (head is {head}; run `exporter db upgrade`)"
    )
    out.print(f"{masked_url(settings.database.url)}: revision {revision or 'none'}, {state}")
    if revision != head:
        raise typer.Exit(5)


@app.command("sandbox")
def sandbox(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 picks a free one).")] = 8765,
    seed: Annotated[int, typer.Option(help="Seed for the generated inventory.")] = 1,
    owners: Annotated[int, typer.Option(min=0, help="Owner accounts.")] = 3,
    locks_per_owner: Annotated[int, typer.Option(min=0, help="Bound locks per owner.")] = 5,
    client_id: Annotated[str, typer.Option(help="Accepted client id.")] = "sandbox-client",
    client_secret: Annotated[
        str, typer.Option(help="Accepted client secret.", envvar="SANDBOX_CLIENT_SECRET")
    ] = "sandbox-secret",
    token_lifetime: Annotated[float, typer.Option(min=1, help="Token lifetime, seconds.")] = 3600,
    max_top: Annotated[
        int | None, typer.Option(min=1, help="Silently cap $top at this many rows.")
    ] = None,
) -> None:
    """Serve a fake Tapkey (token endpoint + Owners + BoundLocks) on 127.0.0.1 until Ctrl-C.

    Example: exporter sandbox --port 8765 --owners 5 --locks-per-owner 20
    """
    from exporter.sandbox import Sandbox, serve_forever

    fake = Sandbox(
        seed=seed,
        owners=owners,
        locks_per_owner=locks_per_owner,
        client_id=client_id,
        client_secret=client_secret,
        token_lifetime=token_lifetime,
        max_top=max_top,
        port=port,
    )
    fake.start()
    out.print(f"Sandbox serving {owners} owners x {locks_per_owner} locks at {fake.base_url}")
    out.print("Point the exporter at it with:")
    out.print(f"  export EXPORTER_TAPKEY__TOKEN_URL={fake.token_url}")
    out.print(f"  export EXPORTER_TAPKEY__API_BASE_URL={fake.base_url}")
    out.print(f"  export EXPORTER_TAPKEY__CLIENT_ID={client_id}")
    out.print("  export EXPORTER_TAPKEY__CLIENT_SECRET=<the sandbox secret>")
    serve_forever(fake)


@app.command("demo")
def demo(
    generations: Annotated[
        int, typer.Option(min=1, max=20, help="Sandbox generations (syncs after the first load).")
    ] = 3,
    database: Annotated[
        Path, typer.Option("--db", help="SQLite file for the demo (recreated).")
    ] = Path("demo.db"),
) -> None:
    """Run the exporter against an in-process sandbox into ./demo.db and show the history.

    Never touches the configured database. Example: exporter demo --generations 3
    """
    from exporter.demo import run_demo

    with _errors():
        run_demo(database.resolve(), generations=generations, console=out)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
