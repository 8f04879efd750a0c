import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from sklearn.metrics import mean_absolute_error, mean_squared_error, ndcg_score

from peftrec.metrics import load_metric, rank_of_targets


@pytest.fixture(scope="module")
def rating_error():
    return load_metric("rating_error")


@pytest.fixture(scope="module")
def ranking():
    return load_metric("ranking")


def closed_form(ranks, k):
    """Reference values with one target per user, written out per user."""
    ndcg = [1 / np.log2(r + 1) if r <= k else 0.0 for r in ranks]
    return {
        f"ndcg@{k}": np.mean(ndcg),
        f"hr@{k}": np.mean([r <= k for r in ranks]),
        "mrr": np.mean([1 / r for r in ranks]),
    }


def brute_force_rank(scores, target, excluded):
    """The P3 rank rule, one user at a time."""
    return 1 + sum(
        1
        for item, score in enumerate(scores)
        if item != target and item not in excluded and score >= scores[target]
    )


# --- rating_error -----------------------------------------------------------------------------


def test_rating_error_matches_sklearn(rating_error):
    rng = np.random.default_rng(0)
    truth = rng.integers(1, 6, size=500).astype(np.float32)
    pred = (truth + rng.normal(0, 0.9, size=500)).astype(np.float32)
    result = rating_error.compute(predictions=pred, references=truth)
    mse = mean_squared_error(truth, pred)
    assert result["mse"] == pytest.approx(mse, rel=1e-6)
    assert result["rmse"] == pytest.approx(np.sqrt(mse), rel=1e-6)
    assert result["mae"] == pytest.approx(mean_absolute_error(truth, pred), rel=1e-6)


def test_rating_error_batches_equal_one_call(rating_error):
    pred, truth = [3.5, 2.0, 4.25, 1.0, 5.0], [4.0, 2.0, 3.0, 1.0, 4.0]
    whole = rating_error.compute(predictions=pred, references=truth)
    for start in range(0, 5, 2):
        rating_error.add_batch(
            predictions=pred[start : start + 2], references=truth[start : start + 2]
        )
    assert rating_error.compute() == pytest.approx(whole)
    assert whole == pytest.approx({"mse": 2.8125 / 5, "rmse": np.sqrt(2.8125 / 5), "mae": 2.75 / 5})


def test_rating_error_accepts_tensors(rating_error):
    result = rating_error.compute(predictions=torch.tensor([1.0, 3.0]), references=torch.ones(2))
    assert result == pytest.approx({"mse": 2.0, "rmse": np.sqrt(2.0), "mae": 1.0})


# --- ranking ----------------------------------------------------------------------------------


def test_ranking_matches_closed_form(ranking):
    ranks = np.random.default_rng(1).integers(1, 200, size=300)
    ranks[:5] = [1, 10, 11, 2, 199]
    result = ranking.compute(predictions=ranks, k=[5, 10, 20])
    assert set(result) == {"ndcg@5", "hr@5", "ndcg@10", "hr@10", "ndcg@20", "hr@20", "mrr"}
    for k in (5, 10, 20):
        assert {key: result[key] for key in closed_form(ranks, k)} == pytest.approx(
            closed_form(ranks, k)
        )


def test_ranking_default_and_single_k(ranking):
    assert ranking.compute(predictions=[1, 3, 20]) == pytest.approx(
        {"ndcg@10": 0.5, "hr@10": 2 / 3, "mrr": (1 + 1 / 3 + 1 / 20) / 3}
    )
    assert ranking.compute(predictions=[1, 2], k=1) == pytest.approx(
        {"ndcg@1": 0.5, "hr@1": 0.5, "mrr": 0.75}
    )


def test_ranking_batches_equal_one_call(ranking):
    ranking.add_batch(predictions=torch.tensor([1, 4]))
    ranking.add_batch(predictions=torch.tensor([12]))
    assert ranking.compute(k=10) == ranking.compute(predictions=[1, 4, 12], k=10)


def test_ndcg_matches_sklearn_without_ties(ranking):
    # One relevant item: linear and exponential gains agree, so sklearn is a valid reference.
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(64, 50))
    targets = rng.integers(0, 50, size=64)
    relevance = np.zeros_like(scores)
    relevance[np.arange(64), targets] = 1
    ranks = rank_of_targets(torch.from_numpy(scores), torch.from_numpy(targets))
    result = ranking.compute(predictions=ranks, k=[3, 10])
    for k in (3, 10):
        assert result[f"ndcg@{k}"] == pytest.approx(ndcg_score(relevance, scores, k=k))


@pytest.mark.parametrize(("ranks", "k"), [([0, 1], 10), ([1], 0), ([1], [5, 0]), ([1], [])])
def test_ranking_rejects_bad_input(ranking, ranks, k):
    with pytest.raises(ValueError):
        ranking.compute(predictions=ranks, k=k)


def test_load_metric_unknown_name():
    with pytest.raises(ValueError, match="rating_error, ranking"):
        load_metric("accuracy")


# --- rank_of_targets --------------------------------------------------------------------------


def test_rank_ties_count_against_the_model():
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.9, 0.5, 0.5, 0.1], [0.1, 0.2, 0.3, 0.9]])
    ranks = rank_of_targets(scores, torch.tensor([0, 1, 3]))
    assert ranks.tolist() == [4, 3, 1]
    assert ranks.dtype == torch.int64


def test_rank_excluded_items_never_count():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.5], [0.5, 0.5, 0.5, 0.5]])
    exclude = torch.tensor([[True, False, False, False], [False, True, True, False]])
    assert rank_of_targets(scores, torch.tensor([3, 0]), exclude).tolist() == [2, 2]


def test_rank_matches_brute_force_with_many_ties():
    gen = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 5, (40, 30), generator=gen).float()
    targets = torch.randint(0, 30, (40,), generator=gen)
    exclude = torch.rand(40, 30, generator=gen) < 0.3
    exclude[torch.arange(40), targets] = False
    expected = [
        brute_force_rank(
            scores[u].tolist(), int(targets[u]), set(exclude[u].nonzero().flatten().tolist())
        )
        for u in range(40)
    ]
    assert rank_of_targets(scores, targets, exclude).tolist() == expected


def test_rank_rejects_inconsistent_input():
    scores = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="excluded"):
        rank_of_targets(scores, torch.tensor([0, 1]), torch.tensor([[True, False, False]] * 2))
    with pytest.raises(ValueError, match="NaN"):
        rank_of_targets(torch.tensor([[0.0, float("nan")]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="targets"):
        rank_of_targets(scores, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="exclude_mask"):
        rank_of_targets(scores, torch.tensor([0, 1]), torch.zeros(3, 3, dtype=torch.bool))


# --- offline ----------------------------------------------------------------------------------


def test_loads_offline_and_quietly_in_a_fresh_process(tmp_path):
    script = textwrap.dedent(
        """
        from peftrec.metrics import load_metric
        print(load_metric("rating_error").compute(predictions=[1.0], references=[3.0])["mae"])
        print(load_metric("ranking").compute(predictions=[1])["mrr"])
        """
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),  # nothing cached: modules are copied in from the package
        "HTTP_PROXY": "http://127.0.0.1:9",  # any network access would fail
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    env.pop("HF_MODULES_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2.0", "1.0"]
    assert done.stderr == ""
