"""Training and serving speed: peftrec's item-amortised training against one LM pass per rating.

    python -m benchmarks.speed --threads 1  # MiniLM, ml-100k P1, all four methods (~7 min)
    python -m benchmarks.speed --quick      # tiny BERT and toy data: a smoke run in seconds

Everything is measured in one process, on the same model and data. Per method, two copies of the
same warmed-up model (towers trained on frozen text features, as in the recipe) train in
alternation, so that a change in the machine's load hits both alike:

- peftrec: one epoch of the recipe's item-amortised batches (``items_per_step`` distinct texts per
  step, each step using all their training ratings); ``top_layers`` runs on the lower-layer cache;
- seed-style: every rating encodes its own item text (LM batch = ``items_per_step`` ratings); after
  each peftrec step it trains until its time catches up (equal wall time, so the validation RMSEs
  compare at equal wall time); its epoch time is extrapolated from the median step time.

Both take the recipe's optimizer step on the loss of ``recipes/train_rating.py``, the loop's own
``peftrec.training.loop.step_objective`` (``speed_styles.py``: the two styles; ``speed_measure.py``:
timing, memory and FLOPs; ``speed_report.py``: the files written).

LM forward+backward FLOPs are counted with torch's FlopCounterMode on 3 batches per style and
scaled by padded tokens; the reference is a 1024x1024 fp32 matmul timed in short bursts between
the steps. Memory is the largest RSS rise over one training step, after ``malloc_trim`` (torch's
CPU allocator is not seen by tracemalloc). On a shared machine use ``--threads 1``: two OpenMP
threads on two busy cores run several times slower than one. Writes ``speed_<name>.json`` and
``speed_<name>.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import math
import os
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import REPO, hardware
from benchmarks.speed_measure import (
    Tally,
    flops_per_padded_token,
    log,
    matmul_flops_per_second,
    median_seconds,
    style_measures,
    timed_step,
)
from benchmarks.speed_report import BARS, write_files
from benchmarks.speed_styles import (
    peftrec_batches,
    recipe_config,
    seed_style_batches,
    train_step,
    validation_rmse,
    warmed_up_model,
)
from benchmarks.tiny import write_tiny_bert, write_toy_data
from peftrec.app.recommender import Recommender
from peftrec.artifact.save import Catalog
from peftrec.data import load_data, split_rows
from peftrec.models.backbones import load_tokenizer
from peftrec.models.network import RecModel
from peftrec.models.tokens import tokenize_texts
from peftrec.training.recipe import make_optimizer

METHODS = ("lora", "prefix", "top_layers", "full")


def run_method(method: str, setup: dict) -> dict:
    """Seed-style and peftrec training of one adaptation method from the same warmed-up start.

    The two styles train two copies of the model in alternation (after each peftrec step,
    seed-style steps until its time catches up, then a short matmul burst as the FLOP/s
    reference), so a change in the machine's load hits both alike.
    """
    tokens, train, valid, pad_id = setup["tokens"], setup["train"], setup["valid"], setup["pad_id"]
    cfg = recipe_config(method, setup["overrides"])
    train_cfg = cfg.train
    model, start_rmse = warmed_up_model(cfg, setup)
    seed_model = copy.deepcopy(model)
    trainable = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
    log(
        f"{method}: {trainable:,} trainable backbone parameters; valid RMSE after head warm-up "
        f"{start_rmse:.4f}"
    )
    result: dict[str, Any] = {
        "method": method,
        "backbone_trainable_parameters": trainable,
        "valid_rmse_after_head_warmup": start_rmse,
    }

    cache_seconds = 0.0
    if method == "top_layers":
        tick = time.perf_counter()
        cache = model.cache_lower_layers(tokens)
        cache_seconds = time.perf_counter() - tick
        result["layer_cache"] = {
            "seconds": cache_seconds,
            "mib": cache.nbytes / 2**20,
            "first_cached_block": cache.start,
            "blocks": cache.depth,
        }
        log(
            f"{method}: cache of the layers below block {cache.start} of {cache.depth} built in "
            f"{cache_seconds:.1f} s, {cache.nbytes / 2**20:.1f} MiB"
        )
    collator, batches = peftrec_batches(tokens, train, pad_id, train_cfg)
    per_rating = seed_style_batches(train, tokens, pad_id, train_cfg.items_per_step, seed=0)
    model.train()
    seed_model.train()
    other_ratings = seed_style_batches(train, tokens, pad_id, train_cfg.items_per_step, seed=1)
    flops_per_token = {
        "peftrec": flops_per_padded_token(model, [collator(b) for b in list(batches)[:3]]),
        "seed_style": flops_per_padded_token(seed_model, list(itertools.islice(other_ratings, 3))),
    }
    peftrec_step = functools.partial(train_step, model, make_optimizer(cfg, model), cfg=cfg)
    seed_style_step = functools.partial(
        train_step, seed_model, make_optimizer(cfg, seed_model), cfg=cfg
    )
    tally = {"peftrec": Tally(), "seed_style": Tally()}
    references = [matmul_flops_per_second(repeats=3)]

    def seed_step() -> None:
        timed_step(functools.partial(next, per_rating), seed_style_step, tally["seed_style"])

    for step, items in enumerate(batches, 1):
        timed_step(functools.partial(collator, items), peftrec_step, tally["peftrec"])
        # equal wall time: the seed-style copy catches up (top_layers: cache build included)
        while sum(tally["seed_style"].seconds) < sum(tally["peftrec"].seconds) + cache_seconds:
            seed_step()
        references.append(matmul_flops_per_second(repeats=3))
        seed_seconds = tally["seed_style"].seconds
        log(
            f"{method}: peftrec step {step}/{len(batches)} "
            f"({sum(tally['peftrec'].seconds):.1f} s), "
            f"seed-style steps {len(seed_seconds)} ({sum(seed_seconds):.1f} s)"
        )
    while len(tally["seed_style"].seconds) < setup["min_seed_steps"]:
        seed_step()
    reference = statistics.median(references)

    p, s = tally["peftrec"], tally["seed_style"]
    epoch_seconds = sum(p.seconds)
    # the first step of a style warms up
    timed = slice(1, None) if len(s.seconds) > 1 else slice(None)
    rate = train_cfg.items_per_step / statistics.median(s.seconds[timed])
    for style, t in tally.items():
        result[style] = style_measures(t, flops_per_token[style], reference)
    result["peftrec"] |= {
        "epoch_seconds": epoch_seconds,
        "ratings": p.ratings,
        "ratings_per_second": p.ratings / epoch_seconds,
        "lm_texts_per_epoch": p.texts,
        "lm_calls_per_epoch": len(p.seconds),
        "wall_us_per_padded_token": 1e6 * epoch_seconds / p.padded,
        "valid_rmse_after_1_epoch": validation_rmse(model, tokens, valid),
    }
    step_padded = s.padded / len(s.seconds)
    result["seed_style"] |= {
        "steps_timed": len(s.seconds),
        "wall_seconds": sum(s.seconds),
        "ratings": s.ratings,
        "median_step_seconds": statistics.median(s.seconds[timed]),
        "ratings_per_second": rate,
        "epoch_seconds_extrapolated": len(train) / rate,
        "lm_texts_per_epoch": len(train),
        "lm_calls_per_epoch": math.ceil(len(train) / train_cfg.items_per_step),
        "wall_us_per_padded_token": 1e6 * statistics.median(s.seconds[timed]) / step_padded,
        "valid_rmse_at_equal_wall_time": validation_rmse(seed_model, tokens, valid),
    }
    result["matmul_flops_per_second"] = reference
    seed, peftrec = result["seed_style"], result["peftrec"]
    # ratings/s ratio ~ texts x padded tokens per text x wall time per padded token
    result["ratios"] = {
        "ratings_per_second": peftrec["ratings_per_second"] / rate,
        "epoch_time": seed["epoch_seconds_extrapolated"] / epoch_seconds,
        "lm_texts_per_epoch": len(train) / p.texts,
        "padded_tokens_per_text": (
            seed["padded_tokens_per_text"] / peftrec["padded_tokens_per_text"]
        ),
        "wall_per_padded_token": (
            seed["wall_us_per_padded_token"] / peftrec["wall_us_per_padded_token"]
        ),
    }
    log(
        f"{method}: peftrec epoch {epoch_seconds:.1f} s, {peftrec['ratings_per_second']:,.0f} "
        f"ratings/s, valid RMSE {peftrec['valid_rmse_after_1_epoch']:.4f}; seed-style "
        f"{rate:,.1f} ratings/s (epoch ~{seed['epoch_seconds_extrapolated'] / 60:.0f} min), valid "
        f"RMSE {seed['valid_rmse_at_equal_wall_time']:.4f} after {s.ratings:,} ratings; ratio "
        f"{result['ratios']['ratings_per_second']:.1f}x"
    )
    setup["models"].setdefault("serving", model)
    return result


def serving(model: RecModel, tokenizer, setup: dict, repeats: int) -> dict:
    """Catalogue encoding (items/s) and scoring every user against every item from cached
    vectors."""
    tokens, dataset = setup["tokens"], setup["dataset"]
    encode = median_seconds(lambda: model.encode_texts(tokens), repeats=3)
    catalog = Catalog(
        user_ids=dataset.user_ids,
        item_ids=dataset.item_ids,
        item_texts=setup["item_texts"],
        seen_users=setup["train"].users,
        seen_items=setup["train"].items,
    )
    recommender = Recommender(model, tokenizer, catalog, {"max_length": setup["max_length"]})
    tick = time.perf_counter()
    recommender.score_all()  # the first call encodes and caches the catalogue
    first = time.perf_counter() - tick
    scores = median_seconds(recommender.score_all, repeats)
    tick = time.perf_counter()
    recommender.add_items({dataset.item_ids[0]: setup["item_texts"][0] + " Remastered."})
    add_one = time.perf_counter() - tick
    pairs = len(dataset.user_ids) * len(dataset.item_ids)
    out = {
        "items": len(tokens),
        "encode_seconds": encode,
        "items_per_second": len(tokens) / encode,
        "first_score_all_seconds": first,
        "pairs": pairs,
        "score_all_seconds": scores,
        "scores_per_second": pairs / scores,
        "repeats": repeats,
        "add_one_item_seconds": add_one,
    }
    log(
        f"serving: {out['items_per_second']:,.0f} items/s encoded; all {pairs:,} pairs scored in "
        f"{scores * 1000:.1f} ms ({pairs / scores:,.0f} scores/s); add_items(1 text) "
        f"{add_one * 1000:.0f} ms"
    )
    return out


def load_setup(quick: bool, folder: Path, extra: list[str] = ()) -> dict:
    """Data, tokens and tokenizer shared by all methods (``quick``: tiny BERT and toy data)."""
    overrides = []
    if quick:
        files = write_toy_data(folder / "toy")
        overrides = [
            "data.dataset=files",
            f"data.interactions={files['interactions']}",
            f"data.items={files['items']}",
            "data.item_template={title}. Genres: {genres}.",
            "data.max_length=16",
            "model.dim=8",
            f"backbone.name={write_tiny_bert(folder / 'tiny-bert')}",
            "train.items_per_step=16",
            "train.head_warmup_epochs=2",
            "adapter.top_k_layers=1",
        ]
    overrides += list(extra)
    cfg = recipe_config("lora", overrides)
    dataset = load_data(cfg.data)
    split = split_rows(dataset, cfg.data.protocol, seed=cfg.data.seed)
    train, valid = (dataset.interactions.subset(rows) for rows in (split.train, split.valid))
    tokenizer = load_tokenizer(cfg.backbone.name)
    item_texts = dataset.item_texts(cfg.data.item_template)
    return {
        "dataset": dataset,
        "train": train,
        "valid": valid,
        "overrides": overrides,
        "tokenizer": tokenizer,
        "item_texts": item_texts,
        "tokens": tokenize_texts(tokenizer, item_texts, cfg.data.max_length),
        "pad_id": tokenizer.pad_token_id,
        "num_users": len(dataset.user_ids),
        "max_length": cfg.data.max_length,
        "min_seed_steps": 3 if quick else 6,
        "train_config": cfg.train,
        "models": {},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny BERT and toy data (a smoke run in seconds)"
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's, one per core; --quick: 1)",
    )
    parser.add_argument(
        "--note", action="append", default=[], help="a line for the Markdown report"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every method, e.g. adapter.top_k_layers=1",
    )
    parser.add_argument(
        "--name", default=None, help="result file name (default from model and threads)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or (1 if args.quick else torch.get_num_threads()))
    name = args.name or ("quick" if args.quick else f"minilm_p1_{torch.get_num_threads()}thread")
    load_before = os.getloadavg()
    log(
        f"speed benchmark ({name}); load average {load_before[0]:.2f}, "
        f"{torch.get_num_threads()} torch threads"
    )
    with tempfile.TemporaryDirectory() as folder:
        setup = load_setup(args.quick, Path(folder), args.set)
        log(
            f"{len(setup['train']):,} training ratings, {len(setup['tokens']):,} item texts "
            f"({len(setup['train']) / len(setup['tokens']):.1f} ratings per text)"
        )
        log(f"torch 1024x1024 fp32 matmul: {matmul_flops_per_second() / 1e9:.1f} GFLOP/s")
        methods = {m: run_method(m, setup) for m in args.methods}
        serve = serving(setup["models"]["serving"], setup["tokenizer"], setup, repeats=7)
        serve["model"] = f"{args.methods[0]} after its epoch"
    results = {
        "environment": {
            "model": (
                "tiny BERT (2 layers, hidden 64)" if args.quick else "MiniLM (all-MiniLM-L6-v2)"
            ),
            "data": "toy P1" if args.quick else "ml-100k P1",
            "hardware": hardware(),
            "torch": torch.__version__,
            "dtype": "float32",
            "load_before": load_before,
            "load_after": os.getloadavg(),
        },
        "train_config": asdict(setup["train_config"]),
        "overrides": args.set,
        "methods": methods,
        "serving": serve,
        "notes": args.note,
    }
    full_run = not args.quick and {"lora", "top_layers"} <= set(methods)
    results["bars"] = {bar: bool(test(results)) for bar, test in BARS.items()} if full_run else {}
    write_files(results, args.out, name)
    for bar, met in results["bars"].items():
        log(f"bar {bar}: {'met' if met else 'NOT met'}")
    log(f"wrote {args.out / f'speed_{name}.json'} and .md")
    return results


if __name__ == "__main__":
    main()
