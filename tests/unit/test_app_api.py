"""The app API tried as an app uses it: each test pins a silent wrong answer that is now fixed."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
import torch

from peftrec import cli
from peftrec.app.recommender import Recommender
from peftrec.artifact.head_vectors import trained_vectors
from peftrec.artifact.save import save_artifact
from peftrec.config import AdapterConfig, BackboneConfig, ModelConfig
from peftrec.data import load_files, split_rows
from peftrec.models.assembly import build_model
from peftrec.models.tokens import tokenize_texts
from peftrec.tasks.rating.head import RatingHead
from peftrec.tasks.rating.step import warm_up_head

from .test_model import DIM, NUM_ITEMS, NUM_USERS, TEXTS
from .test_recommender import CATALOG, ITEMS, USERS, trained

SCALED = dataclasses.replace(
    CATALOG,
    rating_scale=(1.0, 5.0),
    item_fields={"title": [f"Movie {k}" for k in range(NUM_ITEMS)]},
)


@pytest.fixture
def folder(tmp_path, tiny_bert):
    model, tokenizer = trained(tiny_bert)
    with torch.no_grad():
        model.head.global_mean.fill_(3.0)  # inside the 1-5 scale, as a trained model's
    vectors, text = trained_vectors(model, tokenizer, SCALED)
    return save_artifact(
        tmp_path / "model", model, tokenizer, SCALED, vectors=vectors, item_text=text
    )


@pytest.fixture
def ranking_folder(tmp_path, tiny_bert):
    model, tokenizer = trained(tiny_bert, task="ranking")
    vectors, text = trained_vectors(model, tokenizer, CATALOG)
    return save_artifact(
        tmp_path / "ranking", model, tokenizer, CATALOG, vectors=vectors, item_text=text
    )


# 1. items added by text compete with trained ones once the ID part is dropped in training
def test_item_id_dropout_calibrates_the_text_path(toy_files, tiny_bert):
    dataset = load_files(toy_files["interactions"], toy_files["items"])
    train = dataset.interactions.subset(split_rows(dataset, "p1").train)
    gaps = {}
    for rate in (0.0, 0.5):
        torch.manual_seed(0)
        model, tokenizer = build_model(
            BackboneConfig(name=str(tiny_bert)),
            AdapterConfig(method="frozen"),
            ModelConfig(dim=DIM, item_id_dropout=rate),
            num_users=len(dataset.user_ids),
            num_items=len(dataset.item_ids),
        )
        text = model.encode_texts(
            tokenize_texts(tokenizer, dataset.item_texts("{title}. Genres: {genres}."), 16)
        )
        head: RatingHead = model.head
        head.init_biases(*(torch.as_tensor(a) for a in (train.users, train.items, train.ratings)))
        warm_up_head(
            head,
            text,
            train.users,
            train.items,
            train.ratings,
            epochs=30,
            batch_size=64,
            lr=0.01,
            l2=0.01,
            seed=0,
        )
        head.eval()
        with torch.no_grad():
            users = head.users(torch.as_tensor(train.users))
            full = head.score(users, head.items(text[train.items], torch.as_tensor(train.items)))
            alone = head.score(users, head.items(text[train.items], torch.full((len(train),), -1)))
        gaps[rate] = float((full - alone).abs().mean())
    assert gaps[0.5] < 0.5 * gaps[0.0]  # the text alone now says what the ID said


def test_item_id_dropout_only_acts_in_training():
    head = RatingHead(8, 3, 4, 4, id_dropout=0.5)
    text, index = torch.randn(4, 8), torch.arange(4)
    text_only = head.items(text, torch.full((4,), -1))[0]
    head.eval()
    assert torch.equal(head.items(text, index)[0], head.items(text, index)[0])
    head.train()
    torch.manual_seed(0)
    draws = torch.stack([head.items(text, index)[0] for _ in range(50)])  # (draws, items, dim)
    dropped = (draws == text_only).all(-1).float().mean()
    assert 0.35 < dropped < 0.65  # each item's ID part is dropped about half the time
    with pytest.raises(ValueError, match="needs items with both an ID embedding and a text"):
        RatingHead(8, 3, 4, 4, item_ids=False, id_dropout=0.5)


# 3. safe under concurrent use
def test_concurrent_add_items_keep_every_item(folder):
    rec = Recommender.from_pretrained(folder)
    batches = [
        {f"t{t}_{k}": f"{'good' if k % 2 else 'bad'} film {k} comedy" for k in range(15)}
        for t in range(2)
    ]
    threads = [threading.Thread(target=rec.add_items, args=(b,)) for b in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(rec.item_ids) == NUM_ITEMS + 30
    alone = Recommender.from_pretrained(folder)
    texts = {i: t for b in batches for i, t in b.items()}
    np.testing.assert_allclose(
        rec.predict(["u0"] * 30, list(texts)),
        alone.predict_texts("u0", list(texts.values())),
        rtol=1e-5,
    )


def test_concurrent_first_calls_encode_the_catalogue_once(folder, monkeypatch):
    loaded = Recommender.from_pretrained(folder)
    rec = Recommender(loaded.model, loaded.tokenizer, SCALED)  # in memory: nothing encoded yet
    calls, original = [], rec.engine._encode
    monkeypatch.setattr(
        rec.engine, "_encode", lambda texts: calls.append(len(texts)) or original(texts)
    )
    results = [None] * 4

    def ask(k):
        results[k] = rec.recommend("u0", k=3)

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [NUM_ITEMS] and all(r == results[0] for r in results)


# 4. seen items: what the model was told, and what the app adds
def test_add_interactions_counts_items_as_seen_for_every_model(folder, ranking_folder):
    for path in (folder, ranking_folder):
        rec = Recommender.from_pretrained(path)
        top = [i for i, _ in rec.recommend("u3", k=3)]
        rec.add_interactions({"u3": top[:2]})
        assert set(top[:2]).isdisjoint(i for i, _ in rec.recommend("u3", k=3))


def test_protocol_all_trains_on_everything_but_a_validation_share(toy_files):
    dataset = load_files(toy_files["interactions"], toy_files["items"])
    split = split_rows(dataset, "all")
    assert len(split.test) == 0 and len(split.valid) == round(0.05 * len(dataset.interactions))
    assert sorted(np.concatenate([split.train, split.valid]).tolist()) == list(
        range(len(dataset.interactions))
    )


# 5. ratings checked and bounded by the training scale; fold_in updates a trained user
def test_ratings_are_checked_and_predictions_clipped_to_the_scale(folder):
    rec = Recommender.from_pretrained(folder)
    with pytest.raises(
        ValueError, match=r"rating of item 'i1' is 50, outside the scale .* \(1 to 5\)"
    ):
        rec.fold_in("new", {"i1": 50})
    with pytest.raises(ValueError, match="outside the scale"):
        rec.fold_in("new", {"i1": -3})
    with torch.no_grad():
        rec.model.head.global_mean.fill_(9.0)  # a model whose raw scores leave the scale
    rec = Recommender(rec.model, rec.tokenizer, SCALED)
    assert rec.predict(["u0"], ["i1"])[0] == 5.0 and rec.score_all().max() == 5.0
    assert rec.recommend("u0", k=2)[0][1] == 5.0


def test_fold_in_on_a_trained_user_updates_what_was_learned(folder):
    rec = Recommender.from_pretrained(folder)
    own = rec.predict(["u2"] * 4, ["i0", "i1", "i3", "i4"])
    before = rec.score_all(["u2"])[0]
    rec.fold_in(
        "u2", dict(zip(["i0", "i1", "i3", "i4"], own.tolist(), strict=True))
    )  # what it predicts already
    np.testing.assert_allclose(
        rec.score_all(["u2"])[0], before, atol=1e-4
    )  # the prior is the trained user
    rec.fold_in("u2", {"i0": 5.0})
    assert rec.predict(["u2"], ["i0"])[0] > before[0]


# 6. ranking models add users from interactions, and call their scores scores
def test_a_ranking_model_adds_a_user_from_interactions(ranking_folder):
    rec = Recommender.from_pretrained(ranking_folder)
    liked = ["i1", "i3", "i5"]
    rec.add_interactions({"newbie": liked})
    scores = rec.score_all(["newbie"])[0]
    assert np.all(np.isfinite(scores)) and np.mean(scores[[1, 3, 5]]) > np.mean(
        np.delete(scores, [1, 3, 5])
    )
    assert set(liked).isdisjoint(i for i, _ in rec.recommend("newbie", k=3))
    with pytest.raises(ValueError, match="add_interactions"):
        rec.fold_in("x", {"i1": 4.0})
    assert not rec.traits.ratings and "scores" in Recommender.predict.__doc__


# 7. changes can be saved
def test_save_pretrained_keeps_added_items_users_and_interactions(folder, tmp_path, ranking_folder):
    rec = Recommender.from_pretrained(folder)
    rec.add_items({"new1": "good movie 9 comedy"}, fields={"new1": {"title": "New One"}})
    rec.fold_in("fan", {"i1": 5.0, "new1": 4.0})
    rec.fold_in("u1", {"i2": 1.0})
    rec.add_interactions({"u0": ["i7"], "quiet": ["i3"]})
    saved = rec.save_pretrained(tmp_path / "again")
    loaded = Recommender.from_pretrained(saved)
    np.testing.assert_array_equal(loaded.score_all(), rec.score_all())
    assert loaded.user_ids == rec.user_ids and loaded.item_ids == rec.item_ids
    assert (
        loaded.recommend("u0", k=5) == rec.recommend("u0", k=5)
        and loaded.item_info("new1")["title"] == "New One"
    )
    loaded.fold_in("fan", {"i1": 5.0, "new1": 4.0})  # refits the same way after loading
    np.testing.assert_allclose(loaded.score_all(["fan"]), rec.score_all(["fan"]), atol=1e-6)
    ranked = Recommender.from_pretrained(ranking_folder)
    ranked.add_interactions({"newbie": ["i1", "i3"]})
    np.testing.assert_array_equal(
        Recommender.from_pretrained(ranked.save_pretrained(tmp_path / "r")).score_all(),
        ranked.score_all(),
    )


# 9. inputs that were accepted but should not be
def test_ids_and_texts_that_are_refused_or_warned_about(folder):
    rec = Recommender.from_pretrained(folder)
    with pytest.raises(ValueError, match="item id '9100' is given twice"):
        rec.add_items({"9100": "good movie", 9100: "bad movie"})
    with pytest.raises(TypeError, match="item ids are strings or integers, got None"):
        rec.add_items({None: "good movie"})
    with pytest.raises(TypeError, match=r"add_items: pass a mapping \{item_id: text\}.*got list"):
        rec.add_items([("x", "good movie")])
    with pytest.raises(TypeError, match="pass a mapping"):
        rec.add_items(({"x": "t"}[k], "t") for k in "x")
    with pytest.raises(TypeError, match="recommend_batch"):
        rec.recommend(["u0", "u1"])
    with pytest.raises(TypeError, match="list of user ids"):
        rec.recommend_batch("u0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec.add_items({"long": "good movie " * 100, "unknown": "電影 電影 電影 電影"})
    messages = " ".join(str(w.message) for w in caught)
    assert (
        "longer than the 64 tokens the model reads" in messages
        and "mostly tokens the model does not know" in messages
    )
    assert len(rec.item_ids) == NUM_ITEMS + 2  # warned, not refused


# 10. batch use and the command line
def test_recommend_batch_matches_one_by_one_and_shows_fields(folder):
    rec = Recommender.from_pretrained(folder)
    assert rec.recommend_batch(USERS[:4], k=3) == [rec.recommend(u, k=3) for u in USERS[:4]]
    shelf = rec.recommend("u3", k=2, candidates=["i1", "i4", "i9"])
    assert {i for i, _ in shelf} <= {"i1", "i4", "i9"} and len(shelf) == 2
    with pytest.raises(ValueError, match="only 1 items are left"):
        rec.recommend("u0", k=2, candidates=["i2", "i3"])  # u0 has seen i2
    assert rec.item_info(ITEMS[2]) == {"title": "Movie 2", "text": TEXTS[2]}


def test_cli_checks_arguments_before_loading_and_prints_json(folder, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["recommend", str(folder), "--user", "u0", "-k", "0"])
    assert exit_.value.code == 2 and "expected a positive integer, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["recommend", str(folder / "nope"), "--user", "u0"])
    assert "not a saved peftrec model" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "recommend",
                str(folder),
                "--user",
                "u0",
                "--user",
                "u1",
                "-k",
                "2",
                "--json",
                "--include-seen",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert list(out["recommendations"]) == ["u0", "u1"] and out["score"] == "rating"
    assert out["recommendations"]["u0"][0]["title"].startswith("Movie")
    version = subprocess.run(
        [sys.executable, "-m", "peftrec.cli", "--version"], capture_output=True, text=True
    )
    assert version.stdout.startswith("peftrec ")
    assert cli.main(["predict", str(folder), "--user", "u0", "i1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["item_id"] == "i1"
    assert CATALOG.user_ids == USERS and NUM_USERS == len(USERS)
