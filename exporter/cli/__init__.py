"""The `exporter` command line: typer commands that parse, call one core function and map its
errors to exit codes. One module per group of commands; `shared` holds the common options and
the error mapping.

Exit codes (the same for every command):
    0 succeeded · 1 failed · 2 usage or configuration error · 3 partial (some owners failed)
    4 another run holds the database lock
    5 database unreachable, or schema not at the expected revision
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import typer

from exporter.cli import access, inventory, run, sandbox, shared
from exporter.cli.shared import output_closed

if TYPE_CHECKING:
    from exporter.cli.shared import err, out

__all__ = ["app", "err", "main", "out"]

app = typer.Typer(
    help="Sync Tapkey owner accounts and bound locks into SQL with exact change history.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(run.db_app, name="db")
app.command("run-once")(run.run_once)
app.command("check")(run.check)
app.command("serve")(run.serve)
app.command("sandbox")(sandbox.sandbox)
app.command("demo")(sandbox.demo)
app.command("locks")(inventory.locks)
app.command("history")(inventory.history)
app.command("access")(access.access)
app.command("changes")(inventory.changes)
app.command("log")(access.log_command)
app.add_typer(inventory.runs_app, name="runs")


def __getattr__(name: str) -> Any:
    """`out` and `err`: the consoles of `shared`, built at their first use."""
    if name in ("out", "err"):
        return getattr(shared, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """Console-script entry point; a usage error (unknown option, bad value) is one line, exit 2."""
    try:
        code = app(standalone_mode=False)
        sys.stdout.flush()  # what is still buffered, while a closed pipe can be handled
    except BrokenPipeError:
        output_closed()
    except typer.TyperException as exc:  # typer's click usage errors all derive from it
        # NoArgsIsHelpError: the help text was already printed.
        if type(exc).__name__ != "NoArgsIsHelpError":
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            shared.err.print(f"error: {exc.format_message()}{hint}")
        raise SystemExit(getattr(exc, "exit_code", 2)) from None
    except typer.Abort:
        shared.err.print("aborted")
        raise SystemExit(1) from None
    raise SystemExit(code if isinstance(code, int) else 0)
