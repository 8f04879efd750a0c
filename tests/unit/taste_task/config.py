"""The taste recipe's config: the shared sections, its own output folder."""

from __future__ import annotations

from dataclasses import dataclass

from peftrec.config import RecipeConfig
from peftrec.config.loading import option


@dataclass
class TasteRecipeConfig(RecipeConfig):
    """Taste: a user is the mean of their history's item vectors; a liked item scores high."""

    output_dir: str = option("runs/taste", "folder for results")

    def conflicts(self) -> list[str]:
        problems = super().conflicts()
        if self.model.user_text:
            problems.append("model.user_text=true: a taste user is their history, not a profile")
        return problems
