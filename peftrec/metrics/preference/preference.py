"""Binary preference: AUC, LogLoss and per-user AUC (GAUC) of predicted like probabilities."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Quality of predicted probabilities that a user likes an item: the area under the ROC curve
(`auc`, ties counted half), the mean binary cross-entropy (`logloss`, probabilities clipped to
[1e-7, 1 - 1e-7]) and, when `groups` (user ids) are given, `gauc`: the per-user AUC averaged
over users weighted by their records, counting only users with both labels (`gauc_users`).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[float]`): predicted probabilities of a like.
    references (`list[int]`): 1 for a like, 0 otherwise.
    groups (`list[int]`, optional): the user of each record, for GAUC.
Returns:
    dict with `auc` and `logloss` (and `gauc`, `gauc_users` with groups).
Example:
    >>> metric = peftrec.metrics.load_metric("preference")
    >>> metric.compute(predictions=[0.9, 0.2, 0.6], references=[1, 0, 0])
    {'auc': 1.0, 'logloss': 0.4149...}
"""


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUC with average ranks for ties; nan without both labels."""
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores))
    starts = np.flatnonzero(np.diff(sorted_scores, prepend=np.nan) != 0)
    ends = np.append(starts[1:], len(scores))
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2  # 1-based average rank of the tie group
    return float(
        (ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives)
    )


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Preference(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("int64")}
            ),
            format="numpy",
        )

    def _compute(self, predictions, references, groups=None):
        p = np.asarray(predictions, dtype=np.float64)
        y = np.asarray(references, dtype=np.int64)
        if len(p) == 0:
            raise ValueError("preference needs at least one prediction")
        if not np.all((y == 0) | (y == 1)):
            raise ValueError("preference: references must be 0 or 1")
        if np.any((p < 0) | (p > 1)) or not np.all(np.isfinite(p)):
            raise ValueError("preference: predictions must be probabilities in [0, 1]")
        clipped = np.clip(p, 1e-7, 1 - 1e-7)
        out = {
            "auc": auc(p, y),
            "logloss": float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))),
        }
        if groups is not None:
            groups = np.asarray(groups)
            if len(groups) != len(p):
                raise ValueError("preference: groups must align with predictions")
            per_user = [
                (auc(p[groups == g], y[groups == g]), int((groups == g).sum()))
                for g in np.unique(groups)
            ]
            scored = [(a, n) for a, n in per_user if not np.isnan(a)]
            weights = np.array([n for _, n in scored], dtype=np.float64)
            values = np.array([a for a, _ in scored])
            out["gauc"] = (
                float((values * weights).sum() / weights.sum()) if scored else float("nan")
            )
            out["gauc_users"] = len(scored)
        return out
