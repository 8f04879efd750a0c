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
from tqdm.auto import tqdm

from peftrec.checkpointing import TrainingProgress, load_checkpoint, save_checkpoint
from peftrec.config import PreferenceRecipeConfig, config_to_dict
from peftrec.losses import ridge, step_loss
from peftrec.metrics import load_metric
from peftrec.preference import PreferenceCollator, item_titles, record_texts, share_logit
from peftrec.recipe import (
    build_run_model,
    exit_on_user_error,
    load_run_data,
    make_optimizer,
    make_scheduler,
    resume_point,
    run_summary,
    save_run,
    start,
    trainable_counts,
)
from peftrec.tasks import TASKS
from peftrec.tokens import tokenize_texts
from peftrec.training import EarlyStopping

TASK = TASKS["preference"]
logger = get_logger("peftrec.train_preference")


def main(argv: list[str] | None = None) -> dict:
    # accelerator and seed: the launcher owns hardware (processes, mixed precision)
    cfg, accelerator = start(PreferenceRecipeConfig, argv, TASK)
    started = time.perf_counter()
    checkpoints = Path(cfg.output_dir) / "checkpoints"
    resume_from = resume_point(cfg, accelerator)
    pref = cfg.preference
    cross = pref.reader == "cross"

    # data: records (labelled history of ten, target) by protocol; their targets are the splits
    data = load_run_data(cfg, TASK)
    train = data.records.train

    # model: spec -> backbone + adapter, item tower and the labelled-history user; caches, L_S
    model, tokenizer, tokens = build_run_model(cfg, TASK, data)
    trainable, backbone_trainable = trainable_counts(model)
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

    # loop state, saved in every checkpoint with the model, optimizer, scheduler and RNG states
    progress, stopper = TrainingProgress(), EarlyStopping(cfg.train.patience)  # minimises -AUC
    accelerator.register_for_checkpointing(progress, stopper)

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
    else:  # epoch 0: the untrained head ranks records by the history's like share
        scores = evaluate("valid")
        progress.history.append({"epoch": 0, **{f"valid_{key}": v for key, v in scores.items()}})
        stopper.update(-scores["auc"], 0, unwrapped)
        logger.info("epoch 0 (untrained head): valid AUC %.4f", scores["auc"])

    # loop: train on batches of records, validate every epoch, keep the best weights
    for epoch in range(max(progress.epoch, 1), cfg.train.epochs + 1):
        model.train()
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
            with accelerator.accumulate(model):
                output = model(**batch)
                summed = F.binary_cross_entropy_with_logits(
                    output.logits, output.labels, reduction="sum"
                )
                events = len(output.labels)
                # (BCE sum, events, L_S) of every process's piece of this step; dividing by the
                # step's total events makes the gradient DDP averages the 1-process one
                pieces = accelerator.gather(
                    torch.tensor(
                        [[summed.item(), events, output.source.item()]],
                        dtype=torch.float64,
                        device=accelerator.device,
                    )
                )
                loss = step_loss(
                    summed,
                    output.penalty,
                    events,
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
            bar.set_postfix(bce=f"{progress.mean_loss:.4f}", events=progress.examples)
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
                "train_loss": progress.mean_loss,
                "train_source_loss": progress.mean_source_loss,
                "epoch_seconds": seconds,
                "valid_seconds": time.perf_counter() - tick,
                **{f"valid_{key}": v for key, v in scores.items()},
            }
        )
        accelerator.log(progress.history[-1], step=epoch)
        logger.info(
            "epoch %d: BCE %.4f, valid AUC %.4f, LogLoss %.4f (%.1f s)",
            epoch,
            progress.mean_loss,
            scores["auc"],
            scores["logloss"],
            seconds,
        )
        stop = stopper.update(-scores["auc"], epoch, unwrapped)
        progress.next_epoch()
        if stop or finished():
            break

    # evaluate: the best validation weights, on the test records, once
    stopper.restore(unwrapped)
    test_scores = evaluate("test")
    results = run_summary(
        {
            "best_epoch": stopper.best_epoch,
            "valid_auc": -stopper.best,
            **{f"test_{key}": v for key, v in test_scores.items()},
            "train_records": len(train),
            "trainable_parameters": trainable,
            "backbone_trainable_parameters": backbone_trainable,
            "events_per_process": progress.examples_per_process,
            "steps": progress.step,
            "resumed_from": str(resume_from) if resume_from else None,
        },
        started,
        accelerator,
        progress.history,
    )
    logger.info(
        "best epoch %d: test AUC %.4f, LogLoss %.4f, GAUC %.4f",
        stopper.best_epoch,
        test_scores["auc"],
        test_scores["logloss"],
        test_scores["gauc"],
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
            "valid AUC": -stopper.best,
            "test AUC": test_scores["auc"],
            "test LogLoss": test_scores["logloss"],
            "test GAUC": test_scores["gauc"],
        },
    )
    if accelerator.is_main_process:
        print(
            f"test AUC {test_scores['auc']:.4f}  LogLoss {test_scores['logloss']:.4f}  "
            f"GAUC {test_scores['gauc']:.4f}  (best epoch {stopper.best_epoch}, "
            f"{len(train)} training records)"
        )
        print(f"model saved to {Path(cfg.output_dir) / 'model'}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


if __name__ == "__main__":
    exit_on_user_error(main)
