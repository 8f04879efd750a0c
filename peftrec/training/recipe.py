"""Set-up and save steps every recipe shares, so that recipes cannot drift apart.

A recipe keeps its loop in view and calls these for what must be the same everywhere:

    cfg, accelerator = start(RatingRecipeConfig, argv, TASKS["rating"])
    resume_from = resume_point(cfg, accelerator)
    data = load_run_data(cfg, task)                    # split by protocol, checked, texts rendered
    model, tokenizer, tokens = build_run_model(cfg, task, data)   # spec -> assemble, caches, L_S
    loader = item_batches(collator, tokens, cfg, accelerator)    # item-amortised, global steps
    optimizer, scheduler = ...
    save_run(accelerator, cfg, model, tokenizer, data, results, metrics)
    ...
    if __name__ == "__main__":
        exit_on_user_error(main)
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from peftrec.artifact.head_vectors import trained_vectors
from peftrec.artifact.save import Catalog, save_artifact
from peftrec.config import ConfigError, check_settings, config_to_dict, parse_cli, save_config
from peftrec.data import DataError, Interactions
from peftrec.data.preference import liked_above
from peftrec.files import write_atomic
from peftrec.models.assembly import assemble, spec_from_config
from peftrec.models.encoding_cache import cached_encodings, model_key
from peftrec.models.network import RecModel
from peftrec.models.spec import ArtifactError
from peftrec.models.tokens import tokenize_texts
from peftrec.quiet import quiet_libraries
from peftrec.tasks import Task
from peftrec.training.batches import ItemShuffler, LengthBucketBatches, SplitBatches
from peftrec.training.checkpointing import CheckpointError, check_resumable, find_checkpoint
from peftrec.training.run_data import RunData, item_facts, load_run_data
from peftrec.training.transfer import build_source_objective
from peftrec.training.warm_start import warm_start

__all__ = [  # the data part lives in run_data; recipes import it from here with the rest
    "USER_ERRORS",
    "RunData",
    "build_run_model",
    "catalog_of",
    "encode_start",
    "exit_on_user_error",
    "flat_config",
    "item_batches",
    "item_facts",
    "load_run_data",
    "make_optimizer",
    "make_scheduler",
    "resume_point",
    "save_run",
    "start",
    "trainable_counts",
]

logger = logging.getLogger("peftrec.training.recipe")


def start(config_cls, argv: Sequence[str] | None, task: Task):
    """Parse and check the settings, then the accelerator, logging, seed and trackers."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    cfg = parse_cli(config_cls, argv)
    check_settings(cfg)
    if cfg.data.protocol not in task.protocols:
        raise ConfigError(
            f"data.protocol={cfg.data.protocol}: the {task.name} recipe evaluates "
            f"{' or '.join(task.protocols)}"
        )
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.train.grad_accum,
        log_with=cfg.train.log_with or None,
        project_dir=cfg.output_dir,
    )
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO,
        datefmt="%H:%M:%S",
    )
    quiet_libraries()
    set_seed(cfg.train.seed)
    if cfg.train.log_with:
        accelerator.init_trackers(
            f"peftrec-{task.name}", config=json.loads(json.dumps(flat_config(cfg), default=str))
        )
    logger.info(
        "%s: %d process(es), device %s", task.name, accelerator.num_processes, accelerator.device
    )
    return cfg, accelerator


def flat_config(cfg) -> dict[str, Any]:
    """``{"train.lr": 1e-3, ...}``: trackers such as TensorBoard take flat scalar values."""
    flat: dict[str, Any] = {}

    def walk(tree: dict, prefix: str) -> None:
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = (
                    value if isinstance(value, (int, float, str, bool)) else str(value)
                )

    walk(config_to_dict(cfg), "")
    return flat


def resume_point(cfg, accelerator) -> Path | None:
    """The checkpoint to resume from (checked against these settings), or None to start afresh."""
    checkpoints = Path(cfg.output_dir) / "checkpoints"
    resume_from = find_checkpoint(checkpoints) if cfg.train.resume else None
    if resume_from is not None:
        check_resumable(resume_from, config_to_dict(cfg), accelerator.num_processes)
        logger.info("resuming from %s", resume_from)
    elif cfg.train.resume:
        logger.info("no checkpoint in %s: starting from the beginning", checkpoints)
    elif (checkpoints / "latest").exists():
        logger.warning(
            "%s holds checkpoints of an earlier run; starting afresh (train.resume=true continues "
            "it), and the first new checkpoint replaces them",
            checkpoints,
        )
    return resume_from


def build_run_model(cfg, task: Task, data: RunData) -> tuple[RecModel, Any, list[list[int]]]:
    """The model a run trains, ready for its loop: ``(model, tokenizer, item token lists)``.

    The spec of the config, assembled with a new adapter; then the cache that fits the method
    (``top_layers``: the frozen lower layers run once per item text; a frozen backbone: the
    pooled features are encoded once, so training runs no LM), the users' profile encodings
    (``model.user_text``) and the source-domain term L_S (``transfer``).
    """
    vocabulary = data.vocabulary
    spec = spec_from_config(
        cfg,
        task.name,
        num_users=len(data.dataset.user_ids),
        num_items=len(data.dataset.item_ids),
        vocabulary=vocabulary,
    )
    model, tokenizer = assemble(
        spec,
        adapter=cfg.adapter,
        trust_remote_code=cfg.backbone.trust_remote_code,
        backbone_dropout=cfg.backbone.dropout,
    )
    if vocabulary is not None:
        model.head.knowledge.facts.copy_(
            vocabulary.table(
                data.knowledge, len(data.dataset.item_ids), cfg.model.knowledge, data.group_map
            )
        )
    if cfg.train.init_from:  # before the caches: they encode with the parent's adapter
        model.warm_start = warm_start(
            model,
            cfg.train.init_from,
            data.dataset.user_ids,
            data.dataset.item_ids,
            vocabulary.entities if vocabulary is not None else None,
            mode=cfg.train.warm_start,
            item_texts=data.item_texts,
            domain=cfg.data.dataset,
        )
    tokens = tokenize_texts(tokenizer, data.item_texts, cfg.data.max_length)
    if not any(p.requires_grad for p in model.backbone.parameters()):  # or warm_start=towers
        model.cache_features(tokens, cfg.train.eval_batch_size, encode_start(model, tokens, cfg))
    elif cfg.adapter.method == "top_layers":
        model.cache_lower_layers(tokens, cfg.train.eval_batch_size)
    if data.user_texts is not None:
        model.head.user_text.copy_(
            model.encode_texts(tokenize_texts(tokenizer, data.user_texts, cfg.data.max_length))
        )
    model.source = build_source_objective(
        cfg.transfer, model, tokens, tokenizer, cfg.train.eval_batch_size
    )
    total, backbone = trainable_counts(model)
    logger.info(
        "trainable parameters: %d (backbone %d, towers and head %d)",
        total,
        backbone,
        total - backbone,
    )
    return model, tokenizer, tokens


def encode_start(model: RecModel, tokens: list[list[int]], cfg) -> torch.Tensor:
    """The catalogue's pooled encodings before training (a warm start: the parent's saved ones
    for unchanged texts, only the rest encoded; with ``train.encoding_cache``, those on disk for
    this backbone looked up, only the rest encoded and added)."""
    if cfg.train.encoding_cache:
        batch_size = cfg.train.eval_batch_size
        return cached_encodings(
            model_key(model.backbone, str(model.pooling)),
            tokens,
            lambda rows: model.encode_texts(tokens, batch_size, rows)[rows],
        )
    if model.warm_start is not None:
        return model.warm_start.encode_items(model, tokens, cfg.train.eval_batch_size)
    return model.encode_texts(tokens, cfg.train.eval_batch_size)


def trainable_counts(model: torch.nn.Module) -> tuple[int, int]:
    """Trainable parameters of the whole model and of its backbone."""
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)


def item_batches(
    collator,
    lengths: Sequence[int],
    cfg,
    accelerator,
    *,
    length_buckets: bool = True,
    units: Sequence[int] | None = None,
    per_step: int | None = None,
) -> DataLoader:
    """Item-amortised batches: each optimizer step covers ``train.items_per_step`` distinct items
    over all processes (each process takes a piece of every step), drawn from those with
    training interactions. With ``length_buckets`` a step's items have similar ``lengths`` (text
    tokens: little padding in the LM pass); without, they are a uniform random draw. ``units``
    and ``per_step`` batch something else the same way (the sequential recipe: users, by history
    length). The loader has its own generator, so starting an epoch draws nothing from the
    global RNG (dropout's)."""
    units = collator.items_with_ratings() if units is None else units
    batches = SplitBatches(
        LengthBucketBatches(
            ItemShuffler(units, seed=cfg.train.seed),
            lengths,
            per_step or cfg.train.items_per_step,
            window=16 if length_buckets else 1,
        ),
        accelerator.num_processes,
    )
    return DataLoader(
        range(len(lengths)),
        batch_sampler=batches,
        collate_fn=collator,
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )


def make_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW over what trains: the backbone's weights at ``train.backbone_lr`` (when set), the
    rest at ``train.lr``."""
    backbone = {id(p) for p in model.backbone.parameters()}
    trained = [p for p in model.parameters() if p.requires_grad]
    rest = [p for p in trained if id(p) not in backbone]
    adapter = [p for p in trained if id(p) in backbone]
    backbone_lr = getattr(cfg.train, "backbone_lr", None)
    if backbone_lr is None or not adapter:
        groups = [{"params": trained}]
    else:
        groups = [{"params": rest}, {"params": adapter, "lr": backbone_lr}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)


def make_scheduler(cfg, optimizer, steps_per_epoch: int, accelerator):
    """The learning-rate schedule over the run's optimizer steps, prepared. A prepared scheduler
    steps once per process per optimizer step, so it is sized for steps x processes."""
    from transformers import get_scheduler

    steps = math.ceil(steps_per_epoch / cfg.train.grad_accum) * cfg.train.epochs
    if cfg.train.max_steps is not None:
        steps = min(steps, cfg.train.max_steps)
    processes = accelerator.num_processes
    return accelerator.prepare(
        get_scheduler(
            cfg.train.scheduler,
            optimizer,
            num_warmup_steps=int(cfg.train.warmup_ratio * steps) * processes,
            num_training_steps=steps * processes,
        )
    )


def task_recency(cfg) -> bool:
    """Whether the run's model weighs recent popularity (``sequence.recency``)."""
    sequence = getattr(cfg, "sequence", None)
    return bool(getattr(sequence, "recency", False))


def catalog_of(data: RunData, cfg, task: Task) -> Catalog:
    """What the saved model knows by id. Seen are its training interactions (with a protocol the
    held-out ones stay recommendable, so the app reproduces the evaluation; on p4 every row of
    blocks 1..t, which the evaluation excludes) or, trained for production (``all``), every
    interaction of the data."""
    seen = (
        (data.train if data.before_test is None else data.before_test)
        if cfg.data.protocol != "all"
        else Interactions(
            *(
                np.concatenate([getattr(data.train, f), getattr(data.valid, f)])
                for f in ("users", "items", "ratings")
            ),
            None
            if data.train.timestamps is None
            else np.concatenate([data.train.timestamps, data.valid.timestamps]),
        )
    )
    rows = np.arange(len(seen))  # each user's interactions in time order: their history
    seen = seen.subset(
        np.lexsort((rows, seen.timestamps if seen.timestamps is not None else rows, seen.users))
    )
    ratings = data.train.ratings
    labels = None
    if task.traits.labelled:  # a known user is their last labelled interactions
        labels = (seen.ratings > liked_above(cfg.data.protocol)).astype(np.int64)
    return Catalog(
        domain=cfg.data.dataset,
        seen_labels=labels,
        user_ids=data.dataset.user_ids,
        item_ids=data.dataset.item_ids,
        item_texts=data.item_texts,
        user_texts=data.user_texts,
        seen_users=seen.users,
        seen_items=seen.items,
        # a history model weighing recent popularity counts them when it serves
        seen_times=seen.timestamps if task_recency(cfg) else None,
        item_fields=data.dataset.item_fields or None,
        rating_scale=(float(ratings.min()), float(ratings.max())) if task.traits.ratings else None,
        knowledge=None
        if data.vocabulary is None
        else {
            "relations": cfg.model.knowledge,
            "group_map": data.group_map,
            "groups": data.vocabulary.groups,
            "entities": data.vocabulary.entities,
        },
    )


def save_run(
    accelerator,
    cfg,
    task: Task,
    model: RecModel,
    tokenizer,
    data: RunData,
    results: dict[str, Any],
    card_metrics: dict[str, Any],
    item_text: torch.Tensor | None = None,
) -> None:
    """The resolved config, the model apps load (with its card) and ``metrics.json``, each written
    atomically, by the main process. ``item_text``: the catalogue's pooled encodings by the
    saved weights (the test's), so that saving does not encode the catalogue again."""
    if not accelerator.is_main_process:
        return
    out = Path(cfg.output_dir)
    save_config(cfg, out / "config.yaml")
    card = {
        "data": f"{data.dataset.name} ({len(data.train)} training interactions)",
        "protocol": (
            f"{cfg.data.protocol}, split seed {cfg.data.seed}, training seed {cfg.train.seed}"
        ),
        "metrics": card_metrics,
    }
    catalog = catalog_of(data, cfg, task)
    vectors, encodings = trained_vectors(model, tokenizer, catalog, item_text)
    save_artifact(
        out / "model",
        model,
        tokenizer,
        catalog,
        config_yaml=(out / "config.yaml").read_text(),
        card=card,
        vectors=vectors,
        item_text=encodings,
    )
    write_atomic(out / "metrics.json", json.dumps(results, indent=2))


# a mistake in the user's input (settings, data, a checkpoint or parent that does not fit)
USER_ERRORS = (ConfigError, DataError, CheckpointError, ArtifactError)


def exit_on_user_error(main: Callable[[list[str]], Any]) -> None:
    """Run a recipe's ``main``; a mistake in the user's input ends with one line, no traceback."""
    try:
        main(sys.argv[1:])
    except USER_ERRORS as error:
        print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        sys.exit(2)
