"""Checkpoint and resume: a run killed with SIGKILL mid-epoch and resumed ends exactly like an
uninterrupted one; a crash during a save never leaves a broken latest checkpoint."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from accelerate import Accelerator

from peftrec.config import config_to_dict
from peftrec.tasks.rating.config import RatingRecipeConfig
from peftrec.training import checkpointing
from peftrec.training.batches import EarlyStopping
from peftrec.training.checkpointing import (
    CheckpointError,
    TrainingProgress,
    check_resumable,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

from .test_train_rating import RECIPE, REPO, tiny_overrides

# Run under this driver, the recipe pauses inside its `PAUSE_AT`-th optimizer step (before the
# update) and says so; the test then kills it from outside. The hook lives in the test only.
DRIVER = """
import os, runpy, sys, time
import torch
pause_at, calls, original = int(os.environ["PAUSE_AT"]), [0], torch.optim.AdamW.step
def step(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == pause_at:
        print(f"PAUSED AT STEP {pause_at}", file=sys.stderr, flush=True)
        time.sleep(600)
    return original(self, *args, **kwargs)
torch.optim.AdamW.step = step
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
# 60 items / 8 per step = 8 steps an epoch: checkpoints at steps 4, 8, 12 (epoch 2, batch 4),
# killed during step 14 (epoch 2, batch 6). LoRA and BERT dropout stay on, so the RNG state matters.
SETTINGS = ["train.epochs=2", "train.items_per_step=8", "train.checkpoint_every=4"]


def popen(command, log, **env):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        **env,
    }
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=REPO)


# what each recipe's runs must agree on: per-process counts, the test metric, per-epoch numbers
RECIPES = {
    "rating": (RECIPE, "ratings_per_process", "test_rmse", ("valid_rmse", "train_rmse")),
    "ranking": (
        RECIPE.with_name("train_ranking.py"),
        "pairs_per_process",
        "test_ndcg@10",
        ("valid_ndcg@10", "train_loss"),
    ),
    # 30 toy users / 4 per step = 8 steps an epoch, like the others; LoRA adapts from epoch 1
    "sequential": (
        RECIPE.with_name("train_sequential.py"),
        "positions_per_process",
        "test_ndcg@10",
        ("valid_ndcg@10", "train_loss"),
    ),
}
EXTRA = {"sequential": ["sequence.users_per_step=4", "sequence.max_history=8"]}


@pytest.mark.parametrize("task", RECIPES)
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(
    tmp_path, toy_files, tiny_bert, task
):
    recipe, counts, test_key, epoch_keys = RECIPES[task]
    settings = [*SETTINGS, *EXTRA.get(task, [])]
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    with (
        open(tmp_path / "full.log", "w") as full_log,
        open(tmp_path / "crash.log", "w") as crash_log,
    ):
        reference = popen(
            [sys.executable, str(recipe), *tiny_overrides(toy_files, tiny_bert, full), *settings],
            full_log,
        )
        victim = popen(
            [
                sys.executable,
                str(driver),
                str(recipe),
                *tiny_overrides(toy_files, tiny_bert, crashed),
                *settings,
            ],
            crash_log,
            PAUSE_AT="14",
        )
        deadline = time.monotonic() + 240
        while "PAUSED AT STEP 14" not in (tmp_path / "crash.log").read_text():
            assert victim.poll() is None, (tmp_path / "crash.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never reached step 14"
            time.sleep(0.2)
        # mid-epoch, with a checkpoint behind it: kill it as a crash would
        assert (crashed / "checkpoints" / "latest").read_text().strip() == "step-00000012"
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=60) == -signal.SIGKILL
        assert not (crashed / "metrics.json").exists() and not (crashed / "model").exists()
        saved = torch.load(
            crashed / "checkpoints" / "step-00000012" / "custom_checkpoint_0.pkl", weights_only=True
        )
        assert (saved["epoch"], saved["batches_done"], saved["step"]) == (2, 4, 12)

        resumed = popen(
            [
                sys.executable,
                str(recipe),
                *tiny_overrides(toy_files, tiny_bert, crashed),
                *settings,
                "train.resume=true",
            ],
            crash_log,
        )
        assert reference.wait(timeout=240) == 0, (tmp_path / "full.log").read_text()[-3000:]
        assert resumed.wait(timeout=240) == 0, (tmp_path / "crash.log").read_text()[-3000:]
    log = (tmp_path / "crash.log").read_text().split("PAUSED AT STEP 14")[1]  # the resumed run's
    assert f"resuming from {crashed / 'checkpoints' / 'step-00000012'}" in log
    assert "resumed at epoch 2, batch 4, step 12" in log
    assert "head warm-up:" not in log  # its result came from the checkpoint
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (full, crashed))
    assert b["resumed_from"] and a["resumed_from"] is None
    assert (a["best_epoch"], a["steps"], a[counts]) == (b["best_epoch"], b["steps"], b[counts])
    assert a[test_key] == pytest.approx(b[test_key], abs=1e-6)
    assert len(a["history"]) == len(b["history"]) == 3
    for before, after in zip(a["history"], b["history"], strict=True):
        for key in epoch_keys:
            assert before.get(key, 0) == pytest.approx(after.get(key, 0), abs=1e-6)


# --- the checkpoint files themselves, in-process on a small model (fast) --------------------------


@pytest.fixture
def trainer():
    """An accelerator with a prepared model and optimizer and a registered TrainingProgress."""
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(progress)
    yield accelerator, model, progress
    accelerator.free_memory()


CONFIG = config_to_dict(RatingRecipeConfig())


def test_checkpoint_round_trip_and_only_the_latest_is_kept(tmp_path, trainer):
    accelerator, model, progress = trainer
    progress.step, progress.batches_done = 3, 2
    first = save_checkpoint(accelerator, tmp_path, 3, CONFIG)
    weights = model.weight.detach().clone()
    progress.step = 6
    with torch.no_grad():
        model.weight.add_(1.0)
    second = save_checkpoint(accelerator, tmp_path, 6, CONFIG)
    assert find_checkpoint(tmp_path) == second and not first.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000006"]
    # restoring the older state: the weights and the registered progress come back
    with torch.no_grad():
        model.weight.copy_(weights)
    progress.step = 0
    load_checkpoint(accelerator, second)
    assert progress.step == 6 and torch.equal(model.weight, weights + 1.0)
    assert find_checkpoint(tmp_path / "nothing-here") is None


def test_a_crash_during_a_save_leaves_the_previous_checkpoint(tmp_path, trainer, monkeypatch):
    accelerator, _, _ = trainer
    good = save_checkpoint(accelerator, tmp_path, 3, CONFIG)
    real_save = accelerator.save_state

    def crash_midway(folder):  # writes part of the state, then the process "dies"
        real_save(folder)
        (tmp_path / f".step-{6:08d}.partial" / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(accelerator, "save_state", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(accelerator, tmp_path, 6, CONFIG)
    assert find_checkpoint(tmp_path) == good
    monkeypatch.undo()

    # killed after the rename but before `latest` moved: the new folder is ignored, then replaced
    monkeypatch.setattr(
        checkpointing, "_write_pointer", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt())
    )
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(accelerator, tmp_path, 9, CONFIG)
    assert (tmp_path / "step-00000009").is_dir() and find_checkpoint(tmp_path) == good
    monkeypatch.undo()
    latest = save_checkpoint(accelerator, tmp_path, 9, CONFIG)
    assert find_checkpoint(tmp_path) == latest
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "latest",
        "step-00000009",
    ]  # leftovers gone


def test_damaged_or_foreign_checkpoints_are_refused_by_name(tmp_path, trainer):
    accelerator, _, _ = trainer
    folder = save_checkpoint(accelerator, tmp_path, 3, CONFIG)
    (tmp_path / "latest").write_text("step-00000099\n")
    with pytest.raises(CheckpointError, match=r"step-00000099: missing or incomplete checkpoint"):
        find_checkpoint(tmp_path)
    (tmp_path / "latest").write_text("../../etc\n")
    with pytest.raises(
        CheckpointError, match=r"latest: names '../../etc', which is not a checkpoint"
    ):
        find_checkpoint(tmp_path)
    (tmp_path / "latest").write_text(folder.name)
    data = (folder / "optimizer.bin").read_bytes()
    (folder / "optimizer.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError,
        match=r"optimizer\.bin: \d+ bytes, \d+ were written; the checkpoint is damaged",
    ):
        find_checkpoint(tmp_path)
    (folder / "optimizer.bin").write_bytes(data)

    # a registered-state file that needs arbitrary unpickling is refused before Accelerate loads it
    torch.save({"hook": os.system}, folder / "custom_checkpoint_0.pkl")
    with pytest.raises(
        CheckpointError, match=r"custom_checkpoint_0\.pkl: not plain tensors and values, refusing"
    ):
        load_checkpoint(accelerator, folder)

    changed = config_to_dict(RatingRecipeConfig())
    changed["train"]["lr"], changed["train"]["resume"], changed["output_dir"] = 0.5, True, "moved"
    with pytest.raises(
        CheckpointError, match=r"the settings changed \(train\.lr: 0\.001 then, 0\.5 now\)"
    ):
        check_resumable(folder, changed, 1)
    with pytest.raises(
        CheckpointError,
        match=r"written by 1 process\(es\); resume it with the same number \(now 2\)",
    ):
        check_resumable(folder, CONFIG, 2)
    changed["train"]["lr"] = 0.001
    check_resumable(folder, changed, 1)  # resume, output_dir may change


def test_early_stopping_keeps_what_trains_and_survives_a_checkpoint():
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2), torch.nn.Linear(2, 1)
    )
    model[0].requires_grad_(False)  # a frozen layer: not copied
    stopper = EarlyStopping(patience=2)
    assert stopper.update(1.0, 0, model) is False
    assert set(stopper.state) == {
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
        "2.weight",
        "2.bias",
    }
    best = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    assert stopper.update(2.0, 1, model) is False and stopper.update(3.0, 2, model) is True
    copy = EarlyStopping(patience=2)
    copy.load_state_dict(
        torch.load(_saved(stopper.state_dict()), weights_only=True)
    )  # as a checkpoint would
    copy.restore(model)
    assert (copy.best, copy.best_epoch, copy.bad_epochs) == (1.0, 0, 2)
    for name, value in model.state_dict().items():
        expected = (
            best[name] + 1.0 if name.startswith("0.") else best[name]
        )  # the frozen layer is left alone
        assert torch.equal(value, expected), name


def _saved(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer
