"""What is popular now, as an app serves it: a history model's recency term (``sequence.recency``,
:mod:`peftrec.models.recency`) from numpy alone.

:class:`ServedRecency` keeps each user's interactions with their times (the saved seen ones, then
those an app records), counts them as the training did (:class:`~peftrec.models.recency.
RecentCounts`, rebuilt on the first read after a write) and adds ``features(moment) . gate([state,
log(1 + age in days)])`` to a user's scores, the moment of prediction being an input (default:
the latest interaction the model knows). No torch: the gate's weights are read from the saved
head with safetensors' numpy loader.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from peftrec.app.inputs import check_moment
from peftrec.artifact.folder import Catalog, histories
from peftrec.models.recency import DAY, RecentCounts, first_events

GATE = ("recency_gate.weight", "recency_gate.bias")
CHUNK = 256  # states whose features are held at once


class ServedRecency:
    """Per-user interactions with their times, their recent-popularity counts and the gate."""

    def __init__(
        self,
        weight: np.ndarray,
        bias: np.ndarray,
        histories: dict[int, np.ndarray],
        times: dict[int, np.ndarray],
    ):
        self.weight = np.asarray(weight, dtype=np.float64)  # (features, dim + 1)
        self.bias = np.asarray(bias, dtype=np.float64)  # (features,)
        self.items = {u: np.asarray(h, dtype=np.int64) for u, h in histories.items()}
        self.times = {u: np.asarray(times[u], dtype=np.float64) for u in self.items}
        for u, h in self.items.items():
            if len(h) != len(self.times[u]):
                raise ValueError(
                    f"user row {u}: {len(h)} seen items but {len(self.times[u])} times"
                )
        self._counts: RecentCounts | None = None
        self._latest = max((float(t.max()) for t in self.times.values() if len(t)), default=0.0)

    @classmethod
    def from_folder(
        cls, folder: Path, histories: dict[int, np.ndarray], times: dict[int, np.ndarray]
    ) -> ServedRecency:
        from safetensors.numpy import load_file

        head = load_file(folder / "head.safetensors")
        return cls(head[GATE[0]], head[GATE[1]], histories, times)

    def record(self, row: int, items: np.ndarray, at: float) -> None:
        """A user (row) interacted with ``items`` at ``at`` (seconds)."""
        items = np.asarray(items, dtype=np.int64)
        self.items[row] = np.concatenate([self.items.get(row, items[:0]), items])
        self.times[row] = np.concatenate(
            [self.times.get(row, np.zeros(0)), np.full(len(items), at)]
        )
        self._counts = None
        if len(items):
            self._latest = max(self._latest, float(at))

    def latest(self) -> float:
        """The time of the latest known interaction (0 without any): the default moment."""
        return self._latest

    def aligned_times(self, histories: dict[int, np.ndarray]) -> np.ndarray:
        """The times of ``histories``' items (each user's, in their order), concatenated in the
        dict's order: what a saved model's ``seen.safetensors`` keeps beside the items."""
        parts = []
        for u, h in histories.items():
            mine = self.times.get(u, np.zeros(0))
            if len(mine) != len(h) or not np.array_equal(self.items.get(u, h[:0]), h):
                raise ValueError(f"user row {u}: the recorded times do not match the history")
            parts.append(mine)
        return np.concatenate(parts) if parts else np.zeros(0)

    def counts(self, num_items: int) -> RecentCounts:
        if self._counts is None or self._counts.num_items != num_items:
            rows = [u for u in self.items if len(self.items[u])]
            users = np.concatenate([np.full(len(self.items[u]), u) for u in rows] or [[]])
            items = np.concatenate([self.items[u] for u in rows] or [np.zeros(0, np.int64)])
            times = np.concatenate([self.times[u] for u in rows] or [np.zeros(0)])
            self._counts = RecentCounts(items, times, first_events(users, times), num_items)
        return self._counts

    def moments(self, rows: np.ndarray, at) -> np.ndarray:
        """Each row's moment: ``at`` (one time or one per row), default :meth:`latest`."""
        if at is None:
            return np.full(len(rows), self.latest())
        if np.ndim(at) == 0:
            return np.full(len(rows), check_moment(at, "at"))
        moments = np.asarray(at, dtype=np.float64)
        if moments.shape != (len(rows),) or not np.isfinite(moments).all():
            raise ValueError(
                f"at: one finite time in seconds, or one per user ({len(rows)}), got {at!r}"
            )
        return moments

    def scores(
        self, states: np.ndarray, moments: np.ndarray, last: np.ndarray, num_items: int
    ) -> np.ndarray:
        """``(states, items)``: what the term adds for states whose histories last changed at
        ``last`` (NaN: an empty history, age 0), at ``moments``."""
        ages = np.where(np.isnan(last), 0.0, np.maximum(moments - last, 0.0))
        gate_input = np.concatenate(
            [np.asarray(states, dtype=np.float64), np.log1p(ages / DAY)[:, None]], 1
        )
        weights = gate_input @ self.weight.T + self.bias  # (states, features)
        counts = self.counts(num_items)
        out = np.zeros((len(states), num_items), dtype=np.float32)
        for start in range(0, len(states), CHUNK):  # features: (chunk, items, features)
            features = counts.features(moments[start : start + CHUNK])
            out[start : start + CHUNK] = np.einsum(
                "sif,sf->si", features, weights[start : start + CHUNK]
            )
        return out

    def last_times(self, rows: np.ndarray) -> np.ndarray:
        """Each user row's latest interaction time (NaN: none)."""
        return np.array(
            [float(self.times[r].max()) if len(self.times.get(r, ())) else np.nan for r in rows]
        )


def grouped_times(users: np.ndarray, times: np.ndarray, num_users: int) -> dict[int, np.ndarray]:
    """Each user row's times, in the saved order (as :func:`peftrec.artifact.folder.histories`
    groups the items)."""
    users = np.asarray(users, dtype=np.int64)
    order = np.argsort(users, kind="stable")
    starts = np.searchsorted(users[order], np.arange(num_users + 1))
    times = np.asarray(times, dtype=np.float64)
    return {u: times[order[starts[u] : starts[u + 1]]] for u in range(num_users)}


def recency_log(catalog: Catalog, where) -> tuple[dict, dict]:
    """Each user's seen items and their times, for :class:`ServedRecency`."""
    if catalog.seen_times is None:
        raise ValueError(
            f"{where}: a model that weighs what is popular now needs the times of its seen "
            "interactions (seen.safetensors 'times'), and they are missing"
        )
    times = grouped_times(catalog.seen_users, catalog.seen_times, len(catalog.user_ids))
    return histories(catalog), times
