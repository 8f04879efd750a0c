"""Warm start (train.init_from): the parent's adapter and head rows carry over by id, new users and
items keep fresh rows, the spec names the parent, and a parent that differs is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peftrec.artifact import ArtifactError, Catalog, save_artifact
from peftrec.config import BackboneConfig, ModelConfig
from peftrec.model import build_model
from peftrec.warm_start import warm_start

from .test_model import DIM, NUM_ITEMS, NUM_USERS, TEXTS, adapter_config
from .test_recommender import ITEMS, USERS, trained

# the next window: two users leave, three arrive; one item leaves, two arrive
NEW_USERS = [*USERS[2:], "n0", "n1", "n2"]
NEW_ITEMS = [*ITEMS[1:], "j0", "j1"]


@pytest.fixture
def parent(tmp_path, tiny_bert):
    model, tokenizer = trained(tiny_bert, "lora")
    catalog = Catalog(USERS, ITEMS, TEXTS, np.array([0]), np.array([0]))
    return save_artifact(tmp_path / "parent", model, tokenizer, catalog), model


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
    from peftrec.transfer import L2SP

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
