"""Movies to books: does a preference model trained on movie ratings help on Book-Crossing?

    python benchmarks/transfer.py --out benchmarks/results/transfer.md

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
  (``train.init_from``).

n = 16, 64, 256 (seeds 0-4, TALLRec's draws ``default_rng(seed).permutation(19414)[:n]``) and
all 19,414 (seed 0). Every saved model is loaded with ``Recommender.from_pretrained`` and must
reproduce its recipe's test AUC through ``predict_proba`` on the test records. Paired
differences against target-only (and against the like ratio of the history) on the same records,
mean over seeds, 95% bootstrap interval over the test users (one record each).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from peftrec.data.bookcrossing import tallrec_book_dataset  # noqa: E402
from peftrec.data.preference import SHOTS, like_ratio, tallrec_book_split  # noqa: E402
from peftrec.recommender import Recommender  # noqa: E402

CONFIGS = REPO / "recipes" / "configs"
MOVIES = CONFIGS / "minilm_frozen_preference.yaml"
BOOKS = CONFIGS / "minilm_frozen_book_preference.yaml"
ALL = 19414
TALLREC = {16: 0.5636, 64: 0.6039, 256: 0.6438}  # TALLRec README, book, LLaMA-7B + LoRA
BOOTSTRAP = 1000
SOURCE = ["preference.records=source", "train.epochs=2", "model.item_ids=false"]
ARMS = {  # name: (overrides, from the movie model, shots)
    "target only": ([], False, (*SHOTS, ALL)),
    "movie model, zero-shot": (["train.epochs=0"], True, (0,)),
    "movie model, head calibrated": (
        ["train.warm_start=head", "train.lr=1e-2", "train.epochs=100", "train.patience=10"],
        True,
        (*SHOTS, ALL),
    ),
    "movie model, adapted": ([], True, (*SHOTS, ALL)),
}


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC with ties counted as half (average ranks)."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]
    positive = labels == 1
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def train(config: Path, out: Path, overrides: list[str]) -> dict:
    """One recipe run (skipped when its metrics exist), with the process's wall time."""
    if not (out / "metrics.json").is_file():
        command = [sys.executable, str(REPO / "recipes/train_preference.py"), "--config"]
        command += [str(config), *overrides, f"output_dir={out}"]
        tick = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        if done.returncode != 0:
            raise SystemExit(f"{out}: the recipe failed\n{done.stderr[-3000:]}")
        (out / "process.json").write_text(json.dumps({"seconds": time.perf_counter() - tick}))
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["process_seconds"] = json.loads((out / "process.json").read_text())["seconds"]
    return metrics


def app_probabilities(folder: Path, test, item_ids: list[str]) -> np.ndarray:
    """The saved model's like probabilities of the test records, as an app computes them
    (each history as long as it is: 3 to 10 books)."""
    rec = Recommender.from_pretrained(folder)
    histories = [
        [(item_ids[i], bool(like)) for i, like in zip(items[mask], labels[mask], strict=True)]
        for items, labels, mask in zip(
            test.history_items, test.history_labels, test.history_mask, strict=True
        )
    ]
    return rec.predict_proba([item_ids[i] for i in test.items], histories=histories)


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


def cell(values: list[float], n: int) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/transfer.md")
    parser.add_argument("--runs", type=Path, default=REPO / "runs/bench_transfer")
    parser.add_argument("--seeds", type=int, default=5, help="few-shot seeds 0..seeds-1")
    parser.add_argument("--shots", type=int, nargs="*", default=None, help="default: all")
    args = parser.parse_args()
    started = time.perf_counter()
    dataset = tallrec_book_dataset()
    test = tallrec_book_split(dataset).test
    reference = like_ratio(test)
    seeds = list(range(args.seeds))
    source = train(MOVIES, args.runs / "movie_source", SOURCE)
    source_model = args.runs / "movie_source" / "model"

    runs: dict[str, dict[int, list[dict]]] = {}
    for arm, (overrides, from_movies, shots) in ARMS.items():
        slug = re.sub(r"[^a-z0-9]+", "_", arm.lower()).strip("_")
        runs[arm] = {}
        for n in shots:
            if args.shots is not None and n not in args.shots:
                continue
            runs[arm][n] = []
            for seed in [0] if n in (0, ALL) else seeds:
                out = args.runs / slug / f"n{n}_s{seed}"
                extra = (
                    [f"data.train_records={n}", f"data.seed={seed}"] if n not in (0, ALL) else []
                )
                if from_movies:
                    extra.append(f"train.init_from={source_model}")
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
        f"`python benchmarks/transfer.py`; {platform.machine()}, 2 cores (shared), one process "
        f"per run, CPU fp32; {time.perf_counter() - started:.0f} s for the study. Test AUC on "
        "tallrec-book's 2,427 test records (one per user; TALLRec's book benchmark rebuilt "
        "aligned), computed by each saved model's `predict_proba` (equal to the recipe's to "
        "1e-6 in every run). Frozen MiniLM towers, text-only items "
        '(`"{title}" by {author} ({year}). {publisher}.`). The source: ml-100k\'s preference '
        f"records outside tallrec-movie ({source['train_records']:,} records, "
        f"{source['wall_seconds']:.0f} s; {source['test_auc']:.4f} on tallrec-movie's test). "
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
        cells = [cell([r["test_auc"] for r in by_n.get(n, [])], n) for n in ns]
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
            seconds = np.median([r["process_seconds"] for r in done])
            lines.append(
                f"| {arm} | {n} | {vs_target} | {mean:+.4f} [{low:+.4f}, {high:+.4f}] | "
                f"{done[0]['trainable_parameters']:,} | {seconds:.0f} s |"
            )
    lines += ["", "![AUC against book records](transfer.png)"]
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    plot(runs, auc(reference, test.labels), args.out.with_suffix(".png"))
    record = {
        arm: {
            str(n): [
                {k: v for k, v in r.items() if k not in ("probabilities", "history")} for r in rs
            ]
            for n, rs in by_n.items()
        }
        for arm, by_n in runs.items()
    }
    args.out.with_suffix(".json").write_text(
        json.dumps(
            {
                "like_ratio_auc": auc(reference, test.labels),
                "source": source["test_auc"],
                "runs": record,
            },
            indent=1,
        )
    )


def plot(runs: dict, reference: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(list(TALLREC), list(TALLREC.values()), "k--", marker="s", label="TALLRec (published)")
    ax.axhline(reference, color="grey", linestyle=":", label="like ratio (no training)")
    for arm, by_n in runs.items():
        ns = sorted(by_n)
        if ns == [0]:
            ax.axhline(by_n[0][0]["test_auc"], color="tab:red", linestyle="-.", label=arm)
            continue
        means = [np.mean([r["test_auc"] for r in by_n[n]]) for n in ns]
        stds = [np.std([r["test_auc"] for r in by_n[n]]) for n in ns]
        ax.errorbar(ns, means, yerr=stds, marker="o", capsize=3, label=arm)
    ax.set_xscale("log")
    ax.set_xlabel("book records trained on, n")
    ax.set_ylabel("test AUC")
    ax.set_title("tallrec-book: movies to books")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
