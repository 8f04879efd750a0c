"""The sequential recipe run for real at tiny scale, and the saved model served as an app would."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from peftrec.app.recommender import Recommender
from peftrec.data import load_files, split_rows
from peftrec.metrics import load_metric, rank_of_targets

from ..unit.test_data_ml100k import ml100k  # noqa: F401 (the real data, or a skip)
from .test_train_ranking import p4_next_block_ndcg
from .test_train_rating import REPO, run, tiny_overrides

RECIPE = REPO / "recipes" / "train_sequential.py"


def assert_app_reproduces(rec, users, scores, targets, metrics) -> None:
    """The app's scores rank each user's target, the user's seen items excluded, as the recipe's
    test did: the same NDCG@10 and MRR to 1e-6."""
    exclude = torch.zeros_like(scores, dtype=torch.bool)
    for row, user in enumerate(users):
        exclude[row, rec.seen[rec.user_index[user]]] = True
    ranks = rank_of_targets(scores, torch.as_tensor(targets), exclude).numpy()
    app = load_metric("ranking").compute(predictions=ranks, k=10)
    assert app["ndcg@10"] == pytest.approx(metrics["test_ndcg@10"], abs=1e-6)
    assert app["mrr"] == pytest.approx(metrics["test_mrr"], abs=1e-6)


@pytest.mark.parametrize(
    ("config", "extra"),
    [
        ("minilm_frozen_sequential.yaml", []),
        ("minilm_idonly_sequential.yaml", ["sequence.loss=sampled", "sequence.negatives=20"]),
        ("minilm_frozen_sequential.yaml", ["sequence.members=2"]),  # an ensemble in one model
    ],
)
def test_sequential_recipe_trains_and_the_app_reproduces_its_test_metrics(
    tmp_path, toy_files, tiny_bert, config, extra
):
    out = tmp_path / "run"
    overrides = [o for o in tiny_overrides(toy_files, tiny_bert, out) if not o.startswith("train.")]
    result = run(
        [
            sys.executable,
            str(RECIPE),
            "--config",
            str(REPO / "recipes/configs" / config),
            *overrides,
            "train.epochs=4",
            "sequence.max_history=8",
            "sequence.users_per_step=8",
            *extra,
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["test_ndcg@10"] <= metrics["test_hr@10"] <= 1 and metrics["steps"] > 0

    # the saved model: each test user's validation item arrives as an interaction, then the
    # app ranks every item the user has not seen, as the recipe's test did
    dataset = load_files(toy_files["interactions"], toy_files["items"])
    split = split_rows(dataset, "p3")
    valid, test = (dataset.interactions.subset(rows) for rows in (split.valid, split.test))
    rec = Recommender.from_pretrained(out / "model")
    assert rec.traits.history and rec.spec.task == "sequential"
    users = [dataset.user_ids[u] for u in test.users]
    rec.add_interactions(
        {
            dataset.user_ids[u]: [dataset.item_ids[i]]
            for u, i in zip(valid.users, valid.items, strict=True)
        }
    )
    scores = torch.as_tensor(rec.score_all(users))
    assert_app_reproduces(rec, users, scores, test.items, metrics)

    # inductive: a new item can be in a history and a candidate; anonymous sessions are served
    rec.add_items({"new": "good movie 3 drama"})
    rec.add_interactions({"anon": ["new", dataset.item_ids[0]]})
    top = rec.recommend("anon", k=5)
    assert len(top) == 5 and {"new", dataset.item_ids[0]}.isdisjoint(i for i, _ in top)
    session = rec.recommend_for_history(["new", dataset.item_ids[0]], k=5)
    assert [i for i, _ in session] == [i for i, _ in top]
    np.testing.assert_allclose([s for _, s in session], [s for _, s in top], rtol=1e-5)
    assert np.isfinite(rec.predict(["anon"], ["new"])).all()
    with pytest.raises(ValueError, match="ranking model"):
        rec.fold_in("anon", {"new": 4.0})


def test_the_sequential_recipe_refuses_what_it_cannot_use(tmp_path, toy_files, tiny_bert):
    result = run(
        [
            sys.executable,
            str(RECIPE),
            *tiny_overrides(toy_files, tiny_bert, tmp_path / "x"),
            "model.user_text=true",
        ]
    )
    assert result.returncode == 2 and "a sequential model's user is their history" in result.stderr
    result = run(
        [
            sys.executable,
            str(RECIPE),
            *tiny_overrides(toy_files, tiny_bert, tmp_path / "x"),
            "train.head_batch_size=8",
        ]
    )
    assert result.returncode == 2 and "unknown key 'train.head_batch_size'" in result.stderr
    assert not (tmp_path / "x").exists()


def test_a_history_model_updated_on_p4_ranks_the_next_block_after_blocks_1_to_t(
    tmp_path,
    tiny_bert,
    ml100k,  # noqa: F811
):
    from peftrec.data.blocks import p4_history, p4_ranking_split

    base = [
        sys.executable,
        str(RECIPE),
        "--config",
        str(REPO / "recipes/configs/minilm_idonly_sequential.yaml"),
        f"backbone.name={tiny_bert}",
        "data.protocol=p4",
        "model.dim=8",
        "sequence.max_history=8",
        "sequence.empty_state=true",
        "train.patience=1",
    ]
    parent = tmp_path / "b1"
    first = run([*base, "data.block=1", "train.epochs=1", f"output_dir={parent}"])
    assert first.returncode == 0, first.stderr[-3000:]
    child = tmp_path / "b2"
    update = [
        *base,
        "data.block=2",
        "data.window=new",
        f"train.init_from={parent / 'model'}",
        "train.epochs=1",
        f"output_dir={child}",
    ]
    result = run(update)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((child / "metrics.json").read_text())
    inter = ml100k.interactions
    test = p4_ranking_split(ml100k, 2).test
    learned, _ = p4_history(ml100k, 2)
    users = inter.users[test]
    new_users = ~np.isin(users, inter.users[learned])
    assert metrics["test_count_cold_users"] == int(new_users.sum()) > 0

    # the saved model reads each user's every row of B1..B2 and ranks B3's first rows as the
    # recipe did; a new user (no history) and an anonymous empty session score alike, by the
    # learned empty state
    rec = Recommender.from_pretrained(child / "model")
    ndcg, scores = p4_next_block_ndcg(rec, ml100k, 2)
    assert ndcg == pytest.approx(metrics["test_ndcg@10"], abs=1e-6)
    new = scores[np.flatnonzero(new_users)[0]]
    assert np.allclose(new, rec.score_history([]), atol=1e-5)
    spec = json.loads((child / "model" / "peftrec.json").read_text())["spec"]
    assert spec["head"]["empty_state"] is True


def test_a_model_weighing_what_is_popular_now_serves_it_and_reproduces_its_test(
    tmp_path, toy_files, tiny_bert
):
    """``sequence.recency``: the saved model scores through numpy with the counts of its seen
    interactions; given the validation items at their times, ``score_all(at=test times)`` gives
    the recipe's test metrics, and a moment earlier than every interaction adds nothing."""
    import csv

    spread = tmp_path / "ratings.csv"  # the toy's times spread over weeks, so counts decay
    with open(toy_files["interactions"]) as f, open(spread, "w", newline="") as g:
        rows = list(csv.reader(f))
        writer = csv.writer(g)
        writer.writerow(rows[0])
        for user, item, rating, time in rows[1:]:
            writer.writerow([user, item, rating, int(time) * 61])
    out = tmp_path / "run"
    overrides = [
        o.replace(str(toy_files["interactions"]), str(spread))
        for o in tiny_overrides(toy_files, tiny_bert, out)
        if not o.startswith("train.")
    ]
    result = run(
        [
            sys.executable,
            str(RECIPE),
            "--config",
            str(REPO / "recipes/configs/minilm_frozen_sequential.yaml"),
            *overrides,
            "train.epochs=4",
            "train.lr=0.01",
            "sequence.max_history=8",
            "sequence.users_per_step=8",
            "sequence.empty_state=true",
            "sequence.recency=true",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    dataset = load_files(spread, toy_files["items"])
    split = split_rows(dataset, "p3")
    valid, test = (dataset.interactions.subset(rows) for rows in (split.valid, split.test))
    rec = Recommender.from_pretrained(out / "model")
    assert not rec.network_loaded and rec.model.head.recency_gate.weight.abs().sum() > 0
    for u, i, t in zip(valid.users, valid.items, valid.timestamps, strict=True):
        rec.add_interactions({dataset.user_ids[u]: [dataset.item_ids[i]]}, at=float(t))
    users = [dataset.user_ids[u] for u in test.users]
    scores = torch.as_tensor(rec.score_all(users, at=test.timestamps))
    assert_app_reproduces(rec, users, scores, test.items, metrics)
    # the term moves with the moment: before any interaction it adds nothing
    early = rec.score_all(users[:3], at=0.0)
    now = rec.score_all(users[:3])
    assert not np.allclose(early, now)
    with pytest.raises(ValueError, match="finite"):
        rec.score_all(users[:1], at=float("nan"))
    with pytest.raises(ValueError, match="popular now"):  # scores move with the moment
        rec.use_index(above=1)
    # saved again, the recorded interactions keep their times
    again = Recommender.from_pretrained(rec.save_pretrained(tmp_path / "again"))
    np.testing.assert_allclose(
        again.score_all(users, at=test.timestamps), scores.numpy(), rtol=1e-5, atol=1e-6
    )
