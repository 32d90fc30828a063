"""`sync_bench.py --shapes`: the exporter against the plain crawler on remote-API shapes (issue 13:
latency, many small or few large owners), with the requests each sends."""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The benchmarks' shared set-up (same folder).
from common import Server, bench_database
from reports import finish, new_report
from sync_report import print_shapes
from sync_scenarios import bracketed, scenario

#: OWNERSxLOCKS@MS: owners, locks per owner, milliseconds the sandbox waits before each answer.
SHAPES = ("60x777@30", "1000x5@50", "200x500@0")
#: Exporter time / plain crawler time (issue 13): the unchanged rerun, and the first load (many
#: small owners vs large ones), only with latency (the main table judges the no-latency shape).
SHAPE_TARGETS = {"unchanged": 1.15}
FIRST_TARGET_SMALL_OWNERS, FIRST_TARGET_LARGE_OWNERS = 1.3, 1.5
#: Exporter requests / plain crawler requests on a rerun, any shape.
REQUEST_TARGET = 1.05
#: `fetch` (the first load's fetch alone, no database) shows what the writes add to `first`.
SHAPE_SCENARIOS = ("fetch", "first", "unchanged", "changes")


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
    with Server(seed=args.seed, owners=owners, locks_per_owner=locks, latency=latency) as server:
        params = server.params(args, workdir, fresh())

        def measure_one(kind: str) -> dict[str, Any]:
            return scenario(server, kind, round_no, params, args)

        crawls, figures = bracketed(measure_one, "crawler", SHAPE_SCENARIOS, "crawler_s")
    for kind, after in zip(SHAPE_SCENARIOS, crawls[1:], strict=True):
        figures[kind]["crawler_requests"] = after["server_requests"]
    figures["crawler"] = crawls[0]
    first = figures["first"]
    loaded = (first["created"], figures["unchanged"]["unchanged"], figures["fetch"]["locks"])
    if any(count != owners * locks for count in loaded):
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
            if kind in ("unchanged", "changes"):
                row["request_target"] = REQUEST_TARGET
                row["request_met"] = row["request_ratio"] <= REQUEST_TARGET
            summary[f"{shape} {kind}"] = row
    parameters = {
        "shapes": args.shapes,
        "workers": args.workers,
        "page_size": args.page_size,
        "changes": args.changes,
        "repeat": args.repeat,
        "seed": args.seed,
    }
    return {
        **new_report("sync-shapes", args.db, parameters),
        "summary": summary,
        "rounds": rounds,
    }


def parse_shape_text(text: str) -> str:
    """Check a shape given on the command line; keep its text."""
    parse_shape(text)
    return text


def main_shapes(args: argparse.Namespace) -> int:
    """`sync_bench.py --shapes`: run the shapes (the three of SHAPES if none was given), print
    and save the results; the exit status as for the main table."""
    args.shapes = args.shapes or list(SHAPES)
    return finish(
        run_shapes(args), args, f"shapes_{args.db}", print_shapes, missed=_missed, default=str
    )


def _missed(row: dict[str, Any]) -> bool:
    return row["time_met"] is False or row.get("request_met") is False
