"""Access-data benchmark: an unchanged rerun with every entity against a plain crawl of its routes.

    .venv/bin/python benchmarks/access_bench.py --db sqlite
    .venv/bin/python benchmarks/access_bench.py --db postgresql --owners 200

The sandbox (its own process, see common.Server) serves owners with locks, contacts, bound
cards and grants. Each scenario runs in a fresh process: `floor` is the plain crawler of
sync_bench's --shapes (`Crawler.read_plain`: every page of the owner list and of the four routes
of every owner, `workers` at a time, `$skip` advanced by the rows received, a short page ends a
list, the JSON parsed, nothing else), which sends the requests of an unchanged rerun but one
(the rerun confirms the end of one access list before its removals);
`first` is `run_once` with entities contacts, cards and grants into an empty database;
`unchanged` is the same run again. Target (issue 15): the unchanged rerun costs at most 1.2x the
floor. The cost compared is the client process's CPU time (the exit status says whether the
best rerun met it against the best floor): on a machine shared with other work, wall times are
indicative only. Requests are compared exactly.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Crawler, Server, bench_database, in_fresh_process, run_settings
from procstats import measured

TARGET = 1.2
ROUTES = {"contacts": "Contacts", "cards": "BoundCards", "grants": "Grants"}


def _floor(params: dict[str, Any]) -> dict[str, Any]:
    """Every page of the owner list and of each owner's routes (the plain crawler, `workers` at
    a time), parsed, nothing else."""
    top = params["page_size"]
    with Crawler(params, scope=None) as crawler:
        owners = [o["id"] for o in crawler.read_plain("/api/v1/Owners", top)]
        elements = 0
        with ThreadPoolExecutor(max_workers=params["workers"]) as pool:
            for route in ("BoundLocks", *(ROUTES[e] for e in params["entities"])):
                paths = [f"/api/v1/Owners/{o}/{route}" for o in owners]
                pages = pool.map(lambda p: crawler.read_plain(p, top), paths)
                elements += sum(map(len, pages))
    return {"status": "succeeded", "elements": elements, "api_requests": crawler.sent}


def _run(params: dict[str, Any]) -> dict[str, Any]:
    """`run_once` with the access entities."""
    from exporter.service.job import run_once

    result = run_once(run_settings(params, **{"tapkey.entities": params["entities"]}))
    access = {name: counts.as_dict() for name, counts in result.access.items()}
    return {"status": result.status, "api_requests": result.api_requests, "access": access}


def _child(conn: Connection, kind: str, params: dict[str, Any]) -> None:
    import requests  # noqa: F401

    import exporter.service.job  # noqa: F401

    conn.send(measured(_floor if kind == "floor" else _run, params))
    conn.close()


def measure(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """One scenario in a fresh process."""
    return in_fresh_process(_child, kind, params)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="sqlite", choices=("sqlite", "postgresql", "mariadb"))
    parser.add_argument("--owners", type=int, default=100)
    parser.add_argument("--locks-per-owner", type=int, default=50)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--entities",
        default="contacts,cards,grants",
        help="Access entities besides locks (comma-separated; empty: locks alone).",
    )
    args = parser.parse_args()
    server = Server(seed=1, owners=args.owners, locks_per_owner=args.locks_per_owner)
    try:
        with (
            tempfile.TemporaryDirectory() as workdir,
            bench_database(args.db, Path(workdir), None) as fresh,
        ):
            url = fresh()
            entities = [e for e in args.entities.split(",") if e]
            params = server.params(args, workdir, url, entities=entities)
            first = measure("first", params)
            print(f"first load: {first}")
            floors, reruns = [], []
            for _ in range(args.rounds):
                floors.append(measure("floor", params))
                reruns.append(measure("unchanged", params))
            floor = min(f["wall_s"] for f in floors)
            rerun = min(r["wall_s"] for r in reruns)
            floor_cpu = min(f["cpu_s"] for f in floors)
            rerun_cpu = min(r["cpu_s"] for r in reruns)
            print(
                f"floor:     {floors[-1]['api_requests']} requests, best {floor:.3f} s wall, "
                f"{floor_cpu:.3f} s CPU"
            )
            print(
                f"unchanged: {reruns[-1]['api_requests']} requests, best {rerun:.3f} s wall, "
                f"{rerun_cpu:.3f} s CPU"
            )
            print(f"unchanged access counts: {reruns[-1]['access']}")
            print(
                f"ratio {rerun_cpu / floor_cpu:.2f} CPU (target <= {TARGET}), "
                f"{rerun / floor:.2f} wall"
            )
            return 0 if rerun_cpu <= TARGET * floor_cpu else 1
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
