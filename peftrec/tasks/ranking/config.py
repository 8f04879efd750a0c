"""The ranking recipe's config: the shared sections and ``ranking``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from peftrec.config import DataConfig, RecipeConfig
from peftrec.config.loading import at_least, option, positive


@dataclass
class RankingConfig:
    """The ranking loss and its evaluation."""

    loss: Literal["softmax", "bpr"] = option(
        "softmax", "sampled softmax over the step's items, or BPR"
    )
    temperature: float = option(1.0, "softmax temperature", positive())
    negatives: int = option(
        0, "extra random items per step, as negatives (besides the step's items)", at_least(0)
    )
    k: int = option(10, "cut-off of NDCG@k and HR@k", at_least(1))


@dataclass
class RankingRecipeConfig(RecipeConfig):
    """Top-K ranking: a language model encodes items, a dot-product head ranks them for a user."""

    data: DataConfig = field(default_factory=lambda: DataConfig(protocol="p3"))
    ranking: RankingConfig = field(default_factory=RankingConfig)
    output_dir: str = option("runs/minilm_lora_ranking", "folder for checkpoints and results")
