"""What is popular now: each item's recent interactions as of a moment, decayed by their age,
counted only over the events a model has seen strictly before that moment's day.

:class:`RecentCounts` turns a log of seen events (item, time, whether it was its user's first) into
features per item at any moment: for each half-life, the decayed count of all events and of
first events (what new users start with), as ``log(1 + items * share)`` with each item's share
of the moment's counts (so a moment long after the last seen event reads the same chart). Counts
are kept per day (a day starts at a multiple of 86,400 s): a moment reads the events of the days
before its own, never one of the same day or later, so no prediction sees its own target or
anything after it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # an app serving a saved model counts with numpy alone
    import torch

DAY = 86_400.0
HALF_LIVES = (1.0, 7.0, 30.0, 365.0)  # days
TINY = 1e-30  # counts below it (all decayed away) give every item a share of 0


class RecentCounts:
    """Decayed per-item counts at the start of every day from the first event's to the day after
    the last one; a moment decays its day's counts on to itself."""

    def __init__(
        self,
        items: np.ndarray,
        times: np.ndarray,
        firsts: np.ndarray,
        num_items: int,
        half_lives: tuple[float, ...] = HALF_LIVES,
    ):
        items = np.asarray(items, dtype=np.int64)
        times = np.asarray(times, dtype=np.float64)
        firsts = np.asarray(firsts, dtype=bool)
        if not (len(items) == len(times) == len(firsts)):
            raise ValueError("RecentCounts: items, times and firsts must be aligned")
        if len(items) and (items.min() < 0 or items.max() >= num_items):
            raise ValueError(f"RecentCounts: item rows must lie in [0, {num_items})")
        self.num_items, self.half_lives = num_items, tuple(float(h) for h in half_lives)
        days = np.floor(times / DAY).astype(np.int64)
        self.first_day = int(days.min()) if len(days) else 0
        span = (int(days.max()) - self.first_day + 2) if len(days) else 1
        rates = np.log(2.0) / (np.asarray(self.half_lives) * DAY)  # per second
        # counts[d] (days x items x features): events of days < first_day + d, decayed to its start
        counts = np.zeros((span, num_items, 2 * len(rates)), dtype=np.float32)
        order = np.argsort(days, kind="stable")
        bounds = np.searchsorted(days[order], self.first_day + np.arange(span + 1))
        running = np.zeros((num_items, 2 * len(rates)))
        for d in range(1, span):
            start = (self.first_day + d) * DAY
            running *= np.exp(-rates * DAY)[None, :].repeat(2, 0).reshape(-1)
            today = order[bounds[d - 1] : bounds[d]]  # the events of the day before
            if len(today):
                weights = np.exp(-rates[None, :] * (start - times[today])[:, None])
                for f in range(len(rates)):
                    running[:, f] += np.bincount(items[today], weights[:, f], num_items)
                    running[:, len(rates) + f] += np.bincount(
                        items[today], weights[:, f] * firsts[today], num_items
                    )
            counts[d] = running
        self.counts = counts

    @property
    def width(self) -> int:
        """Features per item: one per half-life for all events, then one per first events."""
        return 2 * len(self.half_lives)

    def day_of(self, moments: np.ndarray) -> np.ndarray:
        """Each moment's row in :attr:`counts`: the last day start at or before it (clipped)."""
        days = np.floor(np.asarray(moments, dtype=np.float64) / DAY).astype(np.int64)
        return np.clip(days - self.first_day, 0, len(self.counts) - 1)

    def features(self, moments: np.ndarray) -> np.ndarray:
        """``log(1 + items * share)`` per moment and item, ``(moments, items, width)``, from the
        events of the days before each moment's day. Decaying the counts on from the day's start
        to the moment scales them all alike, so the shares are those of the day's start."""
        counts = self.counts[self.day_of(moments)].astype(np.float64)
        return np.log1p(shares(counts, np)).astype(np.float32)


def shares(counts, xp):
    """Each item's share of the counts of its moment and feature, times the number of items (1:
    an average item): the same whatever time has passed since the last seen event, which decays
    every count alike. ``xp``: numpy or torch."""
    if xp is np:
        total = np.clip(counts.sum(1, keepdims=True), TINY, None)
    else:
        total = counts.sum(1, keepdim=True).clamp(min=TINY)
    return counts * (counts.shape[1] / total)


def first_events(users: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Whether each event is its user's first (earliest time; ties: the earlier row)."""
    users = np.asarray(users)
    rows = np.arange(len(users))
    order = np.lexsort((rows, np.asarray(times), users))
    first = np.zeros(len(users), dtype=bool)
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = users[order][1:] != users[order][:-1]
    first[order[starts]] = True
    return first


class RecencyTable:
    """A :class:`RecentCounts` on a torch device: the features of many moments at once, for the
    training steps and the evaluation of a history model."""

    def __init__(self, counts: RecentCounts, device: torch.device | str = "cpu"):
        import torch

        self.counts = torch.as_tensor(counts.counts, device=device)
        self.first_day = counts.first_day

    def features(self, moments: torch.Tensor) -> torch.Tensor:
        """As :meth:`RecentCounts.features`, for a float64 tensor of moments (seconds)."""
        import torch

        days = torch.floor(moments / DAY).long() - self.first_day
        rows = days.clamp(0, len(self.counts) - 1)
        return torch.log1p(shares(self.counts[rows].double(), torch)).float()
