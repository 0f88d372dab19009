"""What the benchmarks read of a running process from /proc: peak RSS, CPU time, when it goes idle; and percentiles."""

from __future__ import annotations

import os
import time
from pathlib import Path


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle(pid: int, limit: float = 600) -> float:
    """Seconds until the process's CPU stops rising (under 0.05 s per second, for 2 s)."""
    t0 = time.monotonic()
    last, idle_since = -1.0, None
    while time.monotonic() - t0 < limit:
        time.sleep(1.0)
        now_cpu = cpu_seconds(pid)
        if now_cpu - last < 0.05:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= 2:
                break
        else:
            idle_since = None
        last = now_cpu
    return time.monotonic() - t0


def pct(values: list[float], q: float) -> float:
    """The q-quantile of `values` (nearest rank); NaN when there are none."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]
