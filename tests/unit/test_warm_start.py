"""Warm start (train.init_from): the parent's adapter and head rows carry over by id, new users and
items keep fresh rows, the spec names the parent, and a parent that differs is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from peftrec.app.recommender import Recommender
from peftrec.artifact.head_vectors import trained_vectors
from peftrec.artifact.save import ArtifactError, Catalog, save_artifact
from peftrec.config import BackboneConfig, ModelConfig
from peftrec.models.assembly import build_model
from peftrec.models.backbones import load_tokenizer
from peftrec.models.tokens import tokenize_texts
from peftrec.training.warm_start import warm_start

from .test_model import DIM, NUM_ITEMS, NUM_USERS, TEXTS, adapter_config
from .test_recommender import ITEMS, USERS, trained

# the next window: two users leave, three arrive; one item leaves, two arrive
NEW_USERS = [*USERS[2:], "n0", "n1", "n2"]
NEW_ITEMS = [*ITEMS[1:], "j0", "j1"]


@pytest.fixture
def parent(tmp_path, tiny_bert):
    model, tokenizer = trained(tiny_bert, "lora")
    catalog = Catalog(USERS, ITEMS, TEXTS, np.array([0]), np.array([0]))
    vectors, text = trained_vectors(model, tokenizer, catalog)
    folder = tmp_path / "parent"
    return save_artifact(folder, model, tokenizer, catalog, vectors=vectors, item_text=text), model


def child(tiny_bert, method="lora", task="rating", dim=DIM):
    torch.manual_seed(1)
    return build_model(
        BackboneConfig(name=str(tiny_bert)),
        adapter_config(method),
        ModelConfig(dim=dim),
        num_users=len(NEW_USERS),
        num_items=len(NEW_ITEMS),
        task=task,
    )[0]


def test_known_rows_and_the_adapter_carry_over_new_rows_stay_fresh(parent, tiny_bert):
    folder, old = parent
    model = child(tiny_bert)
    fresh = {k: v.clone() for k, v in model.head.state_dict().items()}
    done = warm_start(model, folder, NEW_USERS, NEW_ITEMS)
    assert (done.users_kept, done.users_new, done.items_kept, done.items_new) == (
        NUM_USERS - 2,
        3,
        NUM_ITEMS - 1,
        2,
    )
    head, before = model.head.state_dict(), old.head.state_dict()
    for name in ("user_emb.weight", "user_bias.weight"):
        assert torch.equal(head[name][: NUM_USERS - 2], before[name][2:])  # by id, not position
        assert torch.equal(head[name][NUM_USERS - 2 :], fresh[name][NUM_USERS - 2 :])
    for name in ("item_emb.weight", "item_bias.weight"):
        assert torch.equal(head[name][: NUM_ITEMS - 1], before[name][1:])
        assert torch.equal(head[name][NUM_ITEMS - 1 :], fresh[name][NUM_ITEMS - 1 :])
    assert torch.equal(head["item_proj.weight"], before["item_proj.weight"])
    assert torch.equal(head["global_mean"], before["global_mean"])
    lora = {k: v for k, v in model.backbone.state_dict().items() if "lora_" in k}
    parent_lora = {k: v for k, v in old.backbone.state_dict().items() if "lora_" in k}
    assert lora and all(torch.equal(lora[k], parent_lora[k]) for k in lora)
    assert all(p.requires_grad for n, p in model.backbone.named_parameters() if "lora_" in n)
    assert model.spec.parent["folder"] == "parent" and len(model.spec.parent["digest"]) == 64
    assert "parent" in model.spec.to_dict() and "parent" not in old.spec.to_dict()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": "frozen"}, "adapter: "),
        ({"task": "ranking"}, "task: 'rating' in the parent, 'ranking' now"),
        ({"dim": DIM * 2}, "head.dim: 8 in the parent, 16 now"),
    ],
)
def test_a_parent_that_differs_is_refused(parent, tiny_bert, change, message):
    folder, _ = parent
    model = child(tiny_bert, **change)
    with pytest.raises(ArtifactError, match=message):
        warm_start(model, folder, NEW_USERS, NEW_ITEMS)


def test_a_missing_parent_is_refused(tmp_path, tiny_bert):
    with pytest.raises(ArtifactError, match="no such model folder"):
        warm_start(child(tiny_bert), tmp_path / "nowhere", NEW_USERS, NEW_ITEMS)


def test_biases_from_the_new_window_only_for_new_users_and_items(parent, tiny_bert):
    folder, old = parent
    model = child(tiny_bert)
    done = warm_start(model, folder, NEW_USERS, NEW_ITEMS)
    head = model.head
    rng = np.random.default_rng(0)
    users = torch.as_tensor(rng.integers(0, len(NEW_USERS), 200))
    items = torch.as_tensor(rng.integers(0, len(NEW_ITEMS), 200))
    head.init_biases(users, items, torch.as_tensor(rng.integers(1, 6, 200), dtype=torch.float32))
    averaged = head.user_bias.weight.detach().clone()
    done.restore_biases(head)
    before = old.head.state_dict()
    assert torch.equal(head.user_bias.weight[: NUM_USERS - 2], before["user_bias.weight"][2:])
    assert torch.equal(head.user_bias.weight[NUM_USERS - 2 :], averaged[NUM_USERS - 2 :])
    assert torch.equal(head.item_bias.weight[: NUM_ITEMS - 1], before["item_bias.weight"][1:])
    assert torch.equal(head.global_mean, before["global_mean"])


def test_l2sp_after_a_warm_start_holds_the_model_near_its_parent(parent, tiny_bert):
    from peftrec.training.transfer import L2SP

    folder, _ = parent
    model = child(tiny_bert)
    warm_start(model, folder, NEW_USERS, NEW_ITEMS)
    toward_parent = L2SP(model.backbone, from_current=True)
    toward_pretrained = L2SP(model.backbone)
    zero = torch.zeros(1)
    assert toward_parent(model, None, None, None, zero).item() == pytest.approx(0.0, abs=1e-12)
    assert toward_pretrained(model, None, None, None, zero).item() > 0  # the parent's own delta
    with torch.no_grad():
        lora_b = next(p for n, p in model.backbone.named_parameters() if "lora_B" in n)
        lora_b.add_(0.1)
    assert toward_parent(model, None, None, None, zero).item() > 0


NEW_TEXTS = [*TEXTS[1:], "good movie j0 drama", "bad movie j1 drama"]


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.backbone.state_dict().items() if "lora_" in k}


def move_adapter(model, seed: int) -> None:
    """Train the adapter, as it were: a lost adapter or lost merged weights then show."""
    with torch.no_grad():
        for name, param in model.backbone.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05, generator=torch.Generator().manual_seed(seed))


def test_merge_folds_the_parent_adapter_into_the_backbone_under_a_fresh_one(
    parent, tiny_bert, tmp_path
):
    folder, old = parent
    model, tokenizer = child(tiny_bert), load_tokenizer(str(tiny_bert))
    fresh = lora_weights(model)
    warm_start(model, folder, NEW_USERS, NEW_ITEMS, mode="merge")
    assert all(torch.equal(v, fresh[k]) for k, v in lora_weights(model).items())  # its own
    assert model.spec.adapter.merged == 1 and model.spec.parent["mode"] == "merge"
    assert model.merged_base and all(n.endswith("weight") for n in model.merged_base)
    tokens = tokenize_texts(tokenizer, TEXTS, 16)
    # a fresh LoRA adds nothing yet: merged, the new model encodes as its parent did
    torch.testing.assert_close(model.encode_texts(tokens), old.encode_texts(tokens))
    assert not torch.allclose(old.encode_texts(tokens), child(tiny_bert).encode_texts(tokens))

    move_adapter(model, 1)
    catalog = Catalog(NEW_USERS, NEW_ITEMS, NEW_TEXTS, np.array([0]), np.array([0]))
    vectors, text = trained_vectors(model, tokenizer, catalog)
    saved = save_artifact(
        tmp_path / "child", model, tokenizer, catalog, vectors=vectors, item_text=text
    )
    assert (saved / "merged.safetensors").is_file()
    assert json.loads((saved / "peftrec.json").read_text())["spec"]["adapter"]["merged"] == 1
    texts = ["good movie 77 drama", "bad movie 78 drama"]
    expected = Recommender(model, tokenizer, catalog).predict_texts("n0", texts)
    np.testing.assert_allclose(  # through the network: base, merged weights, then the adapter
        Recommender.from_pretrained(saved).predict_texts("n0", texts), expected, rtol=1e-6
    )

    again = child(tiny_bert)  # merged twice: both parents' adapters in the base weights
    warm_start(again, saved, NEW_USERS, NEW_ITEMS, mode="merge")
    assert again.spec.adapter.merged == 2
    torch.testing.assert_close(again.encode_texts(tokens), model.encode_texts(tokens))
    onwards = child(tiny_bert)  # continued: the merged weights travel with the model
    warm_start(onwards, saved, NEW_USERS, NEW_ITEMS)
    assert (
        onwards.spec.adapter.merged == 1 and onwards.merged_base.keys() == model.merged_base.keys()
    )
    torch.testing.assert_close(onwards.encode_texts(tokens), model.encode_texts(tokens))

    (saved / "merged.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"merged\.safetensors: missing"):
        Recommender.from_pretrained(saved)


def test_towers_keeps_the_parent_adapter_and_trains_only_the_head(parent, tiny_bert):
    folder, old = parent
    model = child(tiny_bert)
    warm_start(model, folder, NEW_USERS, NEW_ITEMS, mode="towers")
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    parent_lora = lora_weights(old)
    assert all(torch.equal(v, parent_lora[k]) for k, v in lora_weights(model).items())
    assert model.spec.parent["mode"] == "towers" and not model.spec.adapter.merged


def test_the_parents_saved_encodings_stand_for_unchanged_texts(parent, tiny_bert):
    folder, old = parent
    model, tokenizer = child(tiny_bert), load_tokenizer(str(tiny_bert))
    texts = [*NEW_TEXTS[:-3], "a changed text", *NEW_TEXTS[-2:]]
    done = warm_start(model, folder, NEW_USERS, NEW_ITEMS, item_texts=texts, mode="continue")
    rows, _ = done.encodings
    assert rows.tolist() == list(range(NUM_ITEMS - 2))  # known, but for the changed text
    tokens = tokenize_texts(tokenizer, texts, old.spec.max_length)
    torch.testing.assert_close(done.encode_items(model, tokens), model.encode_texts(tokens))
    # a parent whose weights changed since it saved its encodings: nothing is reused
    save_file({k: v + 1 for k, v in old.head.state_dict().items()}, folder / "head.safetensors")
    again = warm_start(child(tiny_bert), folder, NEW_USERS, NEW_ITEMS, item_texts=texts)
    assert again.encodings is None


@pytest.fixture
def movie_parent(tmp_path, tiny_bert):
    """A parent whose catalogue says which data set its ids belong to."""
    model, tokenizer = trained(tiny_bert, "lora")
    catalog = Catalog(USERS, ITEMS, TEXTS, np.array([0]), np.array([0]), domain="ml-100k")
    vectors, text = trained_vectors(model, tokenizer, catalog)
    folder = tmp_path / "movies"
    return save_artifact(folder, model, tokenizer, catalog, vectors=vectors, item_text=text), model


def test_a_parent_of_another_domain_matches_no_id_but_carries_the_rest(movie_parent, tiny_bert):
    folder, old = movie_parent
    assert json.loads((folder / "catalog.json").read_text())["domain"] == "ml-100k"
    model = child(tiny_bert)
    fresh = {k: v.clone() for k, v in model.head.state_dict().items()}
    # the same id strings name other users and items in another data set
    done = warm_start(model, folder, NEW_USERS, NEW_ITEMS, domain="book-crossing")
    assert (done.users_kept, done.items_kept) == (0, 0)
    head, before = model.head.state_dict(), old.head.state_dict()
    for name in ("user_emb.weight", "item_emb.weight", "user_bias.weight", "item_bias.weight"):
        assert torch.equal(head[name], fresh[name])
    assert torch.equal(head["item_proj.weight"], before["item_proj.weight"])  # text: carried
    lora = {k: v for k, v in model.backbone.state_dict().items() if "lora_" in k}
    parent_lora = {k: v for k, v in old.backbone.state_dict().items() if "lora_" in k}
    assert all(torch.equal(lora[k], parent_lora[k]) for k in lora)
    # the same domain (or a parent saved before domains) matches by id as before
    same = warm_start(child(tiny_bert), folder, NEW_USERS, NEW_ITEMS, domain="ml-100k")
    assert (same.users_kept, same.items_kept) == (NUM_USERS - 2, NUM_ITEMS - 1)


def test_a_parent_saved_before_a_head_option_existed_continues_with_its_default(parent):
    from dataclasses import replace

    from peftrec.artifact.folder import check_folder
    from peftrec.training.warm_start import check_parent

    folder, _ = parent
    spec, _ = check_folder(folder)
    old = replace(spec, head={k: v for k, v in spec.head.items() if k != "content"})
    check_parent(old, replace(spec, head={**old.head, "content": False}), folder)
    with pytest.raises(ArtifactError, match=r"head\.content: False in the parent, True now"):
        check_parent(old, replace(spec, head={**old.head, "content": True}), folder)


def preference_model(tiny_bert, users: list[str], items: list[str]):
    torch.manual_seed(0)
    return build_model(
        BackboneConfig(name=str(tiny_bert)),
        adapter_config("lora"),
        ModelConfig(dim=DIM, item_ids=False),
        num_users=0,  # a preference model's user is their history
        num_items=len(items),
        task="preference",
    )


def test_across_domains_a_preference_models_text_bias_weight_starts_at_zero(tmp_path, tiny_bert):
    """What made a film liked does not say what makes a book liked: w_b starts at 0 in another
    domain (the text-to-bias map itself carries over, for training to turn back on)."""
    model, tokenizer = preference_model(tiny_bert, USERS, ITEMS)
    with torch.no_grad():
        model.head.item_weight.fill_(1.7)
        model.head.item_text_bias.weight.normal_()
    # a preference catalogue has no user rows: a user is their (labelled) history
    catalog = Catalog([], ITEMS, TEXTS, np.zeros(0, int), np.zeros(0, int), domain="ml-100k")
    folder = save_artifact(tmp_path / "movies", model, tokenizer, catalog)  # no serving vectors
    for domain, weight in (("ml-100k", 1.7), ("book-crossing", 0.0)):
        books, _ = preference_model(tiny_bert, NEW_USERS, NEW_ITEMS)
        warm_start(books, folder, NEW_USERS, NEW_ITEMS, domain=domain)
        assert float(books.head.item_weight) == pytest.approx(weight)
        assert torch.equal(books.head.item_text_bias.weight, model.head.item_text_bias.weight)


def test_across_domains_the_global_mean_is_the_new_datas(movie_parent, tiny_bert):
    """Books are rated 1-10, films 1-5: the parent's global mean must not come back."""
    folder, old = movie_parent
    model = child(tiny_bert)
    done = warm_start(model, folder, NEW_USERS, NEW_ITEMS, domain="book-crossing")
    head = model.head
    rng = np.random.default_rng(0)
    users = torch.as_tensor(rng.integers(0, len(NEW_USERS), 200))
    items = torch.as_tensor(rng.integers(0, len(NEW_ITEMS), 200))
    ratings = torch.as_tensor(rng.integers(1, 11, 200), dtype=torch.float32)
    head.init_biases(users, items, ratings)
    own_mean = float(head.global_mean)
    done.restore_biases(head)
    assert float(head.global_mean) == pytest.approx(own_mean)
    assert own_mean != pytest.approx(float(old.head.global_mean))
