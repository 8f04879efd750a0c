"""Adding a task touches only its recipe, one entry in ``peftrec.tasks.TASKS``, its configs and
its tests: a walk-through with a toy "like" task (will the user rate the item above 3?).

Everything the task needs from peftrec (spec, assembly, saving, loading, the app API, the
benchmark runner) comes from the entry; nothing else in the package names the task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from benchmarks import run as bench
from peftrec.app.recommender import Recommender
from peftrec.artifact.save import ArtifactError
from peftrec.config import RecipeConfig
from peftrec.config.loading import option
from peftrec.tasks import TASKS, Reported, Task
from peftrec.tasks.ranking.head import RankingHead
from peftrec.training.batches import ItemRatingsCollator, ItemShuffler, LengthBucketBatches
from peftrec.training.recipe import build_run_model, load_run_data, make_optimizer, save_run, start

from ..recipes.test_train_rating import tiny_overrides


# 1. the head: a probability that the user likes the item
class LikeHead(RankingHead):
    def score(self, user, item):
        return torch.sigmoid(super().score(user, item))

    def score_all(self, user, item):
        return torch.sigmoid(super().score_all(user, item))


# 2. the recipe's config schema: the shared sections, and its own output folder
@dataclass
class LikeRecipeConfig(RecipeConfig):
    """Like prediction: a language model encodes items, a dot product says how likely a like is."""

    output_dir: str = option("runs/like", "folder for results")


# 3. the recipe: its own loop, the shared building blocks around it
def like_recipe(argv: list[str]) -> dict:
    cfg, accelerator = start(LikeRecipeConfig, argv, TASKS["like"])
    data = load_run_data(cfg, TASKS["like"])
    model, tokenizer, tokens = build_run_model(cfg, TASKS["like"], data)
    collator = ItemRatingsCollator(
        tokens, data.train.users, data.train.items, data.train.ratings, tokenizer.pad_token_id
    )
    optimizer = make_optimizer(cfg, model)
    for epoch in range(cfg.train.epochs):
        for items in LengthBucketBatches(
            ItemShuffler(collator.items_with_ratings(), epoch),
            [len(t) for t in tokens],
            cfg.train.items_per_step,
        ):
            batch = collator(items)
            liked = (batch.pop("ratings") > 3).float()
            output = model(**batch)
            loss = torch.nn.functional.binary_cross_entropy(output.scores, liked)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()
    item_text = model.encode_texts(tokens)
    with torch.no_grad():
        users = torch.as_tensor(data.test.users)
        items = model.head.items(item_text[data.test.items], torch.as_tensor(data.test.items))
        p = model.head.score(model.head.users(users), items).numpy()
    accuracy = float(((p > 0.5) == (data.test.ratings > 3)).mean())
    results = {"test_accuracy": accuracy}
    save_run(
        accelerator,
        cfg,
        TASKS["like"],
        model,
        tokenizer,
        data,
        results,
        {"test accuracy": accuracy},
    )
    return results


# 4. one entry in the task table
def like_task(recipe_path) -> Task:
    return Task(
        name="like",
        title="Like prediction",
        summary="will the user rate the item above 3",
        head=LikeHead,
        config=LikeRecipeConfig,
        recipe=str(recipe_path),
        protocols=("p1",),
        metric="rating_error",
        reported=(Reported("accuracy", "accuracy", True),),
    )


# 5. its tests
def test_a_new_task_needs_its_recipe_one_entry_configs_and_tests(
    tmp_path, monkeypatch, toy_files, tiny_bert
):
    recipe_path = tmp_path / "train_like.py"
    recipe_path.write_text("# the recipe a real task ships under recipes/\n")
    monkeypatch.setitem(TASKS, "like", like_task(recipe_path))
    out = tmp_path / "run"
    overrides = [
        o for o in tiny_overrides(toy_files, tiny_bert, out) if not o.startswith("train.epochs")
    ]
    results = like_recipe([*overrides, "train.epochs=3", "train.lr=1e-2", "adapter.dropout=0.0"])
    assert results["test_accuracy"] > 0.8  # the toy's "good"/"bad" items are liked or not

    # saved and loaded through the same spec and assembly path, served by the app API
    meta = json.loads((out / "model" / "peftrec.json").read_text())
    assert (
        meta["spec"]["task"] == "like"
        and meta["card"]["metrics"]["test accuracy"] == results["test_accuracy"]
    )
    assert "will the user rate the item above 3" in (out / "model" / "README.md").read_text()
    rec = Recommender.from_pretrained(out / "model")
    scores = rec.score_all(["u0"])[0]
    assert rec.spec.task == "like" and np.all((scores > 0) & (scores < 1))

    # the benchmark runner knows it from the entry
    experiment = tmp_path / "like.yaml"
    experiment.write_text(f"task: like\nconfig: {tmp_path / 'config.yaml'}\n")
    (tmp_path / "config.yaml").write_text("train:\n  epochs: 1\n")
    assert bench.load_experiment(experiment).task == "like"
    assert bench.Experiment.argv(bench.load_experiment(experiment), {}, tmp_path)[1] == str(
        recipe_path
    )

    # without its entry, peftrec does not know the task: the saved model is refused by name
    monkeypatch.delitem(TASKS, "like")
    with pytest.raises(ArtifactError, match="unknown task 'like'"):
        Recommender.from_pretrained(out / "model")
