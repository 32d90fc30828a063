"""What a benchmark process measures of itself and of the machine: peak and current RSS
(/proc/self/status), and the CPU time every process on the machine has used (/proc/stat)."""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path


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
