"""Read-side benchmark: `exporter locks`, `changes` and `history` on 1,000,000 locks.

    .venv/bin/python benchmarks/read_bench.py --db sqlite
    .venv/bin/python benchmarks/read_bench.py --db postgresql

The database is built directly, not by syncing: two runs written with the exporter's own bulk
helpers (`insert_many` for the locks, `history.open_created_versions` for their `created`
versions): run 1 loads every lock, run 2 renames `--renames` of them (an `updated` version each),
so `--as-of 1` and the current inventory differ. Each command then runs as a subprocess of its
own, the way a user runs it, with stdout read (and counted) through a pipe; the figures are its
wall time, CPU time and peak RSS (`wait4`'s ru_maxrss: that process alone).

Targets (issue 13): `locks --format csv` and `locks --as-of 1 --format csv` <= 5 s and peak RSS
< 150 MiB on SQLite and PostgreSQL; `--check` exits 1 when one is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from procstats import MIB, maxrss_bytes
from read_build import database

# The benchmarks' shared set-up: database, results folder, environment record (same folder).
from reports import bench_parser, finish, new_report, print_heading

TARGET_SECONDS = 5.0
TARGET_RSS_MIB = 150.0
# The table's columns, "NAME:WIDTH|..." (reports.print_columns).
COLUMNS = "command:26|wall s:8|cpu s:8|peak RSS:10|lines:12|x floor:9"
# The SQL floors: the query behind `locks` (now / --as-of 1) read with the bare driver.
FLOORS = {"SQL floor": "now", "SQL floor --as-of 1": "as-of"}
# (name, arguments, judged against the targets, the floor it compares with)
COMMANDS: tuple[tuple[str, tuple[str, ...], bool, str | None], ...] = (
    ("locks csv", ("locks", "--format", "csv"), True, "SQL floor"),
    (
        "locks --as-of 1 csv",
        ("locks", "--as-of", "1", "--format", "csv"),
        True,
        "SQL floor --as-of 1",
    ),
    ("locks json", ("locks", "--format", "json"), False, "SQL floor"),
    (
        "locks --as-of 1 json",
        ("locks", "--as-of", "1", "--format", "json"),
        False,
        "SQL floor --as-of 1",
    ),
    ("locks table", ("locks",), False, "SQL floor"),
    ("changes csv", ("changes", "--format", "csv"), False, None),
    ("changes json", ("changes", "--format", "json"), False, None),
    ("changes --run 2 table", ("changes", "--run", "2"), False, None),
)


# -- measuring ------------------------------------------------------------------------------------


def sql_floor(url: str, when: str) -> int:
    """Read the rows of `exporter locks`'s queries (now, or as of run 1) with the bare driver.

    The same SQL (report._lock_reads: once per owner, or on PostgreSQL once for all owners;
    as of run 1 on SQLite without the hex, which the exporter reads per owner in Python),
    executed and fetched by sqlite3, psycopg (streamed in chunks, as the exporter reads) or
    PyMySQL (unbuffered), every row decoded by the driver and dropped: what any reader of these
    rows has to spend.
    """
    from exporter.db.engine import make_engine
    from exporter.read import asof
    from exporter.read import inventory as report

    engine = make_engine(url, create=False)
    rows = 0
    try:
        at = asof.resolve_as_of(engine, "1", now=datetime.now(UTC)).at if when == "as-of" else None
        with engine.connect() as conn:
            query, holders = report._lock_reads(conn, at, None, False)
            if conn.dialect.name == "postgresql":
                compiled = query.compile(dialect=conn.dialect)
                dbapi: Any = conn.connection.dbapi_connection
                with dbapi.cursor() as cursor:
                    cursor.execute("SET LOCAL jit = off")  # as the exporter reads
                    for values in holders:
                        params = compiled.construct_params(values)
                        rows += sum(1 for _ in cursor.stream(compiled.string, params, size=2000))
                return rows
            streamed = conn.execution_options(stream_results=conn.dialect.name != "sqlite")
            for values in holders:
                # Core binds the parameters; the rows come from its DBAPI cursor, undecoded.
                with streamed.execute(query, values) as result:
                    while batch := result.cursor.fetchmany(2000):
                        rows += len(batch)
    finally:
        engine.dispose()
    return rows


def measure(args: tuple[str, ...], url: str, workdir: Path) -> dict[str, Any]:
    """Run `exporter ARGS` (or a SQL floor) on `url` as a subprocess: its wall and CPU time,
    peak RSS and output."""
    config = workdir / "empty.toml"
    config.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}
    if args[0] == "--sql-floor":
        command = [sys.executable, str(Path(__file__).resolve()), *args, "--db-url", url]
    else:
        command = [sys.executable, "-m", "exporter.cli", *args, "-c", str(config)]
        command += ["--database-url", url]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert process.stdout is not None and process.stderr is not None
    lines = size = 0
    while chunk := process.stdout.read(1 << 16):
        lines += chunk.count(b"\n")
        size += len(chunk)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} exited {process.returncode}: {stderr.decode()[-2000:]}"
        )
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rss_peak_mib": maxrss_bytes(usage) / MIB,
        "lines": lines,
        "bytes": size,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the database, then time every command `args.repeat` times."""
    workdir = Path(tempfile.mkdtemp(prefix="exporter-read-bench-"))
    busy = os.getloadavg()[0]
    if busy > 0.5:
        print(f"warning: load average {busy:.1f}: other processes share the CPUs", flush=True)
    steps = [(name, ("--sql-floor", when)) for name, when in FLOORS.items()]
    steps += [(name, command) for name, command, _, _ in COMMANDS]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in steps}
    steps = [step for step in steps if not args.only or step[0] in args.only]
    try:
        with database(args, workdir) as (url, built):
            for round_no in range(1, args.repeat + 1):
                for name, command in steps:
                    figures = measure(command, url, workdir)
                    figures["load_before"] = os.getloadavg()[0]
                    results[name].append(figures)
                    print(
                        f"round {round_no}: {name:<24}{figures['wall_s']:>7.2f} s wall"
                        f"{figures['cpu_s']:>7.2f} s cpu{figures['rss_peak_mib']:>6.0f} MiB",
                        flush=True,
                    )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary: dict[str, dict[str, Any]] = {}
    if not args.repeat:
        return {"benchmark": "read", "db": args.db, "build": built, "summary": summary}
    for name, command in steps:
        runs = results[name]
        summary[name] = {
            "command": " ".join(command),
            "wall_s": statistics.median(r["wall_s"] for r in runs),
            "cpu_s": statistics.median(r["cpu_s"] for r in runs),
            "rss_peak_mib": max(r["rss_peak_mib"] for r in runs),
            "lines": runs[0]["lines"],
        }
    for name, _, judged, floor in COMMANDS:
        if name not in summary:
            continue
        row = summary[name]
        if floor is not None and floor in summary:
            # Per round, against the floor measured in the same round (the VM's speed drifts).
            rounds = zip(results[name], results[floor], strict=True)
            row["x_floor"] = statistics.median(r["wall_s"] / f["wall_s"] for r, f in rounds)
        if judged:
            row["met"] = row["wall_s"] <= TARGET_SECONDS and row["rss_peak_mib"] < TARGET_RSS_MIB
    _check_lines(summary, args.locks)
    parameters = vars(args) | {"results": str(args.results), "db_url": None}
    return {
        **new_report("read", args.db, parameters),
        "build": built,
        "summary": summary,
        "runs": results,
    }


def _check_lines(summary: dict[str, Any], locks: int) -> None:
    """The CSV outputs hold every lock (plus the header line): the figures are of whole runs."""
    for name in ("locks csv", "locks --as-of 1 csv"):
        if name in summary and summary[name]["lines"] != locks + 1:
            raise RuntimeError(f"{name} wrote {summary[name]['lines'] - 1} locks, not {locks}")


def print_table(report: dict[str, Any]) -> None:
    """The summary as a plain text table."""
    p = report["parameters"]
    details = f"{p['locks']:,} locks in {p['owners']:,} owner accounts"
    print_heading(report, "read benchmark", details, COLUMNS, "  target")
    for name, row in report["summary"].items():
        target = ""
        if "met" in row:
            target = f"<= {TARGET_SECONDS:.0f} s, < {TARGET_RSS_MIB:.0f} MiB: " + (
                "ok" if row["met"] else "MISS"
            )
        ratio = f"{row['x_floor']:.2f}" if "x_floor" in row else ""
        print(
            f"{name:<26}{row['wall_s']:>8.2f}{row['cpu_s']:>8.2f}"
            f"{row['rss_peak_mib']:>6.0f} MiB{row['lines']:>12,}{ratio:>9}  {target}"
        )
    print(
        "(each command is its own process: peak RSS includes the interpreter and imports; the "
        "SQL floor's lines are the rows it read; x floor: wall time over the floor's, same round)"
    )


def main(argv: list[str] | None = None) -> int:
    """Parse options, build the database, time the commands, print and save the results."""
    parser = bench_parser(__doc__.split("\n")[0])
    parser.add_argument("--locks", type=int, default=1_000_000)
    parser.add_argument("--owners", type=int, default=2_000)
    parser.add_argument("--renames", type=int, default=10_000, help="locks renamed in run 2")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the built database (named by --locks/--owners/--renames/--seed: "
        "benchmarks/results/read_*.db, or database exporter_bench_read_* on the server) and "
        "reuse it when it is complete; --repeat 0 only builds it",
    )
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="measure only this step (repeatable)"
    )
    parser.add_argument("--sql-floor", choices=("now", "as-of"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sql_floor:  # one floor measurement, in a process of its own
        print("\n" * sql_floor(args.db_url, args.sql_floor), end="")
        return 0
    args.results.mkdir(parents=True, exist_ok=True)
    report = run(args)
    if not report["summary"]:
        return 0
    return finish(report, args, f"read_{args.db}", print_table)


if __name__ == "__main__":
    sys.exit(main())
