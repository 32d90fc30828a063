"""Trying it without Tapkey: `sandbox` (a fake Tapkey on a loopback port) and `demo`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from exporter.cli import shared
from exporter.cli.shared import ConfigOption, errors, logging_only
from exporter.errors import UsageError

# The sandbox's default client secret: published here and in the README, not a real one.
SANDBOX_SECRET = "sandbox-secret"


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

    logging_only(config)

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
    with errors():
        try:
            fake.start()
        except OSError as exc:
            raise UsageError(
                f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}; choose another "
                "--port (0 picks a free one)"
            ) from None
    shared.out.print(
        f"Sandbox serving {owners} owners x {locks_per_owner} locks (and contacts, cards, grants,"
        f" log entries) at {fake.base_url}"
    )
    shared.out.print("Point the exporter at it with:")
    shared.out.print(f"  export EXPORTER_TAPKEY__TOKEN_URL={fake.token_url}")
    shared.out.print(f"  export EXPORTER_TAPKEY__API_BASE_URL={fake.base_url}")
    shared.out.print(f"  export EXPORTER_TAPKEY__CLIENT_ID={client_id}")
    if client_secret == SANDBOX_SECRET:  # public, so it can be shown; a chosen one is not
        shared.out.print(f"  export EXPORTER_TAPKEY__CLIENT_SECRET={client_secret}")
    else:
        shared.out.print(
            "  # export EXPORTER_TAPKEY__CLIENT_SECRET=<the secret given to --client-secret>"
        )
    serve_forever(fake)


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

    logging_only(config)
    with errors():
        prog = sys.argv[0] if Path(sys.argv[0]).name == "exporter" else "exporter"
        run_demo(database.resolve(), generations=generations, console=shared.out, prog=prog)
