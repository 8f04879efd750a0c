"""Rating prediction (MSE) with a parameter-efficiently adapted language model.

Launch:
    accelerate launch recipes/train_rating.py --config recipes/configs/minilm_lora_rating.yaml
    python recipes/train_rating.py --config recipes/configs/minilm_lora_rating.yaml train.epochs=3

Steps: accelerator, seed, data, model, head warm-up on frozen text features, optimizer,
prepare, item-amortised training loop with validation and early stopping, test, save.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm
from transformers import get_scheduler

from peftrec.artifact import Catalog, save_artifact
from peftrec.config import RatingRecipeConfig, config_to_dict, parse_cli, save_config
from peftrec.data import load_data, split_rows
from peftrec.metrics import load_metric
from peftrec.model import build_model
from peftrec.tokens import tokenize_texts
from peftrec.training import (
    EarlyStopping,
    ItemRatingsCollator,
    ItemShuffler,
    LengthBucketBatches,
    predict_ratings,
    warm_up_head,
)

logger = get_logger("peftrec.train_rating")


def evaluate_ratings(accelerator, head, item_text, loader, metric) -> dict[str, float]:
    """RMSE/MSE/MAE over a prepared loader of (user, item, rating), gathered across processes."""
    for users, items, ratings in loader:
        predictions = predict_ratings(head, item_text, users.cpu().numpy(), items.cpu().numpy())
        predictions, ratings = accelerator.gather_for_metrics((torch.as_tensor(predictions, device=ratings.device), ratings))
        metric.add_batch(predictions=predictions.cpu().numpy(), references=ratings.cpu().numpy())
    return {k: float(v) for k, v in metric.compute().items()}


def rating_loader(interactions, batch_size: int = 8192) -> DataLoader:
    tensors = (torch.as_tensor(interactions.users), torch.as_tensor(interactions.items),
               torch.as_tensor(interactions.ratings, dtype=torch.float32))
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size)


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_cli(RatingRecipeConfig, argv)
    out = Path(cfg.output_dir)

    # accelerator and seed: the launcher owns hardware (processes, mixed precision)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.train.grad_accum,
                              log_with=cfg.train.log_with or None, project_dir=str(out))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO,
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "datasets", "peft", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    set_seed(cfg.train.seed)
    started = time.perf_counter()

    # data: one tokenized text per item, ratings split by protocol
    dataset = load_data(cfg.data)
    split = split_rows(dataset, cfg.data.protocol, seed=cfg.data.seed)
    train, valid, test = (dataset.interactions.subset(rows) for rows in (split.train, split.valid, split.test))
    if cfg.data.train_fraction < 1.0:
        keep = np.random.default_rng(cfg.data.seed).random(len(train)) < cfg.data.train_fraction
        train = train.subset(np.flatnonzero(keep))
    logger.info("%s %s: %d train / %d valid / %d test ratings, %d users, %d items", dataset.name,
                cfg.data.protocol, len(train), len(valid), len(test), len(dataset.user_ids), len(dataset.item_ids))

    # model: backbone + adapter, towers and head outside the PEFT wrapper
    model, tokenizer = build_model(cfg.backbone, cfg.adapter, cfg.model,
                                   num_users=len(dataset.user_ids), num_items=len(dataset.item_ids))
    item_texts = dataset.item_texts(cfg.data.item_template)
    tokens = tokenize_texts(tokenizer, item_texts, cfg.data.max_length)
    if model.head.user_text_proj is not None:
        user_texts = dataset.user_texts(cfg.data.user_template)
        model.head.user_text.copy_(model.encode_texts(tokenize_texts(tokenizer, user_texts, cfg.data.max_length)))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    backbone_trainable = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
    logger.info("trainable parameters: %d (backbone %d, towers and head %d)", trainable, backbone_trainable,
                trainable - backbone_trainable)

    # warm-up: biases from regularised averages, then the towers on frozen pooled text features
    head = model.head
    head.init_biases(torch.as_tensor(train.users), torch.as_tensor(train.items), torch.as_tensor(train.ratings))
    item_text = model.encode_texts(tokens, cfg.train.eval_batch_size)
    warm = warm_up_head(head, item_text, train.users, train.items, train.ratings,
                        epochs=cfg.train.head_warmup_epochs, batch_size=cfg.train.head_batch_size,
                        lr=cfg.train.head_lr, l2=cfg.train.l2, seed=cfg.train.seed)
    logger.info("head warm-up: %d epochs on frozen text features", len(warm) or cfg.train.head_warmup_epochs)

    # optimizer, schedule and item-amortised batches: one LM pass per distinct item per step
    collator = ItemRatingsCollator(tokens, train.users, train.items, train.ratings, tokenizer.pad_token_id)
    batches = LengthBucketBatches(ItemShuffler(collator.items_with_ratings(), seed=cfg.train.seed),
                                  [len(t) for t in tokens], cfg.train.items_per_step)
    train_loader = DataLoader(range(len(tokens)), batch_sampler=batches, collate_fn=collator)
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

    # loop: train on item batches, validate every epoch, keep the best weights
    def validate() -> dict[str, float]:
        item_text = unwrapped.encode_texts(tokens, cfg.train.eval_batch_size).to(accelerator.device)
        return evaluate_ratings(accelerator, unwrapped.head, item_text, valid_loader, metric)

    stopper = EarlyStopping(cfg.train.patience)
    history = [{"epoch": 0, "phase": "head warm-up", **{f"valid_{k}": v for k, v in validate().items()}}]
    stopper.update(history[0]["valid_rmse"], 0, unwrapped)
    logger.info("epoch 0 (after head warm-up): valid RMSE %.4f", history[0]["valid_rmse"], main_process_only=True)
    step, epoch_times = 0, []
    for epoch in range(1, cfg.train.epochs + 1):
        model.train()
        train_loader.set_epoch(epoch)
        tick, total, count = time.perf_counter(), 0.0, 0
        bar = tqdm(train_loader, desc=f"epoch {epoch}", disable=not accelerator.is_local_main_process, leave=False)
        for batch in bar:
            with accelerator.accumulate(model):
                ratings = batch.pop("ratings")
                predictions, penalty = model(**batch)
                mse = (predictions - ratings).square().mean()
                accelerator.backward(mse + cfg.train.l2 * penalty)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            total, count = total + mse.item() * len(ratings), count + len(ratings)
            bar.set_postfix(rmse=f"{math.sqrt(total / count):.4f}", ratings=count)
            step += accelerator.sync_gradients
            if cfg.train.max_steps is not None and step >= cfg.train.max_steps:
                break
        epoch_times.append(time.perf_counter() - tick)
        scores = validate()
        history.append({"epoch": epoch, "train_rmse": math.sqrt(total / max(count, 1)),
                        "epoch_seconds": epoch_times[-1], **{f"valid_{k}": v for k, v in scores.items()}})
        accelerator.log(history[-1], step=epoch)
        logger.info("epoch %d: train RMSE %.4f, valid RMSE %.4f (%.1f s, %d ratings)", epoch,
                    history[-1]["train_rmse"], scores["rmse"], epoch_times[-1], count, main_process_only=True)
        if stopper.update(scores["rmse"], epoch, unwrapped) or (cfg.train.max_steps and step >= cfg.train.max_steps):
            break

    # evaluate: best validation weights on the test split
    stopper.restore(unwrapped)
    item_text = unwrapped.encode_texts(tokens, cfg.train.eval_batch_size).to(accelerator.device)
    test_scores = evaluate_ratings(accelerator, unwrapped.head, item_text, test_loader, metric)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    results = {
        "best_epoch": stopper.best_epoch, "valid_rmse": stopper.best,
        **{f"test_{k}": v for k, v in test_scores.items()},
        "trainable_parameters": trainable, "backbone_trainable_parameters": backbone_trainable,
        "median_epoch_seconds": float(np.median(epoch_times)) if epoch_times else None,
        "peak_memory_mib": peak_mib, "wall_seconds": time.perf_counter() - started,
        "num_processes": accelerator.num_processes, "history": history,
    }
    logger.info("best epoch %d: test RMSE %.4f, MAE %.4f", stopper.best_epoch, test_scores["rmse"], test_scores["mae"],
                main_process_only=True)

    # save: the artifact apps load, the resolved config and the metrics
    if accelerator.is_main_process:
        catalog = Catalog(user_ids=dataset.user_ids, item_ids=dataset.item_ids, item_texts=item_texts,
                          seen_users=train.users, seen_items=train.items)
        save_config(cfg, out / "config.yaml")
        save_artifact(out / "model", unwrapped, tokenizer, catalog, backbone=cfg.backbone.name,
                      method=cfg.adapter.method, max_length=cfg.data.max_length,
                      config_yaml=(out / "config.yaml").read_text())
        (out / "metrics.json").write_text(json.dumps(results, indent=2))
        print(f"test RMSE {test_scores['rmse']:.4f}  MAE {test_scores['mae']:.4f}  (best epoch {stopper.best_epoch})")
        print(f"model saved to {out / 'model'}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
