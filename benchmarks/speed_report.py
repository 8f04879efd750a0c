"""The JSON and Markdown files of ``benchmarks/speed.py``, and the bars of issue 4 its full run
is held to."""

from __future__ import annotations

import json
from pathlib import Path

BARS = {  # issue 4, MiniLM on P1
    "lora_ratings_per_second_ratio >= 50": lambda r: (
        r["methods"]["lora"]["ratios"]["ratings_per_second"] >= 50
    ),
    "top_layers_ratings_per_second_ratio >= 150": lambda r: (
        r["methods"]["top_layers"]["ratios"]["ratings_per_second"] >= 150
    ),
    "lora_epoch_seconds <= 20": lambda r: r["methods"]["lora"]["peftrec"]["epoch_seconds"] <= 20,
    "score_all_pairs_seconds <= 0.5": lambda r: r["serving"]["score_all_seconds"] <= 0.5,
    "lora_lm_flops_share_of_matmul >= 0.5": lambda r: (
        r["methods"]["lora"]["peftrec"]["lm_share_of_matmul"] >= 0.5
    ),
}

METHOD_HEADER = (
    "| method | ratings/s seed | ratings/s peftrec | ratio | LM texts/epoch seed / peftrec "
    "| LM calls/epoch seed / peftrec | epoch s seed (extrap.) / peftrec "
    "| step RSS rise MiB seed / peftrec | LM GFLOP/s seed / peftrec (% of matmul) "
    "| valid RMSE warm-up / seed / peftrec |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)
RATIO_HEADER = (
    "| method | texts ratio | padded tokens/text seed / peftrec "
    "| us per padded token seed / peftrec | LM MFLOP per padded token seed / peftrec | ratio "
    "| matmul GFLOP/s meanwhile |\n"
    "|---|---|---|---|---|---|---|"
)


def write_report(results: dict, out: Path, name: str) -> None:
    """``speed_<name>.json`` (``results`` as they are) and ``speed_<name>.md`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"speed_{name}.json").write_text(json.dumps(results, indent=2))
    (out / f"speed_{name}.md").write_text(markdown(results, name))


def markdown(results: dict, name: str) -> str:
    env, methods = results["environment"], results["methods"]
    lines = [
        f"# Training and serving speed ({name})",
        "",
        f"{env['model']}, {env['data']}; {env['cpu']}, {env['cores']} cores, "
        f"{env['torch_threads']} torch threads, CPU, fp32, torch {env['torch']}. One run, all "
        "numbers side by side in one process. "
        f"Load average {env['load_before'][0]:.1f} before / {env['load_after'][0]:.1f} after "
        "(other jobs on the machine slow both columns alike; the ratios are the robust numbers).",
        "",
        "Seed-style = one LM pass per rating (LM batch = items_per_step = "
        f"{results['train_config']['items_per_step']} ratings). Per method, two copies of the "
        "same warmed-up model train in alternation: a peftrec step, then seed-style steps until "
        "their time catches up, so both run for equal wall time (top_layers: the one-off cache "
        "build counts on peftrec's side) under the same load. Seed-style ratings/s = batch / "
        "median step time (first step excluded); its epoch time is extrapolated from that. Times "
        "include building the batch and the AdamW step. RMSE: validation, after the shared head "
        "warm-up, then seed-style at equal wall time vs one peftrec epoch. Memory: largest RSS "
        "rise over one training step (after malloc_trim; sampled every 5 ms; the first step "
        "includes AdamW's state). LM GFLOP/s: forward+backward FLOPs counted by FlopCounterMode "
        "on 3 batches per style, scaled by padded tokens, over the measured forward+backward "
        "seconds; % of the 1024x1024 fp32 matmul rate measured in bursts between the steps of "
        "the same method.",
        "",
        METHOD_HEADER,
        *(method_row(m, r) for m, r in methods.items()),
        "",
        "Where the ratio comes from: ratings/s ratio = LM texts ratio x padded-tokens-per-text "
        "ratio (length-bucketed vs random batches; real tokens per text "
        f"{next(iter(methods.values()))['peftrec']['real_tokens_per_text']:.1f}) x "
        "wall-time-per-padded-token ratio (an identity); the last follows the LM FLOPs per padded "
        "token (the lower-layer cache removes the frozen blocks' forward) at equal FLOP/s.",
        "",
        RATIO_HEADER,
        *(ratio_row(m, r) for m, r in methods.items()),
    ]
    if "top_layers" in methods and "layer_cache" in methods["top_layers"]:
        c = methods["top_layers"]["layer_cache"]
        lines += [
            "",
            "top_layers lower-layer cache (hidden states entering block "
            f"{c['first_cached_block']} of {c['blocks']}): {c['mib']:.1f} MiB, built once in "
            f"{c['seconds']:.1f} s (not in the epoch time above).",
        ]
    sv = results["serving"]
    lines += [
        "",
        f"Serving ({sv['model']}): {sv['items_per_second']:,.0f} items/s encoded (full "
        f"catalogue, median of 3); all {sv['pairs']:,} user-item pairs scored in "
        f"{sv['score_all_seconds'] * 1000:.1f} ms ({sv['scores_per_second']:,.0f} scores/s, "
        f"median of {sv['repeats']}) from cached item vectors (Recommender.score_all); "
        f"add_items with one changed text {sv['add_one_item_seconds'] * 1000:.0f} ms.",
    ]
    if results["bars"]:
        lines += ["", "| bar (issue 4) | met |", "|---|---|"]
        lines += [f"| {bar} | {'yes' if met else 'no'} |" for bar, met in results["bars"].items()]
    if results.get("notes"):
        lines += ["", *results["notes"]]
    return "\n".join(lines) + "\n"


def method_row(method: str, r: dict) -> str:
    """Throughput, LM work, epoch time, memory, FLOP/s and RMSE of both styles."""
    s, p = r["seed_style"], r["peftrec"]
    return (
        f"| {method} | {s['ratings_per_second']:,.0f} | {p['ratings_per_second']:,.0f} | "
        f"**{r['ratios']['ratings_per_second']:.1f}x** | {s['lm_texts_per_epoch']:,} / "
        f"{p['lm_texts_per_epoch']:,} | {s['lm_calls_per_epoch']} / {p['lm_calls_per_epoch']} | "
        f"{s['epoch_seconds_extrapolated']:,.1f} / {p['epoch_seconds']:.1f} | "
        f"{s['peak_step_rss_rise_mib']:.0f} / {p['peak_step_rss_rise_mib']:.0f} | "
        f"{s['lm_flops_per_second'] / 1e9:.1f} / {p['lm_flops_per_second'] / 1e9:.1f} "
        f"({s['lm_share_of_matmul']:.0%} / {p['lm_share_of_matmul']:.0%}) | "
        f"{r['valid_rmse_after_head_warmup']:.4f} / {s['valid_rmse_at_equal_wall_time']:.4f} / "
        f"{p['valid_rmse_after_1_epoch']:.4f} |"
    )


def ratio_row(method: str, r: dict) -> str:
    """Where the ratings/s ratio comes from: texts, padding, and time per padded token."""
    s, p, q = r["seed_style"], r["peftrec"], r["ratios"]
    return (
        f"| {method} | {q['lm_texts_per_epoch']:.1f} | {s['padded_tokens_per_text']:.1f} / "
        f"{p['padded_tokens_per_text']:.1f} | {s['wall_us_per_padded_token']:.0f} / "
        f"{p['wall_us_per_padded_token']:.0f} | {s['lm_flops_per_padded_token'] / 1e6:.1f} / "
        f"{p['lm_flops_per_padded_token'] / 1e6:.1f} | {q['ratings_per_second']:.1f}x | "
        f"{r['matmul_flops_per_second'] / 1e9:.1f} |"
    )
