"""Checkpoints that a crash cannot break, and the loop state a recipe needs to resume exactly.

A recipe saves with :func:`save_checkpoint` every few optimizer steps and resumes with
:func:`find_checkpoint` + :func:`load_checkpoint`. Layout of ``<output_dir>/checkpoints``::

    latest                 text file naming the newest complete checkpoint (replaced atomically)
    step-00000012/         accelerator.save_state(): model, optimizer, scheduler, the RNG state of
                           every process, the registered objects (TrainingProgress, EarlyStopping),
                           plus config.yaml and manifest.json (file sizes, process count)

A checkpoint is written into a hidden ``.step-N.partial`` folder, renamed when every process has
finished writing, and only then named in ``latest``; older checkpoints are deleted after that. So
a crash at any moment leaves ``latest`` naming a complete checkpoint (the new or the previous one).

Accelerate writes the optimizer, scheduler and registered objects with pickle and reads the
registered objects back with ``weights_only=False``; :func:`load_checkpoint` first re-reads them
with ``weights_only=True``, so a checkpoint holding anything but tensors and plain values is
refused before Accelerate unpickles it. (Saved *models*, the artifact apps load, never use pickle.)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from peftrec.files import write_atomic

logger = logging.getLogger(__name__)

POINTER = "latest"
MANIFEST = "manifest.json"
CONFIG = "config.yaml"
# keys that may change between a crash and its resume without changing the result
RESUMABLE_CHANGES = ("train.resume", "train.checkpoint_every", "train.log_with", "output_dir")
_NAME = re.compile(r"step-\d{8}")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, unsafe, or from a different run."""


@dataclass
class TrainingProgress:
    """Where the training loop is; registered with ``accelerator.register_for_checkpointing``.

    Every process holds the same values (the per-step sums are gathered across processes), so
    the copy the main process saves is valid for all of them.
    """

    epoch: int = 1
    """The epoch in progress (1-based)."""
    batches_done: int = 0
    """Batches of this epoch already trained on (what a resumed run skips)."""
    step: int = 0
    """Optimizer steps so far."""
    loss_sum: float = 0.0
    """Sum of the per-example training losses in this epoch (squared errors for ratings), over
    all processes."""
    examples: int = 0
    """Training examples (ratings, positive pairs) seen in this epoch, over all processes."""
    source_loss: float = 0.0
    """Sum over this epoch's batches of L_S (the source-domain term), averaged over processes."""
    examples_per_process: list[int] = field(default_factory=list)
    """Training examples each process has trained on, over the whole run."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """One record per finished epoch (epoch 0: after the head warm-up)."""

    def record(self, pieces: torch.Tensor) -> None:
        """Add one batch: ``pieces[p] = (loss sum, examples[, L_S])`` of process ``p``."""
        pieces = pieces.double().cpu()
        self.loss_sum += float(pieces[:, 0].sum())
        if pieces.size(1) > 2:
            self.source_loss += float(pieces[:, 2].mean())
        counts = pieces[:, 1].round().long().tolist()
        self.examples += sum(counts)
        if not self.examples_per_process:
            self.examples_per_process = [0] * len(counts)
        self.examples_per_process = [
            a + b for a, b in zip(self.examples_per_process, counts, strict=True)
        ]
        self.batches_done += 1

    @property
    def mean_loss(self) -> float:
        """The epoch's mean training loss per example so far."""
        return self.loss_sum / max(self.examples, 1)

    @property
    def mean_source_loss(self) -> float:
        return self.source_loss / max(self.batches_done, 1)

    def next_epoch(self) -> None:
        self.epoch, self.batches_done, self.loss_sum, self.examples = self.epoch + 1, 0, 0.0, 0
        self.source_loss = 0.0

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)


def save_checkpoint(accelerator, folder: str | Path, step: int, config: dict[str, Any]) -> Path:
    """``accelerator.save_state`` into ``folder/step-<step>`` and point ``folder/latest`` at it.

    ``config`` (the resolved settings as plain dicts) is saved with it for
    :func:`check_resumable`. Call it on every process (each one writes its own RNG state).
    Returns the checkpoint folder.
    """
    folder = Path(folder)
    name = f"step-{step:08d}"
    partial = folder / f".{name}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # ASCII with escapes, so that every string (even U+0085) reads back unchanged
        (partial / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=False))
        files = {p.name: p.stat().st_size for p in sorted(partial.iterdir())}
        manifest = {"step": step, "num_processes": accelerator.num_processes, "files": files}
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2))
        for path in partial.iterdir():
            _fsync(path)
        _fsync(partial)
        target = folder / name
        if target.exists() and _read_pointer(folder) != name:
            shutil.rmtree(target)  # a leftover of a crash after the rename, never pointed at
        os.replace(partial, target)
        _write_pointer(folder, name)
        for old in folder.iterdir():  # previous checkpoints and partial folders of crashed saves
            if old.is_dir() and old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        logger.info("checkpoint saved: %s", target)
    accelerator.wait_for_everyone()
    return folder / name


def find_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint ``folder/latest`` names, checked to be complete; None when there is none."""
    folder = Path(folder)
    name = _read_pointer(folder)
    if name is None:
        return None
    if not _NAME.fullmatch(name):
        raise CheckpointError(
            f"{folder / POINTER}: names {name!r}, which is not a checkpoint folder name"
        )
    path = folder / name
    manifest = _read_manifest(path)
    for file, size in manifest["files"].items():
        actual = (path / file).stat().st_size if (path / file).is_file() else None
        if actual != size:
            state = "missing" if actual is None else f"{actual} bytes, {size} were written"
            raise CheckpointError(f"{path / file}: {state}; the checkpoint is damaged")
    return path


def check_resumable(checkpoint: Path, config: dict[str, Any], num_processes: int) -> None:
    """Raise unless ``config`` and the process count match the run that wrote ``checkpoint``."""
    manifest = _read_manifest(checkpoint)
    if manifest["num_processes"] != num_processes:
        raise CheckpointError(
            f"{checkpoint} was written by {manifest['num_processes']} process(es); resume it with "
            f"the same number (now {num_processes})"
        )
    try:
        saved = yaml.safe_load((checkpoint / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise CheckpointError(f"{checkpoint / CONFIG}: unreadable ({err})") from None
    before, now = _flatten(saved), _flatten(config)
    changed = sorted(
        k
        for k in before.keys() | now.keys()
        if k not in RESUMABLE_CHANGES and before.get(k, "<unset>") != now.get(k, "<unset>")
    )
    if changed:
        details = "; ".join(
            f"{k}: {before.get(k, '<unset>')!r} then, {now.get(k, '<unset>')!r} now"
            for k in changed
        )
        raise CheckpointError(
            f"cannot resume from {checkpoint}: the settings changed ({details}). A resumed run "
            "continues the same run; use the old settings, or another output_dir (or "
            "train.resume=false) to start afresh"
        )


def load_checkpoint(accelerator, checkpoint: Path) -> None:
    """Restore everything ``save_checkpoint`` saved (models, optimizer, RNG, registered objects)."""
    for path in sorted(checkpoint.glob("custom_checkpoint_*.pkl")):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # anything torch cannot load this way is refused
            raise CheckpointError(
                f"{path}: not plain tensors and values, refusing to unpickle it ({err})"
            ) from None
    accelerator.load_state(str(checkpoint))


def _write_pointer(folder: Path, name: str) -> None:
    write_atomic(folder / POINTER, name + "\n")
    _fsync(folder)


def _read_pointer(folder: Path) -> str | None:
    try:
        return (folder / POINTER).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{folder / POINTER}: unreadable ({err})") from None


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        if not isinstance(manifest.get("files"), dict) or not isinstance(
            manifest.get("num_processes"), int
        ):
            raise ValueError("no file list or process count")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing or incomplete checkpoint (no {MANIFEST})") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path / MANIFEST}: damaged ({err})") from None
    return manifest


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat
