"""Start-up: how long after its process starts `exporter run-once` sends its first HTTP request.

The sandbox runs in this process and records the wall time of the first request it gets (the
token request); the clock starts just before the `exporter` process is spawned, so interpreter
start-up, imports, loading the settings and checking the database all count. The database is
created and brought to the current schema first (one untimed run), so a timed run needs no
Alembic. Target (issue 14): median <= 0.5 s.

    .venv/bin/python benchmarks/startup_bench.py                  # SQLite file, 5 runs
    .venv/bin/python benchmarks/startup_bench.py --db-url postgresql://postgres@127.0.0.1/x
    .venv/bin/python benchmarks/startup_bench.py --repeat 9 --check

`--check` exits 1 when the median misses the target. The figures move with the machine's load
(printed before and after): compare two versions interleaved, in the same conditions (`--pythonpath`
runs another checkout's `exporter` with this virtualenv).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

# The benchmarks' shared set-up (same folder).
from common import CLIENT_ID, CLIENT_SECRET  # noqa: E402
from procstats import process_cpu  # noqa: E402

from exporter.sandbox.server import Sandbox, SandboxRequest  # noqa: E402

TARGET = 0.5


def _env(sandbox: Sandbox, db_url: str, pythonpath: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}
    env.update(
        EXPORTER_TAPKEY__CLIENT_ID=CLIENT_ID,
        EXPORTER_TAPKEY__CLIENT_SECRET=CLIENT_SECRET,
        EXPORTER_TAPKEY__TOKEN_URL=sandbox.token_url,
        EXPORTER_TAPKEY__API_BASE_URL=sandbox.base_url,
        EXPORTER_DATABASE__URL=db_url,
    )
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def first_request_after_start(
    sandbox: Sandbox, env: dict[str, str], cwd: str
) -> tuple[float, float]:
    """(wall, CPU) seconds from spawning `exporter run-once --quiet` to its first request.

    The CPU time (the process's own, read at the first request) hardly moves with the load.
    """
    first: list[tuple[float, float]] = []
    seen = threading.Lock()
    pid: list[int] = []

    def hook(_request: SandboxRequest) -> None:
        now = time.time()
        with seen:
            if not first:
                first.append((now, process_cpu(pid[0]) if pid else float("nan")))

    sandbox.hooks.append(hook)
    try:
        started = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "run-once", "--quiet"],
            env=env,
            cwd=cwd,  # not this checkout: `-m` puts the working directory first on sys.path
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        pid.append(proc.pid)
        _, stderr = proc.communicate(timeout=120)
    finally:
        sandbox.hooks.remove(hook)
    if proc.returncode != 0 or not first:
        raise SystemExit(f"run-once failed ({proc.returncode}):\n{stderr}")
    return first[0][0] - started, first[0][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db-url", help="database to use (default: a SQLite file)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs (default 5)")
    parser.add_argument("--pythonpath", help="run the exporter found there (another checkout)")
    parser.add_argument("--check", action="store_true", help=f"exit 1 if the median > {TARGET} s")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        Sandbox(
            seed=1, owners=1, locks_per_owner=1, client_id=CLIENT_ID, client_secret=CLIENT_SECRET
        ) as sandbox,
    ):
        db_url = args.db_url or f"sqlite:///{Path(tmp) / 'startup.db'}"
        env = _env(sandbox, db_url, args.pythonpath)
        print(f"load before: {os.getloadavg()[0]:.2f}")
        first_request_after_start(sandbox, env, tmp)  # creates or upgrades the schema; warms caches
        runs = [first_request_after_start(sandbox, env, tmp) for _ in range(args.repeat)]
        print(f"load after:  {os.getloadavg()[0]:.2f}")
    median = statistics.median(wall for wall, _ in runs)
    cpu = statistics.median(cpu for _, cpu in runs)
    shown = " ".join(f"{wall:.3f}" for wall, _ in runs)
    print(f"first request after process start: median {median:.3f} s (runs: {shown})")
    print(f"CPU time of the process until then: median {cpu:.2f} s")
    if args.check and median > TARGET:
        raise SystemExit(f"median {median:.3f} s is over the {TARGET} s target")


if __name__ == "__main__":
    main()
