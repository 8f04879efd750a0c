"""Top-K ranking with one held-out target per user: NDCG@k, HR@k and MRR from target ranks."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Ranking quality when each user has exactly one held-out target (protocol P3). The input is the
1-based rank of each user's target among that user's candidates, as computed by
`peftrec.metrics.rank_of_targets` (ties count against the model). Per user:
NDCG@k = 1 / log2(rank + 1) if rank <= k else 0 (the ideal DCG is 1 with one target);
HR@k = 1 if rank <= k else 0 (equal to Recall@k with one target); MRR = 1 / rank.
All three are averaged over users.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): 1-based rank of each user's target.
    k (`int` or `list[int]`, default 10): cut-off(s) for NDCG and HR, passed to `compute`.
Returns:
    dict with `ndcg@{k}` and `hr@{k}` for every k, and `mrr` (floats).
Example:
    >>> metric = peftrec.metrics.load_metric("ranking")
    >>> metric.compute(predictions=[1, 3, 20], k=[5, 10])
    {'ndcg@5': 0.5, 'hr@5': 0.6666666666666666, 'ndcg@10': 0.5, 'hr@10': 0.6666666666666666,
     'mrr': 0.4611111111111111}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Ranking(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64")}),
            format="numpy",
        )

    def _compute(self, predictions, k=10):
        ranks = np.asarray(predictions, dtype=np.int64)
        if ranks.size == 0:
            raise ValueError("ranking needs at least one rank")
        if ranks.min() < 1:
            raise ValueError(f"ranks are 1-based, got {int(ranks.min())}")
        cutoffs = [k] if isinstance(k, (int, np.integer)) else list(k)
        if not cutoffs or any(isinstance(c, bool) or int(c) != c or c < 1 for c in cutoffs):
            raise ValueError(f"k must be a positive int or a non-empty list of them, got {k!r}")
        gain = 1.0 / np.log2(ranks + 1.0)
        results = {}
        for cutoff in cutoffs:
            hit = ranks <= cutoff
            results[f"ndcg@{int(cutoff)}"] = float(np.mean(np.where(hit, gain, 0.0)))
            results[f"hr@{int(cutoff)}"] = float(np.mean(hit))
        results["mrr"] = float(np.mean(1.0 / ranks))
        return results
