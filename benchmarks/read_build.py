"""The read benchmark's database: built directly with the exporter's bulk helpers (run 1 loads
the locks, run 2 renames some), or a kept one reused (--keep)."""

from __future__ import annotations

import argparse
import base64
import contextlib
import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# The benchmarks' shared set-up (same folder).
from common import ADMIN_URLS, bench_database, migrated

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
def database(
    args: argparse.Namespace, workdir: Path
) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """The built database's URL and build figures (None when a kept one was reused).

    With --keep the database has a name made of the build parameters and is not dropped: a
    later run with the same parameters (and --keep) reuses it if both runs were written,
    upgraded first when the code has a newer schema revision (`_at_head`).
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
    if _complete(url, args.locks) and _at_head(url):
        yield url, None
        return
    if args.db == "sqlite":
        with bench_database(args.db, workdir, url) as fresh:
            fresh()  # the file removed, created and migrated
    else:
        _server_database(url, None, drop=True)
        migrated(url)
    yield url, _build(args, url)


def _at_head(url: str) -> bool:
    """Whether the kept database at `url` is, or could be brought, at the schema the code
    expects: one behind is upgraded (the exporter's own migrations), one that cannot be is to
    be built again. One line says which."""
    from exporter.db.engine import make_engine
    from exporter.db.migrate import current_revision, head_revision, upgrade
    from exporter.errors import ExporterError

    head = head_revision()
    engine = make_engine(url, create=False)
    try:
        current = current_revision(engine)
        if current == head:
            print(f"reusing {url}", flush=True)
            return True
        upgrade(engine)
    except ExporterError as exc:
        print(f"building {url} again: its schema cannot be upgraded to {head}: {exc}", flush=True)
        return False
    finally:
        engine.dispose()
    print(f"reusing {url}, its schema upgraded from revision {current} to {head}", flush=True)
    return True


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
