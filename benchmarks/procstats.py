"""What a benchmark process measures of itself, of a child and of the machine: wall and CPU time,
peak and current RSS (/proc/self/status, else getrusage), and the CPU time every process on the
machine has used (/proc/stat)."""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


def _status_bytes(key: str) -> int | None:
    """A size from /proc/self/status (`VmHWM`, `VmRSS`) in bytes; None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def maxrss_bytes(usage: resource.struct_rusage) -> int:
    """`usage.ru_maxrss` in bytes."""
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    return usage.ru_maxrss * scale


def peak_rss() -> int:
    """This process's peak resident set size in bytes (VmHWM: per process, reset by exec)."""
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    return maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF))


def machine_cpu() -> tuple[float, float]:
    """CPU seconds every process on the machine has used so far, and the seconds stolen by the
    hypervisor (Linux /proc/stat; zeros elsewhere)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / tick, steal / tick


def current_rss() -> int:
    """This process's resident set size in bytes now."""
    current = _status_bytes("VmRSS")
    return peak_rss() if current is None else current


def process_cpu(pid: int) -> float:
    """User + system CPU time process `pid` has used so far (Linux /proc), else NaN."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(
    work: Callable[[dict[str, Any]], dict[str, Any]],
    params: dict[str, Any],
    *,
    profile: str | None = None,
) -> dict[str, Any]:
    """What `work(params)` returns, with the wall and CPU time it took in this process, the
    machine's CPU time meanwhile and this process's RSS before and at its peak; with `profile`,
    cProfile stats of the call written to that file."""
    base_rss = current_rss()
    machine_started, steal_started = machine_cpu()
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
    machine, steal = machine_cpu()
    return {
        **outcome,
        "wall_s": wall,
        "cpu_s": cpu,
        "machine_cpu_s": machine - machine_started,
        "steal_s": steal - steal_started,
        "rss_peak_mib": peak_rss() / MIB,
        "rss_base_mib": base_rss / MIB,
    }
