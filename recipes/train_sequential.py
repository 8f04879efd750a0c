"""Next-item recommendation: a user is the items they interacted with, in order (protocol P3;
p4 for continual updates: a history reads blocks 1..t, block t's rows are the targets).

Launch:
    peftrec train sequential --config minilm_frozen_sequential   (by name; checkout or install)
    accelerate launch recipes/train_sequential.py \\
        --config recipes/configs/minilm_frozen_sequential.yaml
    python recipes/train_sequential.py \\
        --config recipes/configs/minilm_idonly_sequential.yaml train.seed=1
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 \\
        recipes/train_sequential.py ...   (2 processes on CPU)

Steps: accelerator, seed, data (each user's training items in time order), model (item tower +
SASRec-style history encoder), catalogue table of pooled item texts, optimizer, prepare, loop
(batches of users; next-item cross-entropy over the whole catalogue at every position) with
full-ranking validation and early stopping on NDCG@k, test (the history then includes the
validation item), save. An adapted backbone's table is refreshed every epoch, and each step's
items are encoded again with gradients (straight-through); during the first
train.head_warmup_epochs the backbone stays as pretrained.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from accelerate.logging import get_logger

from peftrec.config import ConfigError
from peftrec.metrics import load_metric, scores_text, warm_cold
from peftrec.models.recency import RecencyTable, RecentCounts, first_events
from peftrec.tasks import TASKS
from peftrec.tasks.ranking.step import excluded_items, headline, ranking_scores
from peftrec.tasks.sequential.config import SequentialRecipeConfig
from peftrec.tasks.sequential.data import SequenceCollator, run_histories
from peftrec.tasks.sequential.step import CatalogueTable, next_item_ranks, sequence_loss
from peftrec.training.loop import Bookkeeping, TrainStep
from peftrec.training.recipe import (
    build_run_model,
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

TASK = TASKS["sequential"]
logger = get_logger("peftrec.train_sequential")


def main(argv: list[str] | None = None) -> dict:
    # accelerator and seed: the launcher owns hardware (processes, mixed precision)
    cfg, accelerator = start(SequentialRecipeConfig, argv, TASK)
    started = time.perf_counter()
    resume_from = resume_point(cfg, accelerator)
    seq, k = cfg.sequence, cfg.sequence.k

    # data: each user's training items in time order; the validation and test items come next
    # (p4: the history before each target, blocks 1..t)
    data = load_run_data(cfg, TASK)
    train, valid, test = data.train, data.valid, data.test
    num_items = len(data.dataset.item_ids)
    histories = run_histories(data)
    valid_exclude, test_exclude = (
        mask[torch.as_tensor(users)]
        for mask, users in zip(excluded_items(data), (valid.users, test.users), strict=True)
    )

    # model: spec -> backbone + adapter, item tower and history encoder; caches, L_S
    model, tokenizer, tokens = build_run_model(cfg, TASK, data)
    trainable = trainable_counts(model)  # all, the backbone's
    adapts = trainable[1] > 0
    metric = load_metric(TASK.metric)

    # what is popular now (sequence.recency): counts of the seen events, read at each moment
    if seq.recency:
        if histories.times is None:
            raise ConfigError("sequence.recency=true needs timestamps, and this data has none")
        inter = data.dataset.interactions
        recent = [
            RecencyTable(
                RecentCounts(
                    inter.items[rows],
                    inter.timestamps[rows],
                    first_events(inter.users[rows], inter.timestamps[rows]),
                    num_items,
                ),
                accelerator.device,
            )
            for rows in histories.seen  # for training and validation, then for the test
        ]
        model.head.set_recency(recent[0])

    # the catalogue table: every item's pooled text, what each step scores against
    catalogue = CatalogueTable(model.encode_texts(tokens, cfg.train.eval_batch_size))
    if resume_from is None and not cfg.train.init_from:  # a warm start keeps the parent's
        model.head.fit_text_norm(catalogue.table)

    # optimizer, schedule and batches of users (each process takes a piece of every step)
    collator = SequenceCollator(
        histories.train,
        seq.max_history,
        tokens,
        tokenizer.pad_token_id,
        fresh=cfg.train.items_per_step if adapts else 0,
        seed=cfg.train.seed,
        trained=histories.trained,
        first_items=seq.empty_state,
        times=histories.times if seq.recency else None,
    )
    train_loader = item_batches(
        collator,
        [len(h) for h in collator.inputs],
        cfg,
        accelerator,
        units=collator.users_with_targets(),
        per_step=seq.users_per_step,
    )
    optimizer = make_optimizer(cfg, model)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    scheduler = make_scheduler(cfg, optimizer, len(train_loader), accelerator)
    unwrapped = accelerator.unwrap_model(model)
    popularity = torch.as_tensor(np.bincount(train.items, minlength=num_items) + 1.0)
    generator = torch.Generator().manual_seed(cfg.train.seed)

    def evaluate(which: str) -> dict:
        """Ranking metrics of the next item: the validation item after the training history, or
        the test item after it and the validation item (with test, also apart for warm and cold
        target items)."""
        table = unwrapped.encode_texts(tokens, cfg.train.eval_batch_size).to(accelerator.device)
        moments, ages = histories.moments or (None, None), histories.ages or (None, None)
        if which == "valid":
            ranks = next_item_ranks(
                unwrapped.head, table, histories.valid, valid.items, valid_exclude, moments[0],
                ages[0],
            ).numpy()  # fmt: skip
            return ranking_scores(metric, ranks, k)
        ranks = next_item_ranks(
            unwrapped.head, table, histories.test, test.items, test_exclude, moments[1], ages[1]
        ).numpy()
        groups = warm_cold(data.known_users[test.users], data.known_items[test.items])
        return ranking_scores(metric, ranks, k, groups)

    # loop state (saved in every checkpoint with the model, optimizer, scheduler, RNG states and
    # the catalogue table) and the step every batch ends with (gather, loss, backward, update)
    books = Bookkeeping(cfg, accelerator, unwrapped, catalogue)  # early stopping: -NDCG@k
    step = TrainStep(cfg, accelerator, model, optimizer, scheduler, books.progress)
    progress, stopper = books.progress, books.stopper

    if resume_from is not None:
        books.resume(resume_from)
    else:
        scores = evaluate("valid")
        books.start(scores, -scores[f"ndcg@{k}"])

    # loop: train on batches of histories, validate every epoch, keep the best weights
    for epoch in books.epochs():
        adapting = adapts and epoch > cfg.train.head_warmup_epochs
        if adapting and progress.batches_done == 0:  # refresh the table at the epoch's start
            catalogue.table = unwrapped.encode_texts(tokens, cfg.train.eval_batch_size)
        table = catalogue.table.to(accelerator.device)
        model.train()
        train_loader.set_epoch(epoch)
        for batch in books.batches(train_loader, epoch):
            if not adapting:  # the backbone stays as pretrained: no LM pass
                kept = ("history", "targets", "first", "moments", "ages", "first_moments")
                batch = {key: batch[key] for key in kept if key in batch}
            with accelerator.accumulate(model):
                output = model(**batch, table=table)
                summed = sequence_loss(output, seq.loss, seq.negatives, popularity, generator)
                step(output, summed, len(output.targets))
            books.show(loss=f"{progress.mean_loss:.4f}", positions=progress.examples)
        record = books.end_epoch(
            epoch, lambda: evaluate("valid"), adapting=adapting, train_loss=progress.mean_loss
        )
        logger.info(
            "epoch %d: loss %.4f, valid NDCG@%d %.4f, HR@%d %.4f (%.1f s)",
            epoch,
            progress.mean_loss,
            k,
            record[f"valid_ndcg@{k}"],
            k,
            record[f"valid_hr@{k}"],
            record["epoch_seconds"],
        )
        # the backbone's warm-up epochs run to the end whatever the validation says
        if books.next_epoch(-record[f"valid_ndcg@{k}"], may_stop=adapting or not adapts):
            break

    # evaluate: best validation weights, test items after the history and the validation item
    stopper.restore(unwrapped)
    if seq.recency:  # the test histories' validation items are seen by now
        unwrapped.head.set_recency(recent[1])
    test_scores = evaluate("test")
    scores = {f"valid_ndcg@{k}": -stopper.best, **{f"test_{m}": v for m, v in test_scores.items()}}
    results = books.summary(scores, "positions", trainable, started, resume_from)
    shown = headline(test_scores, k)  # NDCG@k, HR@k, MRR
    logger.info("best epoch %d: test %s", stopper.best_epoch, scores_text(shown))

    # save: the artifact apps load (with its model card), the resolved config and the metrics
    card = {f"valid NDCG@{k}": -stopper.best, **{f"test {name}": v for name, v in shown.items()}}
    save_run(accelerator, cfg, TASK, unwrapped, tokenizer, data, results, card)
    if accelerator.is_main_process:
        print(f"test {scores_text(shown, '  ')}  (best epoch {stopper.best_epoch})")
        print(f"model saved to {Path(cfg.output_dir) / 'model'}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


if __name__ == "__main__":
    exit_on_user_error(main)
