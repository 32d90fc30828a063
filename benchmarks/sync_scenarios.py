"""The sync benchmark's scenarios: what each one runs in a fresh client process, and measuring
one of them (`scenario`) against the sandbox of `common.Server`."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

# The benchmarks' shared set-up (same folder).
from common import (
    CLIENT_ID,
    CLIENT_SECRET,
    LOCK_SCOPES,
    Crawler,
    Server,
    in_fresh_process,
    run_settings,
)
from procstats import measured

SCENARIOS = ("floor", "fetch", "store", "first", "unchanged", "changes")

# -- client processes ----------------------------------------------------------------------------


def _crawl_floor(params: dict[str, Any]) -> dict[str, Any]:
    """A plain concurrent crawl of the exporter's pages: HTTP + JSON parsing, nothing else."""
    with Crawler(params) as crawler:
        return crawler.owners_and_locks(crawler.read_overlapping, max(2, params["page_size"]))


def _client(params: dict[str, Any]) -> Any:
    """The exporter's Tapkey client for the sandbox, with `params`' page size and workers."""
    from exporter.tapkey.auth import TokenProvider
    from exporter.tapkey.client import TapkeyClient
    from exporter.tapkey.options import PageLimits

    tokens = TokenProvider(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        token_url=params["token_url"],
        scopes=LOCK_SCOPES.split(),
    )
    return TapkeyClient(
        base_url=params["base_url"],
        tokens=tokens,
        pages=PageLimits(page_size=params["page_size"]),
        workers=params["workers"],
    )


def _exporter_fetch(params: dict[str, Any]) -> dict[str, Any]:
    """What a first load fetches, the way a run fetches it (`exporter.sync.crawl.crawl`: its
    threads, the confirming requests of a paging fact not yet learned, every element parsed into
    LockRecords), with the garbage collector as a run sets it, and no database: nothing stored,
    so nothing to compare with."""
    import threading

    from exporter.db.engine import make_engine
    from exporter.sync.collector import fewer_collections
    from exporter.sync.crawl import crawl

    unused = make_engine("sqlite://")  # the crawl reads stored texts only for owners with any
    try:
        with fewer_collections(), _client(params) as client:
            owners = [owner.id for owner in client.list_owners()]
            fetches = crawl(
                client,
                owners,
                engine=unused,
                workers=params["workers"],
                stop=threading.Event(),
                stored_locks={},
            )
            locks = 0
            for _, fetched in fetches:
                if isinstance(fetched, Exception):
                    raise fetched
                locks += len(fetched.records)
            sent = client.request_count
    finally:
        unused.dispose()
    return {"status": "succeeded", "owners": len(owners), "locks": locks, "api_requests": sent}


def _fetch_rows(params: dict[str, Any]) -> dict[str, Any]:
    """Before `store`'s clock: every owner's lock rows as the sync builds them for a first load."""
    from datetime import timedelta

    from exporter.db.schema import LOCK_TRACKED
    from exporter.sync.versions import LOCK_CURRENT_ONLY

    names = (*LOCK_TRACKED[1:], *LOCK_CURRENT_ONLY)
    start = datetime.now(UTC)
    owners: list[tuple[str, datetime, list[tuple[Any, ...]]]] = []
    with _client(params) as client:
        for n, owner in enumerate(client.list_owners()):
            t = start + timedelta(microseconds=n)  # each owner's own instant, as in the sync
            records = client.list_bound_locks(owner.id).records
            rows = [(r.id, owner.id, *(getattr(r, k) for k in names), t, t) for r in records]
            owners.append((owner.id, t, rows))
    return {
        "columns": ("id", *LOCK_TRACKED, *LOCK_CURRENT_ONLY, "first_seen_at", "updated_at"),
        "owners": owners,
        "start": start,
    }


def _store_only(params: dict[str, Any]) -> dict[str, Any]:
    """The first load's writes alone, as the sync engine writes them: secondary indexes built
    after the load, whole owners grouped into transactions of up to Batching().locks locks."""
    from sqlalchemy import insert

    from exporter.db import indexes
    from exporter.db.engine import connect, make_engine
    from exporter.db.schema import owner_accounts, sync_runs

    prepared = params["prepared"]
    owners, start = prepared["owners"], prepared["start"]
    engine = make_engine(params["db_url"])
    try:
        # What the run has written before its first owner.
        with connect(engine) as conn, conn.begin():
            conn.execute(
                insert(sync_runs).values(id=1, started_at=start, status="running", trigger="manual")
            )
            conn.execute(
                insert(owner_accounts),
                [{"id": o, "first_seen_at": start, "updated_at": start} for o, _, _ in owners],
            )
        indexes.drop_for_first_load(engine)
        with connect(engine) as conn:
            _store_groups(conn, prepared["columns"], owners)
        indexes.restore(engine)
    finally:
        engine.dispose()
    locks = sum(len(rows) for _, _, rows in owners)
    return {"status": "succeeded", "owners": len(owners), "locks": locks, "api_requests": 0}


def _store_groups(
    conn: Any, columns: tuple[str, ...], owners: list[tuple[str, datetime, list[Any]]]
) -> None:
    """Owners' new locks and `created` versions, whole owners per transaction (sync.Batching)."""
    from exporter.db.bulk import insert_many
    from exporter.db.schema import bound_locks
    from exporter.sync.batches import Batching
    from exporter.sync.versions import open_created_versions

    limit, written = Batching().locks, 0
    # As the sync does (LockSync.insert_in_id_order): InnoDB keeps the table in (owner, id) order.
    in_id_order = conn.dialect.name in ("mysql", "mariadb")
    transaction = conn.begin()
    for owner_id, t, rows in owners:
        insert_many(conn, bound_locks, columns, sorted(rows) if in_id_order else rows)
        open_created_versions(conn, owner_id, t, 1)
        written += len(rows)
        if written >= limit:
            transaction.commit()
            transaction, written = conn.begin(), 0
    transaction.commit()


def _sync_once(params: dict[str, Any]) -> dict[str, Any]:
    """`exporter.service.job.run_once`, settings pointing at the sandbox and the bench database."""
    from exporter.service.job import run_once

    result = run_once(run_settings(params), trigger="manual")
    return {
        "status": result.status,
        "error": result.error,
        "owners": result.owners_seen,
        "locks": result.locks_seen,
        "api_requests": result.api_requests,
        **result.counts.as_dict(),
    }


def _measure_child(conn: Connection, kind: str, params: dict[str, Any]) -> None:
    """Body of a client process: warm imports, run one scenario, report wall time and RSS."""
    logging.basicConfig(level=logging.WARNING, format="  [client] %(levelname)s %(message)s")
    # Import everything the scenario needs before the clock starts: imports are not sync work.
    import requests  # noqa: F401

    import exporter.service.job  # noqa: F401

    if kind not in ("floor", "crawler", "fetch"):
        # And the database driver, which the run would import inside the clock (through
        # create_engine): psycopg takes 0.1-0.2 s on this VM, sqlite3 next to nothing.
        from sqlalchemy.engine import make_url

        make_url(params["db_url"]).get_dialect().import_dbapi()
    profile = params.get("profile")
    if kind == "store":  # its rows are built before the clock starts
        params = {**params, "prepared": _fetch_rows(params)}
    work = {
        "floor": _crawl_floor,
        "fetch": _exporter_fetch,
        "store": _store_only,
        "crawler": _plain_crawler,
    }.get(kind, _sync_once)
    conn.send(measured(work, params, profile=profile))
    conn.close()


def measure(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run one scenario in a fresh process and return its figures."""
    return in_fresh_process(_measure_child, kind, params)


def scenario(
    server: Server, kind: str, round_no: int, params: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """Measure one scenario of one round (advancing the sandbox first for `changes`)."""
    if kind == "changes":
        server.call("advance", args.changes)
    server.call("reset")
    profile = None
    if args.profile and kind in args.profile:
        profile = str(args.results / f"profile_{args.db}_{kind}_{round_no}.prof")
    load_before = os.getloadavg()[0]
    sandbox_cpu = server.call("cpu")
    figures = measure(kind, {**params, "profile": profile})
    figures["sandbox_cpu_s"] = server.call("cpu") - sandbox_cpu
    figures["server_requests"] = server.call("counts")["total"]
    if kind == "store":  # the sandbox served its pages before the clock started
        figures["sandbox_cpu_s"] = figures["server_requests"] = 0
    # What the client and the sandbox did not use: the database server (and anything else).
    figures["other_cpu_s"] = max(
        0.0, figures["machine_cpu_s"] - figures["cpu_s"] - figures["sandbox_cpu_s"]
    )
    figures["loadavg_1m"] = [load_before, os.getloadavg()[0]]
    print(
        f"  round {round_no} {kind:<9} {figures['wall_s']:7.2f} s  "
        f"{figures['rss_peak_mib']:6.0f} MiB  {figures['server_requests']:5d} req  "
        f"load {load_before:.1f}  {_counts_text(figures)}",
        flush=True,
    )
    if figures["status"] != "succeeded":
        raise RuntimeError(f"{kind}: run {figures['status']}: {figures.get('error')}")
    return figures


def bracketed(
    measure_one: Callable[[str], dict[str, Any]], floor: str, kinds: Iterable[str], key: str
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Measure each of `kinds` between two runs of `floor` (`measure_one(kind)` measures one);
    the floors' figures, and each kind's with `key` set to the mean wall time of its two floors.

    This VM's speed drifts within minutes, so each scenario is compared with the floors measured
    next to it.
    """
    floors = [measure_one(floor)]
    figures: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        figures[kind] = measure_one(kind)
        floors.append(measure_one(floor))
        figures[kind][key] = (floors[-2]["wall_s"] + floors[-1]["wall_s"]) / 2
    return floors, figures


def _counts_text(figures: dict[str, Any]) -> str:
    if "created" not in figures:
        return f"locks={figures['locks']}"
    keys = ("created", "updated", "removed", "restored", "unchanged")
    return " ".join(f"{k}={figures[k]}" for k in keys if figures[k])


def _plain_crawler(params: dict[str, Any]) -> dict[str, Any]:
    """The plain crawler: pages of 1000, `$skip` advanced by the rows received, a short page ends
    a list, the same workers, one pooled `requests.Session`, `json.loads` of every page."""
    with Crawler(params) as crawler:
        return crawler.owners_and_locks(crawler.read_plain, 1000)
