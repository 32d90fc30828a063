"""Access-data benchmark: an unchanged rerun with every entity against a plain crawl of its routes.

    .venv/bin/python benchmarks/access_bench.py --db sqlite
    .venv/bin/python benchmarks/access_bench.py --db postgresql --owners 200

The sandbox (its own process, see sync_bench.Server) serves owners with locks, contacts, bound
cards and grants. Each scenario runs in a fresh process: `floor` is the plain crawler of
sync_bench's --shapes (every page of the owner list and of the four routes of every owner,
`workers` at a time, `$skip` advanced by the rows received, a short page ends a list, the JSON
parsed, nothing else), which sends as many requests as an unchanged rerun; `first` is `run_once`
with entities contacts, cards and grants into an empty database; `unchanged` is the same run
again. Target (issue 15): the unchanged rerun costs at most 1.2x the floor. The cost compared is
the client process's CPU time (the exit status says whether the best rerun met it against the
best floor): on a machine shared with other work, wall times are indicative only. Requests are
compared exactly.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sync_bench import CLIENT_ID, CLIENT_SECRET, Server, bench_database

TARGET = 1.2
ROUTES = {"contacts": "Contacts", "cards": "BoundCards", "grants": "Grants"}


def _floor(params: dict[str, Any]) -> dict[str, Any]:
    import requests

    top = params["page_size"]
    session = requests.Session()
    session.trust_env = False
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=params["workers"], max_retries=0)
    session.mount("http://", adapter)
    sent = [0]
    lock = threading.Lock()

    def read_list(path: str, token: str) -> list[Any]:
        # The plain crawler of sync_bench (--shapes): `$skip` advanced by the rows received, a
        # short page ends a list; as many requests as an unchanged rerun sends.
        rows: list[Any] = []
        while True:
            with lock:
                sent[0] += 1
            response = session.get(
                params["base_url"] + path,
                params={"$top": str(top), "$skip": str(len(rows))},
                headers={"Authorization": f"Bearer {token}"},
                timeout=(10, 60),
            )
            response.raise_for_status()
            page = json.loads(response.content)
            rows += page
            if len(page) < top:
                return rows

    with session:
        answer = session.post(
            params["token_url"],
            data={"grant_type": "client_credentials"},
            auth=(CLIENT_ID, CLIENT_SECRET),
            timeout=(10, 60),
        )
        answer.raise_for_status()
        sent[0] += 1
        token = answer.json()["access_token"]
        owners = [o["id"] for o in read_list("/api/v1/Owners", token)]
        elements = 0
        with ThreadPoolExecutor(max_workers=params["workers"]) as pool:
            for route in ("BoundLocks", *(ROUTES[e] for e in params["entities"])):
                paths = [f"/api/v1/Owners/{o}/{route}" for o in owners]
                elements += sum(len(r) for r in pool.map(lambda p: read_list(p, token), paths))
    return {"status": "succeeded", "elements": elements, "api_requests": sent[0]}


def _run(params: dict[str, Any]) -> dict[str, Any]:
    from exporter.config.loader import load_settings
    from exporter.service.job import run_once

    settings = load_settings(
        None,
        env={},
        cwd=Path(params["workdir"]),
        overrides={
            "tapkey.client_id": CLIENT_ID,
            "tapkey.client_secret": CLIENT_SECRET,
            "tapkey.token_url": params["token_url"],
            "tapkey.api_base_url": params["base_url"],
            "tapkey.workers": params["workers"],
            "tapkey.page_size": params["page_size"],
            "tapkey.entities": params["entities"],
            "database.url": params["db_url"],
        },
    )
    result = run_once(settings)
    access = {name: counts.as_dict() for name, counts in result.access.items()}
    return {"status": result.status, "api_requests": result.api_requests, "access": access}


def _child(conn: Connection, kind: str, params: dict[str, Any]) -> None:
    import requests  # noqa: F401

    import exporter.service.job  # noqa: F401

    started = time.perf_counter()
    cpu = time.process_time()
    outcome = (_floor if kind == "floor" else _run)(params)
    conn.send(
        {**outcome, "wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu}
    )
    conn.close()


def measure(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """One scenario in a fresh process."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(child, kind, params))
    process.start()
    child.close()
    figures: dict[str, Any] = parent.recv()
    process.join()
    return figures


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
            params = {
                "base_url": server.base_url,
                "token_url": server.token_url,
                "workers": args.workers,
                "page_size": args.page_size,
                "db_url": url,
                "workdir": workdir,
                "entities": [e for e in args.entities.split(",") if e],
            }
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
