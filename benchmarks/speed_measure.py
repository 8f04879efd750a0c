"""What ``benchmarks/speed.py`` measures with: wall time, RSS, LM FLOPs and a matmul reference.

Nothing here trains: a training step comes in as a function (``speed_styles.train_step``).
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil
import torch
from torch.utils.flop_counter import FlopCounterMode

Batch = dict[str, torch.Tensor]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class PeakRSS:
    """Highest resident set size while the block runs, minus the RSS when it started (MiB)."""

    def __enter__(self) -> PeakRSS:
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()
        self.rise_mib = (self.peak - self.start) / 2**20
        self.peak_mib = self.peak / 2**20


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tick)
    return statistics.median(times)


def matmul_flops_per_second(n: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_seconds(lambda: a @ b, repeats)


def flops_per_padded_token(model: torch.nn.Module, batches: list[Batch]) -> float:
    """Forward+backward FLOPs counted by FlopCounterMode (no optimizer step), per padded LM
    token."""
    with FlopCounterMode(display=False) as counter:
        for batch in batches:
            batch = {k: v for k, v in batch.items() if k != "ratings"}
            output = model(**batch)
            (output.scores.sum() + output.penalty).backward()
    model.zero_grad()
    return counter.get_total_flops() / sum(b["input_ids"].numel() for b in batches)


@dataclass
class Tally:
    """Totals over the timed training steps of one style."""

    seconds: list[float] = field(default_factory=list)
    lm_seconds: float = 0.0
    rss_rise_mib: float = 0.0
    texts: int = 0
    padded: int = 0
    real: int = 0
    ratings: int = 0


def timed_step(
    make_batch: Callable[[], Batch], step: Callable[[Batch], float], tally: Tally
) -> None:
    """One training step (``step(batch)`` returns its forward+backward seconds), batch building
    included; memory is the RSS rise over the step after a malloc_trim."""
    release_free_memory()
    with PeakRSS() as memory:
        tick = time.perf_counter()
        batch = make_batch()
        tally.lm_seconds += step(batch)
        tally.seconds.append(time.perf_counter() - tick)
    tally.rss_rise_mib = max(tally.rss_rise_mib, memory.rise_mib)
    tally.texts += len(batch["input_ids"])
    tally.padded += batch["input_ids"].numel()
    tally.real += int(batch["attention_mask"].sum())
    tally.ratings += len(batch["ratings"])


def release_free_memory() -> None:
    """Hand memory freed by earlier steps back to the OS, so that an RSS rise measures this
    step."""
    gc.collect()
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def style_measures(tally: Tally, flops_per_token: float, matmul_reference: float) -> dict:
    """What both styles report of their timed steps: LM FLOPs, their rate, tokens and memory."""
    flops = flops_per_token * tally.padded
    return {
        "lm_flops": flops,
        "lm_flops_per_padded_token": flops_per_token,
        "lm_fwd_bwd_seconds": tally.lm_seconds,
        "lm_flops_per_second": flops / tally.lm_seconds,
        "lm_share_of_matmul": flops / tally.lm_seconds / matmul_reference,
        "padded_tokens_per_text": tally.padded / tally.texts,
        "real_tokens_per_text": tally.real / tally.texts,
        "peak_step_rss_rise_mib": tally.rss_rise_mib,
    }
