"""Rating prediction (MSE) with a parameter-efficiently adapted language model.

Launch:
    peftrec train rating --config minilm_lora_rating   (by name; checkout or install)
    accelerate launch recipes/train_rating.py --config recipes/configs/minilm_lora_rating.yaml
    python recipes/train_rating.py --config recipes/configs/minilm_lora_rating.yaml train.epochs=3
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 \\
        recipes/train_rating.py ...   (2 processes on CPU)

Steps: accelerator, seed, data, model, head warm-up on frozen text features, optimizer,
prepare, item-amortised training loop with validation and early stopping, test, save.
With train.checkpoint_every=N a checkpoint is saved every N optimizer steps; train.resume=true
continues a crashed run from <output_dir>/checkpoints/latest, exactly where it stopped.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from accelerate.logging import get_logger

from peftrec.metrics import GROUPS, groups_text, load_metric, scores_text
from peftrec.tasks import TASKS
from peftrec.tasks.rating.config import RatingRecipeConfig
from peftrec.tasks.rating.step import evaluate_ratings, rating_loader, warm_up_head
from peftrec.training.batches import ItemRatingsCollator
from peftrec.training.loop import Bookkeeping, TrainStep
from peftrec.training.recipe import (
    build_run_model,
    encode_start,
    exit_on_user_error,
    item_batches,
    load_run_data,
    make_optimizer,
    make_scheduler,
    resume_point,
    save_run,
    start,
    trainable_counts,
)

TASK = TASKS["rating"]
logger = get_logger("peftrec.train_rating")


def main(argv: list[str] | None = None) -> dict:
    # accelerator and seed: the launcher owns hardware (processes, mixed precision)
    cfg, accelerator = start(RatingRecipeConfig, argv, TASK)
    started = time.perf_counter()
    resume_from = resume_point(cfg, accelerator)

    # data: ratings split by protocol, one text per item (all checked before any model is loaded)
    data = load_run_data(cfg, TASK)
    train, valid, test = data.train, data.valid, data.test

    # model: spec -> backbone + adapter, towers and head outside the PEFT wrapper; caches, L_S
    model, tokenizer, tokens = build_run_model(cfg, TASK, data)
    trainable = trainable_counts(model)  # all, the backbone's

    # warm-up: biases from regularised averages, then the towers on frozen pooled text features
    # (a resumed run finds its result in the checkpoint)
    head = model.head
    # users as their rated items, or what they gave items sharing facts: the head reads them
    history = cfg.model.user_history or cfg.model.fact_neighbours
    adapted = trainable[1] > 0  # the backbone trains: the catalogue's encodings move

    def read_history(item_text: torch.Tensor) -> None:
        head.set_history(train.users, train.items, train.ratings, item_text)

    if resume_from is None:
        head.init_biases(
            torch.as_tensor(train.users),
            torch.as_tensor(train.items),
            torch.as_tensor(train.ratings),
        )
        if model.warm_start is not None:  # known users and items keep what the parent learned
            model.warm_start.restore_biases(head)
        item_text = encode_start(model, tokens, cfg)
        if history:
            read_history(item_text)
            if model.warm_start is not None:  # the parent's table already holds its term
                head.unfold_history()
        warm_up_head(
            head,
            item_text,
            train.users,
            train.items,
            train.ratings,
            epochs=cfg.train.head_warmup_epochs,
            batch_size=cfg.train.head_batch_size,
            lr=cfg.train.head_lr,
            l2=cfg.train.l2,
            text_l2=cfg.train.text_l2,
            knowledge_l2=cfg.train.knowledge_l2,
            seed=cfg.train.seed,
        )
        logger.info("head warm-up: %d epochs on frozen text features", cfg.train.head_warmup_epochs)

    # optimizer, schedule and item-amortised batches: one LM pass per distinct item per step
    collator = ItemRatingsCollator(
        tokens, train.users, train.items, train.ratings, tokenizer.pad_token_id
    )
    train_loader = item_batches(collator, [len(t) for t in tokens], cfg, accelerator)
    valid_loader, test_loader = rating_loader(valid), rating_loader(test)
    optimizer = make_optimizer(cfg, model)
    model, optimizer, train_loader, valid_loader, test_loader = accelerator.prepare(
        model, optimizer, train_loader, valid_loader, test_loader
    )
    scheduler = make_scheduler(cfg, optimizer, len(train_loader), accelerator)
    unwrapped = accelerator.unwrap_model(model)
    metric = load_metric(TASK.metric)

    # loop state (saved in every checkpoint with the model, optimizer, scheduler and RNG states)
    # and the step every batch ends with (gather, loss, backward, update, checkpoint)
    books = Bookkeeping(cfg, accelerator, unwrapped)
    step = TrainStep(cfg, accelerator, model, optimizer, scheduler, books.progress)
    progress, stopper = books.progress, books.stopper
    valid_items = np.unique(valid.items)  # validation scores these: only they are encoded

    def validate(item_text: torch.Tensor | None = None) -> dict[str, float]:
        if item_text is None:
            item_text = unwrapped.encode_texts(tokens, cfg.train.eval_batch_size, valid_items)
        return evaluate_ratings(
            accelerator, unwrapped.head, item_text.to(accelerator.device), valid_loader, metric
        )

    if resume_from is not None:
        books.resume(resume_from)
        if history:
            read_history(unwrapped.encode_texts(tokens, cfg.train.eval_batch_size))
    else:  # the backbone has not changed since the warm-up encoded the texts
        scores = validate(item_text)
        books.start(scores, scores["rmse"], phase="head warm-up")
        logger.info("epoch 0 (after head warm-up): valid RMSE %.4f", scores["rmse"])

    # loop: train on item batches, validate every epoch, keep the best weights
    for epoch in books.epochs():
        model.train()
        train_loader.set_epoch(epoch)
        for batch in books.batches(train_loader, epoch):
            with accelerator.accumulate(model):
                ratings = batch.pop("ratings")
                output = model(**batch)
                step(output, (output.scores - ratings).square().sum(), len(ratings))
            books.show(rmse=f"{math.sqrt(progress.mean_loss):.4f}", ratings=progress.examples)
        if history and adapted:  # the histories' items as the backbone now encodes them
            head.set_catalogue(unwrapped.encode_texts(tokens, cfg.train.eval_batch_size))
        record = books.end_epoch(epoch, validate, train_rmse=math.sqrt(progress.mean_loss))
        logger.info(
            "epoch %d: train RMSE %.4f, valid RMSE %.4f (%.1f s, %d ratings)",
            epoch,
            record["train_rmse"],
            record["valid_rmse"],
            record["epoch_seconds"],
            progress.examples,
        )
        if books.next_epoch(record["valid_rmse"]):
            break

    # evaluate: best validation weights on the test split (protocol "all", for production, has none)
    stopper.restore(unwrapped)
    item_text = unwrapped.encode_texts(tokens, cfg.train.eval_batch_size).to(accelerator.device)
    unwrapped.head.set_catalogue(item_text)
    test_scores = {}
    if len(test):
        test_scores = evaluate_ratings(
            accelerator,
            unwrapped.head,
            item_text,
            test_loader,
            metric,
            known_users=data.known_users,
            known_items=data.known_items,
        )
    scores = {"valid_rmse": stopper.best, **{f"test_{k}": v for k, v in test_scores.items()}}
    results = books.summary(scores, "ratings", trainable, started, resume_from)
    logger.info("ratings trained on per process: %s", progress.examples_per_process)
    shown = {"RMSE": test_scores["rmse"], "MAE": test_scores["mae"]} if test_scores else {}
    if test_scores:
        logger.info("best epoch %d: test %s", stopper.best_epoch, scores_text(shown))
        logger.info("test RMSE by group: %s", groups_text(test_scores, "rmse", "ratings"))

    # save: the artifact apps load (with its model card), the resolved config and the metrics
    card = {"valid RMSE": stopper.best, **{f"test {name}": v for name, v in shown.items()}}
    unwrapped.head.fold_history()  # the saved user table stands alone
    save_run(accelerator, cfg, TASK, unwrapped, tokenizer, data, results, card, item_text)
    if accelerator.is_main_process:
        if test_scores:
            print(f"test {scores_text(shown, '  ')}  (best epoch {stopper.best_epoch})")
            print(
                "  warm / cold items / cold users: "
                + " / ".join(
                    "-" if test_scores[f"rmse_{g}"] is None else f"{test_scores[f'rmse_{g}']:.4f}"
                    for g in GROUPS
                )
            )
        else:
            print(
                f"valid RMSE {stopper.best:.4f} (best epoch {stopper.best_epoch}); no test split: "
                "trained on all interactions but the validation share"
            )
        print(f"model saved to {Path(cfg.output_dir) / 'model'}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


if __name__ == "__main__":
    exit_on_user_error(main)
