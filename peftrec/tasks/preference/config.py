"""The preference recipe's config: the shared sections and ``preference``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from peftrec.config import DataConfig, RecipeConfig, TrainConfig
from peftrec.config.loading import at_least, option


@dataclass
class PreferenceConfig:
    """Binary preference: how the LM reads a record (labelled history + target) and on what."""

    reader: Literal["towers", "cross"] = option(
        "towers",
        "towers: item texts encoded once per step, a user is their labelled history's items; "
        "cross: the LM reads the history's titles and the target in one text (TALLRec-style)",
    )
    records: Literal["benchmark", "source"] = option(
        "benchmark",
        "tallrec-movie: train on the benchmark's records, or on the source domain (the records "
        "of the ratings no benchmark record targets; then adapt with train.init_from)",
    )
    history_targets: bool = option(
        True, "towers: each history event is a training example too (from the record's others)"
    )
    records_per_step: int = option(
        64, "records per optimizer step, over all processes", at_least(1)
    )
    record_length: int = option(256, "cross: tokens of a record's text", at_least(1))
    content: bool = option(
        False,
        "towers: add a content match, w_c <signed mean of the history's unit texts, the "
        "target's unit text> (liked +, disliked -): one scalar on the LM's own text space, so "
        "it means the same in any domain",
    )


@dataclass
class PreferenceRecipeConfig(RecipeConfig):
    """Binary preference: the probability that a user with a labelled history likes an item."""

    data: DataConfig = field(default_factory=lambda: DataConfig(protocol="tallrec-movie"))
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            epochs=20, lr=1e-3, head_warmup_epochs=0, patience=3, items_per_step=64
        )
    )
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    output_dir: str = option("runs/minilm_frozen_preference", "folder for checkpoints and results")

    records: ClassVar[bool] = True

    def conflicts(self) -> list[str]:
        problems = super().conflicts()
        model, data, preference = self.model, self.data, self.preference
        if model.user_text:
            problems.append(
                "model.user_text=true: a preference model's user is their history, not a profile"
            )
        if preference.reader == "cross" and (model.item_ids or model.knowledge != "none"):
            problems.append(
                "preference.reader=cross reads each record as one text, with no item-ID or "
                "knowledge tower: set model.item_ids=false and model.knowledge=none"
            )
        if data.train_fraction < 1:
            problems.append(
                "data.train_fraction subsamples ratings; a preference run draws records with "
                "data.train_records"
            )
        if data.train_records is not None and self.train.epochs == 0:
            problems.append(
                f"data.train_records={data.train_records} with train.epochs=0: zero-shot "
                "trains on no record; drop data.train_records"
            )
        if preference.records == "source" and data.protocol != "tallrec-movie":
            problems.append("preference.records=source is tallrec-movie's source domain")
        return problems
