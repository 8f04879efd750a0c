"""Evaluation metrics as `evaluate` modules shipped inside the package, and the P3 rank rule.

The modules live in `peftrec/metrics/<name>/<name>.py` and are loaded by filesystem path, so
they work offline (`evaluate` 0.4.6 bundles no metrics and cannot reach the Hub here).

    metric = load_metric("rating_error")
    metric.add_batch(predictions=pred, references=true)  # per batch, after gather_for_metrics
    metric.compute()  # {"mse", "rmse", "mae"}

    ranks = rank_of_targets(scores, targets, exclude_mask)  # per user, 1-based
    load_metric("ranking").compute(predictions=ranks, k=[10, 20])  # ndcg@10, hr@10, ..., mrr

The ranking cut-offs are a `compute` argument, `k` (an int or a list; default 10).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

MetricName = Literal["rating_error", "ranking", "preference"]
METRIC_NAMES: tuple[str, ...] = ("rating_error", "ranking", "preference")
_HERE = Path(__file__).parent


def load_metric(name: MetricName, **kwargs: Any):
    """Load one of peftrec's metric modules by path (no network); returns an
    `evaluate.EvaluationModule`.

    Keyword arguments go to `evaluate.load`; by default predictions are kept in memory
    (`keep_in_memory=True`), which suits one process computing on gathered predictions.
    """
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; choose one of {', '.join(METRIC_NAMES)}")
    import evaluate  # imported here: it pulls in `datasets`, which is slow to import

    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(_HERE / name / f"{name}.py"), **kwargs)


def rank_of_targets(
    scores: torch.Tensor, targets: torch.Tensor, exclude_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """1-based rank of each user's target among that user's candidates (protocol P3).

    rank = 1 + the number of other candidates scored >= the target's score: ties count against
    the model, and items where `exclude_mask` is True (e.g. the user's training items) never
    count. `scores` is (users, items), `targets` (users,) item indices; returns (users,) int64.
    A target may not be excluded, and no score may be NaN (a NaN would never count as ahead).
    """
    if scores.dim() != 2 or targets.shape != scores.shape[:1]:
        raise ValueError(
            f"expected scores (users, items) and targets (users,), "
            f"got {tuple(scores.shape)} and {tuple(targets.shape)}"
        )
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    column = targets.long().unsqueeze(1)
    target_scores = scores.gather(1, column)
    ahead = scores >= target_scores
    ahead.scatter_(1, column, False)
    if exclude_mask is not None:
        if exclude_mask.shape != scores.shape:
            raise ValueError(
                f"exclude_mask {tuple(exclude_mask.shape)} does not match scores "
                f"{tuple(scores.shape)}"
            )
        if exclude_mask.gather(1, column).any():
            raise ValueError("a target is among the excluded items")
        ahead &= ~exclude_mask
    return 1 + ahead.sum(dim=1)


def rmse(predictions: np.ndarray, references: np.ndarray | None = None) -> float:
    """Root mean squared error; with one argument, of the given errors."""
    errors = np.asarray(predictions, dtype=np.float64)
    if references is not None:
        errors = errors - np.asarray(references, dtype=np.float64)
    return float(np.sqrt(np.mean(np.square(errors))))


def scores_by_group(
    groups: Mapping[str, np.ndarray],
    compute: Callable[[np.ndarray], Mapping[str, float]],
    keys: tuple[str, ...],
) -> dict[str, float | int | None]:
    """Metrics apart for each group of rows (warm, cold items, ...): ``count_<group>`` and
    ``<key>_<group>`` for each boolean row mask in ``groups``, None where a group is empty.
    ``compute(rows)`` returns the metrics of those rows."""
    scores: dict[str, float | int | None] = {}
    for group, rows in groups.items():
        scores[f"count_{group}"] = int(rows.sum())
        part = compute(rows) if rows.any() else None
        scores.update(
            {f"{key}_{group}": None if part is None else float(part[key]) for key in keys}
        )
    return scores


GROUPS = ("warm", "cold_items", "cold_users")
"""The groups a test is also reported apart for (:func:`warm_cold`)."""


def warm_cold(warm_users: np.ndarray, warm_items: np.ndarray) -> dict[str, np.ndarray]:
    """Row masks of :data:`GROUPS` from each row's flags (user, item learned from): warm (both),
    cold items, cold users; for :func:`scores_by_group`."""
    return {"warm": warm_users & warm_items, "cold_items": ~warm_items, "cold_users": ~warm_users}


def groups_text(scores: Mapping[str, Any], key: str, unit: str) -> str:
    """``warm 0.9112 (3000 ratings), cold_items 1.1033 (120 ratings)``: ``<key>_<group>`` and
    ``count_<group>`` of the groups that have rows, for a log line."""
    return ", ".join(
        f"{group} {scores[f'{key}_{group}']:.4f} ({scores[f'count_{group}']} {unit})"
        for group in GROUPS
        if scores[f"count_{group}"]
    )


def scores_text(scores: Mapping[str, float], sep: str = ", ") -> str:
    """``RMSE 0.9112, MAE 0.7110``: scores by display name, to 4 decimals, for a log line or a
    run's last words."""
    return sep.join(f"{name} {value:.4f}" for name, value in scores.items())
