"""benchmarks/speed.py runs end to end at tiny scale and reports what it counted and measured."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from benchmarks import speed, speed_styles


def test_quick_speed_benchmark(tmp_path):
    speed.main(["--quick", "--methods", "lora", "top_layers", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "speed_quick.json").read_text())
    report = (tmp_path / "speed_quick.md").read_text()
    for method in ("lora", "top_layers"):
        run = results["methods"][method]
        seed, peftrec = run["seed_style"], run["peftrec"]
        # toy P1: one LM pass per rating
        assert seed["lm_texts_per_epoch"] == peftrec["ratings"] == 480
        # each item text once, 16 per step
        texts = peftrec["lm_texts_per_epoch"]
        assert texts <= 60 and peftrec["lm_calls_per_epoch"] == math.ceil(texts / 16)
        assert run["ratios"]["ratings_per_second"] > 1
        assert peftrec["lm_flops"] > 0 and 0 < peftrec["lm_flops_per_second"] < 1e13
        assert run["matmul_flops_per_second"] > 1e8 and peftrec["peak_step_rss_rise_mib"] >= 0
        assert all(
            math.isfinite(v)
            for v in (
                run["valid_rmse_after_head_warmup"],
                peftrec["valid_rmse_after_1_epoch"],
                seed["valid_rmse_at_equal_wall_time"],
            )
        )
        assert f"| {method} |" in report
    assert results["methods"]["top_layers"]["layer_cache"]["first_cached_block"] == 1
    assert results["methods"]["lora"].get("layer_cache") is None
    assert results["serving"]["pairs"] == 30 * 60 and results["serving"]["scores_per_second"] > 0
    assert results["bars"] == {}  # the bars are for MiniLM, not the tiny model


def test_rating_loss_is_the_recipes():
    """As recipes/train_rating.py on one process: squared error plus l2 x penalty per rating,
    over the ratings, plus transfer.weight x L_S, plus the ridges on the text and fact maps."""
    output = SimpleNamespace(
        scores=torch.tensor([3.0, 4.0, 5.0]), penalty=torch.tensor(0.5), source=torch.tensor(2.0)
    )
    head = SimpleNamespace(
        weight_penalty=lambda: torch.tensor(4.0), knowledge_penalty=lambda: torch.tensor(3.0)
    )
    cfg = SimpleNamespace(
        train=SimpleNamespace(l2=0.1, text_l2=0.01, knowledge_l2=0.001),
        transfer=SimpleNamespace(weight=0.2),
    )
    loss = speed_styles.rating_loss(output, torch.tensor([4.0, 4.0, 3.0]), head, cfg)
    assert loss.item() == pytest.approx(
        (1 + 0 + 4) / 3 + 0.1 * 0.5 + 0.2 * 2.0 + 0.01 * 4 + 0.001 * 3
    )
