"""Binary preference (will the user like the item?) with a parameter-efficiently adapted LM.

Launch:
    peftrec train preference --config minilm_frozen_preference   (by name; checkout or install)
    accelerate launch recipes/train_preference.py \\
        --config recipes/configs/minilm_frozen_preference.yaml
    python recipes/train_preference.py --config recipes/configs/minilm_frozen_preference.yaml \\
        data.train_records=256 data.seed=1        (few-shot: TALLRec's draw of 256 records)
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 \\
        recipes/train_preference.py ...   (2 processes on CPU)

Steps: accelerator, seed, data (records: a labelled history of ten items and a target, by
``data.protocol``; few-shot with ``data.train_records``), model (towers: the item tower under a
labelled-history user; cross: the LM reads the whole record), optimizer, prepare, loop (batches of
records, BCE on the targets and, for towers, on every history event) with validation AUC and early
stopping, test (AUC, LogLoss, per-user GAUC), save. With ``preference.records=source`` it trains
on tallrec-movie's source domain, to be adapted on the benchmark with ``train.init_from``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from torch.utils.data import DataLoader

from peftrec.metrics import load_metric, scores_text
from peftrec.models.tokens import tokenize_texts
from peftrec.tasks import TASKS
from peftrec.tasks.preference.batches import (
    PreferenceCollator,
    item_titles,
    record_texts,
    share_logit,
)
from peftrec.tasks.preference.config import PreferenceRecipeConfig
from peftrec.training.loop import Bookkeeping, TrainStep
from peftrec.training.recipe import (
    build_run_model,
    exit_on_user_error,
    load_run_data,
    make_optimizer,
    make_scheduler,
    resume_point,
    save_run,
    start,
    trainable_counts,
)

TASK = TASKS["preference"]
logger = get_logger("peftrec.train_preference")


def main(argv: list[str] | None = None) -> dict:
    # accelerator and seed: the launcher owns hardware (processes, mixed precision)
    cfg, accelerator = start(PreferenceRecipeConfig, argv, TASK)
    started = time.perf_counter()
    resume_from = resume_point(cfg, accelerator)
    pref = cfg.preference
    cross = pref.reader == "cross"

    # data: records (labelled history of ten, target) by protocol; their targets are the splits
    data = load_run_data(cfg, TASK)
    train = data.records.train

    # model: spec -> backbone + adapter, item tower and the labelled-history user; caches, L_S
    model, tokenizer, tokens = build_run_model(cfg, TASK, data)
    trainable = trainable_counts(model)  # all, the backbone's
    metric = load_metric(TASK.metric)

    titles = item_titles(data.dataset.item_fields, data.item_texts)

    def record_tokens(records) -> list[list[int]]:
        return tokenize_texts(tokenizer, record_texts(records, titles), pref.record_length)

    texts = {name: record_tokens(r) for name, r in data.records._asdict().items()} if cross else {}

    # optimizer, schedule and batches of records (each process takes a piece of every step)
    collator = PreferenceCollator(
        train,
        tokenizer.pad_token_id,
        item_tokens=None if cross else tokens,
        record_tokens=texts.get("train"),
    )
    per_process = max(1, pref.records_per_step // accelerator.num_processes)
    train_loader = DataLoader(
        range(len(train)),
        batch_size=per_process,
        shuffle=len(train) > 0,  # zero-shot (train.epochs=0) reads no record
        collate_fn=collator,
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )
    optimizer = make_optimizer(cfg, model)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    scheduler = make_scheduler(cfg, optimizer, len(train_loader), accelerator)
    unwrapped = accelerator.unwrap_model(model)

    def probabilities(which: str) -> np.ndarray:
        """Like probabilities of the validation or test records."""
        records = data.records._asdict()[which]
        head = unwrapped.head
        was_training = head.training
        head.eval()
        labels = torch.as_tensor(records.history_labels, device=accelerator.device)
        mask = None  # which history positions hold events, when some histories are shorter
        if records.padded:
            mask = torch.as_tensor(records.history_mask, device=accelerator.device)
        with torch.no_grad():
            if cross:
                text = unwrapped.encode_texts(texts[which], cfg.train.eval_batch_size)
                share = share_logit(labels.float(), mask=mask)
                p = torch.sigmoid(head.cross_logits(text.to(accelerator.device), share))
            else:
                text = unwrapped.encode_texts(tokens, cfg.train.eval_batch_size)
                index = torch.arange(len(text), device=accelerator.device)
                items = head.items(text.to(accelerator.device), index)
                p = head.score_records(
                    items,
                    torch.as_tensor(records.items, device=accelerator.device),
                    torch.as_tensor(records.history_items, device=accelerator.device),
                    labels,
                    mask=mask,
                )
        head.train(was_training)
        return p.cpu().numpy()

    def evaluate(which: str) -> dict[str, float]:
        records = data.records._asdict()[which]
        scores = metric.compute(
            predictions=probabilities(which), references=records.labels, groups=records.users
        )
        return {key: float(v) for key, v in scores.items()}

    # loop state (saved in every checkpoint with the model, optimizer, scheduler and RNG states)
    # and the step every batch ends with (gather, loss, backward, update, checkpoint)
    books = Bookkeeping(cfg, accelerator, unwrapped)  # early stopping minimises -AUC
    step = TrainStep(cfg, accelerator, model, optimizer, scheduler, books.progress)
    progress, stopper = books.progress, books.stopper

    if resume_from is not None:
        books.resume(resume_from)
    else:  # epoch 0: the untrained head ranks records by the history's like share
        scores = evaluate("valid")
        books.start(scores, -scores["auc"])
        logger.info("epoch 0 (untrained head): valid AUC %.4f", scores["auc"])

    # loop: train on batches of records, validate every epoch, keep the best weights
    # (zero-shot, train.epochs=0: none; the start is tested)
    for epoch in books.epochs():
        model.train()
        for batch in books.batches(train_loader, epoch):
            with accelerator.accumulate(model):
                output = model(**batch)
                bce = F.binary_cross_entropy_with_logits(
                    output.logits, output.labels, reduction="sum"
                )
                step(output, bce, len(output.labels))
            books.show(bce=f"{progress.mean_loss:.4f}", events=progress.examples)
        record = books.end_epoch(epoch, lambda: evaluate("valid"), train_loss=progress.mean_loss)
        logger.info(
            "epoch %d: BCE %.4f, valid AUC %.4f, LogLoss %.4f (%.1f s)",
            epoch,
            progress.mean_loss,
            record["valid_auc"],
            record["valid_logloss"],
            record["epoch_seconds"],
        )
        if books.next_epoch(-record["valid_auc"]):
            break

    # evaluate: the best validation weights, on the test records, once
    stopper.restore(unwrapped)
    test_scores = evaluate("test")
    scores = {"valid_auc": -stopper.best, **{f"test_{m}": v for m, v in test_scores.items()}}
    scores["train_records"] = len(train)
    results = books.summary(scores, "events", trainable, started, resume_from)
    names = {"AUC": "auc", "LogLoss": "logloss", "GAUC": "gauc"}
    shown = {name: test_scores[key] for name, key in names.items()}
    logger.info("best epoch %d: test %s", stopper.best_epoch, scores_text(shown))

    # save: the artifact apps load (with its model card), the resolved config and the metrics
    card = {"valid AUC": -stopper.best, **{f"test {name}": v for name, v in shown.items()}}
    save_run(accelerator, cfg, TASK, unwrapped, tokenizer, data, results, card)
    if accelerator.is_main_process:
        print(
            f"test {scores_text(shown, '  ')}  (best epoch {stopper.best_epoch}, "
            f"{len(train)} training records)"
        )
        print(f"model saved to {Path(cfg.output_dir) / 'model'}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


if __name__ == "__main__":
    exit_on_user_error(main)
