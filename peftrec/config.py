"""One typed config schema per recipe, loaded strictly.

A recipe's config is a tree of dataclasses whose fields carry a one-line help
(`option(default, "help")`; a section's help is the first line of its class docstring).
Values are resolved as defaults < YAML file < `key.sub=value` overrides; a misspelt key or a
value of the wrong type fails at start-up with a `ConfigError` naming the dotted key and where
it came from. The loader is generic: any recipe can define its
own top-level dataclass. `RatingRecipeConfig` is the schema of the rating recipe.

    cfg = parse_cli(RatingRecipeConfig)       # --config file.yaml train.lr=1e-3 adapter.r=16
    save_config(cfg, Path(cfg.output_dir) / "config.yaml")
"""

# `option()` returns a `dataclasses.Field` (list/dict defaults are copied), never a shared value.

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import functools
import json
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")

_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(ValueError):
    """A config file or override does not match the schema."""


def option(default: Any, help: str) -> Any:
    """A dataclass field with a default and a one-line help shown by `--help`."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


# ---------------------------------------------------------------------------------------------
# Schema of the rating recipe


@dataclass
class DataConfig:
    """Where the ratings come from, how they are split, and how items and users become text."""

    dataset: str = option("ml-100k", 'a MovieLens name, or "files" for your own files')
    interactions: str | None = option(None, 'interactions file (dataset="files")')
    items: str | None = option(None, 'item metadata file (dataset="files")')
    users: str | None = option(None, 'user metadata file (dataset="files")')
    protocol: Literal["p1", "p2", "p3", "p2u"] = option(
        "p1", "p1 random split, p2 cold-start items, p3 leave-one-out ranking, p2u cold-start users"
    )
    seed: int = option(0, "split seed")
    item_template: str = option("{title} ({year}). Genres: {genres}.", "text of an item")
    user_template: str = option("A {age}-year-old {gender} {occupation}.", "text of a user")
    max_length: int = option(64, "tokens per text")
    train_fraction: float = option(1.0, "subsample training ratings (sparse-data studies)")


@dataclass
class BackboneConfig:
    """The pretrained language model that encodes the texts."""

    name: str = option("minilm", 'Hub id, local folder, or "minilm"')
    pooling: Literal["auto", "mean", "cls", "last"] = option(
        "auto", "how token states become one vector (auto: per architecture)"
    )
    trust_remote_code: bool = option(False, "allow custom model code from the Hub")
    init: Literal["pretrained", "random"] = option(
        "pretrained", "pretrained weights, or the same architecture randomly initialised (ablation)"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = option("float32", "weights dtype")
    dropout: float | None = option(None, "set every dropout inside the backbone to this (null: keep its own)")


@dataclass
class AdapterConfig:
    """How the backbone is adapted."""

    method: Literal["lora", "prefix", "top_layers", "full", "frozen", "qlora", "peft"] = option(
        "lora", "adaptation method (peft: any PEFT method named by peft_type)"
    )
    peft_type: str | None = option(None, 'PEFT method for method=peft, e.g. "IA3", "PROMPT_TUNING", "LOHA"')
    r: int = option(8, "LoRA rank")
    alpha: int = option(16, "LoRA alpha")
    dropout: float = option(0.1, "LoRA dropout")
    target_modules: list[str] | None = option(None, "LoRA target modules (null: per architecture)")
    num_virtual_tokens: int = option(16, "prefix length")
    top_k_layers: int = option(2, "layers trained by top_layers")
    quant_bits: int = option(4, "qlora: load the backbone in 4-bit (nf4) or 8-bit")
    peft_kwargs: dict[str, Any] = option({}, "extra options passed to PEFT's config class")


@dataclass
class ModelConfig:
    """The recommender head on top of the pooled text."""

    dim: int = option(64, "user/item vector size")
    item_ids: bool = option(True, "learn an item-ID embedding next to the text (false: text only)")
    item_text: bool = option(True, "use the item text (false: ID-only baseline; needs adapter.method=frozen)")
    user_text: bool = option(False, "add a projection of the user's profile text")
    dropout: float = option(0.0, "dropout on the pooled text")


@dataclass
class TransferConfig:
    """Source-domain term of the objective: loss = L_T + weight * L_S (weight 0: off)."""

    loss: Literal["none", "l2sp", "lm", "distill"] = option(
        "none", "l2sp: distance of the adapted weights from the pretrained ones; lm: the backbone's "
        "own pretraining loss on item texts (masked LM for encoders, causal LM for decoders); "
        "distill: distance of item encodings from the frozen pretrained ones"
    )
    weight: float = option(0.0, "lambda, the weight of L_S")
    mask_prob: float = option(0.15, "lm on encoders: fraction of tokens masked")


@dataclass
class TrainConfig:
    """The training loop."""

    seed: int = option(0, "training seed")
    epochs: int = option(10, "maximum epochs")
    items_per_step: int = option(
        128, "distinct item texts per step; each step uses all training ratings of its items"
    )
    grad_accum: int = option(1, "gradient accumulation steps")
    lr: float = option(1e-3, "learning rate while the backbone adapts (adapter, towers and head)")
    head_lr: float = option(5e-3, "learning rate of the towers during head warm-up")
    weight_decay: float = option(0.0, "AdamW weight decay")
    l2: float = option(0.1, "L2 on user/item vectors and biases, per rating")
    text_l2: float = option(0.0, "L2 on the weights mapping item text to item vector and bias (cold items)")
    warmup_ratio: float = option(0.1, "fraction of steps with a rising learning rate")
    scheduler: Literal["linear", "cosine", "constant"] = option("cosine", "learning-rate schedule")
    head_warmup_epochs: int = option(8, "epochs training the head on frozen pooled text first")
    head_batch_size: int = option(1024, "ratings per step during head warm-up")
    patience: int = option(3, "epochs without validation improvement before stopping")
    eval_batch_size: int = option(256, "texts per forward pass at evaluation")
    log_with: list[str] = option([], "Accelerate trackers, e.g. [tensorboard]")
    max_steps: int | None = option(None, "stop after this many steps (smoke tests)")
    checkpoint_every: int | None = option(
        None, "save a resumable checkpoint every this many optimizer steps (null: never)"
    )
    resume: bool = option(False, "continue from <output_dir>/checkpoints/latest if there is one")


@dataclass
class RatingRecipeConfig:
    """Rating prediction: a language model encodes items, a biased dot-product head scores them."""

    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    output_dir: str = option("runs/minilm_lora_rating", "folder for checkpoints and results")


# ---------------------------------------------------------------------------------------------
# Generic loading


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Build `cls` from its defaults, then a YAML file, then `key.sub=value` overrides.

    Override values are parsed as YAML (`lr=1e-3`, `flag=true`, `targets=[query,value]`,
    `x=null`); a value that is not valid YAML, or that YAML reads as a mapping where the field
    wants text (a template such as `{title} ({year})`), is taken as plain text.
    """
    cfg = cls()
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
        cfg = _merge(cfg, raw, "", str(path))
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        source = f"override {item!r}"
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        try:
            cfg = _merge(cfg, _nest(key, value), "", source)
        except ConfigError as error:
            if not isinstance(value, dict):
                raise
            try:
                cfg = _merge(cfg, _nest(key, text), "", source)
            except ConfigError:
                raise error from None
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts and lists."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically; `load_config(type(cfg), path)` gives it back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = config_to_dict(cfg)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if yaml.safe_load(text) != data:  # e.g. U+0085 written raw is read back as a line break
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=False)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)  # a crash mid-write never leaves a truncated config


def parse_cli(cls: type[T], argv: Sequence[str] | None = None) -> T:
    """Parse `[--config FILE] [key.sub=value ...]` for a recipe; `--help` lists every key."""
    parser = argparse.ArgumentParser(
        description=_first_line(cls.__doc__),
        epilog=config_help(cls),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="YAML file with settings")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="settings")
    args = parser.parse_args(argv)
    try:
        return load_config(cls, args.config, args.overrides)
    except (ConfigError, OSError) as error:
        parser.error(str(error))


def config_help(cls: type) -> str:
    """Every key of `cls` with its default and help, one per line, grouped by section."""
    lines = ["settings (key = default  help):"]

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            help_text = f.metadata.get("help", "")
            if dataclasses.is_dataclass(value):
                help_text = help_text or _first_line(type(value).__doc__)
                lines.append(f"\n{prefix}{f.name}: {help_text}")
                walk(value, f"{prefix}{f.name}.")
            else:
                lines.append(f"  {prefix}{f.name} = {json.dumps(value)}  {help_text}")

    walk(cls(), "")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Helpers


def _merge(obj: Any, raw: dict, prefix: str, source: str) -> Any:
    """A copy of dataclass `obj` with the values in `raw` checked and applied."""
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    changes = {}
    for name, value in raw.items():
        key = f"{prefix}{name}"
        if name not in names:
            close = difflib.get_close_matches(str(name), names, n=3)
            hint = (
                f"did you mean {', '.join(prefix + c for c in close)}?"
                if close
                else f"valid keys: {', '.join(prefix + n for n in names)}"
            )
            raise ConfigError(f"unknown key {key!r} in {source}; {hint}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{key!r} in {source} is a section: expected a mapping, got {value!r}"
                )
            changes[name] = _merge(current, value, f"{key}.", source)
        else:
            changes[name] = _check(value, hints[name], key, source)
    return dataclasses.replace(obj, **changes)


def _check(value: Any, tp: Any, key: str, source: str) -> Any:
    """`value` if it matches annotation `tp` (floats may be given as ints or "1e-3")."""

    def fail() -> typing.NoReturn:
        raise ConfigError(
            f"{key!r} in {source}: expected {_type_name(tp)}, got {value!r} "
            f"({type(value).__name__})"
        )

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if tp is type(None):
        return value if value is None else fail()
    if origin in (Union, types.UnionType):
        for arm in args:
            try:
                return _check(value, arm, key, source)
            except ConfigError:
                pass
        fail()
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        fail()
    if tp is bool or tp is str:
        return value if isinstance(value, tp) else fail()
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else fail()
    if tp is float:
        if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)):
            return float(value)
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)
        fail()
    if origin is list:
        if not isinstance(value, list):
            fail()
        return [_check(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            fail()
        return {
            _check(k, args[0], f"{key} (a key)", source): _check(v, args[1], f"{key}.{k}", source)
            for k, v in value.items()
        }
    raise TypeError(f"config field {key!r} has an unsupported annotation {tp!r}")


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any value"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(tp, "__name__", repr(tp))


def _nest(dotted: str, value: Any) -> dict:
    """`"a.b", 1` -> `{"a": {"b": 1}}`."""
    *parents, leaf = dotted.split(".")
    raw: dict = {leaf: value}
    for name in reversed(parents):
        raw = {name: raw}
    return raw


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n")[0]


@dataclass
class RankingConfig:
    """The ranking loss and its evaluation."""

    loss: Literal["softmax", "bpr"] = option("softmax", "sampled softmax over the step's items, or BPR")
    temperature: float = option(1.0, "softmax temperature")
    negatives: int = option(0, "extra random items per step, as negatives (besides the step's items)")
    k: int = option(10, "cut-off of NDCG@k and HR@k")


@dataclass
class RankingRecipeConfig:
    """Top-K ranking: a language model encodes items, a dot-product head ranks them for a user."""

    data: DataConfig = field(default_factory=lambda: DataConfig(protocol="p3"))
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    output_dir: str = option("runs/minilm_lora_ranking", "folder for checkpoints and results")


# Values the types allow but the recipes cannot use: key -> (test, requirement). Keys a recipe's
# schema lacks are skipped.
LIMITS = {
    "data.max_length": (lambda v: v >= 1, "at least 1"),
    "data.train_fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "adapter.r": (lambda v: v >= 1, "at least 1"),
    "adapter.dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "model.dim": (lambda v: v >= 1, "at least 1"),
    "model.dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "backbone.dropout": (lambda v: v is None or 0 <= v < 1, "null or in [0, 1)"),
    "train.epochs": (lambda v: v >= 1, "at least 1"),
    "train.items_per_step": (lambda v: v >= 1, "at least 1"),
    "train.grad_accum": (lambda v: v >= 1, "at least 1"),
    "train.lr": (lambda v: 0 < v < math.inf, "a positive number"),
    "train.head_lr": (lambda v: 0 < v < math.inf, "a positive number"),
    "train.weight_decay": (lambda v: 0 <= v < math.inf, "zero or positive"),
    "train.l2": (lambda v: 0 <= v < math.inf, "zero or positive"),
    "train.text_l2": (lambda v: 0 <= v < math.inf, "zero or positive"),
    "train.warmup_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "train.head_warmup_epochs": (lambda v: v >= 0, "zero or more"),
    "train.head_batch_size": (lambda v: v >= 1, "at least 1"),
    "train.patience": (lambda v: v >= 1, "at least 1"),
    "train.eval_batch_size": (lambda v: v >= 1, "at least 1"),
    "train.max_steps": (lambda v: v is None or v >= 1, "null or at least 1"),
    "train.checkpoint_every": (lambda v: v is None or v >= 1, "null or at least 1"),
    "transfer.weight": (lambda v: 0 <= v < math.inf, "zero or positive"),
    "transfer.mask_prob": (lambda v: 0 < v < 1, "in (0, 1)"),
    "ranking.temperature": (lambda v: 0 < v < math.inf, "a positive number"),
    "ranking.negatives": (lambda v: v >= 0, "zero or more"),
    "ranking.k": (lambda v: v >= 1, "at least 1"),
}


def check_settings(cfg: Any) -> None:
    """Fail at start-up, naming the key, on values out of range or an output_dir we cannot write."""
    missing = object()
    for key, (ok, requirement) in LIMITS.items():
        value = functools.reduce(lambda obj, name: getattr(obj, name, missing), key.split("."), cfg)
        if value is not missing and not ok(value):
            raise ConfigError(f"{key}={value!r}: must be {requirement}")
    problems = _conflicts(cfg)
    if problems:
        raise ConfigError(problems[0])
    out = Path(cfg.output_dir)
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"output_dir={cfg.output_dir!r}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir={cfg.output_dir!r}: no permission to write in {existing}")


def _conflicts(cfg: Any) -> list[str]:
    """Settings that are valid one by one but not together."""
    problems = []
    adapter, transfer = getattr(cfg, "adapter", None), getattr(cfg, "transfer", None)
    backbone = getattr(cfg, "backbone", None)
    if transfer is not None and adapter is not None:
        if transfer.loss != "none" and adapter.method == "frozen":
            problems.append(f"transfer.loss={transfer.loss} needs a backbone that trains, and adapter.method=frozen "
                            "trains none; pick another adapter.method or transfer.loss=none")
        if transfer.loss == "none" and transfer.weight > 0:
            problems.append(f"transfer.weight={transfer.weight} but transfer.loss=none: name the L_S to weigh "
                            "(l2sp, lm or distill)")
    if backbone is not None and adapter is not None and backbone.init == "random" and adapter.method == "qlora":
        problems.append("backbone.init=random cannot be combined with adapter.method=qlora (a quantized "
                        "backbone is loaded from pretrained weights)")
    return problems
