"""The training loop's building blocks: the step every batch ends with, and the epoch bookkeeping.

A recipe keeps its loop in view (Accelerate's plain loop); what differs per task, the loss, stays
inline there (torchtune's ``_loss_step``), and these do what is the same in every recipe::

    books = Bookkeeping(cfg, accelerator, unwrapped)   # progress + early stopping, checkpointed
    step = TrainStep(cfg, accelerator, model, optimizer, scheduler, books.progress)
    if resume_from is not None:
        books.resume(resume_from)                       # the epoch and batch where it stopped
    else:
        scores = validate()
        books.start(scores, scores["rmse"])             # epoch 0: the start, validated
    for epoch in books.epochs():
        model.train()
        for batch in books.batches(train_loader, epoch):   # resumed mid-epoch: the rest only
            with accelerator.accumulate(model):
                output = model(**batch)
                step(output, summed_loss, count)        # gather, loss, backward, update, checkpoint
            books.show(loss=f"{books.progress.mean_loss:.4f}")
        record = books.end_epoch(epoch, validate, train_loss=books.progress.mean_loss)
        logger.info(...)                                # the recipe's own line
        if books.next_epoch(record["valid_rmse"]):      # early stopping or train.max_steps
            break
    books.stopper.restore(unwrapped)                    # the best validation weights
    results = books.summary({"valid_rmse": books.stopper.best, ...}, "ratings", ...)

No Trainer: the recipe calls these; they never call the recipe back (but for ``validate``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from peftrec.config import config_to_dict
from peftrec.training.batches import EarlyStopping, peak_memory_mib
from peftrec.training.checkpointing import TrainingProgress, load_checkpoint, save_checkpoint
from peftrec.training.losses import ridge, step_loss

logger = get_logger("peftrec.training.loop")


def step_objective(
    output, summed: torch.Tensor, count: int, head, cfg, accelerator=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """What one process backpropagates for its piece of an optimizer step, and the pieces.

    ``summed`` is the task loss summed over the piece's ``count`` examples (squared errors,
    pairs, positions, events). The pieces, ``(loss sum, count, L_S)`` of every process, are
    gathered across processes (``accelerator``; None: this process alone); dividing by the
    step's total count makes the loss, and the gradient DDP averages, the one-process one
    (:func:`peftrec.training.losses.step_loss`). Added to it: ``transfer.weight`` x L_S and the
    ridges on
    the text and fact maps of ``head`` (``train.text_l2``, ``train.knowledge_l2``).
    """
    device = summed.device if accelerator is None else accelerator.device
    pieces = torch.tensor(
        [[summed.item(), count, output.source.item()]], dtype=torch.float64, device=device
    )
    if accelerator is not None:
        pieces = accelerator.gather(pieces)
    loss = step_loss(
        summed,
        output.penalty,
        count,
        l2=cfg.train.l2,
        step_count=pieces[:, 1].sum().item(),
        processes=1 if accelerator is None else accelerator.num_processes,
    )
    objective = (
        loss
        + cfg.transfer.weight * output.source
        + ridge(head, cfg.train.text_l2, cfg.train.knowledge_l2)
    )
    return objective, pieces


class TrainStep:
    """The end of every training batch: :func:`step_objective`, backward, optimizer and schedule
    step, zero_grad, the batch recorded in ``progress``, and on each optimizer step the step
    count and, every ``train.checkpoint_every`` steps, a checkpoint in ``<output_dir>/checkpoints``.

    Call it inside ``accelerator.accumulate(model)``, after the forward pass and the task's loss:
    ``step(output, summed, count)``.
    """

    def __init__(self, cfg, accelerator, model, optimizer, scheduler, progress: TrainingProgress):
        self.cfg, self.accelerator, self.progress = cfg, accelerator, progress
        self.optimizer, self.scheduler = optimizer, scheduler
        self.unwrapped = accelerator.unwrap_model(model)
        self.checkpoints = Path(cfg.output_dir) / "checkpoints"

    def __call__(self, output, summed: torch.Tensor, count: int) -> None:
        accelerator, progress = self.accelerator, self.progress
        loss, pieces = step_objective(
            output, summed, count, self.unwrapped.head, self.cfg, accelerator
        )
        accelerator.backward(loss)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()
        progress.record(pieces)
        if accelerator.sync_gradients:
            progress.step += 1
            every = self.cfg.train.checkpoint_every
            if every and progress.step % every == 0:
                config = config_to_dict(self.cfg)
                save_checkpoint(accelerator, self.checkpoints, progress.step, config)


class Bookkeeping:
    """The epoch bookkeeping of a recipe's loop: where it is (:class:`TrainingProgress`), the best
    validation score and its weights (:class:`EarlyStopping`), both saved in every checkpoint
    with ``state`` (other objects the recipe registers, e.g. a catalogue table); resuming into the
    right epoch and batch, the progress bar, one record per epoch in ``progress.history`` (also
    sent to the trackers), early stopping and ``train.max_steps``.

    ``model`` is the unwrapped model whose best weights are kept.
    """

    def __init__(self, cfg, accelerator, model: torch.nn.Module, *state):
        self.cfg, self.accelerator, self.model = cfg, accelerator, model
        self.progress = TrainingProgress()
        self.stopper = EarlyStopping(cfg.train.patience)  # lower is better
        accelerator.register_for_checkpointing(self.progress, self.stopper, *state)
        self.bar: tqdm | None = None
        self._tick = time.perf_counter()

    def resume(self, checkpoint: Path) -> None:
        """Everything the checkpoint saved: model, optimizer, schedule, RNG states, progress."""
        load_checkpoint(self.accelerator, checkpoint)
        progress = self.progress
        logger.info(
            "resumed at epoch %d, batch %d, step %d",
            progress.epoch,
            progress.batches_done,
            progress.step,
        )

    def start(self, scores: dict[str, float], score: float, **fields: Any) -> None:
        """Epoch 0, the start validated: its record (``fields`` first, then ``valid_*``) and
        ``score`` (lower is better) as the first best."""
        valid = {f"valid_{key}": v for key, v in scores.items()}
        self.progress.history.append({"epoch": 0, **fields, **valid})
        self.stopper.update(score, 0, self.model)

    def finished(self) -> bool:
        """``train.max_steps`` optimizer steps done."""
        max_steps = self.cfg.train.max_steps
        return max_steps is not None and self.progress.step >= max_steps

    def epochs(self) -> range:
        """The epochs left to train, from the one in progress to ``train.epochs``."""
        return range(self.progress.epoch, self.cfg.train.epochs + 1)

    def batches(self, loader, epoch: int) -> Iterator[Any]:
        """The epoch's batches under a progress bar; resumed mid-epoch, only those after the
        checkpoint. Ends early at ``train.max_steps``. Times the epoch from here."""
        self._tick = time.perf_counter()
        remaining: Iterable = loader
        if self.progress.batches_done:  # resuming mid-epoch: the batches before are done
            remaining = self.accelerator.skip_first_batches(loader, self.progress.batches_done)
        self.bar = tqdm(
            remaining,
            desc=f"epoch {epoch}",
            initial=self.progress.batches_done,
            total=len(loader),
            disable=not self.accelerator.is_local_main_process,
            leave=False,
        )
        for batch in self.bar:
            if self.finished():
                break
            yield batch

    def show(self, **values: Any) -> None:
        """Running numbers beside the progress bar."""
        self.bar.set_postfix(**values)

    def end_epoch(
        self, epoch: int, validate: Callable[[], dict[str, float]], **fields: Any
    ) -> dict[str, Any]:
        """Validate (timed apart from training) and record the epoch: ``epoch``, ``fields`` (the
        training loss under the task's name), the mean L_S, the seconds, ``valid_*``. The record
        goes into ``progress.history`` and to the trackers; it is returned."""
        seconds = time.perf_counter() - self._tick  # training only; validation is timed apart
        tick = time.perf_counter()
        scores = validate()
        record = {
            "epoch": epoch,
            **fields,
            "train_source_loss": self.progress.mean_source_loss,
            "epoch_seconds": seconds,
            "valid_seconds": time.perf_counter() - tick,
            **{f"valid_{key}": v for key, v in scores.items()},
        }
        self.progress.history.append(record)
        self.accelerator.log(record, step=epoch)
        return record

    def next_epoch(self, score: float, may_stop: bool = True) -> bool:
        """Early stopping's update with the epoch's ``score`` (lower is better), then on to the
        next epoch; True when the loop ends: no progress for ``train.patience`` epochs (unless
        not ``may_stop``) or ``train.max_steps`` reached."""
        stop = self.stopper.update(score, self.progress.epoch, self.model)
        self.progress.next_epoch()
        return (stop and may_stop) or self.finished()

    def summary(
        self,
        scores: dict[str, Any],
        examples: str,
        trainable: tuple[int, int],
        started: float,
        resumed_from: Path | None,
    ) -> dict[str, Any]:
        """What ``metrics.json`` holds: the best epoch, the task's ``scores`` (validation, test,
        in order), the trainable parameters (all, the backbone's), what each process trained on
        (``<examples>_per_process``), the optimizer steps, the checkpoint resumed from; then the
        median epoch seconds, the peak memory, the wall seconds since ``started``, the process
        count and the history."""
        progress = self.progress
        epoch_seconds = [h["epoch_seconds"] for h in progress.history if "epoch_seconds" in h]
        return {
            "best_epoch": self.stopper.best_epoch,
            **scores,
            "trainable_parameters": trainable[0],
            "backbone_trainable_parameters": trainable[1],
            f"{examples}_per_process": progress.examples_per_process,
            "steps": progress.step,
            "resumed_from": str(resumed_from) if resumed_from else None,
            "median_epoch_seconds": float(np.median(epoch_seconds)) if epoch_seconds else None,
            "peak_memory_mib": peak_memory_mib(),
            "wall_seconds": time.perf_counter() - started,
            "num_processes": self.accelerator.num_processes,
            "history": progress.history,
        }
