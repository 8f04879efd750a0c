"""The rating recipe run for real, as a subprocess, at tiny scale (each run costs ~10 s)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from peftrec.app.recommender import Recommender
from peftrec.config import load_config
from peftrec.tasks.rating.config import RatingRecipeConfig

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "train_rating.py"
BIN = Path(sys.executable).parent


def tiny_overrides(toy_files, backbone, out) -> list[str]:
    return [
        "data.dataset=files",
        f"data.interactions={toy_files['interactions']}",
        f"data.items={toy_files['items']}",
        "data.item_template={title}. Genres: {genres}.",
        "data.max_length=16",
        f"backbone.name={backbone}",
        "model.dim=8",
        "train.epochs=2",
        "train.items_per_step=16",
        "train.head_warmup_epochs=2",
        f"output_dir={out}",
    ]


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300, **kwargs
    )


def test_recipe_trains_saves_and_the_app_loads_it(tmp_path, toy_files, tiny_gpt2):
    out = tmp_path / "run"
    result = run(
        [
            sys.executable,
            str(RECIPE),
            "--config",
            str(REPO / "recipes/configs/minilm_lora_rating.yaml"),
            *tiny_overrides(toy_files, tiny_gpt2, out),
            "adapter.target_modules=null",  # GPT-2's default
            "transfer.loss=lm",
            "transfer.weight=0.1",
        ]
    )  # + causal LM on the item texts
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test RMSE" in result.stdout and f"model saved to {out / 'model'}" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["history"][0]["phase"] == "head warm-up" and len(metrics["history"]) == 3
    assert all(
        h["train_source_loss"] > 0 for h in metrics["history"][1:]
    )  # L_S was computed every epoch
    groups = [metrics[f"test_count_{g}"] for g in ("warm", "cold_items", "cold_users")]
    assert groups[0] <= metrics["test_count"] <= sum(groups) and np.isfinite(
        metrics["test_rmse_warm"]
    )
    assert np.isfinite(metrics["test_rmse"]) and metrics["test_rmse"] == pytest.approx(
        np.sqrt(metrics["test_mse"])
    )
    assert metrics["trainable_parameters"] > metrics["backbone_trainable_parameters"] > 0
    resolved = load_config(RatingRecipeConfig, out / "config.yaml")  # the resolved config reloads
    assert resolved.backbone.name == str(tiny_gpt2) and resolved.train.epochs == 2
    rec = Recommender.from_pretrained(out / "model")
    top = rec.recommend("u0", k=5)
    assert len(top) == 5 and all(item.startswith("i") for item, _ in top)


def test_accelerate_launch_runs_the_same_recipe(tmp_path, toy_files, tiny_bert):
    out = tmp_path / "run"
    result = run(
        [
            str(BIN / "accelerate"),
            "launch",
            "--num_processes",
            "1",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(RECIPE),
            *tiny_overrides(toy_files, tiny_bert, out),
            "train.max_steps=3",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 1 and len(metrics["history"]) == 2  # stopped after 3 steps
    assert (out / "model" / "adapter" / "adapter_model.safetensors").is_file()


def test_config_typo_fails_at_start_with_the_key(tmp_path):
    result = run([sys.executable, str(RECIPE), "train.epohcs=2", f"output_dir={tmp_path / 'x'}"])
    assert result.returncode == 2
    assert "train.epohcs" in result.stderr and "train.epochs" in result.stderr
    assert not (tmp_path / "x").exists()


def test_knowledge_tells_cold_items_apart_when_their_text_cannot(tmp_path, toy_files, tiny_bert):
    """Toy items' text says nothing of their quality here (the genres only); a fact does (a
    director who makes good or bad films). On cold items (P2) the knowledge tower must win."""
    items = list(csv.DictReader(open(toy_files["items"])))
    facts = tmp_path / "facts.tsv"
    with open(facts, "w") as f:
        f.write("item_id\trelation\tentity\n")
        for k, item in enumerate(items):
            quality = "good" if item["title"].startswith("good") else "bad"
            f.write(f"{item['item_id']}\tdirected_by\t{quality}_{k % 3}\n")
    common = [
        *tiny_overrides(toy_files, tiny_bert, tmp_path / "x"),
        "data.protocol=p2",
        "data.item_template=Genres: {genres}.",
        "model.item_ids=false",
        "adapter.method=frozen",
        "train.epochs=2",
        "train.head_warmup_epochs=30",
        "train.l2=0.01",
    ]
    scores = {}
    for name, extra in [
        ("text", []),
        ("knowledge", ["model.knowledge=all", f"data.item_knowledge={facts}"]),
    ]:
        out = tmp_path / name
        result = run([sys.executable, str(RECIPE), *common, f"output_dir={out}", *extra])
        assert result.returncode == 0, result.stderr[-3000:]
        scores[name] = json.loads((out / "metrics.json").read_text())["test_rmse_cold_items"]
    assert scores["knowledge"] < scores["text"] - 0.2
    rec = Recommender.from_pretrained(tmp_path / "knowledge" / "model")
    rec.add_items(
        {"n_good": "Genres: drama.", "n_bad": "Genres: drama."},
        knowledge={"n_good": [("directed_by", "good_0")], "n_bad": [("directed_by", "bad_0")]},
    )
    good, bad = rec.predict(["u0", "u0"], ["n_good", "n_bad"])
    assert good > bad + 0.3  # the same text, told apart by their facts
    again = Recommender.from_pretrained(rec.save_pretrained(tmp_path / "saved"))
    np.testing.assert_allclose(
        again.predict(["u0", "u0"], ["n_good", "n_bad"]), [good, bad], rtol=1e-6
    )
    # a relation the model does not know is refused, not dropped, and nothing changes
    with pytest.raises(ValueError, match="relation 'direct_by' is not one this model"):
        again.add_items({"n_typo": "Genres: drama."}, knowledge={"n_typo": [("direct_by", "x")]})
    assert "n_typo" not in again.item_ids


def test_a_warm_start_continues_the_parent_on_new_data(tmp_path, toy_files, tiny_bert):
    base = [
        sys.executable,
        str(RECIPE),
        "--config",
        str(REPO / "recipes/configs/minilm_lora_rating.yaml"),
    ]
    parent = tmp_path / "parent"
    result = run(
        [*base, *tiny_overrides(toy_files, tiny_bert, parent), "train.head_warmup_epochs=20"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # the next window: the same data with two new users rating known items
    grown = tmp_path / "ratings.csv"
    extra = "".join(f"n{u},i{i},{1 + (i % 5)},{99000 + i}\n" for u in range(2) for i in range(20))
    grown.write_text(toy_files["interactions"].read_text() + extra)
    child = tmp_path / "child"
    overrides = [o for o in tiny_overrides(toy_files, tiny_bert, child) if "interactions" not in o]
    result = run(
        [
            *base,
            *overrides,
            f"data.interactions={grown}",
            f"train.init_from={parent / 'model'}",
            "train.head_warmup_epochs=0",
            "train.epochs=1",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warm start (continue) from" in result.stderr and "2 and 0 are new" in result.stderr
    spec = json.loads((child / "model" / "peftrec.json").read_text())["spec"]
    assert spec["parent"]["folder"] == "model" and spec["head"]["num_users"] == 32
    scratch = tmp_path / "scratch"  # the same run without the parent
    new = [o for o in tiny_overrides(toy_files, tiny_bert, scratch) if "interactions" not in o]
    no_parent = [*new, f"data.interactions={grown}", "train.head_warmup_epochs=0", "train.epochs=1"]
    assert run([*base, *no_parent]).returncode == 0
    continued = json.loads((child / "metrics.json").read_text())["history"]
    fresh = json.loads((scratch / "metrics.json").read_text())["history"]
    # before its first epoch the child scores as the parent left off, far from a new model
    assert continued[0]["phase"] == fresh[0]["phase"] == "head warm-up"
    learned = json.loads((parent / "metrics.json").read_text())["history"][-1]["valid_rmse"]
    assert continued[0]["valid_rmse"] < 0.8 * fresh[0]["valid_rmse"]
    assert continued[0]["valid_rmse"] == pytest.approx(learned, abs=0.1)
    rec = Recommender.from_pretrained(child / "model")
    assert len(rec.recommend("n0", k=3)) == 3

    wrong = run([*base, *overrides, f"data.interactions={grown}", f"train.init_from={tmp_path}"])
    assert wrong.returncode == 2 and "peftrec.json: missing" in wrong.stderr


def assert_served_test_rmse(out, toy_files) -> tuple[Recommender, list[str]]:
    """The saved model's predictions of the toy P1 test ratings, through the app, give the
    recipe's own test RMSE; returns the model and the test pairs' users."""
    from peftrec.data.loading import load_files
    from peftrec.data.splits import split_rows

    metrics = json.loads((out / "metrics.json").read_text())
    dataset = load_files(toy_files["interactions"], toy_files["items"])
    test = split_rows(dataset, "p1").test
    inter = dataset.interactions
    rec = Recommender.from_pretrained(out / "model")
    users = [dataset.user_ids[u] for u in inter.users[test]]
    predicted = rec.predict(users, [dataset.item_ids[i] for i in inter.items[test]])
    served = float(np.sqrt(np.mean((predicted - inter.ratings[test]) ** 2)))
    assert served == pytest.approx(metrics["test_rmse"], abs=1e-4)
    return rec, users


def test_users_as_their_rated_items_train_and_serve_from_the_folded_table(
    tmp_path, toy_files, tiny_bert
):
    """``model.user_history``: the saved user table holds the history term, so the app's
    predictions of the test ratings give the recipe's own test RMSE."""
    out = tmp_path / "run"
    result = run(
        [
            sys.executable,
            str(RECIPE),
            "--config",
            str(REPO / "recipes/configs/minilm_lora_rating.yaml"),
            *tiny_overrides(toy_files, tiny_bert, out),
            "model.user_history=true",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rec, _ = assert_served_test_rmse(out, toy_files)
    assert rec.model.head.history_rated.weight.abs().sum() > 0  # the map was trained


def test_fact_neighbours_train_and_serve_the_recipes_predictions_and_follow_fold_in(
    tmp_path, toy_files, tiny_bert
):
    """``model.fact_neighbours``: the app adds the pair term to the vectors' scores, so its
    predictions of the test ratings give the recipe's test RMSE; a folded-in user's ratings
    move the items sharing their facts, and a saved and reloaded model keeps that."""
    items = list(csv.DictReader(open(toy_files["items"])))
    facts = tmp_path / "facts.tsv"
    with open(facts, "w") as f:
        f.write("item_id\trelation\tentity\n")
        for k, item in enumerate(items):
            f.write(f"{item['item_id']}\tdirected_by\td{k % 4}\n")
    out = tmp_path / "run"
    command = [
        sys.executable,
        str(RECIPE),
        *tiny_overrides(toy_files, tiny_bert, out),
        "adapter.method=frozen",
        "model.knowledge=all",
        f"data.item_knowledge={facts}",
    ]
    result = run([*command, "model.fact_neighbours=true", "train.epochs=2"])
    assert result.returncode == 0, result.stderr[-3000:]
    rec, users = assert_served_test_rmse(out, toy_files)
    head = rec.model.head
    assert head.neighbours.gamma.item() != 0 and len(head.neighbours.ratings) > 0
    # every score, also recommend's, carries the term: the top item's score is its prediction
    (top, score), *_ = rec.recommend(users[0], k=3)
    assert rec.predict([users[0]], [top])[0] == pytest.approx(score, abs=1e-4)

    # a new user who loved director d0's films and hated d1's: the term tells them apart
    d0 = [it["item_id"] for k, it in enumerate(items) if k % 4 == 0]
    d1 = [it["item_id"] for k, it in enumerate(items) if k % 4 == 1]
    rec.fold_in("fan", {**{i: 5.0 for i in d0[:-1]}, **{i: 1.0 for i in d1[:-1]}})
    with_term = rec.predict(["fan", "fan"], [d0[-1], d1[-1]])
    term = rec._neighbours.pairs(
        np.array([rec.user_index["fan"]] * 2), rec.item_rows([d0[-1], d1[-1]], "t"), rec._served()
    )
    assert np.sign(term[0]) != np.sign(term[1])  # the fan's own residuals, by director
    # items added later take part through their facts
    rec.add_items(
        {"new_d0": "Genres: drama.", "new_none": "Genres: drama."},
        knowledge={"new_d0": [("directed_by", "d0")]},
    )
    new_rows = rec.item_rows(["new_d0", "new_none"], "t")
    new_term = rec._neighbours.pairs(np.array([rec.user_index["fan"]] * 2), new_rows, rec._served())
    assert np.sign(new_term[0]) == np.sign(term[0]) and new_term[1] == 0
    with_term = rec.predict(["fan", "fan", "fan"], [d0[-1], d1[-1], "new_d0"])
    again = Recommender.from_pretrained(rec.save_pretrained(tmp_path / "saved"))
    np.testing.assert_allclose(
        again.predict(["fan", "fan", "fan"], [d0[-1], d1[-1], "new_d0"]), with_term, rtol=1e-5
    )
    with pytest.raises(ValueError, match="fact_neighbours"):
        again.use_index(above=1)

    # a warm start from it: the ratings the term reads are the new data's; without the term it
    # is another model, refused with the difference
    for term in ("true", "false"):
        child = tmp_path / f"child_{term}"
        result = run(
            [
                *command,
                f"train.init_from={out / 'model'}",
                f"model.fact_neighbours={term}",
                "train.epochs=1",
                f"output_dir={child}",
            ]
        )
        if term == "true":
            assert result.returncode == 0, result.stderr[-3000:]
        else:
            assert result.returncode == 2 and "head.fact_neighbours" in result.stderr
    child = Recommender.from_pretrained(tmp_path / "child_true" / "model").model.head
    assert len(child.neighbours.ratings) == len(head.neighbours.ratings)
