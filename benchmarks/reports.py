"""What the benchmarks share about options and results: the common options, the machine's
description, the JSON results files and the plain text tables.

Imported as `reports` by the scripts beside it (they run with this folder on sys.path).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def environment() -> dict[str, Any]:
    """The machine, the versions and the commit the figures were measured on."""
    import sqlalchemy

    try:
        commit = subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(HERE.parent), "status", "--porcelain", "--", "exporter"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
        )
    except OSError:
        commit, dirty = "", False
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "sqlalchemy": sqlalchemy.__version__,
        "commit": commit,
        "exporter_modified": dirty,
    }


def save_report(report: dict[str, Any], folder: Path, prefix: str, *, default: Any = None) -> None:
    """Write `report` as PREFIX_<time>.json and PREFIX_latest.json in `folder`; print the path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    text = json.dumps(report, indent=2, default=default) + "\n"
    for name in (f"{prefix}_{stamp}.json", f"{prefix}_latest.json"):
        (folder / name).write_text(text)
    print(f"results: {folder / f'{prefix}_{stamp}.json'}")


def print_heading(
    report: dict[str, Any], name: str, details: str, columns: str, tail: str = ""
) -> None:
    """After an empty line, the title of `report`'s table ("NAME: DB, DETAILS, median of N"), its
    column header and a rule under that (`print_columns`)."""
    print()
    print(f"{name}: {report['db']}, {details}, median of {report['parameters']['repeat']}")
    print_columns(columns, tail)


def print_columns(columns: str, tail: str = "") -> None:
    """A table's column header and a rule under it.

    `columns` is "NAME:WIDTH|NAME:WIDTH|...": the first column left-aligned, the others
    right-aligned; `tail` follows them as it is.
    """
    cells = [column.rpartition(":") for column in columns.split("|")]
    header = (
        "".join(
            f"{name:{'<' if n == 0 else '>'}{width}}" for n, (name, _, width) in enumerate(cells)
        )
        + tail
    )
    print(header)
    print("-" * len(header))


def new_report(benchmark: str, db: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """The head of a benchmark's JSON results: what, on which database, when, with which
    parameters, on which machine."""
    return {
        "benchmark": benchmark,
        "db": db,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "parameters": parameters,
        "environment": environment(),
    }


def _missed_target(row: dict[str, Any]) -> bool:
    return row.get("met") is False


def finish(
    report: dict[str, Any],
    args: argparse.Namespace,
    prefix: str,
    show: Callable[[dict[str, Any]], None],
    *,
    missed: Callable[[dict[str, Any]], bool] = _missed_target,
    default: Any = None,
) -> int:
    """Print `report` with `show` and save it (`save_report`); the exit status: 1 when --check
    was given and a row of the summary `missed` its target."""
    show(report)
    save_report(report, args.results, prefix, default=default)
    misses = [name for name, row in report["summary"].items() if missed(row)]
    return 1 if args.check and misses else 0


def bench_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the options of every benchmark that saves results: --db, --db-url,
    --repeat, --seed, --results, --check."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--db", choices=("sqlite", "postgresql", "mariadb"), default="sqlite")
    parser.add_argument(
        "--db-url",
        help="sqlite: a file URL to use; postgresql/mariadb: an admin URL (a bench database is "
        "created and dropped on that server)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the table shows medians")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help=f"folder for the JSON results ({RESULTS})"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when a target is missed (for CI)"
    )
    return parser
