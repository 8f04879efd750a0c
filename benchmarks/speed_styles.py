"""The two training styles ``benchmarks/speed.py`` compares, from the same warmed-up model.

- peftrec: the recipe's item-amortised batches (``ItemRatingsCollator`` over
  ``LengthBucketBatches`` of an ``ItemShuffler``) and the loss of one rating step of
  ``recipes/train_rating.py`` on one process (:func:`rating_loss`: the recipe's squared error
  through ``peftrec.training.loop.step_objective``, the loss the recipe's ``TrainStep``
  backpropagates);
- seed-style: the benchmark's own baseline, one row and one LM pass per rating
  (:func:`seed_style_batches`), trained with the same step.

Both train with the recipe's optimizer (``peftrec.training.recipe.make_optimizer``).

Validation RMSE is peftrec's: ``predict_ratings`` from the encoded catalogue, ``metrics.rmse``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from benchmarks.speed_measure import Batch
from peftrec.config import load_config
from peftrec.metrics import rmse
from peftrec.models.assembly import build_model
from peftrec.models.network import RecModel, RecOutput
from peftrec.models.tokens import pad_batch
from peftrec.tasks.rating.config import RatingRecipeConfig, RatingTrainConfig
from peftrec.tasks.rating.head import RatingHead
from peftrec.tasks.rating.step import predict_ratings, warm_up_head
from peftrec.training.batches import ItemRatingsCollator, ItemShuffler, LengthBucketBatches
from peftrec.training.loop import step_objective

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"


def recipe_config(method: str, overrides: list[str]) -> RatingRecipeConfig:
    """The shipped MiniLM config of ``method`` (``full``: the LoRA one with method=full)."""
    path = CONFIGS / f"minilm_{method}_rating.yaml"
    if not path.exists():
        path = CONFIGS / "minilm_lora_rating.yaml"
        overrides = [f"adapter.method={method}", *overrides]
    return load_config(RatingRecipeConfig, path, overrides)


def warmed_up_model(cfg: RatingRecipeConfig, setup: dict) -> tuple[RecModel, float]:
    """The recipe's start: a new model of ``cfg``, biases from the training ratings and the
    towers warmed up on frozen text features; and its validation RMSE."""
    tokens, train, valid = setup["tokens"], setup["train"], setup["valid"]
    train_cfg = cfg.train
    torch.manual_seed(0)
    model, _ = build_model(
        cfg.backbone, cfg.adapter, cfg.model, num_users=setup["num_users"], num_items=len(tokens)
    )
    model.head.init_biases(
        torch.as_tensor(train.users), torch.as_tensor(train.items), torch.as_tensor(train.ratings)
    )
    item_text = model.encode_texts(tokens)
    warm_up_head(
        model.head,
        item_text,
        train.users,
        train.items,
        train.ratings,
        epochs=train_cfg.head_warmup_epochs,
        batch_size=train_cfg.head_batch_size,
        lr=train_cfg.head_lr,
        l2=train_cfg.l2,
        text_l2=train_cfg.text_l2,
        knowledge_l2=train_cfg.knowledge_l2,
        seed=train_cfg.seed,
    )
    return model, validation_rmse(model, tokens, valid, item_text)


def rating_loss(
    output: RecOutput, ratings: torch.Tensor, head: RatingHead, cfg: RatingRecipeConfig
) -> torch.Tensor:
    """What ``recipes/train_rating.py`` backpropagates in one step on one process (its step's
    ratings are this process's): the recipe's squared error through the loop's own
    ``peftrec.training.loop.step_objective`` (``step_loss`` with the pairs' penalty,
    ``transfer.weight``
    x L_S, the ``ridge`` on the text and fact maps)."""
    squared = (output.scores - ratings).square().sum()
    return step_objective(output, squared, len(ratings), head, cfg)[0]


def train_step(
    model: RecModel, optimizer: torch.optim.Optimizer, batch: Batch, cfg: RatingRecipeConfig
) -> float:
    """One optimizer step on the recipe's loss; returns the forward+backward seconds."""
    batch = dict(batch)
    ratings = batch.pop("ratings")
    tick = time.perf_counter()
    loss = rating_loss(model(**batch), ratings, model.head, cfg)
    loss.backward()
    seconds = time.perf_counter() - tick
    optimizer.step()
    optimizer.zero_grad()
    return seconds


def peftrec_batches(
    tokens: list[list[int]], train, pad_id: int, train_cfg: RatingTrainConfig
) -> tuple[ItemRatingsCollator, LengthBucketBatches]:
    """The recipe's item-amortised batches of one epoch: ``train.items_per_step`` distinct item
    texts a step, in length buckets, each with all its training ratings (``collator(items)``)."""
    collator = ItemRatingsCollator(tokens, train.users, train.items, train.ratings, pad_id)
    shuffled = ItemShuffler(collator.items_with_ratings(), seed=train_cfg.seed)
    return collator, LengthBucketBatches(
        shuffled, [len(t) for t in tokens], train_cfg.items_per_step
    )


def seed_style_batches(
    train, tokens: list[list[int]], pad_id: int, size: int, seed: int
) -> Iterator[Batch]:
    """One row per rating, each encoding its own item's text: the seed's one LM pass per
    rating."""
    order = np.random.default_rng(seed).permutation(len(train))
    for start in range(0, len(order), size):
        rows = order[start : start + size]
        input_ids, attention_mask = pad_batch([tokens[i] for i in train.items[rows]], pad_id)
        yield {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "item_index": torch.as_tensor(train.items[rows]),
            "users": torch.as_tensor(train.users[rows]),
            "positions": torch.arange(len(rows)),
            "ratings": torch.as_tensor(train.ratings[rows], dtype=torch.float32),
        }


def validation_rmse(
    model: RecModel, tokens: list[list[int]], valid, item_text: torch.Tensor | None = None
) -> float:
    """RMSE on the validation ratings, from the catalogue encoded once (as the recipe
    validates; ``item_text``: those encodings, when already at hand)."""
    if item_text is None:
        item_text = model.encode_texts(tokens)
    return rmse(predict_ratings(model.head, item_text, valid.users, valid.items), valid.ratings)
