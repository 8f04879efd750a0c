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
from tqdm.auto import tqdm

from peftrec.checkpointing import TrainingProgress, load_checkpoint, save_checkpoint
from peftrec.config import SequentialRecipeConfig, config_to_dict
from peftrec.losses import ridge, step_loss
from peftrec.metrics import load_metric, scores_by_group
from peftrec.ranking import excluded_items
from peftrec.recipe import (
    build_run_model,
    exit_on_user_error,
    item_batches,
    load_run_data,
    make_optimizer,
    make_scheduler,
    resume_point,
    run_summary,
    save_run,
    start,
    trainable_counts,
)
from peftrec.sequential import (
    CatalogueTable,
    SequenceCollator,
    next_item_ranks,
    run_histories,
    sequence_loss,
)
from peftrec.tasks import TASKS
from peftrec.training import EarlyStopping

TASK = TASKS["sequential"]
logger = get_logger("peftrec.train_sequential")


def main(argv: list[str] | None = None) -> dict:
    # accelerator and seed: the launcher owns hardware (processes, mixed precision)
    cfg, accelerator = start(SequentialRecipeConfig, argv, TASK)
    started = time.perf_counter()
    checkpoints = Path(cfg.output_dir) / "checkpoints"
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
    trainable, backbone_trainable = trainable_counts(model)
    adapts = backbone_trainable > 0
    metric = load_metric(TASK.metric)

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
        if which == "valid":
            ranks = next_item_ranks(
                unwrapped.head, table, histories.valid, valid.items, valid_exclude
            ).numpy()
            return {key: float(v) for key, v in metric.compute(predictions=ranks, k=k).items()}
        ranks = next_item_ranks(
            unwrapped.head, table, histories.test, test.items, test_exclude
        ).numpy()
        scores = {key: float(v) for key, v in metric.compute(predictions=ranks, k=k).items()}
        warm_item, warm_user = data.known_items[test.items], data.known_users[test.users]
        scores.update(
            scores_by_group(
                {"warm": warm_item & warm_user, "cold_items": ~warm_item, "cold_users": ~warm_user},
                lambda rows: metric.compute(predictions=ranks[rows], k=k),
                (f"ndcg@{k}", f"hr@{k}", "mrr"),
            )
        )
        return scores

    # loop state, saved in every checkpoint with the model, optimizer, scheduler and RNG states
    progress, stopper = TrainingProgress(), EarlyStopping(cfg.train.patience)  # minimises -NDCG@k
    accelerator.register_for_checkpointing(progress, stopper, catalogue)

    def finished() -> bool:
        return cfg.train.max_steps is not None and progress.step >= cfg.train.max_steps

    if resume_from is not None:
        load_checkpoint(accelerator, resume_from)
        logger.info(
            "resumed at epoch %d, batch %d, step %d",
            progress.epoch,
            progress.batches_done,
            progress.step,
        )
    else:
        scores = evaluate("valid")
        progress.history.append({"epoch": 0, **{f"valid_{key}": v for key, v in scores.items()}})
        stopper.update(-scores[f"ndcg@{k}"], 0, unwrapped)

    # loop: train on batches of histories, validate every epoch, keep the best weights
    for epoch in range(progress.epoch, cfg.train.epochs + 1):
        adapting = adapts and epoch > cfg.train.head_warmup_epochs
        if adapting and progress.batches_done == 0:  # refresh the table at the epoch's start
            catalogue.table = unwrapped.encode_texts(tokens, cfg.train.eval_batch_size)
        table = catalogue.table.to(accelerator.device)
        model.train()
        train_loader.set_epoch(epoch)
        tick = time.perf_counter()
        remaining = train_loader
        if progress.batches_done:  # resuming mid-epoch: the batches before the checkpoint are done
            remaining = accelerator.skip_first_batches(train_loader, progress.batches_done)
        bar = tqdm(
            remaining,
            desc=f"epoch {epoch}",
            initial=progress.batches_done,
            total=len(train_loader),
            disable=not accelerator.is_local_main_process,
            leave=False,
        )
        for batch in bar:
            if finished():
                break
            if not adapting:  # the backbone stays as pretrained: no LM pass
                batch = {key: batch[key] for key in ("history", "targets", "first")}
            with accelerator.accumulate(model):
                output = model(**batch, table=table)
                summed = sequence_loss(output, seq.loss, seq.negatives, popularity, generator)
                positions = len(output.targets)
                # (loss sum, positions, L_S) of every process's piece of this step; dividing by the
                # step's total positions makes the gradient DDP averages the 1-process one
                pieces = accelerator.gather(
                    torch.tensor(
                        [[summed.item(), positions, output.source.item()]],
                        dtype=torch.float64,
                        device=accelerator.device,
                    )
                )
                loss = step_loss(
                    summed,
                    output.penalty,
                    positions,
                    l2=cfg.train.l2,
                    step_count=pieces[:, 1].sum().item(),
                    processes=accelerator.num_processes,
                )
                accelerator.backward(
                    loss
                    + cfg.transfer.weight * output.source
                    + ridge(unwrapped.head, cfg.train.text_l2, cfg.train.knowledge_l2)
                )
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            progress.record(pieces)
            bar.set_postfix(loss=f"{progress.mean_loss:.4f}", positions=progress.examples)
            if accelerator.sync_gradients:
                progress.step += 1
                if cfg.train.checkpoint_every and progress.step % cfg.train.checkpoint_every == 0:
                    save_checkpoint(accelerator, checkpoints, progress.step, config_to_dict(cfg))
        seconds = time.perf_counter() - tick  # training only; validation is timed apart
        tick = time.perf_counter()
        scores = evaluate("valid")
        progress.history.append(
            {
                "epoch": epoch,
                "adapting": adapting,
                "train_loss": progress.mean_loss,
                "train_source_loss": progress.mean_source_loss,
                "epoch_seconds": seconds,
                "valid_seconds": time.perf_counter() - tick,
                **{f"valid_{key}": v for key, v in scores.items()},
            }
        )
        accelerator.log(progress.history[-1], step=epoch)
        logger.info(
            "epoch %d: loss %.4f, valid NDCG@%d %.4f, HR@%d %.4f (%.1f s)",
            epoch,
            progress.mean_loss,
            k,
            scores[f"ndcg@{k}"],
            k,
            scores[f"hr@{k}"],
            seconds,
        )
        stop = stopper.update(-scores[f"ndcg@{k}"], epoch, unwrapped)
        progress.next_epoch()
        if (stop and not (adapts and epoch <= cfg.train.head_warmup_epochs)) or finished():
            break

    # evaluate: best validation weights, test items after the history and the validation item
    stopper.restore(unwrapped)
    test_scores = evaluate("test")
    results = run_summary(
        {
            "best_epoch": stopper.best_epoch,
            f"valid_ndcg@{k}": -stopper.best,
            **{f"test_{key}": v for key, v in test_scores.items()},
            "trainable_parameters": trainable,
            "backbone_trainable_parameters": backbone_trainable,
            "positions_per_process": progress.examples_per_process,
            "steps": progress.step,
            "resumed_from": str(resume_from) if resume_from else None,
        },
        started,
        accelerator,
        progress.history,
    )
    logger.info(
        "best epoch %d: test NDCG@%d %.4f, HR@%d %.4f, MRR %.4f",
        stopper.best_epoch,
        k,
        test_scores[f"ndcg@{k}"],
        k,
        test_scores[f"hr@{k}"],
        test_scores["mrr"],
    )

    # save: the artifact apps load (with its model card), the resolved config and the metrics
    save_run(
        accelerator,
        cfg,
        TASK,
        unwrapped,
        tokenizer,
        data,
        results,
        {
            f"valid NDCG@{k}": -stopper.best,
            f"test NDCG@{k}": test_scores[f"ndcg@{k}"],
            f"test HR@{k}": test_scores[f"hr@{k}"],
            "test MRR": test_scores["mrr"],
        },
    )
    if accelerator.is_main_process:
        print(
            f"test NDCG@{k} {test_scores[f'ndcg@{k}']:.4f}  HR@{k} {test_scores[f'hr@{k}']:.4f}  "
            f"MRR {test_scores['mrr']:.4f}  (best epoch {stopper.best_epoch})"
        )
        print(f"model saved to {Path(cfg.output_dir) / 'model'}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


if __name__ == "__main__":
    exit_on_user_error(main)
