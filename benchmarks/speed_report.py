"""The JSON and Markdown files of ``benchmarks/speed.py``, the bars of issue 4 its full run is
held to, and its section in a suite's report (:func:`speed_section`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.common import hardware_line, write_report
from benchmarks.report_results import fmt_si, relative_link, table

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


def write_files(results: dict, out: Path, name: str) -> list[Path]:
    """``speed_<name>.json`` (``results`` as they are) and ``speed_<name>.md`` in ``out``."""
    return write_report(out / f"speed_{name}.md", markdown(results, name), results, echo=False)


def markdown(results: dict, name: str) -> str:
    env, methods = results["environment"], results["methods"]
    lines = [
        f"# Training and serving speed ({name})",
        "",
        f"{env['model']}, {env['data']}; {hardware_line(env['hardware'])}, fp32, "
        f"torch {env['torch']}. One run, all numbers side by side in one process. "
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


# -- in a suite's report ------------------------------------------------------------------------


def speed_section(files: list[Path], base: Path) -> str:
    """The seed-style baseline of ``benchmarks/speed.py``: ratings/s of one LM pass per
    rating against peftrec's, per method, with a link to its own report (any other JSON: its
    values)."""
    if not files:
        return (
            "Not measured here: `benchmarks/speed.py` compares seed-style training (one LM pass "
            "per rating) with peftrec's; its `speed_*.json` in this folder or its parent appears "
            "here."
        )
    parts = []
    for path in files:
        results = json.loads(path.read_text())
        own = path.with_suffix(".md")
        source = (
            f"[`{own.name}`]({relative_link(own, base)})"
            if own.is_file()
            else f"[`{path.name}`]({relative_link(path, base)})"
        )
        methods = results.get("methods") if isinstance(results, dict) else None
        try:
            rows = [
                [
                    m,
                    fmt_si(r["seed_style"]["ratings_per_second"]),
                    fmt_si(r["peftrec"]["ratings_per_second"]),
                    f"{r['ratios']['ratings_per_second']:.1f}x",
                ]
                for m, r in methods.items()
            ]
            body = table(
                ["method", "seed-style ratings/s", "peftrec ratings/s", "speed-up"], rows, "lrrr"
            )
        except (AttributeError, KeyError, TypeError):  # another layout: its values as they are
            body = table(
                ["measure", "value"], [[f"`{k}`", v] for k, v in flatten(results)][:40], "lr"
            )
        env = results.get("environment", {}) if isinstance(results, dict) else {}
        about = ", ".join(str(env[k]) for k in ("model", "data") if env.get(k))
        parts.append(f"From {source}" + (f" ({about})" if about else "") + ":\n\n" + body)
    return "\n\n".join(parts)


def flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Numeric and text leaves of a JSON value as ``(dotted.key, text)``."""
    if isinstance(value, dict):
        return [
            pair
            for k, v in value.items()
            for pair in flatten(v, f"{prefix}.{k}" if prefix else str(k))
        ]
    if isinstance(value, list):
        return [pair for i, v in enumerate(value) for pair in flatten(v, f"{prefix}[{i}]")]
    if isinstance(value, float):
        return [(prefix, f"{value:.4g}")]
    return [(prefix, str(value))]
