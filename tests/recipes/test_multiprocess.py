"""Two processes (real DDP over gloo on CPU) train like one process with the same global batch.

Each step's item batch is split between the processes and the loss is normalised by the step's
total number of ratings, so the gradient DDP averages is the one-process gradient. What remains
is float32 summation order and padding width (right padding changes outputs by <= 1.4e-6,
measured with transformers 5.24); over 16 Adam steps the validation RMSEs measured 1e-8 apart.
Normalising per process instead (mean over each piece, then DDP's average) moves them by ~7e-5,
so the tolerance is 1e-6.
Dropout is off (LoRA and the backbone's own): each process draws its own masks, so with dropout
the runs agree only in distribution.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from transformers import BertModel

from benchmarks.tiny import write_toy_data
from peftrec.data import DataError, load_files, split_rows
from peftrec.training.batches import ItemShuffler, LengthBucketBatches, SplitBatches

from .test_train_rating import BIN, RECIPE, REPO, tiny_overrides


def load_recipe():
    spec = importlib.util.spec_from_file_location("train_rating", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SETTINGS = ["train.epochs=2", "train.items_per_step=8", "adapter.dropout=0.0"]


@pytest.fixture(scope="module")
def bert_without_dropout(tiny_bert, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert-no-dropout")
    BertModel.from_pretrained(
        tiny_bert, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    ).save_pretrained(folder)
    for path in tiny_bert.iterdir():
        if path.suffix in (".txt", ".json") and path.name != "config.json":
            shutil.copy(path, folder)
    return folder


def test_two_processes_match_one_process(tmp_path, bert_without_dropout):
    # 31 users x 19 ratings = 589: validation and test get 59 ratings each, odd on purpose, so
    # the second process's last evaluation batch is padded and the padding must not be counted
    toy = write_toy_data(tmp_path / "toy", num_users=31, per_user=19)
    dataset = load_files(toy["interactions"], toy["items"])
    train_rows, valid_rows, test_rows = split_rows(dataset, "p1")
    assert len(valid_rows) % 2 == 1 and len(test_rows) % 2 == 1

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                str(RECIPE),
                *tiny_overrides(toy, bert_without_dropout, one),
                *SETTINGS,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        ),
        subprocess.Popen(
            [
                str(BIN / "torchrun"),
                "--nproc_per_node",
                "2",
                str(RECIPE),
                *tiny_overrides(toy, bert_without_dropout, two),
                *SETTINGS,
                "train.checkpoint_every=5",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**env, "ACCELERATE_USE_CPU": "1"},
        ),
    ]
    for process in runs:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (one, two))

    # both processes took part, and together they trained on every rating once per epoch
    assert a["num_processes"] == 1 and b["num_processes"] == 2
    assert len(b["ratings_per_process"]) == 2 and min(b["ratings_per_process"]) > 0
    assert sum(b["ratings_per_process"]) == a["ratings_per_process"][0] == 2 * len(train_rows)
    assert (
        a["steps"] == b["steps"] == 16
    )  # the same global batches: 60 items / 8 per step, 2 epochs
    # each process saved its own RNG state in the checkpoint
    checkpoint = two / "checkpoints" / (two / "checkpoints" / "latest").read_text().strip()
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in checkpoint.iterdir()}

    # the same metrics, over exactly the 59 validation / test ratings (no padded duplicates)
    assert len(a["history"]) == len(b["history"]) == 3
    for x, y in zip(a["history"], b["history"], strict=True):
        assert x["valid_count"] == y["valid_count"] == len(valid_rows)
        assert x["valid_rmse"] == pytest.approx(y["valid_rmse"], abs=1e-6)
        assert x.get("train_rmse", 0) == pytest.approx(y.get("train_rmse", 0), abs=1e-6)
    assert a["test_count"] == b["test_count"] == len(test_rows)
    assert a["test_rmse"] == pytest.approx(b["test_rmse"], abs=1e-6)


def test_split_batches_give_every_process_a_piece_of_every_step():
    lengths = np.random.default_rng(0).integers(3, 20, size=37)
    for items_per_step, parts in [(8, 1), (8, 2), (8, 3), (9, 4), (12, 5)]:
        batches = LengthBucketBatches(
            ItemShuffler(range(37), seed=1), lengths, items_per_step, window=2
        )
        split = SplitBatches(batches, parts)
        split.sampler.set_epoch(3)
        pieces = list(split)
        assert len(pieces) == len(split) and len(pieces) % parts == 0
        steps = [
            [i for piece in pieces[k : k + parts] for i in piece]
            for k in range(0, len(pieces), parts)
        ]
        assert all(len(piece) > 0 for piece in pieces)
        assert sorted(i for step in steps for i in step) == list(
            range(37)
        )  # each item once per epoch
        expected = [sorted(b) for b in batches]
        if 0 < 37 % items_per_step < parts:  # the short batch joins the one before it
            assert len(steps) == len(expected) - 1
        else:
            assert [sorted(s) for s in steps] == expected
    with pytest.raises(
        DataError, match="only 3 items have training ratings, fewer than the 4 processes"
    ):
        SplitBatches(LengthBucketBatches(ItemShuffler(range(3)), [5, 5, 5], 2), 4)


# recipe, its extra settings, what counts the work, what each epoch reports
TOP_K_RECIPES = {
    # one softmax over all the step's items, whichever process encoded them (the item vectors are
    # gathered with their gradients), normalised by the step's pairs
    "ranking": (
        "train_ranking.py",
        ["train.head_warmup_epochs=1"],
        "pairs_per_process",
        "train_loss",
    ),
    # each process takes a piece of the step's users; the catalogue is scored whole by each
    "sequential": (
        "train_sequential.py",
        ["adapter.method=frozen", "sequence.dropout=0.0", "sequence.users_per_step=8"],
        "positions_per_process",
        "train_loss",
    ),
}


@pytest.mark.parametrize("task", TOP_K_RECIPES)
def test_two_processes_rank_like_one_process(tmp_path, bert_without_dropout, toy_files, task):
    """Each step's loss is normalised by the step's total over all processes: 2 processes train
    like 1."""
    name, extra, counts, epoch_key = TOP_K_RECIPES[task]
    recipe = RECIPE.with_name(name)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    settings = [*SETTINGS, *extra]
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                str(recipe),
                *tiny_overrides(toy_files, bert_without_dropout, one),
                *settings,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        ),
        subprocess.Popen(
            [
                str(BIN / "torchrun"),
                "--nproc_per_node",
                "2",
                str(recipe),
                *tiny_overrides(toy_files, bert_without_dropout, two),
                *settings,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**env, "ACCELERATE_USE_CPU": "1"},
        ),
    ]
    for process in runs:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert a["num_processes"] == 1 and b["num_processes"] == 2
    assert len(b[counts]) == 2 and min(b[counts]) > 0
    assert sum(b[counts]) == a[counts][0] and a["steps"] == b["steps"]
    assert len(a["history"]) == len(b["history"]) == 3
    for x, y in zip(a["history"], b["history"], strict=True):
        assert x["valid_ndcg@10"] == pytest.approx(y["valid_ndcg@10"], abs=1e-6)
        assert x.get(epoch_key, 0) == pytest.approx(y.get(epoch_key, 0), abs=1e-6)
    assert a["history"][2][epoch_key] != a["history"][1][epoch_key]  # it trained
    assert a["test_ndcg@10"] == pytest.approx(b["test_ndcg@10"], abs=1e-6)
