"""Rating prediction (MSE) with a parameter-efficiently adapted language model.

Launch:
    accelerate launch recipes/train_rating.py --config recipes/configs/minilm_lora_rating.yaml
    python recipes/train_rating.py --config recipes/configs/minilm_lora_rating.yaml train.epochs=3
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 recipes/train_rating.py ...   (2 processes on CPU)

Steps: accelerator, seed, data, model, head warm-up on frozen text features, optimizer,
prepare, item-amortised training loop with validation and early stopping, test, save.
With train.checkpoint_every=N a checkpoint is saved every N optimizer steps; train.resume=true
continues a crashed run from <output_dir>/checkpoints/latest, exactly where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from peftrec.artifact import Catalog, save_artifact
from peftrec.checkpointing import (
    CheckpointError,
    TrainingProgress,
    check_resumable,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
    write_atomic,
)
from peftrec.config import (
    ConfigError,
    RatingRecipeConfig,
    check_settings,
    config_to_dict,
    parse_cli,
    save_config,
)
from peftrec.data import DataError, check_splits, load_data, split_rows
from peftrec.metrics import load_metric
from peftrec.model import build_model
from peftrec.tokens import tokenize_texts
from peftrec.training import (
    EarlyStopping,
    ItemRatingsCollator,
    ItemShuffler,
    LengthBucketBatches,
    SplitBatches,
    evaluate_ratings,
    peak_memory_mib,
    rating_loader,
    warm_up_head,
)
from peftrec.transfer import build_source_objective

logger = get_logger("peftrec.train_rating")

def main(argv: list[str] | None = None) -> dict:
    cfg = parse_cli(RatingRecipeConfig, argv)
    check_settings(cfg)
    out = Path(cfg.output_dir)

    # accelerator and seed: the launcher owns hardware (processes, mixed precision)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.train.grad_accum,
                              log_with=cfg.train.log_with or None, project_dir=str(out))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO,
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "datasets", "peft", "transformers", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    set_seed(cfg.train.seed)
    started = time.perf_counter()
    logger.info("%d process(es), device %s", accelerator.num_processes, accelerator.device)

    # checkpoint to resume from, checked against these settings before any work is done
    checkpoints = out / "checkpoints"
    resume_from = find_checkpoint(checkpoints) if cfg.train.resume else None
    if resume_from is not None:
        check_resumable(resume_from, config_to_dict(cfg), accelerator.num_processes)
        logger.info("resuming from %s", resume_from)
    elif cfg.train.resume:
        logger.info("no checkpoint in %s: starting from the beginning", checkpoints)
    elif (checkpoints / "latest").exists():
        logger.warning("%s holds checkpoints of an earlier run; starting afresh (train.resume=true continues "
                       "it), and the first new checkpoint replaces them", checkpoints)

    # data: ratings split by protocol, one text per item (all checked before any model is loaded)
    dataset = load_data(cfg.data)
    split = split_rows(dataset, cfg.data.protocol, seed=cfg.data.seed)
    train, valid, test = (dataset.interactions.subset(rows) for rows in (split.train, split.valid, split.test))
    if cfg.data.train_fraction < 1.0:
        keep = np.random.default_rng(cfg.data.seed).random(len(train)) < cfg.data.train_fraction
        train = train.subset(np.flatnonzero(keep))
    check_splits(dataset, cfg.data.protocol, {"train": train, "validation": valid, "test": test},
                 cfg.data.train_fraction)
    item_texts = dataset.item_texts(cfg.data.item_template)
    user_texts = dataset.user_texts(cfg.data.user_template) if cfg.model.user_text else None
    if cfg.model.user_text and user_texts is None:
        raise DataError(f"model.user_text=true needs user profile fields, and dataset {dataset.name!r} has none "
                        "(data.users names a users file)")
    logger.info("%s %s: %d train / %d valid / %d test ratings, %d users, %d items", dataset.name,
                cfg.data.protocol, len(train), len(valid), len(test), len(dataset.user_ids), len(dataset.item_ids))

    # model: backbone + adapter, towers and head outside the PEFT wrapper
    model, tokenizer = build_model(cfg.backbone, cfg.adapter, cfg.model,
                                   num_users=len(dataset.user_ids), num_items=len(dataset.item_ids))
    tokens = tokenize_texts(tokenizer, item_texts, cfg.data.max_length)
    if cfg.adapter.method == "top_layers":  # the frozen lower blocks run once per item text
        model.cache_lower_layers(tokens, cfg.train.eval_batch_size)
    elif not any(p.requires_grad for p in model.backbone.parameters()):  # frozen: the LM runs once
        model.cache_features(tokens, cfg.train.eval_batch_size)
    if user_texts is not None:
        model.head.user_text.copy_(model.encode_texts(tokenize_texts(tokenizer, user_texts, cfg.data.max_length)))
    # source-domain term L_S (transfer.loss): what keeps the backbone close to its pretraining
    model.source = build_source_objective(cfg.transfer, model, tokens, tokenizer, cfg.train.eval_batch_size)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    backbone_trainable = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
    logger.info("trainable parameters: %d (backbone %d, towers and head %d)", trainable, backbone_trainable,
                trainable - backbone_trainable)

    # warm-up: biases from regularised averages, then the towers on frozen pooled text features
    # (a resumed run finds its result in the checkpoint)
    head = model.head
    if resume_from is None:
        head.init_biases(torch.as_tensor(train.users), torch.as_tensor(train.items), torch.as_tensor(train.ratings))
        item_text = model.encode_texts(tokens, cfg.train.eval_batch_size)
        warm_up_head(head, item_text, train.users, train.items, train.ratings,
                     epochs=cfg.train.head_warmup_epochs, batch_size=cfg.train.head_batch_size,
                     lr=cfg.train.head_lr, l2=cfg.train.l2, text_l2=cfg.train.text_l2, seed=cfg.train.seed)
        logger.info("head warm-up: %d epochs on frozen text features", cfg.train.head_warmup_epochs)

    # optimizer, schedule and item-amortised batches: one LM pass per distinct item per step;
    # with several processes each takes a piece of every step's items (SplitBatches). The loader
    # has its own generator, so starting an epoch draws nothing from the global RNG (dropout's).
    collator = ItemRatingsCollator(tokens, train.users, train.items, train.ratings, tokenizer.pad_token_id)
    batches = SplitBatches(LengthBucketBatches(ItemShuffler(collator.items_with_ratings(), seed=cfg.train.seed),
                                               [len(t) for t in tokens], cfg.train.items_per_step),
                           accelerator.num_processes)
    train_loader = DataLoader(range(len(tokens)), batch_sampler=batches, collate_fn=collator,
                              generator=torch.Generator().manual_seed(cfg.train.seed))
    valid_loader, test_loader = rating_loader(valid), rating_loader(test)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr,
                                  weight_decay=cfg.train.weight_decay)
    model, optimizer, train_loader, valid_loader, test_loader = accelerator.prepare(
        model, optimizer, train_loader, valid_loader, test_loader)
    steps = math.ceil(len(train_loader) / cfg.train.grad_accum) * cfg.train.epochs
    if cfg.train.max_steps is not None:
        steps = min(steps, cfg.train.max_steps)
    scheduler = accelerator.prepare(get_scheduler(
        cfg.train.scheduler, optimizer, num_warmup_steps=int(cfg.train.warmup_ratio * steps) * accelerator.num_processes,
        num_training_steps=steps * accelerator.num_processes))
    unwrapped = accelerator.unwrap_model(model)
    if cfg.train.log_with:
        accelerator.init_trackers("peftrec", config=json.loads(json.dumps(config_to_dict(cfg), default=str)))
    metric = load_metric("rating_error")

    # loop state, saved in every checkpoint with the model, optimizer, scheduler and RNG states
    progress, stopper = TrainingProgress(), EarlyStopping(cfg.train.patience)
    accelerator.register_for_checkpointing(progress, stopper)

    def validate() -> dict[str, float]:
        item_text = unwrapped.encode_texts(tokens, cfg.train.eval_batch_size).to(accelerator.device)
        return evaluate_ratings(accelerator, unwrapped.head, item_text, valid_loader, metric)

    def finished() -> bool:
        return cfg.train.max_steps is not None and progress.step >= cfg.train.max_steps

    if resume_from is not None:
        load_checkpoint(accelerator, resume_from)
        logger.info("resumed at epoch %d, batch %d, step %d", progress.epoch, progress.batches_done, progress.step)
    else:
        progress.history.append({"epoch": 0, "phase": "head warm-up", **{f"valid_{k}": v for k, v in validate().items()}})
        stopper.update(progress.history[0]["valid_rmse"], 0, unwrapped)
        logger.info("epoch 0 (after head warm-up): valid RMSE %.4f", progress.history[0]["valid_rmse"])

    # loop: train on item batches, validate every epoch, keep the best weights
    for epoch in range(progress.epoch, cfg.train.epochs + 1):
        model.train()
        train_loader.set_epoch(epoch)
        tick = time.perf_counter()
        remaining = train_loader
        if progress.batches_done:  # resuming mid-epoch: the batches before the checkpoint are done
            remaining = accelerator.skip_first_batches(train_loader, progress.batches_done)
        bar = tqdm(remaining, desc=f"epoch {epoch}", initial=progress.batches_done, total=len(train_loader),
                   disable=not accelerator.is_local_main_process, leave=False)
        for batch in bar:
            if finished():
                break
            with accelerator.accumulate(model):
                ratings = batch.pop("ratings")
                output = model(**batch)
                squared = (output.scores - ratings).square().sum()
                # (squared error, ratings, L_S) of every process's piece of this step; dividing by
                # the step's total makes the loss, and the gradient DDP averages, the 1-process one
                pieces = accelerator.gather(torch.tensor([[squared.item(), len(ratings), output.source.item()]],
                                                         dtype=torch.float64, device=accelerator.device))
                loss = (squared + cfg.train.l2 * output.penalty * len(ratings)) * accelerator.num_processes
                accelerator.backward(loss / pieces[:, 1].sum().item() + cfg.transfer.weight * output.source
                                     + cfg.train.text_l2 * unwrapped.head.weight_penalty())
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            progress.record(pieces)
            bar.set_postfix(rmse=f"{math.sqrt(progress.squared_error / progress.ratings):.4f}", ratings=progress.ratings)
            if accelerator.sync_gradients:
                progress.step += 1
                if cfg.train.checkpoint_every and progress.step % cfg.train.checkpoint_every == 0:
                    save_checkpoint(accelerator, checkpoints, progress.step, config_to_dict(cfg))
        seconds = time.perf_counter() - tick  # training only; validation is timed apart
        tick = time.perf_counter()
        scores = validate()
        progress.history.append({"epoch": epoch, "train_rmse": math.sqrt(progress.squared_error / max(progress.ratings, 1)),
                                 "train_source_loss": progress.source_loss / max(progress.batches_done, 1),
                                 "epoch_seconds": seconds, "valid_seconds": time.perf_counter() - tick,
                                 **{f"valid_{k}": v for k, v in scores.items()}})
        accelerator.log(progress.history[-1], step=epoch)
        logger.info("epoch %d: train RMSE %.4f, valid RMSE %.4f (%.1f s, %d ratings)", epoch,
                    progress.history[-1]["train_rmse"], scores["rmse"], progress.history[-1]["epoch_seconds"],
                    progress.ratings)
        stop = stopper.update(scores["rmse"], epoch, unwrapped)
        progress.next_epoch()
        if stop or finished():
            break

    # evaluate: best validation weights on the test split
    stopper.restore(unwrapped)
    item_text = unwrapped.encode_texts(tokens, cfg.train.eval_batch_size).to(accelerator.device)
    known_users = np.bincount(train.users, minlength=len(dataset.user_ids)) > 0
    known_items = np.bincount(train.items, minlength=len(dataset.item_ids)) > 0
    test_scores = evaluate_ratings(accelerator, unwrapped.head, item_text, test_loader, metric,
                                   known_users=known_users, known_items=known_items)
    epoch_seconds = [h["epoch_seconds"] for h in progress.history if "epoch_seconds" in h]
    results = {
        "best_epoch": stopper.best_epoch, "valid_rmse": stopper.best,
        **{f"test_{k}": v for k, v in test_scores.items()},
        "trainable_parameters": trainable, "backbone_trainable_parameters": backbone_trainable,
        "median_epoch_seconds": float(np.median(epoch_seconds)) if epoch_seconds else None,
        "peak_memory_mib": peak_memory_mib(), "wall_seconds": time.perf_counter() - started,
        "num_processes": accelerator.num_processes, "ratings_per_process": progress.ratings_per_process,
        "steps": progress.step, "resumed_from": str(resume_from) if resume_from else None,
        "history": progress.history,
    }
    logger.info("ratings trained on per process: %s", progress.ratings_per_process)
    logger.info("best epoch %d: test RMSE %.4f, MAE %.4f", stopper.best_epoch, test_scores["rmse"], test_scores["mae"])
    logger.info("test RMSE by group: %s", ", ".join(
        f"{group} {test_scores[f'rmse_{group}']:.4f} ({test_scores[f'count_{group}']} ratings)"
        for group in ("warm", "cold_items", "cold_users") if test_scores[f"count_{group}"]))

    # save: the artifact apps load, the resolved config and the metrics (each written atomically)
    if accelerator.is_main_process:
        catalog = Catalog(user_ids=dataset.user_ids, item_ids=dataset.item_ids, item_texts=item_texts,
                          seen_users=train.users, seen_items=train.items)
        save_config(cfg, out / "config.yaml")
        save_artifact(out / "model", unwrapped, tokenizer, catalog, backbone=cfg.backbone.name,
                      method=cfg.adapter.method, max_length=cfg.data.max_length,
                      config_yaml=(out / "config.yaml").read_text())
        write_atomic(out / "metrics.json", json.dumps(results, indent=2))
        print(f"test RMSE {test_scores['rmse']:.4f}  MAE {test_scores['mae']:.4f}  (best epoch {stopper.best_epoch})")
        print("  warm / cold items / cold users: " + " / ".join(
            "-" if test_scores[f"rmse_{g}"] is None else f"{test_scores[f'rmse_{g}']:.4f}"
            for g in ("warm", "cold_items", "cold_users")))
        print(f"model saved to {out / 'model'}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ConfigError, DataError, CheckpointError) as error:  # the user's input: a message, no traceback
        print(f"{Path(__file__).name}: error: {error}", file=sys.stderr)
        sys.exit(2)
