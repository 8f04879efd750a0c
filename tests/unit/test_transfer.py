"""Knowledge-transfer pieces: L_S objectives, random initialisation, text ridge,
warm/cold metrics."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from peftrec.app.recommender import Recommender
from peftrec.artifact.head_vectors import trained_vectors
from peftrec.artifact.save import ArtifactError, Catalog, save_artifact
from peftrec.config import AdapterConfig, BackboneConfig, ModelConfig, TransferConfig
from peftrec.metrics import load_metric
from peftrec.models.assembly import build_model
from peftrec.models.tokens import tokenize_texts
from peftrec.tasks.rating.step import evaluate_ratings, rating_loader
from peftrec.training.transfer import build_source_objective, pretrained_encodings

from .test_model import DIM, NUM_ITEMS, NUM_USERS, TEXTS, batch_for

LOSSES = ["l2sp", "lm", "distill"]


def make(path, method="lora", init="pretrained", loss="none"):
    torch.manual_seed(
        0 if init == "pretrained" else 123
    )  # (the tiny checkpoints were drawn with seed 0)
    model, tokenizer = build_model(
        BackboneConfig(name=str(path), init=init),
        AdapterConfig(method=method, r=4, dropout=0.0, top_k_layers=1),
        ModelConfig(dim=DIM),
        num_users=NUM_USERS,
        num_items=NUM_ITEMS,
    )
    tokens = tokenize_texts(tokenizer, TEXTS, 32)
    model.source = build_source_objective(
        TransferConfig(loss=loss, weight=1.0), model, tokens, tokenizer
    )
    return model, tokenizer, tokens


def train_steps(model, tokenizer, weight: float, steps: int = 8) -> list[float]:
    """A few steps of L_T (pushing ratings of items 0, 3, 5 far up) + weight * L_S."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    sources = []
    for _ in range(steps):
        output = model(**batch_for(tokenizer))
        loss = (output.scores - 5.0).square().mean() + weight * output.source
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sources.append(float(output.source))
    return sources


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_source_loss_is_finite_reaches_the_adapter_and_is_off_in_eval(tiny_backbones, kind, loss):
    model, tokenizer, _ = make(tiny_backbones[kind], loss=loss)
    for name, param in model.backbone.named_parameters():
        if "lora_B" in name:  # as after some training (at B = 0, L2-SP and its gradient are 0)
            torch.nn.init.normal_(param, std=0.1, generator=torch.Generator().manual_seed(0))
    model.train()
    output = model(**batch_for(tokenizer))
    assert torch.isfinite(output.source) and output.source.item() >= 0
    output.source.backward()
    lora = [p for n, p in model.backbone.named_parameters() if "lora_" in n]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    model.eval()
    assert model(**batch_for(tokenizer)).source.item() == 0.0


def test_l2sp_is_zero_before_training_and_measures_the_lora_change(tiny_bert):
    model, tokenizer, _ = make(tiny_bert, loss="l2sp")
    model.train()
    assert model(**batch_for(tokenizer)).source.item() == 0.0  # LoRA's B starts at zero
    train_steps(model, tokenizer, weight=0.0, steps=2)
    expected = sum(
        m.get_delta_weight("default").square().sum()
        for m in model.backbone.modules()
        if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {})
    )
    assert torch.allclose(model(**batch_for(tokenizer)).source, expected)
    assert expected > 0


@pytest.mark.parametrize("loss", LOSSES)
def test_a_larger_weight_keeps_the_backbone_closer_to_its_pretraining(tiny_bert, loss):
    finals = {}
    for weight in (0.0, 10.0):
        model, tokenizer, _ = make(tiny_bert, loss=loss)
        train_steps(model, tokenizer, weight)
        model.train()
        finals[weight] = model(**batch_for(tokenizer)).source.item() if loss != "lm" else None
        delta = sum(
            m.get_delta_weight("default").square().sum().item()
            for m in model.backbone.modules()
            if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {})
        )
        finals[weight] = (finals[weight], delta)
    if loss == "lm":  # the MLM head trains with it: only compare how far the adapter moved
        assert finals[10.0][1] != finals[0.0][1]
    else:
        assert finals[10.0][0] < finals[0.0][0]


def test_top_layers_l2sp_and_distill_targets(tiny_gpt2):
    model, tokenizer, tokens = make(tiny_gpt2, method="top_layers", loss="l2sp")
    model.train()
    assert model(**batch_for(tokenizer)).source.item() == 0.0  # weights at their pretrained values
    train_steps(model, tokenizer, weight=0.0, steps=2)
    assert model(**batch_for(tokenizer)).source.item() > 0
    distill, tokenizer, tokens = make(tiny_gpt2, method="lora", loss="distill")
    assert torch.allclose(
        distill.source.targets, distill.encode_texts(tokens)
    )  # B = 0: no change yet
    torch.nn.init.normal_(
        distill.backbone.base_model.model.h[0].attn.c_attn.lora_B["default"].weight
    )
    assert not torch.allclose(pretrained_encodings(distill, tokens), distill.encode_texts(tokens))
    assert torch.allclose(pretrained_encodings(distill, tokens), distill.source.targets)


def test_source_loss_needs_a_trained_backbone(tiny_bert):
    with pytest.raises(ValueError, match="frozen"):
        make(tiny_bert, method="frozen", loss="l2sp")
    model, _, _ = make(tiny_bert, method="frozen")
    assert model.source is None


def test_random_init_differs_and_round_trips_through_the_artifact(tmp_path, tiny_bert):
    pretrained, _, tokens = make(tiny_bert)
    random_model, tokenizer, _ = make(tiny_bert, init="random")
    assert not torch.allclose(pretrained.encode_texts(tokens), random_model.encode_texts(tokens))
    torch.nn.init.normal_(
        random_model.head.item_proj.weight, generator=torch.Generator().manual_seed(1)
    )
    users, items = [f"u{k}" for k in range(NUM_USERS)], [f"i{k}" for k in range(NUM_ITEMS)]
    catalog = Catalog(
        user_ids=users,
        item_ids=items,
        item_texts=TEXTS,
        seen_users=np.array([0]),
        seen_items=np.array([1]),
    )
    vectors, text = trained_vectors(random_model, tokenizer, catalog)
    save_artifact(tmp_path / "m", random_model, tokenizer, catalog, vectors=vectors, item_text=text)
    assert (tmp_path / "m" / "base.safetensors").is_file()
    rec = Recommender.from_pretrained(tmp_path / "m")
    random_model.eval()
    expected = random_model.head.score_all(
        random_model.head.users(torch.arange(2)),
        random_model.head.items(random_model.encode_texts(tokens), torch.arange(NUM_ITEMS)),
    )
    assert np.allclose(rec.score_all(users[:2]), expected.detach().numpy(), atol=1e-5)
    (tmp_path / "m" / "base.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"base\.safetensors: missing"):
        Recommender.from_pretrained(tmp_path / "m")


def test_text_ridge_counts_only_the_text_to_item_weights(tiny_bert):
    model, _, _ = make(tiny_bert)
    head = model.head
    expected = head.item_proj.weight.square().sum() + head.item_text_bias.weight.square().sum()
    assert torch.equal(head.weight_penalty(), expected)
    idonly, _ = build_model(
        BackboneConfig(name=str(tiny_bert)),
        AdapterConfig(method="frozen"),
        ModelConfig(dim=DIM, item_text=False),
        num_users=NUM_USERS,
        num_items=NUM_ITEMS,
    )
    assert idonly.head.weight_penalty().item() == 0.0


def test_test_errors_are_reported_apart_for_warm_and_cold(tiny_bert):
    model, _, tokens = make(tiny_bert)
    item_text = model.encode_texts(tokens)
    users = np.array([0, 0, 1, 2, 3, 4], dtype=np.int64)
    items = np.array([0, 5, 1, 5, 2, 6], dtype=np.int64)
    ratings = np.array([1, 2, 3, 4, 5, 2], dtype=np.float32)
    known_users = np.array([True, True, True, False, True, True, True])  # user 3 is cold
    known_items = np.ones(NUM_ITEMS, dtype=bool)
    known_items[[5, 6]] = False  # items 5 and 6 are cold
    interactions = SimpleNamespace(users=users, items=items, ratings=ratings)
    scores = evaluate_ratings(
        Accelerator(cpu=True),
        model.head,
        item_text,
        rating_loader(interactions, batch_size=4),
        load_metric("rating_error"),
        known_users=known_users,
        known_items=known_items,
    )
    model.head.eval()
    predictions = (
        model.head.score(
            model.head.users(torch.as_tensor(users)),
            model.head.items(item_text[items], torch.as_tensor(items)),
        )
        .detach()
        .numpy()
    )

    def rmse(rows):
        return float(np.sqrt(np.mean((predictions[rows] - ratings[rows]) ** 2)))

    assert scores["count"] == 6 and scores["rmse"] == pytest.approx(rmse(slice(None)), rel=1e-5)
    assert (scores["count_warm"], scores["count_cold_items"], scores["count_cold_users"]) == (
        2,
        3,
        1,
    )
    assert scores["rmse_warm"] == pytest.approx(rmse([0, 2]), rel=1e-5)
    assert scores["rmse_cold_items"] == pytest.approx(rmse([1, 3, 5]), rel=1e-5)
    assert scores["rmse_cold_users"] == pytest.approx(rmse([4]), rel=1e-5)
    known_users[:] = True
    scores = evaluate_ratings(
        Accelerator(cpu=True),
        model.head,
        item_text,
        rating_loader(interactions),
        load_metric("rating_error"),
        known_users=known_users,
        known_items=known_items,
    )
    assert scores["count_cold_users"] == 0 and scores["rmse_cold_users"] is None


def test_causal_lm_with_nothing_to_predict_is_zero_not_nan(tiny_gpt2):
    model, tokenizer, _ = make(tiny_gpt2, loss="lm")
    model.train()
    one_token = torch.tensor([[tokenizer.encode("good")[0]]])
    loss = model.source(
        model, one_token, torch.ones_like(one_token), torch.tensor([0]), torch.zeros(1, 64)
    )
    assert loss.item() == 0.0


def test_l2sp_counts_dora_magnitudes_and_no_lora_factor_twice(tiny_bert):
    torch.manual_seed(0)
    model, tokenizer = build_model(
        BackboneConfig(name=str(tiny_bert)),
        AdapterConfig(method="lora", r=4, dropout=0.0, peft_kwargs={"use_dora": True}),
        ModelConfig(dim=DIM),
        num_users=NUM_USERS,
        num_items=NUM_ITEMS,
    )
    source = build_source_objective(TransferConfig(loss="l2sp", weight=1.0), model, [], tokenizer)
    magnitudes = [p for n, p in model.backbone.named_parameters() if "magnitude" in n]
    assert magnitudes and {id(p) for p in magnitudes} <= {id(p) for p in source.others}
    assert not any(
        "lora_A" in n or "lora_B" in n
        for n, p in model.backbone.named_parameters()
        if id(p) in {id(q) for q in source.others}
    )


def test_a_new_mlm_head_is_fitted_to_the_pretrained_states_first(tiny_bert):
    model, tokenizer, tokens = make(tiny_bert, loss="lm")
    history = model.source.fit_head(model, tokens, tokenizer.pad_token_id, epochs=30, lr=1e-2)
    assert history[-1] < history[0]  # the head learned to read the frozen states
    assert not any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters()
    )
