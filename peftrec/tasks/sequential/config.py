"""The sequential recipe's config: the shared sections and ``sequence``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from peftrec.config import DataConfig, RecipeConfig, TrainConfig
from peftrec.config.loading import at_least, fraction, option


@dataclass
class SequenceConfig:
    """The history encoder (SASRec-style) and its next-item loss."""

    max_history: int = option(
        50, "items of a user's history the encoder reads (the most recent)", at_least(1)
    )
    blocks: int = option(2, "causal self-attention blocks", at_least(1))
    heads: int = option(1, "attention heads per block (must divide model.dim)", at_least(1))
    dropout: float = option(0.2, "dropout in the encoder", fraction(high_open=True))
    text_norm: bool = option(
        False, "standardise each pooled text dimension with the catalogue's statistics"
    )
    empty_state: bool = option(
        False,
        "learn the state of an empty history (a new user) from each user's first trained item: "
        "a prior of what users start with in the training window (false: a zero state)",
    )
    recency: bool = option(
        False,
        "weigh what is popular now: each state learns its weights on every item's share of the "
        "recent interactions (all, and users' first ones; half-lives 1, 7, 30, 365 days) as of "
        "the moment of prediction, from the seen events of the days before it (needs timestamps)",
    )
    members: int = option(
        1,
        "an ensemble in one model: this many history models (item towers of model.dim and "
        "encoders), each trained on its own loss, scored by the mean of their scores (served as "
        "one dot product); costs as many times the head's training",
        at_least(1),
    )
    loss: Literal["softmax", "sampled"] = option(
        "softmax",
        "softmax: cross-entropy over the whole catalogue at every position; sampled: "
        "against `negatives` popularity-sampled items with the log-Q correction (big catalogues)",
    )
    negatives: int = option(512, "sampled loss: negatives per step", at_least(1))
    users_per_step: int = option(
        64, "users (histories) per optimizer step, over all processes", at_least(1)
    )
    k: int = option(10, "cut-off of NDCG@k and HR@k", at_least(1))


@dataclass
class SequentialRecipeConfig(RecipeConfig):
    """Next-item prediction: a user is their history; a causal encoder over its items' vectors."""

    data: DataConfig = field(default_factory=lambda: DataConfig(protocol="p3"))
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            epochs=100, lr=1e-3, head_warmup_epochs=0, patience=10, items_per_step=256
        )
    )
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    output_dir: str = option("runs/minilm_frozen_sequential", "folder for checkpoints and results")

    def conflicts(self) -> list[str]:
        problems = super().conflicts()
        if self.model.dim % self.sequence.heads:
            problems.append(
                f"sequence.heads={self.sequence.heads} must divide model.dim={self.model.dim}"
            )
        if self.model.user_text:
            problems.append(
                "model.user_text=true: a sequential model's user is their history, not a profile"
            )
        if self.sequence.members > 1 and self.sequence.recency:
            problems.append(
                f"sequence.members={self.sequence.members} with sequence.recency=true: the "
                "recency gate reads one state; use one member"
            )
        return problems
