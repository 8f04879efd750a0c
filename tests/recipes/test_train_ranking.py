"""The ranking recipe run for real, as a subprocess, at tiny scale."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from peftrec.app.recommender import Recommender

from ..unit.test_data_ml100k import ml100k  # noqa: F401 (the real data, or a skip)
from .test_train_rating import REPO, run, tiny_overrides

RECIPE = REPO / "recipes" / "train_ranking.py"


def p4_next_block_ndcg(rec: Recommender, dataset, block: int) -> tuple[float, np.ndarray]:
    """A saved model's NDCG@10, through the app, on each user's first row of block t+1 (every
    item the user had in blocks 1..t not ranked), and its scores of those users."""
    import torch

    from peftrec.data.blocks import p4_history, p4_ranking_split
    from peftrec.metrics import rank_of_targets
    from peftrec.tasks.ranking.step import seen_mask

    inter = dataset.interactions
    test = p4_ranking_split(dataset, block).test
    _, before = p4_history(dataset, block)
    users = inter.users[test]
    scores = rec.score_all([dataset.user_ids[u] for u in users])
    shape = len(dataset.user_ids), len(dataset.item_ids)
    exclude = seen_mask(inter.users[before], inter.items[before], *shape)[users]
    ranks = rank_of_targets(
        torch.as_tensor(scores), torch.as_tensor(inter.items[test]), exclude
    ).numpy()
    return float(np.where(ranks <= 10, 1 / np.log2(ranks + 1.0), 0.0).mean()), scores


@pytest.mark.parametrize(
    ("config", "extra"),
    [
        (
            "minilm_lora_ranking.yaml",
            ["ranking.loss=bpr", "ranking.negatives=8", "train.log_with=[tensorboard]"],
        ),
        ("minilm_idonly_ranking.yaml", ["train.epochs=3"]),
    ],
)
def test_ranking_recipe_trains_evaluates_and_saves(tmp_path, toy_files, tiny_bert, config, extra):
    out = tmp_path / "run"
    overrides = [
        o for o in tiny_overrides(toy_files, tiny_bert, out) if not o.startswith("train.epochs")
    ]
    result = run(
        [
            sys.executable,
            str(RECIPE),
            "--config",
            str(REPO / "recipes/configs" / config),
            *overrides,
            "train.epochs=2",
            "train.head_warmup_epochs=2",
            *extra,
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_ndcg@10", "test_hr@10", "test_mrr"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["test_ndcg@10"] <= metrics["test_hr@10"]
    assert (
        metrics["test_count_warm"] + metrics["test_count_cold_items"] == 30
    )  # every toy user has a target
    if "train.log_with=[tensorboard]" in extra:  # the tracker really wrote its event files
        assert list((out / "peftrec-ranking").rglob("events.out.tfevents.*"))
    rec = Recommender.from_pretrained(out / "model")
    assert rec.spec.task == "ranking"
    top = rec.recommend("u0", k=5)
    seen = set(np.asarray(rec.item_ids)[rec.seen[rec.user_index["u0"]]])
    assert len(top) == 5 and seen.isdisjoint(item for item, _ in top)


def test_ranking_recipe_refuses_a_rating_split(tmp_path, toy_files, tiny_bert):
    result = run(
        [
            sys.executable,
            str(RECIPE),
            *tiny_overrides(toy_files, tiny_bert, tmp_path / "x"),
            "data.protocol=p1",
        ]
    )
    assert (
        result.returncode != 0
        and "data.protocol=p1: the ranking recipe evaluates p3" in result.stderr
    )
    assert not (tmp_path / "x").exists()


def test_ranking_on_p4_updated_twice_loads_and_ranks_the_next_block_as_in_memory(
    tmp_path,
    tiny_bert,
    ml100k,  # noqa: F811
):
    from peftrec.data.blocks import p4_history, p4_ranking_split

    base = [
        sys.executable,
        str(RECIPE),
        "--config",
        str(REPO / "recipes/configs/minilm_idonly_ranking.yaml"),
        f"backbone.name={tiny_bert}",
        "data.protocol=p4",
        "model.dim=8",
    ]
    parent = tmp_path / "b1"
    first = run([*base, "data.block=1", "train.epochs=2", f"output_dir={parent}"])
    assert first.returncode == 0, first.stderr[-3000:]
    for t in (2, 3):  # updated twice, each time on the new block alone
        child = tmp_path / f"b{t}"
        update = [
            *base,
            f"data.block={t}",
            "data.window=new",
            f"train.init_from={parent / 'model'}",
            "train.epochs=1",
            f"output_dir={child}",
        ]
        result = run(update)
        assert result.returncode == 0, result.stderr[-3000:]
        parent = child
    metrics = json.loads((child / "metrics.json").read_text())
    # B4's first rows: 279 users, 118 of them met in B1..B3 (the parents' users count as warm)
    assert metrics["test_count_cold_users"] == 279 - 118 and metrics["test_count_warm"] > 0
    spec = json.loads((child / "model" / "peftrec.json").read_text())["spec"]
    assert spec["parent"]["folder"] == "model"

    # the saved model, loaded, ranks B4's first rows as the recipe's in-memory one did
    rec = Recommender.from_pretrained(child / "model")
    inter = ml100k.interactions
    _, before = p4_history(ml100k, 3)
    ndcg, _ = p4_next_block_ndcg(rec, ml100k, 3)
    assert ndcg == pytest.approx(metrics["test_ndcg@10"], abs=1e-6)
    # what a user had in B1 (learned by the first model, not by this update) is not recommended
    earlier = before[np.isin(before, p4_ranking_split(ml100k, 1).train)]
    user = int(np.bincount(inter.users[earlier]).argmax())
    had = {ml100k.item_ids[i] for i in inter.items[earlier][inter.users[earlier] == user]}
    top = rec.recommend(ml100k.user_ids[user], k=50)
    assert had and had.isdisjoint(item for item, _ in top)
