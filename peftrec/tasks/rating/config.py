"""The rating recipe's config: the shared sections, and a head warm-up batch size."""

from __future__ import annotations

from dataclasses import dataclass, field

from peftrec.config import RecipeConfig, TrainConfig
from peftrec.config.loading import at_least, option


@dataclass
class RatingTrainConfig(TrainConfig):
    """The training loop of the rating recipe."""

    head_batch_size: int = option(1024, "ratings per step during head warm-up", at_least(1))


@dataclass
class RatingRecipeConfig(RecipeConfig):
    """Rating prediction: a language model encodes items, a biased dot-product head scores them."""

    train: RatingTrainConfig = field(default_factory=RatingTrainConfig)
    output_dir: str = option("runs/minilm_lora_rating", "folder for checkpoints and results")
