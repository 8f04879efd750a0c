"""Top-K ranking with a parameter-efficiently adapted language model (protocol P3; p4 for
continual updates: each user's first interaction of the next block is the target).

Launch:
    peftrec train ranking --config minilm_lora_ranking   (by name; checkout or install)
    accelerate launch recipes/train_ranking.py --config recipes/configs/minilm_lora_ranking.yaml
    python recipes/train_ranking.py --config recipes/configs/minilm_lora_ranking.yaml \\
        ranking.loss=bpr
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 \\
        recipes/train_ranking.py ...   (2 processes on CPU)

Steps: accelerator, seed, data, model, head warm-up on frozen text features, optimizer, prepare,
item-amortised training loop (each step's items, over all processes, are the candidates of one
sampled softmax or BPR) with full-ranking validation and early stopping on NDCG@k, test, save.
A frozen backbone runs no LM after one encoding pass: the same loop trains its towers.
With train.checkpoint_every=N a checkpoint is saved every N optimizer steps; train.resume=true
continues a crashed run from <output_dir>/checkpoints/latest, exactly where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

from accelerate.logging import get_logger

from peftrec.metrics import groups_text, load_metric, scores_text, warm_cold
from peftrec.tasks import TASKS
from peftrec.tasks.ranking.config import RankingRecipeConfig
from peftrec.tasks.ranking.step import (
    excluded_items,
    headline,
    ranking_scores,
    step_loss_sum,
    target_ranks,
    warm_up_ranking_head,
)
from peftrec.training.batches import ItemRatingsCollator
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

TASK = TASKS["ranking"]
logger = get_logger("peftrec.train_ranking")


def main(argv: list[str] | None = None) -> dict:
    # accelerator and seed: the launcher owns hardware (processes, mixed precision)
    cfg, accelerator = start(RankingRecipeConfig, argv, TASK)
    started = time.perf_counter()
    resume_from = resume_point(cfg, accelerator)
    k = cfg.ranking.k

    # data: leave-one-out by time; every interaction is an implicit positive
    data = load_run_data(cfg, TASK)
    train, valid, test = data.train, data.valid, data.test
    train_seen, test_seen = excluded_items(data)  # each user's items seen before, not ranked

    # model: spec -> backbone + adapter, towers and a dot-product head; caches, L_S
    model, tokenizer, tokens = build_run_model(cfg, TASK, data)
    trainable = trainable_counts(model)  # all, the backbone's
    metric = load_metric(TASK.metric)

    def evaluate(which: str) -> dict:
        """Ranking metrics of the validation or test targets, each user's items seen before not
        ranked; the test's also apart for warm and cold target items (p4's next block brings
        users the model line has not learned from)."""
        split, seen = (valid, train_seen) if which == "valid" else (test, test_seen)
        item_text = unwrapped.encode_texts(tokens, cfg.train.eval_batch_size)
        ranks = target_ranks(unwrapped.head, item_text, split.users, split.items, seen).numpy()
        if which == "valid":
            return ranking_scores(metric, ranks, k)
        groups = warm_cold(data.known_users[split.users], data.known_items[split.items])
        return ranking_scores(metric, ranks, k, groups)

    # warm-up: the towers on frozen pooled text features, with the loss of the loop
    # (a resumed run finds its result in the checkpoint)
    if resume_from is None:
        warm_up_ranking_head(
            model.head,
            model.encode_texts(tokens, cfg.train.eval_batch_size),
            train.users,
            train.items,
            epochs=cfg.train.head_warmup_epochs,
            lr=cfg.train.head_lr,
            l2=cfg.train.l2,
            text_l2=cfg.train.text_l2,
            knowledge_l2=cfg.train.knowledge_l2,
            loss=cfg.ranking.loss,
            temperature=cfg.ranking.temperature,
            items_per_step=cfg.train.items_per_step,
            seed=cfg.train.seed,
        )
        logger.info("head warm-up: %d epochs on frozen text features", cfg.train.head_warmup_epochs)

    # optimizer, schedule and item-amortised batches: one LM pass per distinct item per step
    collator = ItemRatingsCollator(
        tokens,
        train.users,
        train.items,
        train.ratings,
        tokenizer.pad_token_id,
        negatives=cfg.ranking.negatives,
        seed=cfg.train.seed,
    )
    # a step's items are its softmax's negatives: bucketing them by text length biases them, which
    # only pays when an LM pass runs per step (not on cached features or ID-only items)
    train_loader = item_batches(
        collator,
        [len(t) for t in tokens],
        cfg,
        accelerator,
        length_buckets=model.feature_cache is None,
    )
    optimizer = make_optimizer(cfg, model)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    scheduler = make_scheduler(cfg, optimizer, len(train_loader), accelerator)
    unwrapped = accelerator.unwrap_model(model)

    # loop state (saved in every checkpoint with the model, optimizer, scheduler and RNG states)
    # and the step every batch ends with (gather, loss, backward, update, checkpoint)
    books = Bookkeeping(cfg, accelerator, unwrapped)  # early stopping minimises -NDCG@k
    step = TrainStep(cfg, accelerator, model, optimizer, scheduler, books.progress)
    progress, stopper = books.progress, books.stopper

    if resume_from is not None:
        books.resume(resume_from)
    else:
        scores = evaluate("valid")
        books.start(scores, -scores[f"ndcg@{k}"], phase="head warm-up")
        logger.info("epoch 0 (after head warm-up): valid NDCG@%d %.4f", k, scores[f"ndcg@{k}"])

    # loop: train on item batches, validate every epoch, keep the best weights
    for epoch in books.epochs():
        model.train()
        train_loader.set_epoch(epoch)
        for batch in books.batches(train_loader, epoch):
            with accelerator.accumulate(model):
                batch.pop("ratings")
                output = model(**batch)
                # each pair's positive against every item of the step (all processes' pieces)
                summed, pairs = step_loss_sum(
                    accelerator,
                    unwrapped.head,
                    output,
                    batch["users"],
                    batch["positions"],
                    cfg.ranking.loss,
                    cfg.ranking.temperature,
                )
                step(output, summed, pairs)
            books.show(loss=f"{progress.mean_loss:.4f}", pairs=progress.examples)
        record = books.end_epoch(epoch, lambda: evaluate("valid"), train_loss=progress.mean_loss)
        logger.info(
            "epoch %d: loss %.4f, valid NDCG@%d %.4f, HR@%d %.4f (%.1f s, %d pairs)",
            epoch,
            progress.mean_loss,
            k,
            record[f"valid_ndcg@{k}"],
            k,
            record[f"valid_hr@{k}"],
            record["epoch_seconds"],
            progress.examples,
        )
        if books.next_epoch(-record[f"valid_ndcg@{k}"]):
            break

    # evaluate: best validation weights, test targets, the items each user had before excluded
    stopper.restore(unwrapped)
    test_scores = evaluate("test") if len(test) else {}
    scores = {f"valid_ndcg@{k}": -stopper.best, **{f"test_{m}": v for m, v in test_scores.items()}}
    results = books.summary(scores, "pairs", trainable, started, resume_from)
    shown = headline(test_scores, k) if test_scores else {}  # NDCG@k, HR@k, MRR
    if test_scores:
        logger.info("best epoch %d: test %s", stopper.best_epoch, scores_text(shown))
        by_group = groups_text(test_scores, f"ndcg@{k}", "users")
        logger.info("test NDCG@%d by group: %s", k, by_group)

    # save: the artifact apps load (with its model card), the resolved config and the metrics
    card = {f"valid NDCG@{k}": -stopper.best, **{f"test {name}": v for name, v in shown.items()}}
    save_run(accelerator, cfg, TASK, unwrapped, tokenizer, data, results, card)
    if accelerator.is_main_process:
        if test_scores:
            print(f"test {scores_text(shown, '  ')}  (best epoch {stopper.best_epoch})")
        else:
            print(
                f"valid NDCG@{k} {-stopper.best:.4f} (best epoch {stopper.best_epoch}); no test "
                "split: trained on all interactions but the validation share"
            )
        print(f"model saved to {Path(cfg.output_dir) / 'model'}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


if __name__ == "__main__":
    exit_on_user_error(main)
