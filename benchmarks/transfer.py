"""Movies to books: does a preference model trained on movie ratings help on Book-Crossing?

    python -m benchmarks.transfer --out benchmarks/results/transfer.md

Target: ``tallrec-book`` (TALLRec's book benchmark on the aligned records; 2,427 test records,
one per user). Source: a towers model (frozen MiniLM, text-only items, so nothing in it is tied to
a movie id) trained on ml-100k's preference records outside the tallrec-movie benchmark
(``preference.records=source``). Arms, each a run of ``recipes/train_preference.py``:

- target only: the same architecture trained on the n book records alone;
- movie model, zero-shot: the source model scores the book records, no book record trained on
  (``train.epochs=0``);
- movie model, head calibrated: the source's towers kept, its six head scalars fitted to the n
  records (``train.warm_start=head``);
- movie model, adapted: every trainable part starts from the source and trains on the n records
  (``train.init_from``);
- each with and without the content match (``preference.content``: one scalar on the LM's own
  text space, the part of a towers model that means the same in any domain); and an ml-1m source
  (80,000 of its P3 records with labels) with the content match, zero-shot and at n = 256.

n = 16, 64, 256 (seeds 0-4, TALLRec's draws ``default_rng(seed).permutation(19414)[:n]``) and
all 19,414 (seed 0). Every saved model is loaded with ``Recommender.from_pretrained`` and must
reproduce its recipe's test AUC through ``predict_proba`` on the test records. Paired
differences against target-only (and against the like ratio of the history) on the same records,
mean over seeds, 95% bootstrap interval over the test users (one record each).
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, fmt_seeds, hardware_line, write_report
from benchmarks.preference import app_probabilities, auc_curve, run_record, train
from peftrec.data.bookcrossing import tallrec_book_dataset
from peftrec.data.preference import SHOTS, like_ratio, tallrec_book_split

CONFIGS = REPO / "recipes" / "configs"
MOVIES = CONFIGS / "minilm_frozen_preference.yaml"
BOOKS = CONFIGS / "minilm_frozen_book_preference.yaml"
ALL = 19414
TALLREC = {16: 0.5636, 64: 0.6039, 256: 0.6438}  # TALLRec README, book, LLaMA-7B + LoRA
BOOTSTRAP = 1000
SOURCE = ["preference.records=source", "train.epochs=2", "model.item_ids=false"]
CONTENT = ["preference.content=true"]
ML1M = ["data.dataset=ml-1m", "data.protocol=p3", "data.train_records=80000", "train.epochs=2"]
SOURCES = {  # movie models: ml-100k's source records; ml-1m's p3 records (80,000 drawn)
    "towers": SOURCE,
    "towers + content": [*SOURCE, *CONTENT],
    "ml-1m towers + content": [*ML1M, "model.item_ids=false", *CONTENT],
}
HEAD = ["train.warm_start=head", "train.lr=1e-2", "train.epochs=100", "train.patience=10"]
FEW = (*SHOTS, ALL)
ARMS = {  # name: (overrides, the movie source it starts from (None: target only), shots)
    "target only": ([], None, FEW),
    "target only + content": (CONTENT, None, FEW),
    "movie model, zero-shot": (["train.epochs=0"], "towers", (0,)),
    "movie model + content, zero-shot": ([*CONTENT, "train.epochs=0"], "towers + content", (0,)),
    "movie model, head calibrated": (HEAD, "towers", FEW),
    "movie model + content, head calibrated": ([*CONTENT, *HEAD], "towers + content", FEW),
    "movie model, adapted": ([], "towers", FEW),
    "movie model + content, adapted": (CONTENT, "towers + content", FEW),
    "ml-1m model + content, zero-shot": (
        [*CONTENT, "train.epochs=0"],
        "ml-1m towers + content",
        (0,),
    ),
    "ml-1m model + content, adapted": (CONTENT, "ml-1m towers + content", (256,)),
}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC with ties counted as half (average ranks)."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]
    positive = labels == 1
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def paired(test, runs: list[np.ndarray], against: list[np.ndarray], rng) -> tuple[float, ...]:
    """Mean over seeds of AUC(run) - AUC(against, same seed or a single reference), with a 95%
    bootstrap interval over the test records (one per user)."""
    y = test.labels

    def gap(index: np.ndarray) -> float:
        return float(
            np.mean(
                [
                    auc(p[index], y[index]) - auc(q[index], y[index])
                    for p, q in zip(runs, against, strict=True)
                ]
            )
        )

    draws = [gap(rng.integers(len(y), size=len(y))) for _ in range(BOOTSTRAP)]
    return gap(np.arange(len(y))), *np.quantile(draws, [0.025, 0.975])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/transfer.md")
    parser.add_argument("--runs", type=Path, default=REPO / "runs/bench_transfer")
    parser.add_argument("--seeds", type=int, default=5, help="few-shot seeds 0..seeds-1")
    parser.add_argument("--shots", type=int, nargs="*", default=None, help="default: all")
    parser.add_argument("--arms", nargs="*", default=None, help="default: every arm")
    args = parser.parse_args()
    started = time.perf_counter()
    dataset = tallrec_book_dataset()
    test = tallrec_book_split(dataset).test
    reference = like_ratio(test)
    seeds = list(range(args.seeds))
    sources = {
        name: train(MOVIES, args.runs / slug(f"movie {name}"), overrides)
        for name, overrides in SOURCES.items()
    }

    runs: dict[str, dict[int, list[dict]]] = {}
    for arm, (overrides, source, shots) in ARMS.items():
        if args.arms and arm not in args.arms:
            continue
        runs[arm] = {}
        for n in shots:
            if args.shots is not None and n not in args.shots:
                continue
            runs[arm][n] = []
            for seed in [0] if n in (0, ALL) else seeds:
                out = args.runs / slug(arm) / f"n{n}_s{seed}"
                extra = []
                if n not in (0, ALL):
                    extra = [f"data.train_records={n}", f"data.seed={seed}"]
                if source is not None:
                    extra.append(f"train.init_from={args.runs / slug(f'movie {source}') / 'model'}")
                metrics = train(BOOKS, out, [*overrides, *extra])
                p = app_probabilities(out / "model", test, dataset.item_ids)
                app = auc(p, test.labels)
                if abs(app - metrics["test_auc"]) > 1e-6:
                    raise SystemExit(f"{out}: predict_proba gives AUC {app}, the recipe {metrics}")
                runs[arm][n].append({**metrics, "probabilities": p, "seed": seed})
                print(f"{arm} n={n} seed={seed}: test AUC {app:.4f}", flush=True)

    rng = np.random.default_rng(0)
    ns = [0, *SHOTS, ALL]
    lines = [
        "# Movies to books: cross-domain transfer on tallrec-book",
        "",
        f"`python -m benchmarks.transfer`; {hardware_line()}; one process per run, fp32; "
        f"{time.perf_counter() - started:.0f} s for the study. Test AUC on "
        "tallrec-book's 2,427 test records (one per user; TALLRec's book benchmark rebuilt "
        "aligned), computed by each saved model's `predict_proba` (equal to the recipe's to "
        "1e-6 in every run). Frozen MiniLM towers, text-only items "
        '(`"{title}" by {author} ({year}). {publisher}.`). The sources: ml-100k\'s preference '
        f"records outside tallrec-movie ({sources['towers']['train_records']:,} records; test "
        "AUC on tallrec-movie's test: "
        + ", ".join(
            f"{name} {m['test_auc']:.4f}" for name, m in sources.items() if "ml-1m" not in name
        )
        + "), and 80,000 of ml-1m's P3 records with labels (test AUC on ml-1m's P3 test: "
        + ", ".join(f"{name} {m['test_auc']:.4f}" for name, m in sources.items() if "ml-1m" in name)
        + "). "
        f"Few-shot: mean ± std over seeds {seeds[0]}-{seeds[-1]}; n = 0 and {ALL:,}: one run. "
        "The like ratio of the history (no training) scores "
        f"**{auc(reference, test.labels):.4f}**.",
        "",
        "| method | " + " | ".join(f"n = {n}" for n in ns) + " |",
        "|---|" + "---|" * len(ns),
        "| TALLRec (LLaMA-7B + LoRA, published, misaligned records) | - | "
        + " | ".join(f"{TALLREC[n]:.4f}" for n in SHOTS)
        + " | - |",
        "| like ratio of the history (no training) | "
        + " | ".join([f"{auc(reference, test.labels):.4f}"] * len(ns))
        + " |",
    ]
    for arm, by_n in runs.items():
        cells = [fmt_seeds([r["test_auc"] for r in by_n[n]]) if by_n.get(n) else "-" for n in ns]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Paired on the same test records (mean over seeds of the per-seed difference; 95% "
        f"bootstrap interval over the 2,427 test users, {BOOTSTRAP} draws). Negative transfer "
        "is a difference below 0 against target only whose interval excludes 0.",
        "",
        "| method | n | minus target only [95% CI] | minus like ratio [95% CI] | "
        "trainable parameters | wall time per run |",
        "|---|---|---|---|---|---|",
    ]
    base = runs.get("target only", {})
    for arm, by_n in runs.items():
        for n, done in by_n.items():
            p = [r["probabilities"] for r in done]
            vs_ratio = paired(test, p, [reference] * len(p), rng)
            vs_target = "-"
            if arm != "target only":
                target_n = n if n else min(base, default=None)
                target = base.get(target_n)
                if target:
                    q = [r["probabilities"] for r in target]
                    if len(q) != len(p):  # zero-shot (one run) against each target seed
                        p = p * len(q)
                    mean, low, high = paired(test, p, q, rng)
                    label = "" if n else f" (vs n = {target_n})"
                    vs_target = f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]{label}"
            mean, low, high = vs_ratio
            seconds = np.median([r["process_seconds"] or r["wall_seconds"] for r in done])
            lines.append(
                f"| {arm} | {n} | {vs_target} | {mean:+.4f} [{low:+.4f}, {high:+.4f}] | "
                f"{done[0]['trainable_parameters']:,} | {seconds:.0f} s |"
            )
    lines += ["", f"![AUC against book records]({args.out.with_suffix('.png').name})"]
    record = run_record(runs)
    data = {
        "like_ratio_auc": auc(reference, test.labels),
        "source": {name: m["test_auc"] for name, m in sources.items()},
        "runs": record,
    }
    write_report(args.out, "\n".join(lines), data, plot(runs, auc(reference, test.labels)))


def plot(runs: dict, reference: float):
    """AUC against the book records trained on, TALLRec's published curve beside it."""
    return auc_curve(
        runs, reference, TALLREC, "tallrec-book: movies to books", "book records trained on, n"
    )


if __name__ == "__main__":
    main()
