"""Training and serving speed: peftrec's item-amortised training against one LM pass per rating.

    python benchmarks/speed.py --threads 1   # MiniLM, ml-100k P1, lora/prefix/top_layers/full (~7 min)
    python benchmarks/speed.py --quick    # tiny BERT and toy data: a smoke run in seconds

Everything is measured in one process, on the same model and data. Per method, two copies of the
same warmed-up model (towers trained on frozen text features, as in the recipe) train in alternation,
so that a change in the machine's load hits both alike:

- peftrec: one epoch of item-amortised batches (``items_per_step`` distinct texts per step, each
  step using all their training ratings); ``top_layers`` runs on the lower-layer cache;
- seed-style: every rating encodes its own item text (LM batch = ``items_per_step`` ratings); after
  each peftrec step it trains until its time catches up (equal wall time, so the validation RMSEs
  compare at equal wall time); its epoch time is extrapolated from the median step time.

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
import ctypes
import functools
import gc
import itertools
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(REPO))

from benchmarks.tiny import write_tiny_bert, write_toy_data  # noqa: E402
from peftrec.artifact import Catalog  # noqa: E402
from peftrec.backbones import load_tokenizer  # noqa: E402
from peftrec.config import RatingRecipeConfig, load_config  # noqa: E402
from peftrec.data import load_data, split_rows  # noqa: E402
from peftrec.model import RecModel, build_model  # noqa: E402
from peftrec.recommender import Recommender  # noqa: E402
from peftrec.tokens import pad_batch, tokenize_texts  # noqa: E402
from peftrec.training import (  # noqa: E402
    ItemRatingsCollator,
    ItemShuffler,
    LengthBucketBatches,
    predict_ratings,
    rmse,
    warm_up_head,
)

METHODS = ("lora", "prefix", "top_layers", "full")
CONFIGS = REPO / "recipes" / "configs"
Batch = dict[str, torch.Tensor]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class PeakRSS:
    """Highest resident set size while the block runs, minus the RSS when it started (MiB)."""

    def __enter__(self) -> PeakRSS:
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()
        self.rise_mib = (self.peak - self.start) / 2**20
        self.peak_mib = self.peak / 2**20


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tick)
    return statistics.median(times)


def matmul_flops_per_second(n: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_seconds(lambda: a @ b, repeats)


def train_step(model: RecModel, optimizer: torch.optim.Optimizer, batch: Batch, l2: float) -> float:
    """One optimizer step (the recipe's loss: MSE + l2 x penalty); returns the forward+backward seconds."""
    batch = dict(batch)
    ratings = batch.pop("ratings")
    tick = time.perf_counter()
    predictions, penalty = model(**batch)[:2]
    ((predictions - ratings).square().mean() + l2 * penalty).backward()
    seconds = time.perf_counter() - tick
    optimizer.step()
    optimizer.zero_grad()
    return seconds


def flops_per_padded_token(model: RecModel, batches: list[Batch]) -> float:
    """Forward+backward FLOPs counted by FlopCounterMode (no optimizer step), per padded LM token."""
    with FlopCounterMode(display=False) as counter:
        for batch in batches:
            batch = {k: v for k, v in batch.items() if k != "ratings"}
            predictions, penalty = model(**batch)[:2]
            (predictions.sum() + penalty).backward()
    model.zero_grad()
    return counter.get_total_flops() / sum(b["input_ids"].numel() for b in batches)


def seed_style_batches(train, tokens: list[list[int]], pad_id: int, size: int, seed: int) -> Iterator[Batch]:
    """One row per rating, each encoding its own item's text: the seed's one LM pass per rating."""
    order = np.random.default_rng(seed).permutation(len(train))
    for start in range(0, len(order), size):
        rows = order[start : start + size]
        input_ids, attention_mask = pad_batch([tokens[i] for i in train.items[rows]], pad_id)
        yield {"input_ids": input_ids, "attention_mask": attention_mask,
               "item_index": torch.as_tensor(train.items[rows]), "users": torch.as_tensor(train.users[rows]),
               "positions": torch.arange(len(rows)), "ratings": torch.as_tensor(train.ratings[rows], dtype=torch.float32)}


def validation_rmse(model: RecModel, tokens: list[list[int]], valid) -> float:
    item_text = model.encode_texts(tokens)
    return rmse(predict_ratings(model.head, item_text, valid.users, valid.items), valid.ratings)


def recipe_config(method: str, overrides: list[str]) -> RatingRecipeConfig:
    """The shipped MiniLM config of ``method`` (``full``: the LoRA one with method=full)."""
    path = CONFIGS / f"minilm_{method}_rating.yaml"
    if not path.exists():
        path, overrides = CONFIGS / "minilm_lora_rating.yaml", [f"adapter.method={method}", *overrides]
    return load_config(RatingRecipeConfig, path, overrides)


@dataclass
class Tally:
    """Totals over the timed training steps of one style."""

    seconds: list[float] = field(default_factory=list)
    lm_seconds: float = 0.0
    rss_rise_mib: float = 0.0
    texts: int = 0
    padded: int = 0
    real: int = 0
    ratings: int = 0


def timed_step(model: RecModel, optimizer: torch.optim.Optimizer, make_batch: Callable[[], Batch], l2: float,
               tally: Tally) -> None:
    """One training step, batch building included; memory is the RSS rise over the step after a malloc_trim."""
    release_free_memory()
    with PeakRSS() as memory:
        tick = time.perf_counter()
        batch = make_batch()
        tally.lm_seconds += train_step(model, optimizer, batch, l2)
        tally.seconds.append(time.perf_counter() - tick)
    tally.rss_rise_mib = max(tally.rss_rise_mib, memory.rise_mib)
    tally.texts += len(batch["input_ids"])
    tally.padded += batch["input_ids"].numel()
    tally.real += int(batch["attention_mask"].sum())
    tally.ratings += len(batch["ratings"])


def release_free_memory() -> None:
    """Hand memory freed by earlier steps back to the OS, so that an RSS rise measures this step."""
    gc.collect()
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def run_method(method: str, setup: dict) -> dict:
    """Seed-style and peftrec training of one adaptation method from the same warmed-up start.

    The two styles train two copies of the model in alternation (after each peftrec step, seed-style
    steps until its time catches up, then a short matmul burst as the FLOP/s reference), so a change
    in the machine's load hits both alike.
    """
    tokens, train, valid = setup["tokens"], setup["train"], setup["valid"]
    cfg = recipe_config(method, setup["overrides"])
    train_cfg = cfg.train
    torch.manual_seed(0)
    model, _ = build_model(cfg.backbone, cfg.adapter, cfg.model, num_users=setup["num_users"], num_items=len(tokens))
    model.head.init_biases(torch.as_tensor(train.users), torch.as_tensor(train.items), torch.as_tensor(train.ratings))
    item_text = model.encode_texts(tokens)
    warm_up_head(model.head, item_text, train.users, train.items, train.ratings, epochs=train_cfg.head_warmup_epochs,
                 batch_size=train_cfg.head_batch_size, lr=train_cfg.head_lr, l2=train_cfg.l2, seed=0)
    start_rmse = rmse(predict_ratings(model.head, item_text, valid.users, valid.items), valid.ratings)
    seed_model = copy.deepcopy(model)
    trainable = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
    log(f"{method}: {trainable:,} trainable backbone parameters; valid RMSE after head warm-up {start_rmse:.4f}")
    result: dict[str, Any] = {"method": method, "backbone_trainable_parameters": trainable,
                              "valid_rmse_after_head_warmup": start_rmse}

    cache_seconds = 0.0
    if method == "top_layers":
        tick = time.perf_counter()
        cache = model.cache_lower_layers(tokens)
        cache_seconds = time.perf_counter() - tick
        result["layer_cache"] = {"seconds": cache_seconds, "mib": cache.nbytes / 2**20,
                                 "first_cached_block": cache.start, "blocks": cache.depth}
        log(f"{method}: cache of the layers below block {cache.start} of {cache.depth} built in "
            f"{cache_seconds:.1f} s, {cache.nbytes / 2**20:.1f} MiB")
    collator = ItemRatingsCollator(tokens, train.users, train.items, train.ratings, setup["pad_id"])
    batches = LengthBucketBatches(ItemShuffler(collator.items_with_ratings(), seed=0), [len(t) for t in tokens],
                                  train_cfg.items_per_step)
    per_rating = seed_style_batches(train, tokens, setup["pad_id"], train_cfg.items_per_step, seed=0)
    model.train()
    seed_model.train()
    flops_per_token = {
        "peftrec": flops_per_padded_token(model, [collator(b) for b in list(batches)[:3]]),
        "seed_style": flops_per_padded_token(seed_model, list(itertools.islice(
            seed_style_batches(train, tokens, setup["pad_id"], train_cfg.items_per_step, seed=1), 3))),
    }
    optimizers = {"peftrec": torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=train_cfg.lr),
                  "seed_style": torch.optim.AdamW([p for p in seed_model.parameters() if p.requires_grad],
                                                  lr=train_cfg.lr)}
    tally = {"peftrec": Tally(), "seed_style": Tally()}
    references = [matmul_flops_per_second(repeats=3)]

    def seed_step() -> None:
        timed_step(seed_model, optimizers["seed_style"], functools.partial(next, per_rating), train_cfg.l2,
                   tally["seed_style"])

    for step, items in enumerate(batches, 1):
        timed_step(model, optimizers["peftrec"], functools.partial(collator, items), train_cfg.l2, tally["peftrec"])
        while sum(tally["seed_style"].seconds) < sum(tally["peftrec"].seconds) + cache_seconds:
            seed_step()  # equal wall time: the seed-style copy catches up (top_layers: cache build included)
        references.append(matmul_flops_per_second(repeats=3))
        log(f"{method}: peftrec step {step}/{len(batches)} ({sum(tally['peftrec'].seconds):.1f} s), "
            f"seed-style steps {len(tally['seed_style'].seconds)} ({sum(tally['seed_style'].seconds):.1f} s)")
    while len(tally["seed_style"].seconds) < setup["min_seed_steps"]:
        seed_step()
    reference = statistics.median(references)

    p, s = tally["peftrec"], tally["seed_style"]
    epoch_seconds = sum(p.seconds)
    timed = slice(1, None) if len(s.seconds) > 1 else slice(None)  # the first step of a style warms up
    rate = train_cfg.items_per_step / statistics.median(s.seconds[timed])
    for style, t in tally.items():
        flops = flops_per_token[style] * t.padded
        result[style] = {"lm_flops": flops, "lm_flops_per_padded_token": flops_per_token[style],
                         "lm_fwd_bwd_seconds": t.lm_seconds,
                         "lm_flops_per_second": flops / t.lm_seconds,
                         "lm_share_of_matmul": flops / t.lm_seconds / reference,
                         "padded_tokens_per_text": t.padded / t.texts, "real_tokens_per_text": t.real / t.texts,
                         "peak_step_rss_rise_mib": t.rss_rise_mib}
    result["peftrec"] |= {
        "epoch_seconds": epoch_seconds, "ratings": p.ratings, "ratings_per_second": p.ratings / epoch_seconds,
        "lm_texts_per_epoch": p.texts, "lm_calls_per_epoch": len(p.seconds),
        "wall_us_per_padded_token": 1e6 * epoch_seconds / p.padded,
        "valid_rmse_after_1_epoch": validation_rmse(model, tokens, valid),
    }
    step_padded = s.padded / len(s.seconds)
    result["seed_style"] |= {
        "steps_timed": len(s.seconds), "wall_seconds": sum(s.seconds), "ratings": s.ratings,
        "median_step_seconds": statistics.median(s.seconds[timed]), "ratings_per_second": rate,
        "epoch_seconds_extrapolated": len(train) / rate, "lm_texts_per_epoch": len(train),
        "lm_calls_per_epoch": math.ceil(len(train) / train_cfg.items_per_step),
        "wall_us_per_padded_token": 1e6 * statistics.median(s.seconds[timed]) / step_padded,
        "valid_rmse_at_equal_wall_time": validation_rmse(seed_model, tokens, valid),
    }
    result["matmul_flops_per_second"] = reference
    seed, peftrec = result["seed_style"], result["peftrec"]
    result["ratios"] = {  # ratings/s ratio ~ texts x padded tokens per text x wall time per padded token
        "ratings_per_second": peftrec["ratings_per_second"] / rate,
        "epoch_time": seed["epoch_seconds_extrapolated"] / epoch_seconds,
        "lm_texts_per_epoch": len(train) / p.texts,
        "padded_tokens_per_text": seed["padded_tokens_per_text"] / peftrec["padded_tokens_per_text"],
        "wall_per_padded_token": seed["wall_us_per_padded_token"] / peftrec["wall_us_per_padded_token"],
    }
    log(f"{method}: peftrec epoch {epoch_seconds:.1f} s, {peftrec['ratings_per_second']:,.0f} ratings/s, valid RMSE "
        f"{peftrec['valid_rmse_after_1_epoch']:.4f}; seed-style {rate:,.1f} ratings/s (epoch ~"
        f"{seed['epoch_seconds_extrapolated'] / 60:.0f} min), valid RMSE {seed['valid_rmse_at_equal_wall_time']:.4f} "
        f"after {s.ratings:,} ratings; ratio {result['ratios']['ratings_per_second']:.1f}x")
    setup["models"].setdefault("serving", model)
    return result


def serving(model: RecModel, tokenizer, setup: dict, repeats: int) -> dict:
    """Catalogue encoding (items/s) and scoring every user against every item from cached vectors."""
    tokens, dataset = setup["tokens"], setup["dataset"]
    encode = median_seconds(lambda: model.encode_texts(tokens), repeats=3)
    catalog = Catalog(user_ids=dataset.user_ids, item_ids=dataset.item_ids, item_texts=setup["item_texts"],
                      seen_users=setup["train"].users, seen_items=setup["train"].items)
    recommender = Recommender(model, tokenizer, catalog, {"max_length": setup["max_length"]})
    tick = time.perf_counter()
    recommender.score_all()  # the first call encodes and caches the catalogue
    first = time.perf_counter() - tick
    scores = median_seconds(recommender.score_all, repeats)
    tick = time.perf_counter()
    recommender.add_items({dataset.item_ids[0]: setup["item_texts"][0] + " Remastered."})
    add_one = time.perf_counter() - tick
    pairs = len(dataset.user_ids) * len(dataset.item_ids)
    out = {"items": len(tokens), "encode_seconds": encode, "items_per_second": len(tokens) / encode,
           "first_score_all_seconds": first, "pairs": pairs, "score_all_seconds": scores,
           "scores_per_second": pairs / scores, "repeats": repeats, "add_one_item_seconds": add_one}
    log(f"serving: {out['items_per_second']:,.0f} items/s encoded; all {pairs:,} pairs scored in "
        f"{scores * 1000:.1f} ms ({pairs / scores:,.0f} scores/s); add_items(1 text) {add_one * 1000:.0f} ms")
    return out


def load_setup(quick: bool, folder: Path, extra: list[str] = ()) -> dict:
    """Data, tokens and tokenizer shared by all methods (``quick``: tiny BERT and toy data)."""
    overrides = []
    if quick:
        files = write_toy_data(folder / "toy")
        overrides = ["data.dataset=files", f"data.interactions={files['interactions']}", f"data.items={files['items']}",
                     "data.item_template={title}. Genres: {genres}.", "data.max_length=16", "model.dim=8",
                     f"backbone.name={write_tiny_bert(folder / 'tiny-bert')}", "train.items_per_step=16",
                     "train.head_warmup_epochs=2", "adapter.top_k_layers=1"]
    overrides += list(extra)
    cfg = recipe_config("lora", overrides)
    dataset = load_data(cfg.data)
    split = split_rows(dataset, cfg.data.protocol, seed=cfg.data.seed)
    train, valid = (dataset.interactions.subset(rows) for rows in (split.train, split.valid))
    tokenizer = load_tokenizer(cfg.backbone.name)
    item_texts = dataset.item_texts(cfg.data.item_template)
    return {"dataset": dataset, "train": train, "valid": valid, "overrides": overrides, "tokenizer": tokenizer,
            "item_texts": item_texts, "tokens": tokenize_texts(tokenizer, item_texts, cfg.data.max_length),
            "pad_id": tokenizer.pad_token_id, "num_users": len(dataset.user_ids), "max_length": cfg.data.max_length,
            "min_seed_steps": 3 if quick else 6, "train_config": cfg.train, "models": {}}


BARS = {  # issue 4, MiniLM on P1
    "lora_ratings_per_second_ratio >= 50": lambda r: r["methods"]["lora"]["ratios"]["ratings_per_second"] >= 50,
    "top_layers_ratings_per_second_ratio >= 150":
        lambda r: r["methods"]["top_layers"]["ratios"]["ratings_per_second"] >= 150,
    "lora_epoch_seconds <= 20": lambda r: r["methods"]["lora"]["peftrec"]["epoch_seconds"] <= 20,
    "score_all_pairs_seconds <= 0.5": lambda r: r["serving"]["score_all_seconds"] <= 0.5,
    "lora_lm_flops_share_of_matmul >= 0.5": lambda r: r["methods"]["lora"]["peftrec"]["lm_share_of_matmul"] >= 0.5,
}


def write_report(results: dict, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"speed_{name}.json").write_text(json.dumps(results, indent=2))
    env = results["environment"]
    lines = [f"# Training and serving speed ({name})", "",
             f"{env['model']}, {env['data']}; {env['cpu']}, {env['cores']} cores, {env['torch_threads']} torch "
             f"threads, CPU, fp32, torch {env['torch']}. One run, all numbers side by side in one process. "
             f"Load average {env['load_before'][0]:.1f} before / {env['load_after'][0]:.1f} after "
             f"(other jobs on the machine slow both columns alike; the ratios are the robust numbers).", "",
             "Seed-style = one LM pass per rating (LM batch = items_per_step = "
             f"{results['train_config']['items_per_step']} ratings). Per method, two copies of the same warmed-up "
             "model train in alternation: a peftrec step, then seed-style steps until their time catches up, so "
             "both run for equal wall time (top_layers: the one-off cache build counts on peftrec's side) under "
             "the same load. Seed-style ratings/s = batch / median step time (first step excluded); its epoch "
             "time is extrapolated from that. Times include building the batch and the AdamW step. RMSE: "
             "validation, after the shared head warm-up, then seed-style at equal wall time vs one peftrec epoch. "
             "Memory: largest RSS rise over one training step (after malloc_trim; sampled every 5 ms; the first "
             "step includes AdamW's state). LM GFLOP/s: forward+backward FLOPs counted by FlopCounterMode on 3 "
             "batches per style, scaled by padded tokens, over the measured forward+backward seconds; % of the "
             "1024x1024 fp32 matmul rate measured in bursts between the steps of the same method.", "",
             "| method | ratings/s seed | ratings/s peftrec | ratio | LM texts/epoch seed / peftrec | LM calls/epoch "
             "seed / peftrec | epoch s seed (extrap.) / peftrec | step RSS rise MiB seed / peftrec | LM GFLOP/s "
             "seed / peftrec (% of matmul) | valid RMSE warm-up / seed / peftrec |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m, r in results["methods"].items():
        s, p = r["seed_style"], r["peftrec"]
        lines.append(f"| {m} | {s['ratings_per_second']:,.0f} | {p['ratings_per_second']:,.0f} | "
                     f"**{r['ratios']['ratings_per_second']:.1f}x** | {s['lm_texts_per_epoch']:,} / "
                     f"{p['lm_texts_per_epoch']:,} | {s['lm_calls_per_epoch']} / {p['lm_calls_per_epoch']} | "
                     f"{s['epoch_seconds_extrapolated']:,.1f} / {p['epoch_seconds']:.1f} | "
                     f"{s['peak_step_rss_rise_mib']:.0f} / {p['peak_step_rss_rise_mib']:.0f} | "
                     f"{s['lm_flops_per_second'] / 1e9:.1f} / {p['lm_flops_per_second'] / 1e9:.1f} "
                     f"({s['lm_share_of_matmul']:.0%} / {p['lm_share_of_matmul']:.0%}) | "
                     f"{r['valid_rmse_after_head_warmup']:.4f} / {s['valid_rmse_at_equal_wall_time']:.4f} / "
                     f"{p['valid_rmse_after_1_epoch']:.4f} |")
    lines += ["", "Where the ratio comes from: ratings/s ratio = LM texts ratio x padded-tokens-per-text ratio "
              "(length-bucketed vs random batches; real tokens per text "
              f"{next(iter(results['methods'].values()))['peftrec']['real_tokens_per_text']:.1f}) x "
              "wall-time-per-padded-token ratio (an identity); the last follows the LM FLOPs per padded token "
              "(the lower-layer cache removes the frozen blocks' forward) at equal FLOP/s.", "",
              "| method | texts ratio | padded tokens/text seed / peftrec | us per padded token seed / peftrec | "
              "LM MFLOP per padded token seed / peftrec | ratio | matmul GFLOP/s meanwhile |",
              "|---|---|---|---|---|---|---|"]
    for m, r in results["methods"].items():
        s, p, q = r["seed_style"], r["peftrec"], r["ratios"]
        lines.append(f"| {m} | {q['lm_texts_per_epoch']:.1f} | {s['padded_tokens_per_text']:.1f} / "
                     f"{p['padded_tokens_per_text']:.1f} | {s['wall_us_per_padded_token']:.0f} / "
                     f"{p['wall_us_per_padded_token']:.0f} | {s['lm_flops_per_padded_token'] / 1e6:.1f} / "
                     f"{p['lm_flops_per_padded_token'] / 1e6:.1f} | {q['ratings_per_second']:.1f}x | "
                     f"{r['matmul_flops_per_second'] / 1e9:.1f} |")
    if "top_layers" in results["methods"] and "layer_cache" in results["methods"]["top_layers"]:
        c = results["methods"]["top_layers"]["layer_cache"]
        lines += ["", f"top_layers lower-layer cache (hidden states entering block {c['first_cached_block']} of {c['blocks']}): "
                  f"{c['mib']:.1f} MiB, built once in {c['seconds']:.1f} s (not in the epoch time above)."]
    sv = results["serving"]
    lines += ["", f"Serving ({sv['model']}): {sv['items_per_second']:,.0f} items/s encoded (full catalogue, median "
              f"of 3); all {sv['pairs']:,} user-item pairs scored in {sv['score_all_seconds'] * 1000:.1f} ms "
              f"({sv['scores_per_second']:,.0f} scores/s, median of {sv['repeats']}) from cached item vectors "
              f"(Recommender.score_all); add_items with one changed text {sv['add_one_item_seconds'] * 1000:.0f} ms."]
    if results["bars"]:
        lines += ["", "| bar (issue 4) | met |", "|---|---|"]
        lines += [f"| {bar} | {'yes' if met else 'no'} |" for bar, met in results["bars"].items()]
    if results.get("notes"):
        lines += ["", *results["notes"]]
    (out / f"speed_{name}.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny BERT and toy data (a smoke run in seconds)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's, one per core; --quick: 1)")
    parser.add_argument("--note", action="append", default=[], help="a line for the Markdown report")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every method, e.g. adapter.top_k_layers=1")
    parser.add_argument("--name", default=None, help="result file name (default from model and threads)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or (1 if args.quick else torch.get_num_threads()))
    name = args.name or ("quick" if args.quick else f"minilm_p1_{torch.get_num_threads()}thread")
    load_before = os.getloadavg()
    log(f"speed benchmark ({name}); load average {load_before[0]:.2f}, {torch.get_num_threads()} torch threads")
    with tempfile.TemporaryDirectory() as folder:
        setup = load_setup(args.quick, Path(folder), args.set)
        log(f"{len(setup['train']):,} training ratings, {len(setup['tokens']):,} item texts "
            f"({len(setup['train']) / len(setup['tokens']):.1f} ratings per text)")
        log(f"torch 1024x1024 fp32 matmul: {matmul_flops_per_second() / 1e9:.1f} GFLOP/s")
        methods = {m: run_method(m, setup) for m in args.methods}
        serve = serving(setup["models"]["serving"], setup["tokenizer"], setup, repeats=7)
        serve["model"] = f"{args.methods[0]} after its epoch"
    results = {
        "environment": {"model": "tiny BERT (2 layers, hidden 64)" if args.quick else "MiniLM (all-MiniLM-L6-v2)",
                        "data": "toy P1" if args.quick else "ml-100k P1", "cpu": _cpu_name(),
                        "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "torch": torch.__version__, "dtype": "float32", "load_before": load_before,
                        "load_after": os.getloadavg()},
        "train_config": asdict(setup["train_config"]), "overrides": args.set, "methods": methods, "serving": serve,
        "notes": args.note,
    }
    full_run = not args.quick and {"lora", "top_layers"} <= set(methods)
    results["bars"] = {bar: bool(test(results)) for bar, test in BARS.items()} if full_run else {}
    write_report(results, args.out, name)
    for bar, met in results["bars"].items():
        log(f"bar {bar}: {'met' if met else 'NOT met'}")
    log(f"wrote {args.out / f'speed_{name}.json'} and .md")
    return results


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    main()
