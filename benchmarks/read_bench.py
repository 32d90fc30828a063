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
import base64
import contextlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# The benchmarks' shared set-up: database, results folder, environment record (same folder).
from common import ADMIN_URLS, MIB, bench_database, bench_parser, environment, save_report

TARGET_SECONDS = 5.0
TARGET_RSS_MIB = 150.0
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
_PLACES = ("Entrance", "Main", "Back", "Side", "Server", "Storage", "Bike", "Staff", "Archive")
_THINGS = ("Door", "Gate", "Room", "Cabinet", "Locker", "Cellar")
_MODELS = (("TK.Td30", 1, "Td30"), ("TK.Pad2", 1, "Padlock P2"), ("SB.Wr1", 7, "Wall Reader WR1"))
_DESCRIPTIONS = ("Ground floor, next to the reception.", "Staff only.", "Fire door, keep closed.")


# -- building the database ------------------------------------------------------------------------


def build(url: str, *, locks: int, owners: int, renames: int, seed: int) -> dict[str, Any]:
    """Fill the empty, migrated database at `url`: run 1 loads `locks`, run 2 renames some."""
    from sqlalchemy import insert, literal, select, update

    from exporter.db.bulk import insert_many
    from exporter.db.engine import connect, make_engine
    from exporter.db.schema import (
        LOCK_TRACKED,
        bound_lock_versions,
        bound_locks,
        owner_account_versions,
        owner_accounts,
        sync_runs,
    )
    from exporter.db.types import UTCDateTime
    from exporter.sync.versions import close_versions, open_created_versions

    rng = random.Random(seed)
    started = time.perf_counter()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    second = start + timedelta(days=1)
    owner_ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(owners)]
    columns = ("id", *LOCK_TRACKED, "lock_id_hex", "first_seen_at", "updated_at")
    engine = make_engine(url)
    try:
        with connect(engine) as conn:
            with conn.begin():
                conn.execute(
                    insert(sync_runs),
                    [
                        {"id": run, "started_at": t, "finished_at": t + timedelta(hours=1)}
                        | {"status": "running", "trigger": "manual"}
                        for run, t in ((1, start), (2, second))
                    ],
                )
                owner_rows = [
                    {"id": o, "name": f"Owner {rng.randrange(10**6)}", "active": True}
                    for o in owner_ids
                ]
                conn.execute(
                    insert(owner_accounts),
                    [{**o, "first_seen_at": start, "updated_at": start} for o in owner_rows],
                )
                conn.execute(
                    insert(owner_account_versions),
                    [
                        {**o, "valid_from": start, "change_type": "created", "run_id": 1}
                        for o in owner_rows
                    ],
                )
            renamed: list[str] = []
            # One transaction per ~50,000 locks: a commit per owner spends the time in fsync.
            per_commit = max(1, 50_000 * owners // max(locks, 1))
            for first in range(0, owners, per_commit):
                with conn.begin():
                    for n in range(first, min(first + per_commit, owners)):
                        owner_id = owner_ids[n]
                        count = locks // owners + (1 if n < locks % owners else 0)
                        t = start + timedelta(microseconds=n + 1)
                        rows = [_lock_row(rng, owner_id, t) for _ in range(count)]
                        renamed.extend(row[0] for row in rows[: renames * count // max(locks, 1)])
                        insert_many(conn, bound_locks, columns, rows)
                        open_created_versions(conn, owner_id, t, 1)
            with conn.begin():
                renamed_at = second + timedelta(microseconds=1)
                for chunk_start in range(0, len(renamed), 500):
                    chunk = renamed[chunk_start : chunk_start + 500]
                    close_versions(conn, bound_lock_versions, chunk, renamed_at)
                    conn.execute(
                        update(bound_locks)
                        .where(bound_locks.c.id.in_(chunk))
                        .values(title=bound_locks.c.title + " (renamed)", updated_at=renamed_at)
                    )
                    source = select(
                        bound_locks.c.id,
                        *(bound_locks.c[name] for name in LOCK_TRACKED),
                        literal(renamed_at, UTCDateTime()).label("valid_from"),
                        literal("updated").label("change_type"),
                        literal(2).label("run_id"),
                    ).where(bound_locks.c.id.in_(chunk))
                    names = ["id", *LOCK_TRACKED, "valid_from", "change_type", "run_id"]
                    conn.execute(insert(bound_lock_versions).from_select(names, source))
                conn.execute(update(sync_runs).values(status="succeeded"))
        if engine.dialect.name == "postgresql":
            # What autovacuum does soon after a load (statistics, visibility map, hint bits):
            # without it the first reads plan for an empty table and write every page back.
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")
    finally:
        engine.dispose()
    return {"locks": locks, "renamed": len(renamed), "build_s": time.perf_counter() - started}


def _lock_row(rng: random.Random, owner_id: str, t: datetime) -> tuple[Any, ...]:
    type_id, maker, model = rng.choice(_MODELS)
    physical = bytes(rng.getrandbits(8) for _ in range(7))
    bind = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(6 * 365 * 86400))
    return (
        str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        owner_id,
        f"{rng.choice(_PLACES)} {rng.choice(_THINGS)} {rng.randrange(1, 100)}",
        rng.choice(_DESCRIPTIONS),
        base64.b64encode(physical).decode(),
        type_id,
        model,
        maker,
        rng.random() > 0.1,
        bind,
        None,
        "Lock",
        "-".join(f"{b:02X}" for b in physical[2:]),
        t,
        t,
    )


@contextlib.contextmanager
def _database(
    args: argparse.Namespace, workdir: Path
) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """The built database's URL and build figures (None when a kept one was reused).

    With --keep the database has a name made of the build parameters and is not dropped: a
    later run with the same parameters (and --keep) reuses it if both runs were written.
    """
    if not args.keep:
        with bench_database(args.db, workdir, args.db_url) as fresh:
            url = fresh()
            yield url, _build(args, url)
        return
    name = f"read_{args.locks}_{args.owners}_{args.renames}_{args.seed}"
    if args.db == "sqlite":
        path = Path(args.db_url.removeprefix("sqlite:///")) if args.db_url else None
        url = f"sqlite:///{path or (args.results / (name + '.db')).resolve()}"
    else:
        url = _server_database(args.db_url or ADMIN_URLS[args.db], f"exporter_bench_{name}")
    if _complete(url, args.locks):
        print(f"reusing {url}", flush=True)
        yield url, None
        return
    if args.db == "sqlite":
        with bench_database(args.db, workdir, url) as fresh:
            fresh()  # the file removed, created and migrated
    else:
        from exporter.db.engine import make_engine
        from exporter.db.migrate import upgrade

        _server_database(url, None, drop=True)
        engine = make_engine(url)
        try:
            upgrade(engine)
        finally:
            engine.dispose()
    yield url, _build(args, url)


def _build(args: argparse.Namespace, url: str) -> dict[str, Any]:
    print(f"building {args.locks:,} locks in {args.owners:,} owner accounts...", flush=True)
    built = build(url, locks=args.locks, owners=args.owners, renames=args.renames, seed=args.seed)
    print(f"built in {built['build_s']:.0f} s", flush=True)
    return built


def _server_database(url: str, name: str | None, *, drop: bool = False) -> str:
    """The URL of database `name` on the server of `url` (None: url's own); dropped and created
    again with `drop`, else created if missing."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    target = make_url(url)
    if name is not None:
        target = target.set(database=name)
    name = target.database
    admin = create_engine(
        target.set(database="postgres" if target.get_backend_name() == "postgresql" else ""),
        isolation_level="AUTOCOMMIT",
    )
    try:
        with admin.connect() as conn:
            if drop:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
            if target.get_backend_name() == "postgresql":
                found = conn.execute(
                    text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
                ).first()
                if found is None:
                    conn.execute(text(f"CREATE DATABASE {name}"))
            else:
                conn.execute(text(f"CREATE DATABASE IF NOT EXISTS {name}"))
    finally:
        admin.dispose()
    return target.render_as_string(hide_password=False)


def _complete(url: str, locks: int) -> bool:
    """Whether the database at `url` holds a finished build of `locks` locks."""
    from sqlalchemy import func, select
    from sqlalchemy.exc import SQLAlchemyError

    from exporter.db.engine import make_engine
    from exporter.db.schema import bound_locks, sync_runs

    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return False
    engine = make_engine(url, create=False)
    try:
        with engine.connect() as conn:
            succeeded = conn.execute(
                select(func.count()).where(sync_runs.c.status == "succeeded")
            ).scalar_one()
            stored = conn.execute(select(func.count()).select_from(bound_locks)).scalar_one()
        return bool(succeeded == 2 and stored == locks)
    except SQLAlchemyError:
        return False
    finally:
        engine.dispose()


# -- measuring ------------------------------------------------------------------------------------


def sql_floor(url: str, when: str) -> int:
    """Read the rows of `exporter locks`'s queries (now, or as of run 1) with the bare driver.

    The same SQL (report._lock_reads: once per owner, or on PostgreSQL once for all owners),
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
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rss_peak_mib": usage.ru_maxrss * scale / MIB,
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
        with _database(args, workdir) as (url, built):
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
    return {
        "benchmark": "read",
        "db": args.db,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "parameters": vars(args) | {"results": str(args.results), "db_url": None},
        "environment": environment(),
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
    print()
    print(
        f"read benchmark: {report['db']}, {p['locks']:,} locks in {p['owners']:,} owner "
        f"accounts, median of {p['repeat']}"
    )
    header = (
        f"{'command':<26}{'wall s':>8}{'cpu s':>8}{'peak RSS':>10}{'lines':>12}{'x floor':>9}"
        "  target"
    )
    print(header)
    print("-" * len(header))
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
    print_table(report)
    save_report(report, args.results, f"read_{args.db}")
    missed = [name for name, row in report["summary"].items() if row.get("met") is False]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
