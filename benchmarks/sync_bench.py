"""Sync benchmark: 100,000 locks from the sandbox into SQLite, PostgreSQL or MariaDB.

    .venv/bin/python benchmarks/sync_bench.py --db sqlite
    .venv/bin/python benchmarks/sync_bench.py --db postgresql

Process layout (so that no GIL is shared between the fake API and the code being measured):

- this process orchestrates: it creates/migrates the databases and prints the table;
- one *server* process runs `exporter.sandbox.server.Sandbox` (200 owners x 500 locks by default)
  and obeys a small control pipe (`advance`, `reset`, `counts`, `stop`);
- every measurement runs in a *fresh client* process, so its peak RSS (VmHWM) is its own.

Scenarios, in this order, in each of `--repeat` rounds (a fresh sandbox and database per round):

- ``floor``: a plain concurrent crawl of the same pages (same `$top`, the same overlapping `$skip`
  sequence as the exporter, the same number of worker threads, one pooled `requests.Session`,
  `json.loads` of every page) with no database: the least any client can spend;
- ``fetch``: the exporter's own `TapkeyClient` crawling the same pages into `LockRecord`s, no
  database (a diagnostic: it splits the exporter's cost into API client and engine);
- ``store``: only the first load's database writes: the same lock rows, prebuilt before the clock
  starts (fetched by the exporter's client), written as a first load writes them (secondary
  indexes dropped first and built at the end, `exporter.db.indexes`; whole owners per transaction
  up to `Batching().locks` locks: `insert_many`, then the `created` versions copied by
  `history.open_created_versions`). No HTTP, no diffing: a first load cannot take less;
- ``first``: `exporter.service.job.run_once` into an empty (migrated) database;
- ``unchanged``: the same again, nothing changed;
- ``changes``: after `Sandbox.advance(changes=1000)` in the server process.

The floor is measured before and after every other scenario. The table shows the median wall time
per scenario, and "x floor" is the median over rounds of (scenario / the mean of the floors just
before and after it). Targets (issue 2): first load <= 1.6 x floor, unchanged rerun
<= 1.25 x floor. Results go to `benchmarks/results/` as JSON (gitignored); `--profile SCENARIO`
writes cProfile stats of the client's main thread there too.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

# The benchmarks' shared set-up (same folder).
from common import (
    CLIENT_ID,
    CLIENT_SECRET,
    LOCK_SCOPES,
    MIB,
    Crawler,
    Server,
    bench_database,
    bench_parser,
    environment,
    in_fresh_process,
    run_settings,
    save_report,
)

TARGETS = {"first": 1.6, "unchanged": 1.25}
SCENARIOS = ("floor", "fetch", "store", "first", "unchanged", "changes")

# -- client processes ----------------------------------------------------------------------------


def _status_bytes(key: str) -> int | None:
    """A size from /proc/self/status (`VmHWM`, `VmRSS`) in bytes; None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak_rss() -> int:
    """This process's peak resident set size in bytes (VmHWM: per process, reset by exec)."""
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _machine_cpu() -> tuple[float, float]:
    """CPU seconds every process on the machine has used so far, and the seconds stolen by the
    hypervisor (Linux /proc/stat; zeros elsewhere)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / tick, steal / tick


def _current_rss() -> int:
    """This process's resident set size in bytes now."""
    current = _status_bytes("VmRSS")
    return _peak_rss() if current is None else current


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
    """The exporter's own Tapkey client (paging, parsing into LockRecords), no database."""
    workers = params["workers"]
    with _client(params) as client:
        owners = client.list_owners()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            locks = sum(
                len(fetched.records)
                for fetched in pool.map(lambda o: client.list_bound_locks(o.id), owners)
            )
        sent = client.request_count
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

    profile = params.get("profile")
    if kind == "store":  # its rows are built before the clock starts
        params = {**params, "prepared": _fetch_rows(params)}
    base_rss = _current_rss()
    work = {
        "floor": _crawl_floor,
        "fetch": _exporter_fetch,
        "store": _store_only,
        "crawler": _plain_crawler,
    }.get(kind, _sync_once)
    machine_started, steal_started = _machine_cpu()
    started = time.perf_counter()
    cpu_started = time.process_time()
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        outcome = profiler.runcall(work, params)
        profiler.dump_stats(profile)
    else:
        outcome = work(params)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    machine, steal = _machine_cpu()
    conn.send(
        {
            **outcome,
            "wall_s": wall,
            "cpu_s": cpu,
            "machine_cpu_s": machine - machine_started,
            "steal_s": steal - steal_started,
            "rss_peak_mib": _peak_rss() / MIB,
            "rss_base_mib": base_rss / MIB,
        }
    )
    conn.close()


def measure(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run one scenario in a fresh process and return its figures."""
    return in_fresh_process(_measure_child, kind, params)


# -- orchestration -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every scenario `args.repeat` times; return the raw figures and the summary."""
    workdir = Path(tempfile.mkdtemp(prefix="exporter-bench-"))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SCENARIOS}
    started = time.perf_counter()
    print(
        f"starting the sandbox ({args.owners} owners x {args.locks_per_owner} locks) "
        "in its own process...",
        flush=True,
    )
    busy = os.getloadavg()[0]
    if busy > 0.5:
        print(
            f"warning: load average {busy:.1f} before starting; other processes share the CPUs "
            "and make the wall times noisy",
            flush=True,
        )
    try:
        with bench_database(args.db, workdir, args.db_url) as fresh:
            for round_no in range(1, args.repeat + 1):
                # A fresh sandbox each round, so every round starts from the same inventory.
                server = Server(
                    seed=args.seed, owners=args.owners, locks_per_owner=args.locks_per_owner
                )
                try:
                    params = server.params(args, workdir, fresh())
                    # A floor before and after every scenario: this VM's speed drifts within
                    # minutes, so each scenario is compared with the floors measured next to it.
                    floors = [_scenario(server, "floor", round_no, params, args)]
                    for kind in SCENARIOS[1:]:
                        figures = _scenario(server, kind, round_no, params, args)
                        floors.append(_scenario(server, "floor", round_no, params, args))
                        figures["floor_s"] = (floors[-2]["wall_s"] + floors[-1]["wall_s"]) / 2
                        runs[kind].append(figures)
                        if kind == "store":  # the first load needs the database empty again
                            params["db_url"] = fresh()
                    runs["floor"].extend(floors)
                finally:
                    server.close()
                _check_counts(runs, floors[0], args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = _summarise(runs)
    return {
        "benchmark": "sync",
        "db": args.db,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "parameters": {
            "owners": args.owners,
            "locks_per_owner": args.locks_per_owner,
            "locks": args.owners * args.locks_per_owner,
            "changes": args.changes,
            "workers": args.workers,
            "page_size": args.page_size,
            "repeat": args.repeat,
            "seed": args.seed,
        },
        "environment": environment(),
        "summary": summary,
        "runs": runs,
        "total_s": time.perf_counter() - started,
    }


def _scenario(
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


def _counts_text(figures: dict[str, Any]) -> str:
    if "created" not in figures:
        return f"locks={figures['locks']}"
    keys = ("created", "updated", "removed", "restored", "unchanged")
    return " ".join(f"{k}={figures[k]}" for k in keys if figures[k])


def _check_counts(
    runs: dict[str, list[dict[str, Any]]], floor: dict[str, Any], args: argparse.Namespace
) -> None:
    """Fail loudly if a scenario did not do what it claims to measure."""
    total = args.owners * args.locks_per_owner
    first, unchanged = runs["first"][-1], runs["unchanged"][-1]
    if first["created"] != total or floor["locks"] != total:
        raise RuntimeError(f"first load created {first['created']} locks, expected {total}")
    if runs["store"][-1]["locks"] != total:
        raise RuntimeError(f"store wrote {runs['store'][-1]['locks']} locks, expected {total}")
    changed = sum(unchanged[k] for k in ("created", "updated", "removed", "restored"))
    if changed or unchanged["unchanged"] != total:
        raise RuntimeError(f"the unchanged rerun changed {changed} locks")


def _summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for kind, figures in runs.items():
        walls = [f["wall_s"] for f in figures]
        summary[kind] = {
            "wall_s": statistics.median(walls),
            "wall_min_s": min(walls),
            "wall_max_s": max(walls),
            "cpu_s": statistics.median(f["cpu_s"] for f in figures),
            **{
                key: statistics.median(f[key] for f in figures)
                for key in ("sandbox_cpu_s", "other_cpu_s", "machine_cpu_s", "steal_s")
            },
            "rss_peak_mib": max(f["rss_peak_mib"] for f in figures),
            "rss_base_mib": statistics.median(f["rss_base_mib"] for f in figures),
            # The first: for the floor, one taken before the sandbox's changes.
            "api_requests": figures[0]["api_requests"],
            "server_requests": figures[0]["server_requests"],
        }
    # Each scenario against the mean of the floors measured just before and after it, so drifts
    # in machine speed cancel out; the median over rounds is reported.
    for kind in SCENARIOS[1:]:
        ratios = [f["wall_s"] / f["floor_s"] for f in runs[kind]]
        summary[kind]["ratio"] = statistics.median(ratios)
        summary[kind]["ratios"] = ratios
        if kind in TARGETS:
            summary[kind]["target"] = TARGETS[kind]
            summary[kind]["met"] = summary[kind]["ratio"] <= TARGETS[kind]
    return summary


def _names(parameters: dict[str, Any]) -> dict[str, str]:
    return {
        "floor": "fetch floor (no DB)",
        "fetch": "exporter fetch (no DB)",
        "store": "store only (no HTTP)",
        "first": "first load",
        "unchanged": "unchanged rerun",
        "changes": f"after {parameters['changes']:,} changes",
    }


def print_table(report: dict[str, Any]) -> None:
    """The summary as a plain text table."""
    p, s = report["parameters"], report["summary"]
    print()
    print(
        f"sync benchmark: {report['db']}, {p['locks']:,} locks ({p['owners']} owners x "
        f"{p['locks_per_owner']}), workers={p['workers']}, page_size={p['page_size']}, "
        f"median of {p['repeat']}"
    )
    header = (
        f"{'scenario':<22}{'wall s':>8}{'(min-max)':>15}{'cpu s':>8}{'peak RSS':>10}"
        f"{'requests':>10}{'x floor':>9}{'target':>9}"
    )
    print(header)
    print("-" * len(header))
    names = _names(p)
    for kind in SCENARIOS:
        row = s[kind]
        spread = f"({row['wall_min_s']:.2f}-{row['wall_max_s']:.2f})"
        ratio = f"{row['ratio']:.2f}" if "ratio" in row else "1.00"
        target = ""
        if "target" in row:
            target = f"<={row['target']:.2f} " + ("ok" if row["met"] else "MISS")
        print(
            f"{names[kind]:<22}{row['wall_s']:>8.2f}{spread:>15}{row['cpu_s']:>8.2f}"
            f"{row['rss_peak_mib']:>6.0f} MiB{row['server_requests']:>10}{ratio:>9}{target:>9}"
        )
    print(
        f"(peak RSS is each client process's VmHWM; about {s['first']['rss_base_mib']:.0f} MiB of "
        "it is the interpreter and imports before the clock starts)"
    )
    print_cpu_table(report)


def print_cpu_table(report: dict[str, Any]) -> None:
    """Where the CPU went (medians): the client, the sandbox, the rest (the database server).

    "bound s" is the machine's CPU time over its cores: no schedule of the same work on this
    machine can take less wall time, whatever the client does with its threads.
    """
    s, cpus = report["summary"], report["environment"]["cpus"] or 1
    names = _names(report["parameters"])
    print()
    header = (
        f"{'CPU seconds':<22}{'client':>8}{'sandbox':>9}{'db+other':>10}{'machine':>9}"
        f"{'steal':>7}{'bound s':>9}{'x floor':>9}"
    )
    print(header)
    print("-" * len(header))
    floor = s["floor"]["wall_s"]
    for kind in SCENARIOS:
        row = s[kind]
        bound = row["machine_cpu_s"] / cpus
        print(
            f"{names[kind]:<22}{row['cpu_s']:>8.2f}{row['sandbox_cpu_s']:>9.2f}"
            f"{row['other_cpu_s']:>10.2f}{row['machine_cpu_s']:>9.2f}{row['steal_s']:>7.2f}"
            f"{bound:>9.2f}{bound / floor:>9.2f}"
        )
    print(f"(bound = machine CPU / {cpus} CPUs: the least wall time the same work can take here)")


# -- shapes against a remote API (issue 13): the plain crawler, latency, request counts ----------

#: OWNERSxLOCKS@MS: owners, locks per owner, milliseconds the sandbox waits before each answer.
SHAPES = ("60x777@30", "1000x5@50", "200x500@0")
#: Exporter time / plain crawler time (issue 13): the unchanged rerun, and the first load (many
#: small owners vs large ones), only with latency (the main table judges the no-latency shape).
SHAPE_TARGETS = {"unchanged": 1.15}
FIRST_TARGET_SMALL_OWNERS, FIRST_TARGET_LARGE_OWNERS = 1.3, 1.5
#: Exporter requests / plain crawler requests on a rerun, any shape.
REQUEST_TARGET = 1.05
SHAPE_SCENARIOS = ("first", "unchanged", "changes")


def _plain_crawler(params: dict[str, Any]) -> dict[str, Any]:
    """The plain crawler: pages of 1000, `$skip` advanced by the rows received, a short page ends
    a list, the same workers, one pooled `requests.Session`, `json.loads` of every page."""
    with Crawler(params) as crawler:
        return crawler.owners_and_locks(crawler.read_plain, 1000)


def parse_shape(text: str) -> tuple[int, int, float]:
    """OWNERSxLOCKS@MS -> (owners, locks per owner, latency in seconds)."""
    try:
        size, _, ms = text.partition("@")
        owners, _, locks = size.lower().partition("x")
        return int(owners), int(locks), float(ms or 0) / 1000
    except ValueError:
        message = f"a shape is OWNERSxLOCKS@MS, e.g. 60x777@30: {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def _shape_round(
    shape: str, round_no: int, fresh: Callable[[], str], workdir: Path, args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """One round of one shape: the crawler before and after each exporter scenario."""
    owners, locks, latency = parse_shape(shape)
    server = Server(seed=args.seed, owners=owners, locks_per_owner=locks, latency=latency)
    figures: dict[str, dict[str, Any]] = {}
    try:
        params = server.params(args, workdir, fresh())
        crawls = [_scenario(server, "crawler", round_no, params, args)]
        for kind in SHAPE_SCENARIOS:
            figures[kind] = _scenario(server, kind, round_no, params, args)
            crawls.append(_scenario(server, "crawler", round_no, params, args))
            figures[kind]["crawler_s"] = (crawls[-2]["wall_s"] + crawls[-1]["wall_s"]) / 2
            figures[kind]["crawler_requests"] = crawls[-1]["server_requests"]
        figures["crawler"] = crawls[0]
    finally:
        server.close()
    first = figures["first"]
    if first["created"] != owners * locks or figures["unchanged"]["unchanged"] != owners * locks:
        raise RuntimeError(f"{shape}: the exporter did not load {owners * locks} locks")
    return figures


def run_shapes(args: argparse.Namespace) -> dict[str, Any]:
    """Every shape of `args.shapes`, `args.repeat` rounds each; figures and medians."""
    workdir = Path(tempfile.mkdtemp(prefix="exporter-bench-"))
    rounds: dict[str, list[dict[str, dict[str, Any]]]] = {shape: [] for shape in args.shapes}
    try:
        with bench_database(args.db, workdir, args.db_url) as fresh:
            for shape in args.shapes:
                print(f"shape {shape}: {args.repeat} round(s)", flush=True)
                for round_no in range(1, args.repeat + 1):
                    rounds[shape].append(_shape_round(shape, round_no, fresh, workdir, args))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary: dict[str, dict[str, Any]] = {}
    for shape, figures in rounds.items():
        owners = parse_shape(shape)[0]
        for kind in SHAPE_SCENARIOS:
            runs = [f[kind] for f in figures]
            time_ratio = statistics.median(r["wall_s"] / r["crawler_s"] for r in runs)
            requests = runs[0]["server_requests"]
            crawler = runs[0]["crawler_requests"]
            target = SHAPE_TARGETS.get(kind)
            if kind == "first":
                large = owners < 100  # few large owners vs many small ones
                target = FIRST_TARGET_LARGE_OWNERS if large else FIRST_TARGET_SMALL_OWNERS
            if parse_shape(shape)[2] == 0:
                target = None  # no latency: the main table (store only, floors) judges it
            row = {
                "wall_s": statistics.median(r["wall_s"] for r in runs),
                "crawler_s": statistics.median(r["crawler_s"] for r in runs),
                "time_ratio": time_ratio,
                "requests": requests,
                "crawler_requests": crawler,
                "request_ratio": requests / crawler,
                "time_target": target,
                "time_met": None if target is None else time_ratio <= target,
            }
            if kind != "first":
                row["request_target"] = REQUEST_TARGET
                row["request_met"] = row["request_ratio"] <= REQUEST_TARGET
            summary[f"{shape} {kind}"] = row
    return {
        "benchmark": "sync-shapes",
        "db": args.db,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "parameters": {
            "shapes": args.shapes,
            "workers": args.workers,
            "page_size": args.page_size,
            "changes": args.changes,
            "repeat": args.repeat,
            "seed": args.seed,
        },
        "environment": environment(),
        "summary": summary,
        "rounds": rounds,
    }


def print_shapes(report: dict[str, Any]) -> None:
    """The shapes' summary as a plain text table."""
    p = report["parameters"]
    print()
    print(
        f"sync against a remote API: {report['db']}, workers={p['workers']}, "
        f"page_size={p['page_size']}, {p['changes']:,} changes, median of {p['repeat']}"
    )
    header = (
        f"{'shape and scenario':<24}{'exporter s':>11}{'crawler s':>10}{'x time':>8}"
        f"{'target':>8}{'requests':>10}{'crawler':>9}{'x req':>7}{'target':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, row in report["summary"].items():
        time_target = (
            f"{row['time_target']:.2f}{'' if row['time_met'] else '!'}"
            if row["time_target"]
            else "-"
        )
        request_target = (
            f"{row['request_target']:.2f}{'' if row['request_met'] else '!'}"
            if "request_target" in row
            else "-"
        )
        print(
            f"{name:<24}{row['wall_s']:>11.2f}{row['crawler_s']:>10.2f}{row['time_ratio']:>8.2f}"
            f"{time_target:>8}{row['requests']:>10}{row['crawler_requests']:>9}"
            f"{row['request_ratio']:>7.2f}{request_target:>8}"
        )
    print("(requests include the token request; '!' marks a missed target)")


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the benchmark, print the table and write the JSON results."""
    parser = bench_parser(__doc__.split("\n")[0])
    parser.add_argument("--owners", type=int, default=200)
    parser.add_argument("--locks-per-owner", type=int, default=500)
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4, help="[tapkey] workers (default 4)")
    parser.add_argument(
        "--page-size", type=int, default=1000, help="[tapkey] page_size (default 1000)"
    )
    parser.add_argument(
        "--profile",
        nargs="*",
        choices=SCENARIOS,
        help="write cProfile stats of these scenarios to the results folder",
    )
    parser.add_argument(
        "--shapes",
        nargs="*",
        type=parse_shape_text,
        help=f"instead of the main table: the remote-API shapes OWNERSxLOCKS@MS against the "
        f"plain crawler (no value: {' '.join(SHAPES)})",
    )
    args = parser.parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)
    if args.shapes is not None:
        return _main_shapes(args)
    report = run(args)
    print_table(report)
    save_report(report, args.results, f"sync_{args.db}")
    missed = [k for k, v in report["summary"].items() if v.get("met") is False]
    return 1 if args.check and missed else 0


def parse_shape_text(text: str) -> str:
    """Check a shape given on the command line; keep its text."""
    parse_shape(text)
    return text


def _main_shapes(args: argparse.Namespace) -> int:
    args.shapes = args.shapes or list(SHAPES)
    report = run_shapes(args)
    print_shapes(report)
    save_report(report, args.results, f"shapes_{args.db}", default=str)
    missed = [
        name
        for name, row in report["summary"].items()
        if row["time_met"] is False or row.get("request_met") is False
    ]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
