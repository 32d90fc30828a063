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
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The benchmarks' shared set-up (same folder).
from common import Server, bench_database
from reports import bench_parser, finish, new_report
from sync_report import print_table
from sync_scenarios import SCENARIOS, bracketed, scenario
from sync_shapes import SHAPES, main_shapes, parse_shape_text

TARGETS = {"first": 1.6, "unchanged": 1.25}

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
                floors, figures = _round(args, round_no, fresh, workdir)
                runs["floor"].extend(floors)
                for kind, measured in figures.items():
                    runs[kind].append(measured)
                _check_counts(runs, floors[0], args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = _summarise(runs)
    parameters = {
        "owners": args.owners,
        "locks_per_owner": args.locks_per_owner,
        "locks": args.owners * args.locks_per_owner,
        "changes": args.changes,
        "workers": args.workers,
        "page_size": args.page_size,
        "repeat": args.repeat,
        "seed": args.seed,
    }
    return {
        **new_report("sync", args.db, parameters),
        "summary": summary,
        "runs": runs,
        "total_s": time.perf_counter() - started,
    }


def _round(
    args: argparse.Namespace, round_no: int, fresh: Callable[[], str], workdir: Path
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """One round, in a fresh sandbox (every round starts from the same inventory): the floors,
    and every other scenario's figures."""
    with Server(seed=args.seed, owners=args.owners, locks_per_owner=args.locks_per_owner) as server:
        params = server.params(args, workdir, fresh())

        def measure_one(kind: str) -> dict[str, Any]:
            figures = scenario(server, kind, round_no, params, args)
            if kind == "store":  # the first load needs the database empty again
                params["db_url"] = fresh()
            return figures

        return bracketed(measure_one, "floor", SCENARIOS[1:], "floor_s")


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
        return main_shapes(args)
    return finish(run(args), args, f"sync_{args.db}", print_table)


if __name__ == "__main__":
    sys.exit(main())
