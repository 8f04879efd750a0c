"""MovieLens-1M (issue 27, parts 2 and 5): next-item recommendation on ml1m-p3 beside the
published numbers, and what training costs on ml-1m against ml-100k.

    python -m benchmarks.ml1m --out benchmarks/results/ml1m.md       # every run (many hours)
    python -m benchmarks.ml1m --runs idonly_s0 frozen_s0 --out ...   # some runs, then the report
    python -m benchmarks.ml1m --report-only --out ...                # the report from what ran

Runs go to ``runs/ml1m/<name>`` and are reused when their ``metrics.json`` exists (a study
continues where it stopped; a recipe launched by hand with that ``output_dir`` counts too).

- **ml1m-p3** (``../shared/PROTOCOLS.md``): ID-only SASRec with a full-catalogue cross-entropy
  (``minilm_idonly_ml1m_sequential.yaml``) and MiniLM frozen, text + ID
  (``minilm_frozen_ml1m_sequential.yaml``), seeds 0, 1, 2, each chosen on validation (early
  stopping on NDCG@10), scored once on test. The paired difference of the text rows against the
  ID-only ones is over the 6,040 test users (each user's NDCG@10 through the app, checked against
  the recipe's own test metric), with a 95% bootstrap interval.
- **Costs**: the same configs for two epochs on ml-100k and on ml-1m (sequential: P3; rating:
  MiniLM frozen, P1), one after the other on this machine: median epoch time, the language
  model's pass over the catalogue, peak memory.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, hardware_line, launch_recipe, write_report

RUNS = REPO / "runs" / "ml1m"
CONFIGS = REPO / "recipes" / "configs"
OUT = REPO / "benchmarks" / "results" / "ml1m.md"
SEEDS = (0, 1, 2)
COST_EPOCHS = 2
# the ID-only row's validation sweep (seed 0): name -> (what changes, overrides)
SWEEP = {
    "sweep_dropout01": ("dropout 0.1, patience 30", ("sequence.dropout=0.1", "train.patience=30")),
}

PUBLISHED = (  # (model, NDCG@10, HR@10, source) on all 1,000,209 ratings, leave-one-out, full
    ("SASRec, full cross-entropy", 0.178, 0.31, "reproducibility studies (about)"),
    ("eSASRec", 0.1772, None, "eSASRec paper"),
    ("FuXi-alpha", 0.1813, None, "FuXi-alpha paper"),
    ("SASRec, original binary cross-entropy", 0.1078, None, "reproducibility studies"),
)


@dataclass(frozen=True)
class Run:
    task: str
    config: str
    label: str
    overrides: tuple[str, ...] = field(default_factory=tuple)

    @property
    def config_path(self) -> Path:
        return CONFIGS / self.config


def study_runs() -> dict[str, Run]:
    runs = {}
    for seed in SEEDS:
        runs[f"idonly_s{seed}"] = Run(
            "sequential",
            "minilm_idonly_ml1m_sequential.yaml",
            "ID-only SASRec-CE",
            (f"train.seed={seed}",),
        )
        runs[f"frozen_s{seed}"] = Run(
            "sequential",
            "minilm_frozen_ml1m_sequential.yaml",
            "MiniLM frozen, text + ID",
            (f"train.seed={seed}",),
        )
    for name, (change, overrides) in SWEEP.items():
        runs[name] = Run(
            "sequential", "minilm_idonly_ml1m_sequential.yaml", f"ID-only, {change}", overrides
        )
    for dataset, name in (("ml-100k", "ml100k"), ("ml-1m", "ml1m")):
        epochs = f"train.epochs={COST_EPOCHS}"
        runs[f"cost_sequential_{name}"] = Run(
            "sequential",
            "minilm_frozen_ml1m_sequential.yaml",
            f"sequential, {dataset}",
            (f"data.dataset={dataset}", epochs),
        )
        runs[f"cost_rating_{name}"] = Run(
            "rating",
            "minilm_frozen_rating.yaml",
            f"rating, {dataset}",
            (f"data.dataset={dataset}", epochs),
        )
    return runs


def metrics_of(name: str) -> dict | None:
    path = RUNS / name / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def per_user(name: str) -> np.ndarray:
    """Each test user's NDCG@10 through the app (cached in ``per_user.npy``), checked against
    the recipe's test NDCG@10."""
    cached = RUNS / name / "per_user.npy"
    if cached.is_file():
        return np.load(cached)
    from benchmarks.continual import per_row
    from peftrec.data.ml1m import load_ml1m
    from peftrec.data.splits import split_rows

    dataset = load_ml1m()
    split = split_rows(dataset, "p3")
    exclude = np.concatenate([split.train, split.valid])
    values = per_row(RUNS / name / "model", dataset, "sequential", split.test, exclude, exclude)
    expected = metrics_of(name)["test_ndcg@10"]
    if abs(values.mean() - expected) > 1e-4:
        raise SystemExit(
            f"{name}: the app's per-user NDCG@10 average {values.mean():.6f}, the recipe's test "
            f"metric is {expected:.6f}"
        )
    np.save(cached, values)
    return values


def seeds_cell(values: list[float]) -> str:
    if not values:
        return "not run"
    if len(values) == 1:
        return f"{values[0]:.4f} (1 seed)"
    return f"{np.mean(values):.4f} ± {np.std(values):.4f} ({len(values)} seeds)"


def accuracy_lines(runs: dict[str, Run]) -> list[str]:
    lines = [
        "| model | seed 0 NDCG@10 | HR@10 | MRR | valid NDCG@10 | NDCG@10 over seeds | "
        "HR@10 over seeds | best epoch | trainable params | median epoch (s) | wall (min) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for prefix in ("idonly", "frozen"):
        done = [m for s in SEEDS if (m := metrics_of(f"{prefix}_s{s}")) is not None]
        first = metrics_of(f"{prefix}_s0")
        label = runs[f"{prefix}_s0"].label
        if first is None:
            lines.append(f"| {label} | not run | | | | | | | | | |")
            continue
        lines.append(
            f"| {label} | {first['test_ndcg@10']:.4f} | {first['test_hr@10']:.4f} | "
            f"{first['test_mrr']:.4f} | {first['valid_ndcg@10']:.4f} | "
            f"{seeds_cell([m['test_ndcg@10'] for m in done])} | "
            f"{seeds_cell([m['test_hr@10'] for m in done])} | {first['best_epoch']} | "
            f"{first['trainable_parameters']:,} | {first['median_epoch_seconds']:.1f} | "
            f"{first['wall_seconds'] / 60:.0f} |"
        )
    for model, ndcg, hr, source in PUBLISHED:
        hr_cell = "" if hr is None else f"*{hr:.2f}*"
        lines.append(f"| *{model}* ({source}) | *{ndcg:.4f}* | {hr_cell} | | | | | | | | |")
    return lines


def sweep_lines(runs: dict[str, Run]) -> list[str]:
    """The ID-only row against its sweep's variants, on validation (what chooses) and test."""
    lines = [
        "| ID-only SASRec-CE, seed 0 | valid NDCG@10 | test NDCG@10 | HR@10 | best epoch |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in [("idonly_s0", "shipped: dropout 0.2, patience 15"), *(
        (n, runs[n].label.removeprefix("ID-only, ")) for n in SWEEP
    )]:  # fmt: skip
        m = metrics_of(name)
        if m is None:
            lines.append(f"| {label} | not run | | | |")
            continue
        lines.append(
            f"| {label} | {m['valid_ndcg@10']:.4f} | {m['test_ndcg@10']:.4f} | "
            f"{m['test_hr@10']:.4f} | {m['best_epoch']} |"
        )
    return lines


def paired_lines() -> list[str]:
    from benchmarks.explain_fidelity import interval

    pairs = [
        s
        for s in SEEDS
        if (RUNS / f"idonly_s{s}" / "model").is_dir() and (RUNS / f"frozen_s{s}" / "model").is_dir()
    ]
    if not pairs:
        return ["No seed has both rows yet."]
    text = np.mean([per_user(f"frozen_s{s}") for s in pairs], axis=0)
    ids = np.mean([per_user(f"idonly_s{s}") for s in pairs], axis=0)
    mean, low, high = interval(text - ids, np.random.default_rng(0))
    seeds = ", ".join(map(str, pairs))
    return [
        f"MiniLM frozen, text + ID minus ID-only, test NDCG@10 over the 6,040 users (seeds "
        f"{seeds}, each user's value averaged over them): **{mean:+.4f}** "
        f"(95% bootstrap interval {low:+.4f} .. {high:+.4f})."
    ]


def cost_lines() -> list[str]:
    lines = [
        "| recipe | dataset | training rows per epoch | median epoch (s) | validation (s) | "
        "outside the epochs (s) | wall (s) | peak memory (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for task in ("sequential", "rating"):
        for dataset, name in (("ml-100k", "ml100k"), ("ml-1m", "ml1m")):
            m = metrics_of(f"cost_{task}_{name}")
            if m is None:
                lines.append(f"| {task} | {dataset} | not run | | | | | |")
                continue
            epochs = [h for h in m["history"] if "epoch_seconds" in h]
            rows = m.get("positions_per_process") or m.get("ratings_per_process") or [0]
            inside = sum(h["epoch_seconds"] + h.get("valid_seconds", 0.0) for h in epochs)
            valid = np.median([h.get("valid_seconds", 0.0) for h in epochs])
            lines.append(
                f"| {task} | {dataset} | {sum(rows) // max(1, len(epochs)):,} | "
                f"{m['median_epoch_seconds']:.1f} | {valid:.1f} | "
                f"{m['wall_seconds'] - inside:.0f} | {m['wall_seconds']:.0f} | "
                f"{m['peak_memory_mib']:.0f} |"
            )
    return lines


def report(runs: dict[str, Run], hardware: str) -> str:
    lines = [
        "# MovieLens-1M: next item beside the published numbers, and training costs",
        "",
        "Made by `python -m benchmarks.ml1m` (issue 27); what runs is in the module's docstring. "
        f"Machine: {hardware}; fp32, one process. The machine is shared: times are medians, "
        "and a run's wall time includes stretches beside other jobs.",
        "",
        "## ml1m-p3: leave-one-out by time, full ranking",
        "",
        "Every rated item ranked (3,706) minus the user's earlier items, all 6,040 users, ties "
        "count against the model; chosen by validation NDCG@10 (early stopping), test scored "
        "once. Published rows in italics.",
        "",
        *accuracy_lines(runs),
        "",
        *paired_lines(),
        "",
        "Validation sweep of the ID-only row (the configuration with the best validation NDCG@10 "
        "is the shipped one; the test column is reported, never used to choose):",
        "",
        *sweep_lines(runs),
        "",
        "What matches the published protocol: the same 1,000,209 ratings, leave-one-out by time "
        "(the last item is the test, the second last the validation), full ranking over all "
        "items without the user's history, NDCG@10 and HR@10, a history of the last 200 items, "
        "a 2-block, 1-head encoder with a full-catalogue cross-entropy at every position. What "
        "may differ: the published studies break timestamp ties by their own loaders (here: the "
        "file's order), tune on their own grids (here: one configuration, dropout 0.2, 64 "
        "dimensions, learning rate 1e-3, 64 users per step), and some exclude nothing already "
        "seen from the ranking.",
        "",
        f"## Training costs: ml-100k against ml-1m ({COST_EPOCHS} epochs each)",
        "",
        *cost_lines(),
        "",
        "What grows: the frozen language model passes over the catalogue once per run (1,682 "
        "items against 3,706), outside the epochs, with loading, the rating recipe's head "
        "warm-up on the frozen features, the test and saving; the head's epoch grows with the "
        "training "
        "rows (sequential: the positions of the histories, at most 200 per user; rating: the "
        "ratings), and validation with the users times the catalogue. Mixed precision "
        "(`accelerate launch --mixed_precision bf16`) and several processes "
        "(`--num_processes N`) split the head's work (`docs/training.md`).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help="the Markdown report (and .json)")
    parser.add_argument("--runs", nargs="+", default=None, help="run only these (default: all)")
    parser.add_argument("--report-only", action="store_true", help="run nothing, report")
    args = parser.parse_args(argv)
    runs = study_runs()
    unknown = sorted(set(args.runs or ()) - set(runs))
    if unknown:
        parser.error(f"unknown runs {unknown}; known: {sorted(runs)}")
    if not args.report_only:
        for name in args.runs or list(runs):
            run = runs[name]
            print(f"{name}: {run.label} {' '.join(run.overrides)}", flush=True)
            launch_recipe(run.task, run.config_path, RUNS / name, run.overrides, echo=False)
    hardware = hardware_line(load=True)
    data = {name: metrics_of(name) for name in runs}
    data = {k: {m: v for m, v in d.items() if m != "history"} for k, d in data.items() if d}
    write_report(args.out, report(runs, hardware), {"runs": data, "hardware": hardware})


if __name__ == "__main__":
    main()
