"""Top-K ranking with a parameter-efficiently adapted language model (protocol P3).

Launch:
    accelerate launch recipes/train_ranking.py --config recipes/configs/minilm_lora_ranking.yaml
    python recipes/train_ranking.py --config recipes/configs/minilm_lora_ranking.yaml ranking.loss=bpr

Steps: accelerator, seed, data, model, head warm-up on frozen text features, optimizer, prepare,
item-amortised training loop (each step's items are the candidates of a sampled softmax or BPR)
with full-ranking validation and early stopping on NDCG@k, test, save.
A frozen backbone skips the LM entirely after one encoding pass: only the towers train.
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
from peftrec.checkpointing import write_atomic
from peftrec.config import ConfigError, RankingRecipeConfig, check_settings, parse_cli, save_config
from peftrec.data import DataError, check_splits, load_data, split_rows
from peftrec.metrics import load_metric, scores_by_group
from peftrec.model import build_model
from peftrec.ranking import ranking_step_loss, seen_mask, target_ranks, warm_up_ranking_head
from peftrec.tokens import tokenize_texts
from peftrec.training import (
    EarlyStopping,
    ItemRatingsCollator,
    ItemShuffler,
    LengthBucketBatches,
    peak_memory_mib,
)
from peftrec.transfer import build_source_objective

logger = get_logger("peftrec.train_ranking")


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_cli(RankingRecipeConfig, argv)
    check_settings(cfg)
    out = Path(cfg.output_dir)
    k = cfg.ranking.k

    # accelerator and seed: the launcher owns hardware (processes, mixed precision)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.train.grad_accum,
                              log_with=cfg.train.log_with or None, project_dir=str(out))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO,
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "datasets", "peft", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    set_seed(cfg.train.seed)
    started = time.perf_counter()

    # data: leave-one-out by time; every interaction is an implicit positive
    if cfg.data.protocol != "p3":
        raise DataError(f"the ranking recipe evaluates leave-one-out targets: data.protocol must be p3, "
                        f"not {cfg.data.protocol}")
    dataset = load_data(cfg.data)
    split = split_rows(dataset, "p3", seed=cfg.data.seed)
    train, valid, test = (dataset.interactions.subset(rows) for rows in (split.train, split.valid, split.test))
    if cfg.data.train_fraction < 1.0:
        keep = np.random.default_rng(cfg.data.seed).random(len(train)) < cfg.data.train_fraction
        train = train.subset(np.flatnonzero(keep))
    check_splits(dataset, "p3", {"train": train, "validation": valid, "test": test}, cfg.data.train_fraction)
    num_users, num_items = len(dataset.user_ids), len(dataset.item_ids)
    train_seen = seen_mask(train.users, train.items, num_users, num_items)
    test_seen = train_seen | seen_mask(valid.users, valid.items, num_users, num_items)
    logger.info("%s p3: %d train interactions, %d valid / %d test users, %d items", dataset.name, len(train),
                len(valid), len(test), num_items)

    # model: backbone + adapter, towers and a dot-product head outside the PEFT wrapper
    model, tokenizer = build_model(cfg.backbone, cfg.adapter, cfg.model, num_users=num_users,
                                   num_items=num_items, task="ranking")
    item_texts = dataset.item_texts(cfg.data.item_template)
    tokens = tokenize_texts(tokenizer, item_texts, cfg.data.max_length)
    if cfg.adapter.method == "top_layers":  # the frozen lower blocks run once per item text
        model.cache_lower_layers(tokens, cfg.train.eval_batch_size)
    elif not any(p.requires_grad for p in model.backbone.parameters()):  # frozen: the LM runs once
        model.cache_features(tokens, cfg.train.eval_batch_size)
    if model.head.user_text_proj is not None:
        user_texts = dataset.user_texts(cfg.data.user_template)
        model.head.user_text.copy_(model.encode_texts(tokenize_texts(tokenizer, user_texts, cfg.data.max_length)))
    # source-domain term L_S (transfer.loss): what keeps the backbone close to its pretraining
    model.source = build_source_objective(cfg.transfer, model, tokens, tokenizer, cfg.train.eval_batch_size)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    backbone_trainable = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
    logger.info("trainable parameters: %d (backbone %d, towers %d)", trainable, backbone_trainable,
                trainable - backbone_trainable)

    known_items = np.bincount(train.items, minlength=num_items) > 0

    def validate(item_text: torch.Tensor, users: np.ndarray, targets: np.ndarray, exclude,
                 by_group: bool = False) -> dict[str, float | int | None]:
        """Ranking metrics of the targets; with ``by_group``, also apart for warm and cold target items."""
        ranks = target_ranks(accelerator.unwrap_model(model).head, item_text, users, targets, exclude).numpy()
        scores = {key: float(v) for key, v in metric.compute(predictions=ranks, k=k).items()}
        if by_group:
            warm = known_items[targets]
            scores.update(scores_by_group({"warm": warm, "cold_items": ~warm},
                                          lambda rows: metric.compute(predictions=ranks[rows], k=k),
                                          (f"ndcg@{k}", f"hr@{k}", "mrr")))
        return scores

    metric = load_metric("ranking")
    warm_up = dict(lr=cfg.train.head_lr, l2=cfg.train.l2, text_l2=cfg.train.text_l2, loss=cfg.ranking.loss,
                   temperature=cfg.ranking.temperature, items_per_step=cfg.train.items_per_step)
    stopper = EarlyStopping(cfg.train.patience)  # minimises: we pass -NDCG@k
    history: list[dict] = []
    item_text = model.encode_texts(tokens, cfg.train.eval_batch_size)

    if backbone_trainable == 0:
        # frozen backbone (or ID-only items): text features are fixed, so encode once, train the towers
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.train.head_lr)
        for epoch in range(1, cfg.train.epochs + 1):
            tick = time.perf_counter()
            warm_up_ranking_head(model.head, item_text, train.users, train.items, epochs=1,
                                 seed=cfg.train.seed + epoch, optimizer=optimizer, **warm_up)
            seconds, tick = time.perf_counter() - tick, time.perf_counter()
            scores = validate(item_text, valid.users, valid.items, train_seen)
            history.append({"epoch": epoch, "epoch_seconds": seconds, "valid_seconds": time.perf_counter() - tick,
                            **{f"valid_{key}": v for key, v in scores.items()}})
            logger.info("epoch %d: valid NDCG@%d %.4f, HR@%d %.4f", epoch, k, scores[f"ndcg@{k}"], k,
                        scores[f"hr@{k}"])
            if stopper.update(-scores[f"ndcg@{k}"], epoch, model):
                break
        unwrapped = model
    else:
        # warm-up on frozen text features, then the adapter and towers train on item batches
        warm_up_ranking_head(model.head, item_text, train.users, train.items, epochs=cfg.train.head_warmup_epochs,
                             seed=cfg.train.seed, **warm_up)
        collator = ItemRatingsCollator(tokens, train.users, train.items, train.ratings, tokenizer.pad_token_id,
                                       negatives=cfg.ranking.negatives, seed=cfg.train.seed)
        batches = LengthBucketBatches(ItemShuffler(collator.items_with_ratings(), seed=cfg.train.seed),
                                      [len(t) for t in tokens], cfg.train.items_per_step)
        train_loader = DataLoader(range(len(tokens)), batch_sampler=batches, collate_fn=collator)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr,
                                      weight_decay=cfg.train.weight_decay)
        model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
        steps = math.ceil(len(train_loader) / cfg.train.grad_accum) * cfg.train.epochs
        if cfg.train.max_steps is not None:
            steps = min(steps, cfg.train.max_steps)
        scheduler = accelerator.prepare(get_scheduler(
            cfg.train.scheduler, optimizer, num_warmup_steps=int(cfg.train.warmup_ratio * steps) * accelerator.num_processes,
            num_training_steps=steps * accelerator.num_processes))
        unwrapped = accelerator.unwrap_model(model)
        scores = validate(item_text, valid.users, valid.items, train_seen)
        history.append({"epoch": 0, "phase": "head warm-up", **{f"valid_{key}": v for key, v in scores.items()}})
        stopper.update(-scores[f"ndcg@{k}"], 0, unwrapped)
        logger.info("epoch 0 (after head warm-up): valid NDCG@%d %.4f", k, scores[f"ndcg@{k}"])
        step = 0
        for epoch in range(1, cfg.train.epochs + 1):
            model.train()
            train_loader.set_epoch(epoch)
            tick, total, count, source = time.perf_counter(), 0.0, 0, 0.0
            bar = tqdm(train_loader, desc=f"epoch {epoch}", disable=not accelerator.is_local_main_process, leave=False)
            for batch in bar:
                with accelerator.accumulate(model):
                    batch.pop("ratings")
                    output = model(**batch, candidates=True)
                    loss = ranking_step_loss(output.scores, batch["users"], batch["positions"], cfg.ranking.loss,
                                             cfg.ranking.temperature)
                    accelerator.backward(loss + cfg.train.l2 * output.penalty + cfg.transfer.weight * output.source
                                         + cfg.train.text_l2 * unwrapped.head.weight_penalty())
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                total, count = total + loss.item() * len(batch["users"]), count + len(batch["users"])
                source += output.source.item()
                bar.set_postfix(loss=f"{total / count:.4f}", pairs=count)
                step += accelerator.sync_gradients
                if cfg.train.max_steps is not None and step >= cfg.train.max_steps:
                    break
            seconds, tick = time.perf_counter() - tick, time.perf_counter()  # training only
            item_text = unwrapped.encode_texts(tokens, cfg.train.eval_batch_size)
            scores = validate(item_text, valid.users, valid.items, train_seen)
            history.append({"epoch": epoch, "train_loss": total / max(count, 1),
                            "train_source_loss": source / max(len(train_loader), 1), "epoch_seconds": seconds,
                            "valid_seconds": time.perf_counter() - tick,
                            **{f"valid_{key}": v for key, v in scores.items()}})
            accelerator.log(history[-1], step=epoch)
            logger.info("epoch %d: loss %.4f, valid NDCG@%d %.4f, HR@%d %.4f (%.1f s, %d pairs)", epoch,
                        history[-1]["train_loss"], k, scores[f"ndcg@{k}"], k, scores[f"hr@{k}"], seconds, count)
            if stopper.update(-scores[f"ndcg@{k}"], epoch, unwrapped) or (
                    cfg.train.max_steps and step >= cfg.train.max_steps):
                break

    # evaluate: best validation weights, test targets, train and validation items excluded
    stopper.restore(unwrapped)
    item_text = unwrapped.encode_texts(tokens, cfg.train.eval_batch_size)
    test_scores = validate(item_text, test.users, test.items, test_seen, by_group=True)
    epoch_seconds = [h["epoch_seconds"] for h in history if "epoch_seconds" in h]
    results = {
        "best_epoch": stopper.best_epoch, f"valid_ndcg@{k}": -stopper.best,
        **{f"test_{key}": v for key, v in test_scores.items()},
        "trainable_parameters": trainable, "backbone_trainable_parameters": backbone_trainable,
        "median_epoch_seconds": float(np.median(epoch_seconds)) if epoch_seconds else None,
        "peak_memory_mib": peak_memory_mib(),
        "wall_seconds": time.perf_counter() - started, "num_processes": accelerator.num_processes,
        "history": history,
    }
    logger.info("best epoch %d: test NDCG@%d %.4f, HR@%d %.4f, MRR %.4f", stopper.best_epoch, k,
                test_scores[f"ndcg@{k}"], k, test_scores[f"hr@{k}"], test_scores["mrr"])
    logger.info("test NDCG@%d by target item: warm %s (%d users), cold %s (%d users)", k,
                test_scores[f"ndcg@{k}_warm"], test_scores["count_warm"], test_scores[f"ndcg@{k}_cold_items"],
                test_scores["count_cold_items"])

    # save: the artifact apps load, the resolved config and the metrics
    if accelerator.is_main_process:
        save_config(cfg, out / "config.yaml")
        catalog = Catalog(user_ids=dataset.user_ids, item_ids=dataset.item_ids, item_texts=item_texts,
                          seen_users=train.users, seen_items=train.items)
        save_artifact(out / "model", unwrapped, tokenizer, catalog, backbone=cfg.backbone.name,
                      method=cfg.adapter.method, max_length=cfg.data.max_length,
                      config_yaml=(out / "config.yaml").read_text())
        write_atomic(out / "metrics.json", json.dumps(results, indent=2))
        print(f"test NDCG@{k} {test_scores[f'ndcg@{k}']:.4f}  HR@{k} {test_scores[f'hr@{k}']:.4f}  "
              f"MRR {test_scores['mrr']:.4f}  (best epoch {stopper.best_epoch})")
        print(f"model saved to {out / 'model'}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ConfigError, DataError) as error:  # the user's input: a message, no traceback
        print(f"{Path(__file__).name}: error: {error}", file=sys.stderr)
        sys.exit(2)
