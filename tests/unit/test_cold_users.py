"""Cold-start users in the app API: add_users (a profile text) and fold_in (a few ratings)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from peftrec.app.recommender import Recommender
from peftrec.config import BackboneConfig, ModelConfig
from peftrec.models.assembly import build_model
from peftrec.models.tokens import tokenize_texts

from .test_model import DIM, NUM_ITEMS, NUM_USERS, adapter_config
from .test_recommender import CATALOG, ITEMS, save

PROFILES = [
    (
        f"a {20 + k} year old {'male' if k % 2 else 'female'} "
        f"{('student', 'writer', 'engineer')[k % 3]}."
    )
    for k in range(NUM_USERS)
]


def rmse(a, b) -> float:
    return float(np.sqrt(np.mean(np.square(np.asarray(a) - np.asarray(b)))))


def build(backbone_path, method="lora", user_text=True, task="rating"):
    """A model as the recipe leaves it: profiles encoded before training, then every trained
    weight moved away from its start (so encoding a profile with the adapted backbone would
    show)."""
    torch.manual_seed(0)
    model, tokenizer = build_model(
        BackboneConfig(name=str(backbone_path)),
        adapter_config(method),
        ModelConfig(dim=DIM, user_text=user_text),
        num_users=NUM_USERS,
        num_items=NUM_ITEMS,
        task=task,
    )
    if user_text:
        model.head.user_text.copy_(model.encode_texts(tokenize_texts(tokenizer, PROFILES, 32)))
    for name, param in model.named_parameters():
        if param.requires_grad:
            torch.nn.init.normal_(
                param,
                std=0.05 if "head." in name else 0.02,
                generator=torch.Generator().manual_seed(len(name)),
            )
    return model, tokenizer


def recommender(
    backbone_path, method="lora", user_text=True, task="rating", profile_scale=1.0, **users
):
    """A Recommender; ``users`` sets trained users' ID vectors and biases, ``u1=(vector, bias)``;
    ``profile_scale`` scales the profile projection (how much a profile says about the ratings)."""
    model, tokenizer = build(backbone_path, method, user_text, task)
    with torch.no_grad():
        if user_text:
            model.head.user_text_proj.weight.mul_(profile_scale)
        for user, (vector, bias) in users.items():
            row = CATALOG.user_ids.index(user)
            model.head.user_emb.weight[row] = torch.as_tensor(vector, dtype=torch.float32)
            if task == "rating":
                model.head.user_bias.weight[row] = bias
    return Recommender(model, tokenizer, CATALOG, {"max_length": 32})


@pytest.mark.parametrize("method", ["lora", "frozen"])
def test_add_users_scores_a_profile_as_training_did(tiny_bert, method):
    # u0's ID part and bias zeroed: u0 is then scored from its profile alone, as a new user
    # should be
    rec = recommender(tiny_bert, method, u0=(np.zeros(DIM), 0.0))
    rec.add_users({"new": PROFILES[0], "other": PROFILES[3]})
    assert rec.user_ids[-2:] == ["new", "other"]
    np.testing.assert_allclose(rec.score_all(["new"]), rec.score_all(["u0"]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(
        rec.score_all(["new"]), rec.score_all(["other"]), atol=1e-3
    )  # other text
    assert len(rec.recommend("new", k=NUM_ITEMS)) == NUM_ITEMS  # nothing seen yet
    if (
        method == "lora"
    ):  # the adapted backbone encodes differently: the profile must skip the adapter
        head, tokens = rec.model.head, tokenize_texts(rec.tokenizer, PROFILES[:1], 32)
        adapted = head.user_text_proj(rec.model.encode_texts(tokens))[0]
        assert not torch.allclose(adapted, head.user_text_proj(head.user_text[0]), atol=1e-3)


def test_add_users_after_save_and_load(tmp_path, tiny_bert):
    model, tokenizer = build(tiny_bert)
    with torch.no_grad():
        model.head.user_emb.weight[0] = 0.0
        model.head.user_bias.weight[0] = 0.0
    rec = Recommender.from_pretrained(save(tmp_path / "model", model, tokenizer, tiny_bert))
    rec.add_users({"new": PROFILES[0]})
    np.testing.assert_allclose(rec.score_all(["new"]), rec.score_all(["u0"]), rtol=1e-5, atol=1e-6)


def test_add_users_encodes_outside_the_read_lock_and_alone(tiny_bert, monkeypatch):
    # a profile is encoded with the adapters off: reads go on meanwhile, and an item encode
    # waits for it (else the item would be encoded by the bare backbone)
    rec = recommender(tiny_bert, "lora")
    before = rec.recommend("u1", k=3)  # the catalogue encoded before the profile blocks
    started, release, original = threading.Event(), threading.Event(), rec.engine._encode

    def encode(texts):
        if not started.is_set():
            started.set()
            assert release.wait(10)
        return original(texts)

    monkeypatch.setattr(rec.engine, "_encode", encode)
    writer = threading.Thread(target=rec.add_users, args=({"new": PROFILES[0]},))
    writer.start()
    assert started.wait(10)
    read = []
    reader = threading.Thread(target=lambda: read.append(rec.recommend("u1", k=3)))
    reader.start()
    reader.join(10)
    assert read == [before] and "new" not in rec.user_ids  # answered; not published yet
    item = threading.Thread(target=rec.add_items, args=({"late": "a good comedy film"},))
    item.start()
    item.join(0.5)
    assert item.is_alive()  # waiting for the profile's pass
    release.set()
    writer.join(10)
    item.join(10)
    assert "new" in rec.user_ids and "late" in rec.item_ids
    alone = recommender(tiny_bert, "lora")
    alone.add_items({"late": "a good comedy film"})
    np.testing.assert_allclose(
        rec.predict(["u1"], ["late"]), alone.predict(["u1"], ["late"]), rtol=1e-5
    )


def test_add_users_refusals(tiny_bert):
    with pytest.raises(ValueError, match=r"without model.user_text=true.*fold_in"):
        recommender(tiny_bert, user_text=False).add_users({"new": PROFILES[0]})
    for method in (
        "top_layers",
        "prefix",
    ):  # training profiles came from a backbone the folder lacks
        with pytest.raises(ValueError, match=r"before training.*fold_in"):
            recommender(tiny_bert, method).add_users({"new": PROFILES[0]})
    rec = recommender(tiny_bert)
    with pytest.raises(ValueError, match="user 'u0' was trained with its own profile"):
        rec.add_users({"new": PROFILES[0], "u0": PROFILES[1]})
    with pytest.raises(TypeError, match="the text of user 'x' must be a string"):
        rec.add_users({"x": 3})
    with pytest.raises(ValueError, match="user 'x' has an empty text"):
        rec.add_users({"x": "  "})
    with pytest.raises(ValueError, match="no users"):
        rec.add_users({})
    assert len(rec.user_ids) == NUM_USERS  # nothing was added by a refused call
    rec.add_users({"new": PROFILES[0]})
    before = rec.score_all(["new"])
    rec.add_users({"new": PROFILES[1]})  # an added user's profile may change
    assert (
        not np.allclose(rec.score_all(["new"]), before, atol=1e-3)
        and len(rec.user_ids) == NUM_USERS + 1
    )


def test_fold_in_learns_a_user_from_ratings(tiny_bert):
    rng = np.random.default_rng(0)
    rec = recommender(
        tiny_bert,
        "frozen",
        user_text=False,
        u1=(rng.normal(0, 1.0, DIM), 1.0),
        u3=(np.zeros(DIM), 0.0),
    )
    truth = rec.predict(
        ["u1"] * NUM_ITEMS, ITEMS
    )  # the ratings of a user with this vector and bias
    baseline = rec.predict(["u3"] * NUM_ITEMS, ITEMS)  # no ratings: mean + item bias
    rec.fold_in("new", {i: truth[k] for k, i in enumerate(ITEMS[:3])}, l2=1.0)
    held_out = slice(3, None)
    assert rmse(rec.predict(["new"] * 8, ITEMS[held_out]), truth[held_out]) < 0.7 * rmse(
        baseline[held_out], truth[held_out]
    )
    rec.fold_in(
        "new", {i: truth[k] for k, i in enumerate(ITEMS[:10])}, l2=1e-6
    )  # 10 ratings, 9 unknowns
    np.testing.assert_allclose(rec.predict(["new"] * NUM_ITEMS, ITEMS), truth, atol=1e-3)


def test_fold_in_shrinks_towards_the_profile(tiny_bert):
    # u2: a profile that says much about its ratings, plus a small ID part and a bias; a new user
    # with u2's profile and two of u2's ratings is closer to u2 than profile alone or ratings alone
    rng = np.random.default_rng(1)
    rec = recommender(tiny_bert, profile_scale=10.0, u2=(rng.normal(0, 0.1, DIM), 0.5))
    truth = rec.predict(["u2"] * NUM_ITEMS, ITEMS)
    known = {"i0": truth[0], "i1": truth[1]}
    rec.add_users({"profile": PROFILES[2], "both": PROFILES[2]})
    rec.fold_in("both", known, l2=1.0)
    rec.fold_in("ratings", known, l2=1.0)
    error = {
        u: rmse(rec.predict([u] * 9, ITEMS[2:]), truth[2:]) for u in ("profile", "both", "ratings")
    }
    assert error["both"] < error["profile"] and error["both"] < error["ratings"], error
    profile_only = rec.predict(["profile"] * NUM_ITEMS, ITEMS)
    rec.fold_in("both", known, l2=1e9)  # an overwhelming prior: back to the profile
    np.testing.assert_allclose(rec.predict(["both"] * NUM_ITEMS, ITEMS), profile_only, atol=1e-4)


def test_profile_after_fold_in_is_the_same_as_before(tiny_bert):
    rec = recommender(tiny_bert)
    ratings = {"i3": 5.0, "i4": 1.0, "i8": 2.0}
    rec.fold_in("late", ratings)  # ratings first, then a profile: refit around it
    rec.add_users({"late": PROFILES[4], "early": PROFILES[4]})
    rec.fold_in("early", ratings)
    np.testing.assert_allclose(
        rec.score_all(["late"]), rec.score_all(["early"]), rtol=1e-5, atol=1e-6
    )


def test_recommend_excludes_folded_in_items(tiny_bert):
    rec = recommender(tiny_bert)
    rec.fold_in("new", {"i1": 5, "i4": np.float32(1.0)})
    assert {"i1", "i4"}.isdisjoint(i for i, _ in rec.recommend("new", k=NUM_ITEMS - 2))
    with pytest.raises(ValueError, match="only 9 items are left"):
        rec.recommend("new", k=NUM_ITEMS)
    before = rec.score_all(["u0"])
    rec.fold_in("u0", {"i7": 4.0})  # a trained user: vector replaced, seen items kept
    assert not np.allclose(rec.score_all(["u0"]), before, atol=1e-3)
    assert {"i2", "i5", "i7"}.isdisjoint(i for i, _ in rec.recommend("u0", k=NUM_ITEMS - 3))


def test_fold_in_bad_input(tiny_bert):
    rec = recommender(tiny_bert)
    with pytest.raises(KeyError, match="unknown item id 'i99'"):
        rec.fold_in("new", {"i1": 4.0, "i99": 3.0})
    with pytest.raises(ValueError, match="rating of item 'i3' is nan"):
        rec.fold_in("new", {"i3": float("nan")})
    with pytest.raises(ValueError, match="rating of item 'i3' is inf"):
        rec.fold_in("new", {"i3": np.inf})
    with pytest.raises(TypeError, match="rating of item 'i3' must be a number, got '4'"):
        rec.fold_in("new", {"i3": "4"})
    with pytest.raises(TypeError, match="rating of item 'i3' must be a number, got True"):
        rec.fold_in("new", {"i3": True})
    with pytest.raises(TypeError, match=r"fold_in: pass a mapping \{item_id: rating\}.*got list"):
        rec.fold_in("new", [("i3", 4.0)])
    with pytest.raises(ValueError, match="no ratings given for user 'new'"):
        rec.fold_in("new", {})
    with pytest.raises(ValueError, match="l2 must be a positive number"):
        rec.fold_in("new", {"i3": 4.0}, l2=0)
    with pytest.raises(KeyError, match=r"unknown user id 'new'.*add_users.*fold_in"):
        rec.recommend("new")  # none of the refused calls added the user
    with pytest.raises(ValueError, match="ranking model"):
        recommender(tiny_bert, task="ranking").fold_in("new", {"i3": 4.0})
