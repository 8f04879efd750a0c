"""Adding a task is one folder, one entry in ``peftrec.tasks.TASKS`` and a short recipe: a
walk-through with the toy "taste" task (``tests/unit/taste_task/``), whose user is their *history*,
not a row of a user table.

Everything else (spec, assembly, saving, loading, the app API with its writes, the benchmark
runner) reads the entry and the head's traits; nothing in the package names the task.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import run as bench
from peftrec.app.recommender import Recommender
from peftrec.artifact.save import ArtifactError
from peftrec.config import ConfigError
from peftrec.tasks import TASKS, traits_of
from tests.unit.taste_task import recipe, taste_task

from ..recipes.test_train_rating import tiny_overrides


@pytest.fixture
def taste(tmp_path, monkeypatch, toy_files, tiny_bert):
    """The task's entry registered, and a run's overrides (a frozen backbone: the recipe's)."""
    monkeypatch.setitem(TASKS, "taste", taste_task(recipe.__file__))
    overrides = [
        o
        for o in tiny_overrides(toy_files, tiny_bert, tmp_path / "run")
        if not o.startswith("train.epochs")
    ]
    return [*overrides, "adapter.method=frozen", "train.epochs=60", "train.lr=3e-2"]


def test_a_task_whose_user_is_a_history_trains_saves_and_is_served(tmp_path, taste):
    results = recipe.main(taste)
    assert results["test_accuracy"] > 0.8  # the toy's "good" items are liked, "bad" ones not
    folder = tmp_path / "run" / "model"
    meta = json.loads((folder / "peftrec.json").read_text())
    assert meta["spec"]["task"] == "taste"
    assert "will a user like an item" in (folder / "README.md").read_text()

    # served from its vectors, no network: the traits came with them
    rec = Recommender.from_pretrained(folder)
    assert not rec.network_loaded and rec.traits.history and rec.num_trained_users == 0
    assert rec.traits == traits_of(rec.spec)
    scores = rec.score_all(["u0"])[0]
    assert np.all((scores > 0) & (scores < 1))

    # the served user is the head's mean over their history, as the network computes it
    head = rec.model.head
    with torch.no_grad():
        items = head.items(torch.as_tensor(rec.engine.item_text_encodings()), torch.arange(60))
        history = [rec.item_ids.index(i) for i in ("i3", "i7")]
        expected = head.score_all((head.history_users(items, [history]), None), items)[0]

    # a new user is their interactions; more interactions move them; a session scores the same
    rec.add_interactions({"newcomer": ["i3", "i7"]})
    assert np.allclose(rec.score_all(["newcomer"])[0], expected.numpy(), atol=1e-5)
    assert np.allclose(rec.score_history(["i3", "i7"]), expected.numpy(), atol=1e-5)
    rec.add_interactions({"newcomer": ["i11"]})
    after = rec.score_all(["newcomer"])[0]
    assert not np.allclose(after, expected.numpy(), atol=1e-4)
    assert {"i3", "i7", "i11"}.isdisjoint(i for i, _ in rec.recommend("newcomer", k=10))

    # saved with the new user and reloaded: the same scores, from vectors again
    again = Recommender.from_pretrained(rec.save_pretrained(tmp_path / "saved"))
    assert not again.network_loaded
    assert np.allclose(again.score_all(["newcomer"])[0], after, atol=1e-5)

    # fold_in fits ratings, which a taste model does not predict: refused by its traits
    with pytest.raises(ValueError, match="fold_in fits ratings"):
        rec.fold_in("newcomer", {"i1": 5.0})


def test_the_tasks_own_conflicts_are_checked_at_start(taste):
    with pytest.raises(ConfigError, match="a taste user is their history"):
        recipe.main([*taste, "model.user_text=true"])


def test_the_benchmark_runner_and_loading_know_the_task_by_its_entry(tmp_path, monkeypatch, taste):
    recipe.main([*taste, "train.epochs=1"])
    experiment = tmp_path / "taste.yaml"
    experiment.write_text(f"task: taste\nconfig: {tmp_path / 'config.yaml'}\n")
    (tmp_path / "config.yaml").write_text("train:\n  epochs: 1\n")
    loaded = bench.load_experiment(experiment)
    assert loaded.task == "taste"
    assert bench.Experiment.argv(loaded, {}, tmp_path)[1] == recipe.__file__

    # without its entry, peftrec does not know the task: its saved vectors still serve reads
    # (numpy alone), and the first call that needs the network is refused, naming the task
    monkeypatch.delitem(TASKS, "taste")
    rec = Recommender.from_pretrained(tmp_path / "run" / "model")
    assert rec.score_all(["u0"]).shape == (1, 60)
    with pytest.raises(ArtifactError, match="unknown task 'taste'"):
        rec.add_interactions({"u0": ["i1"]})
