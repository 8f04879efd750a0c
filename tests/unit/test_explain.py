"""Explanations: complete (attributions add up to the score change), faithful on toy data whose
ratings depend on one word, readable in a terminal and a browser, and past items for history
models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from peftrec import cli
from peftrec.app.recommender import Recommender
from peftrec.artifact.head_vectors import trained_vectors
from peftrec.artifact.save import Catalog, save_artifact
from peftrec.config import AdapterConfig, BackboneConfig, ModelConfig
from peftrec.data import load_files, split_rows
from peftrec.models.assembly import build_model
from peftrec.models.tokens import tokenize_texts
from peftrec.tasks.rating.step import warm_up_head

from .test_model import DIM

TEMPLATE = "{title}. Genres: {genres}."


@pytest.fixture(scope="module")
def toy_model(toy_files, tiny_bert):
    """A text-only rating model trained on the toy data: "good" items rate 4.5, "bad" 1.5."""
    dataset = load_files(toy_files["interactions"], toy_files["items"])
    train = dataset.interactions.subset(split_rows(dataset, "p1").train)
    torch.manual_seed(0)
    model, tokenizer = build_model(
        BackboneConfig(name=str(tiny_bert)),
        AdapterConfig(method="frozen"),
        ModelConfig(dim=DIM, item_ids=False),
        num_users=len(dataset.user_ids),
        num_items=len(dataset.item_ids),
        max_length=16,
    )
    texts = dataset.item_texts(TEMPLATE)
    encoded = model.encode_texts(tokenize_texts(tokenizer, texts, 16))
    head = model.head
    head.init_biases(*(torch.as_tensor(a) for a in (train.users, train.items, train.ratings)))
    warm_up_head(
        head, encoded, train.users, train.items, train.ratings, epochs=40, batch_size=64,
        lr=0.01, l2=0.001, seed=0,
    )  # fmt: skip
    catalog = Catalog(
        user_ids=list(dataset.user_ids),
        item_ids=list(dataset.item_ids),
        item_texts=texts,
        seen_users=train.users,
        seen_items=train.items,
        rating_scale=(1.0, 5.0),
    )
    return model.eval(), tokenizer, catalog


def test_words_add_up_to_the_score_change_and_credit_the_word_that_matters(toy_model):
    rec = Recommender(*toy_model)
    good = [i for i, t in zip(rec.item_ids, rec.item_texts, strict=True) if t.startswith("good")]
    bad = [i for i, t in zip(rec.item_ids, rec.item_texts, strict=True) if t.startswith("bad")]
    top_good, top_bad = [], []
    for user in rec.user_ids[:6]:
        for item, tops in ((good[0], top_good), (bad[0], top_bad)):
            why = rec.explain(user, item, steps=48)
            assert [w for w, _ in why.words] == rec.item_info(item)["text"].split()
            total = sum(a for _, a in why.words)
            assert total == pytest.approx(why.score - why.baseline_score, abs=2e-3)
            assert abs(why.delta) < 2e-3
            user_row, item_row = rec.engine.user_index[user], rec.engine.item_index[item]
            served = rec.engine.serving_vectors().pairs(np.array([user_row]), np.array([item_row]))
            assert why.score == pytest.approx(float(served[0]), abs=1e-4)  # the score explained
            tops.append(why.top_words(1)[0])
    # the word the ratings depend on moves the score most, in its direction
    assert all(w == "good" and a > 0 for w, a in top_good)
    assert all(w == "bad" and a < 0 for w, a in top_bad)


def test_explain_refuses_bad_input(toy_model):
    rec = Recommender(*toy_model)
    with pytest.raises(KeyError, match="unknown item id 'nope'"):
        rec.explain(rec.user_ids[0], "nope")
    with pytest.raises(KeyError, match="unknown user id 'nobody'"):
        rec.explain("nobody", rec.item_ids[0])
    with pytest.raises(ValueError, match="steps must be an integer >= 2"):
        rec.explain(rec.user_ids[0], rec.item_ids[0], steps=1)


def test_the_explain_command_prints_and_writes_a_page(toy_model, tmp_path, capsys):
    vectors, text = trained_vectors(*toy_model)
    folder = save_artifact(tmp_path / "model", *toy_model, vectors=vectors, item_text=text)
    page = tmp_path / "why.html"
    code = cli.main(["explain", str(folder), "--user", "u1", "--item", "i1", "--html", str(page)])
    out = capsys.readouterr().out
    assert code == 0 and "words that moved the score most" in out and "completeness" in out
    html = page.read_text()
    assert html.startswith("<!doctype html>") and "background: rgba(" in html
    assert cli.main(["explain", str(folder), "--user", "u1", "--item", "i1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["item"] == "i1" and len(data["words"]) == len(toy_model[2].item_texts[1].split())
    assert cli.main(["explain", str(folder), "--user", "ghost", "--item", "i1"]) == 2
    assert "unknown user id 'ghost'" in capsys.readouterr().err


def test_a_history_model_credits_past_items_by_the_score_they_add(tiny_bert):
    from .test_model import NUM_ITEMS, TEXTS
    from .test_sequential import model_for

    model, tokenizer = model_for(tiny_bert)
    for p in model.head.parameters():  # a head that is not at its initial values
        torch.nn.init.normal_(p, std=0.3, generator=torch.Generator().manual_seed(p.numel()))
    catalog = Catalog(
        user_ids=["a", "b", "c"],
        item_ids=[f"i{k}" for k in range(NUM_ITEMS)],
        item_texts=TEXTS,
        seen_users=np.array([0, 0, 0, 1]),
        seen_items=np.array([3, 1, 4, 2]),
    )
    rec = Recommender(model, tokenizer, catalog)
    why = rec.explain("a", "i7", steps=8)
    assert [i for i, _ in why.history] == ["i3", "i1", "i4"]  # what the model read, in order
    full = dict(rec.recommend_for_history(["i3", "i1", "i4"], k=NUM_ITEMS, exclude_seen=False))
    assert full["i7"] == pytest.approx(why.score, abs=1e-4)
    for j, (_, effect) in enumerate(why.history):
        rest = [i for k, i in enumerate(["i3", "i1", "i4"]) if k != j]
        without = dict(rec.recommend_for_history(rest, k=NUM_ITEMS, exclude_seen=False))
        assert effect == pytest.approx(full["i7"] - without["i7"], abs=1e-4)
    assert "past items that mattered most" in why.text()
