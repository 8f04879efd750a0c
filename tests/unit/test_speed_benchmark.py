"""benchmarks/speed.py runs end to end at tiny scale and reports what it counted and measured."""

from __future__ import annotations

import json
import math

from benchmarks import speed


def test_quick_speed_benchmark(tmp_path):
    speed.main(["--quick", "--methods", "lora", "top_layers", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "speed_quick.json").read_text())
    report = (tmp_path / "speed_quick.md").read_text()
    for method in ("lora", "top_layers"):
        run = results["methods"][method]
        seed, peftrec = run["seed_style"], run["peftrec"]
        assert seed["lm_texts_per_epoch"] == peftrec["ratings"] == 480  # toy P1: one LM pass per rating
        assert peftrec["lm_texts_per_epoch"] <= 60 and peftrec["lm_calls_per_epoch"] == math.ceil(
            peftrec["lm_texts_per_epoch"] / 16)  # each item text once, 16 per step
        assert run["ratios"]["ratings_per_second"] > 1
        assert peftrec["lm_flops"] > 0 and 0 < peftrec["lm_flops_per_second"] < 1e13
        assert run["matmul_flops_per_second"] > 1e8 and peftrec["peak_step_rss_rise_mib"] >= 0
        assert all(math.isfinite(v) for v in (run["valid_rmse_after_head_warmup"], peftrec["valid_rmse_after_1_epoch"],
                                              seed["valid_rmse_at_equal_wall_time"]))
        assert f"| {method} |" in report
    assert results["methods"]["top_layers"]["layer_cache"]["first_cached_block"] == 1
    assert results["methods"]["lora"].get("layer_cache") is None
    assert results["serving"]["pairs"] == 30 * 60 and results["serving"]["scores_per_second"] > 0
    assert results["bars"] == {}  # the bars are for MiniLM, not the tiny model
