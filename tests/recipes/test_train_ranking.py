"""The ranking recipe run for real, as a subprocess, at tiny scale."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from peftrec.recommender import Recommender

from .test_train_rating import REPO, run, tiny_overrides

RECIPE = REPO / "recipes" / "train_ranking.py"


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
    seen = set(np.asarray(rec.item_ids)[rec._seen[rec._user_index["u0"]]])
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
