"""The rating recipe's config: the shared sections, a head warm-up batch size, and users as what
they rated."""

from __future__ import annotations

from dataclasses import dataclass, field

from peftrec.config import ModelConfig, RecipeConfig, TrainConfig
from peftrec.config.loading import at_least, option


@dataclass
class RatingModelConfig(ModelConfig):
    """The rating head: the shared towers, and optionally users as their rated items."""

    user_history: bool = option(
        False,
        "a user's vector adds their rated training items (SVD++'s implicit feedback and a "
        "rating-weighted twin, read through the item tower); folded into the user table on save",
    )
    fact_neighbours: bool = option(
        False,
        "each score adds the user's shrunk residual over their rated items that share facts "
        "(author, director, ...) with the scored item, weighed per relation (needs "
        "model.knowledge; peftrec.models.fact_neighbours)",
    )


@dataclass
class RatingTrainConfig(TrainConfig):
    """The training loop of the rating recipe."""

    head_batch_size: int = option(1024, "ratings per step during head warm-up", at_least(1))


@dataclass
class RatingRecipeConfig(RecipeConfig):
    """Rating prediction: a language model encodes items, a biased dot-product head scores them."""

    model: RatingModelConfig = field(default_factory=RatingModelConfig)
    train: RatingTrainConfig = field(default_factory=RatingTrainConfig)
    output_dir: str = option("runs/minilm_lora_rating", "folder for checkpoints and results")
