"""How many intra-op threads a job should use: `train.threads: auto` resolved against the machine as it is.

torch's default (one thread per core) collapses when another process keeps a core busy: every parallel region
ends at a barrier that waits for the thread the OS has descheduled, so a step of many small ops runs 4x slower
at 2 threads than at 1 on a 2-core machine beside another training (docs/performance.md). `auto` therefore
counts the cores this process may use (its CPU affinity and its cgroup's CPU quota) and subtracts the cores
other processes are keeping busy right now (sampled from /proc/stat), leaving at least one thread.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

SAMPLE_SECONDS = 0.3  # long enough to see a busy core, short beside a job's start-up


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 `cpu.max` quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies summed over the CPUs this process may run on (per-CPU lines of /proc/stat, so a
    container seeing the host's CPUs counts only its own)."""
    mine = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    busy = total = 0
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            name, *values = line.split()
            if not name.startswith("cpu") or name == "cpu" or (mine is not None and int(name[3:]) not in mine):
                continue
            ticks = [int(v) for v in values[:8]]
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    except (OSError, ValueError, IndexError):
        return None
    return (busy, total) if total else None


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float:
    """Cores of ours kept busy by other processes over the next `seconds` (0 where /proc/stat is unreadable)."""
    before, own_before = _cpu_times(), time.process_time()
    time.sleep(seconds)
    after, own_after = _cpu_times(), time.process_time()
    if before is None or after is None or after[1] <= before[1]:
        return 0.0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = (after[0] - before[0]) / (after[1] - before[1]) * cpus
    return max(0.0, busy - (own_after - own_before) / seconds)


def auto_threads() -> int:
    """The cores available minus those others keep busy (a core counts as busy from 0.5 of it), at least 1."""
    return max(1, available_cores() - math.floor(busy_cores() + 0.5))


def resolve_threads(value: int | str) -> int:
    """`train.threads` as a number: an int as given, `auto` measured now."""
    return auto_threads() if value == "auto" else int(value)
