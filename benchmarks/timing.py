"""Timing and memory helpers for the benchmarks that time operations one by one."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def timed(call, arguments) -> list[float]:
    """Milliseconds of ``call(a)`` for each ``a`` of ``arguments``."""
    times = []
    for argument in arguments:
        started = time.perf_counter()
        call(argument)
        times.append(1000 * (time.perf_counter() - started))
    return times


def summary(times_ms: list[float]) -> dict[str, float]:
    return {
        "median_ms": float(np.median(times_ms)),
        "p90_ms": float(np.percentile(times_ms, 90)),
        "count": len(times_ms),
    }


def rss_mib(field: str = "VmRSS") -> float:
    """This process's resident memory now (``VmHWM``: its peak), in MiB. Not ``ru_maxrss``,
    which a child inherits from the process that started it (the one that built the folder)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")
