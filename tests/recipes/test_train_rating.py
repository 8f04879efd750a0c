"""The rating recipe run for real, as a subprocess, at tiny scale (each run costs ~10 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from peftrec.config import RatingRecipeConfig, load_config
from peftrec.recommender import Recommender

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "train_rating.py"
BIN = Path(sys.executable).parent


def tiny_overrides(toy_files, backbone, out) -> list[str]:
    return [
        "data.dataset=files",
        f"data.interactions={toy_files['interactions']}",
        f"data.items={toy_files['items']}",
        "data.item_template={title}. Genres: {genres}.",
        "data.max_length=16",
        f"backbone.name={backbone}",
        "model.dim=8",
        "train.epochs=2",
        "train.items_per_step=16",
        "train.head_warmup_epochs=2",
        f"output_dir={out}",
    ]


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300, **kwargs
    )


def test_recipe_trains_saves_and_the_app_loads_it(tmp_path, toy_files, tiny_gpt2):
    out = tmp_path / "run"
    result = run(
        [
            sys.executable,
            str(RECIPE),
            "--config",
            str(REPO / "recipes/configs/minilm_lora_rating.yaml"),
            *tiny_overrides(toy_files, tiny_gpt2, out),
            "adapter.target_modules=null",  # GPT-2's default
            "transfer.loss=lm",
            "transfer.weight=0.1",
        ]
    )  # + causal LM on the item texts
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test RMSE" in result.stdout and f"model saved to {out / 'model'}" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["history"][0]["phase"] == "head warm-up" and len(metrics["history"]) == 3
    assert all(
        h["train_source_loss"] > 0 for h in metrics["history"][1:]
    )  # L_S was computed every epoch
    groups = [metrics[f"test_count_{g}"] for g in ("warm", "cold_items", "cold_users")]
    assert groups[0] <= metrics["test_count"] <= sum(groups) and np.isfinite(
        metrics["test_rmse_warm"]
    )
    assert np.isfinite(metrics["test_rmse"]) and metrics["test_rmse"] == pytest.approx(
        np.sqrt(metrics["test_mse"])
    )
    assert metrics["trainable_parameters"] > metrics["backbone_trainable_parameters"] > 0
    resolved = load_config(RatingRecipeConfig, out / "config.yaml")  # the resolved config reloads
    assert resolved.backbone.name == str(tiny_gpt2) and resolved.train.epochs == 2
    rec = Recommender.from_pretrained(out / "model")
    top = rec.recommend("u0", k=5)
    assert len(top) == 5 and all(item.startswith("i") for item, _ in top)


def test_accelerate_launch_runs_the_same_recipe(tmp_path, toy_files, tiny_bert):
    out = tmp_path / "run"
    result = run(
        [
            str(BIN / "accelerate"),
            "launch",
            "--num_processes",
            "1",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(RECIPE),
            *tiny_overrides(toy_files, tiny_bert, out),
            "train.max_steps=3",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 1 and len(metrics["history"]) == 2  # stopped after 3 steps
    assert (out / "model" / "adapter" / "adapter_model.safetensors").is_file()


def test_config_typo_fails_at_start_with_the_key(tmp_path):
    result = run([sys.executable, str(RECIPE), "train.epohcs=2", f"output_dir={tmp_path / 'x'}"])
    assert result.returncode == 2
    assert "train.epohcs" in result.stderr and "train.epochs" in result.stderr
    assert not (tmp_path / "x").exists()
