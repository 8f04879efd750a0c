"""The config schemas of peftrec's recipes: one typed tree of dataclasses per recipe.

Every recipe shares the sections of :class:`RecipeConfig` (data, backbone, adapter, model,
train, transfer); a task adds its own (``ranking``) or extends one (the rating recipe's
``train.head_batch_size``). A field's range sits next to it (``check=``), and
:func:`check_settings` refuses values out of range and settings that conflict, naming the key.
Loading is generic (:mod:`peftrec.config.loading`):

    cfg = parse_cli(RatingRecipeConfig)       # --config file.yaml train.lr=1e-3 adapter.r=16
    save_config(cfg, Path(cfg.output_dir) / "config.yaml")
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from peftrec.config.conflicts import conflicts
from peftrec.config.loading import (
    ConfigError,
    at_least,
    config_help,
    config_to_dict,
    fraction,
    load_config,
    non_negative,
    option,
    or_null,
    out_of_range,
    parse_cli,
    positive,
    save_config,
)

__all__ = [
    "AdapterConfig",
    "BackboneConfig",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "RecipeConfig",
    "TrainConfig",
    "TransferConfig",
    "check_settings",
    "config_help",
    "config_to_dict",
    "load_config",
    "parse_cli",
    "save_config",
]


@dataclass
class DataConfig:
    """Where the ratings come from, how they are split, and how items and users become text."""

    dataset: str = option(
        "ml-100k",
        'ml-100k, ml-1m, ml-latest-small, book-crossing, or "files" for your own files',
    )
    interactions: str | None = option(None, 'interactions file (dataset="files")')
    items: str | None = option(None, 'item metadata file (dataset="files")')
    users: str | None = option(None, 'user metadata file (dataset="files")')
    item_knowledge: str | None = option(
        None,
        "item facts file (item_id, relation, entity) for model.knowledge; ml-100k: its "
        "Freebase graph, no file needed",
    )
    protocol: Literal["p1", "p2", "p3", "p2u", "p4", "tallrec-movie", "tallrec-book", "all"] = (
        option(
            "p1",
            "p1 random split, p2 cold-start items, p3 leave-one-out ranking, p2u cold-start users, "
            "p4 time blocks (continual updates), tallrec-movie / tallrec-book: TALLRec's binary "
            "preference benchmarks, all: train on everything but a 5% validation share "
            "(production; no test). On book-crossing, p1 and p2 are bx-p1 and bx-p2",
        )
    )
    seed: int = option(0, "split seed")
    block: int = option(
        1, "p4: the update step t: train on block t, test on block t+1", at_least(1)
    )
    window: Literal["all", "new"] = option(
        "all", "p4: train on blocks 1..t (all: a full retrain) or on block t alone (new)"
    )
    replay: float = option(
        0.0, "p4 with window=new: the share of earlier blocks' training rows mixed in", fraction()
    )
    item_template: str = option("{title} ({year}). Genres: {genres}.", "text of an item")
    user_template: str = option("A {age}-year-old {gender} {occupation}.", "text of a user")
    max_length: int = option(64, "tokens per text", at_least(1))
    train_fraction: float = option(
        1.0, "subsample training ratings (sparse-data studies)", fraction(low_open=True)
    )
    train_records: int | None = option(
        None,
        "preference, few-shot: train on n records, default_rng(data.seed).permutation's first n "
        "(null: all)",
        or_null(at_least(1)),
    )


@dataclass
class BackboneConfig:
    """The pretrained language model that encodes the texts."""

    name: str = option(
        "minilm", 'Hub id, local folder, or "minilm", "mpnet-base", "smollm2-135m" (peftrec fetch)'
    )
    pooling: Literal["auto", "mean", "cls", "last"] = option(
        "auto", "how token states become one vector (auto: per architecture)"
    )
    trust_remote_code: bool = option(False, "allow custom model code from the Hub")
    init: Literal["pretrained", "random"] = option(
        "pretrained", "pretrained weights, or the same architecture randomly initialised (ablation)"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = option("float32", "weights dtype")
    dropout: float | None = option(
        None,
        "set every dropout inside the backbone to this (null: keep its own)",
        or_null(fraction(high_open=True)),
    )
    gradient_checkpointing: bool = option(
        False, "recompute the backbone's activations in the backward pass (less memory, slower)"
    )


@dataclass
class AdapterConfig:
    """How the backbone is adapted."""

    method: Literal["lora", "prefix", "top_layers", "full", "frozen", "qlora", "peft"] = option(
        "lora", "adaptation method (peft: any PEFT method named by peft_type)"
    )
    peft_type: str | None = option(
        None, 'PEFT method for method=peft, e.g. "IA3", "PROMPT_TUNING", "LOHA"'
    )
    r: int = option(8, "LoRA rank", at_least(1))
    alpha: int = option(16, "LoRA alpha")
    dropout: float = option(0.1, "LoRA dropout", fraction(high_open=True))
    target_modules: list[str] | None = option(
        None, "LoRA target modules (null: PEFT's default for the architecture)"
    )
    num_virtual_tokens: int = option(16, "prefix length", at_least(1))
    top_k_layers: int = option(2, "layers trained by top_layers", at_least(1))
    quant_bits: Literal[4, 8] = option(4, "qlora: load the backbone in 4-bit (nf4) or 8-bit")
    peft_kwargs: dict[str, Any] = option({}, "extra options passed to PEFT's config class")


@dataclass
class ModelConfig:
    """The recommender head on top of the pooled text."""

    dim: int = option(64, "user/item vector size", at_least(1))
    item_ids: bool = option(True, "learn an item-ID embedding next to the text (false: text only)")
    item_text: bool = option(
        True, "use the item text (false: ID-only baseline; needs adapter.method=frozen)"
    )
    user_text: bool = option(False, "add a projection of the user's profile text")
    dropout: float = option(0.0, "dropout on the pooled text", fraction(high_open=True))
    knowledge: Literal["none", "all", "pre_release"] = option(
        "none",
        "a knowledge tower over the items' facts: all relations, or pre_release (no award "
        "nominations or wins, which a brand-new item would not have yet)",
    )
    knowledge_dropout: float = option(
        0.0, "leave out each of an item's facts at this rate in training", fraction(high_open=True)
    )
    knowledge_min_count: int = option(
        2, "an entity gets its own embedding when this many training items have it", at_least(1)
    )
    item_id_dropout: float = option(
        0.0,
        "drop an item's ID embedding at this rate while training, so items added by text alone "
        "score like trained ones (needs item_ids and item_text)",
        fraction(high_open=True),
    )


@dataclass
class TransferConfig:
    """Source-domain term of the objective: loss = L_T + weight * L_S (weight 0: off)."""

    loss: Literal["none", "l2sp", "lm", "distill"] = option(
        "none",
        "l2sp: distance of the adapted weights from the pretrained ones; lm: the backbone's "
        "own pretraining loss on item texts (masked LM for encoders, causal LM for decoders); "
        "distill: distance of item encodings from the frozen pretrained ones",
    )
    weight: float = option(0.0, "lambda, the weight of L_S", non_negative())
    mask_prob: float = option(
        0.15, "lm on encoders: fraction of tokens masked", fraction(low_open=True, high_open=True)
    )


@dataclass
class TrainConfig:
    """The training loop."""

    seed: int = option(0, "training seed")
    epochs: int = option(
        10,
        "maximum epochs (preference: 0 trains nothing and tests the start, e.g. a model of "
        "another domain zero-shot through train.init_from)",
        at_least(0),
    )
    items_per_step: int = option(
        128,
        "distinct item texts per optimizer step, over all processes; each step uses all "
        "training interactions of its items",
        at_least(1),
    )
    grad_accum: int = option(1, "gradient accumulation steps", at_least(1))
    lr: float = option(
        1e-3, "learning rate while the backbone adapts (adapter, towers and head)", positive()
    )
    head_lr: float = option(5e-3, "learning rate of the towers during head warm-up", positive())
    backbone_lr: float | None = option(
        None,
        "learning rate of the backbone's trained weights (null: train.lr)",
        or_null(positive()),
    )
    weight_decay: float = option(0.0, "AdamW weight decay", non_negative())
    l2: float = option(0.1, "L2 on user/item vectors and biases, per interaction", non_negative())
    text_l2: float = option(
        0.0,
        "L2 on the weights mapping item text to item vector and bias (cold items)",
        non_negative(),
    )
    knowledge_l2: float = option(
        0.0, "L2 on the knowledge tower's entity embeddings (model.knowledge)", non_negative()
    )
    warmup_ratio: float = option(0.1, "fraction of steps with a rising learning rate", fraction())
    scheduler: Literal["linear", "cosine", "constant"] = option("cosine", "learning-rate schedule")
    head_warmup_epochs: int = option(
        8, "epochs training the head on frozen pooled text first", at_least(0)
    )
    patience: int = option(3, "epochs without validation improvement before stopping", at_least(1))
    eval_batch_size: int = option(256, "texts per forward pass at evaluation", at_least(1))
    encoding_cache: bool = option(
        False,
        "frozen backbone: keep the item encodings on disk per text (cache folder encodings/), "
        "so a big catalogue is encoded once over many runs",
    )
    log_with: list[str] = option([], "Accelerate trackers, e.g. [tensorboard]")
    max_steps: int | None = option(
        None, "stop after this many steps (smoke tests)", or_null(at_least(1))
    )
    checkpoint_every: int | None = option(
        None,
        "save a resumable checkpoint every this many optimizer steps (null: never)",
        or_null(at_least(1)),
    )
    resume: bool = option(False, "continue from <output_dir>/checkpoints/latest if there is one")
    init_from: str | None = option(
        None,
        "warm start: a saved model folder (same backbone, method and task) to continue from on "
        "this data; its users and items keep their rows, new ones are added",
    )
    warm_start: Literal["continue", "merge", "towers", "head"] = option(
        "continue",
        "with init_from: continue (the parent's adapter trains on), merge (the parent's adapter "
        "merged into the backbone, a fresh one trained on top; lora and peft methods that "
        "merge), towers (the parent's adapter kept as it is: only the towers and head train, "
        "on text features encoded once) or head (preference: only the head's few calibration "
        "scalars train, for adapting to a handful of records)",
    )


@dataclass
class RecipeConfig:
    """The sections every recipe shares."""

    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    output_dir: str = option("runs/peftrec", "folder for checkpoints and results")

    records: ClassVar[bool] = False
    """The recipe trains on records (labelled history, target, label), not on ratings."""

    def conflicts(self) -> list[str]:
        """Settings valid one by one but not together; a task's config extends it with its own
        sections' checks (``super().conflicts() + [...]``)."""
        return conflicts(self)


def check_settings(cfg: Any) -> None:
    """Fail at start-up, naming the key, on values out of range, settings that conflict, or an
    output_dir that cannot be written."""
    checks = cfg.conflicts() if isinstance(cfg, RecipeConfig) else conflicts(cfg)
    problems = [*out_of_range(cfg), *checks]
    if problems:
        raise ConfigError(problems[0])
    out = Path(cfg.output_dir)
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"output_dir={cfg.output_dir!r}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir={cfg.output_dir!r}: no permission to write in {existing}")
