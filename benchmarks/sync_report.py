"""The sync benchmark's tables: the main table with its CPU table, and the shapes' table."""

from __future__ import annotations

from typing import Any

from reports import print_columns, print_heading
from sync_scenarios import SCENARIOS

# The tables' columns, "NAME:WIDTH|..." (reports.print_columns).
COLUMNS = "scenario:22|wall s:8|(min-max):15|cpu s:8|peak RSS:10|requests:10|x floor:9|target:9"
CPU_COLUMNS = "CPU seconds:22|client:8|sandbox:9|db+other:10|machine:9|steal:7|bound s:9|x floor:9"
SHAPE_COLUMNS = (
    "shape and scenario:24|exporter s:11|crawler s:10|x time:8|target:8|requests:10|crawler:9"
    "|x req:7|target:8"
)


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
    details = (
        f"{p['locks']:,} locks ({p['owners']} owners x {p['locks_per_owner']}), "
        f"workers={p['workers']}, page_size={p['page_size']}"
    )
    print_heading(report, "sync benchmark", details, COLUMNS)
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
    print_columns(CPU_COLUMNS)
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


def print_shapes(report: dict[str, Any]) -> None:
    """The shapes' summary as a plain text table."""
    p = report["parameters"]
    details = f"workers={p['workers']}, page_size={p['page_size']}, {p['changes']:,} changes"
    print_heading(report, "sync against a remote API", details, SHAPE_COLUMNS)
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
