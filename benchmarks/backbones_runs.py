"""The backbone study's runs (``benchmarks/backbones.py``): what it runs, how each is launched
and read back, the cross-encoder's cost, and the per-row values the report pairs."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np

from benchmarks.common import REPO, launch_recipe

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
