"""Binary preference on TALLRec's benchmark (tallrec-movie): methods x training records x seeds.

    python -m benchmarks.preference --out benchmarks/results/preference.md

Each run is ``recipes/train_preference.py`` (n = 16, 64, 256 records drawn by seeds 0-4, and all
8,000); its saved model is then loaded with ``Recommender.from_pretrained`` and scores the 1,000
test records through ``predict_proba(items, histories=...)``, which must reproduce the recipe's
test AUC. Arms:

- towers, frozen MiniLM (*benchmark only*: the n records and what the backbone knows);
- towers, ID-only items (no text: what the LM adds);
- towers with a source domain: one model trained on the records of the ratings no benchmark
  record targets (``preference.records=source``), then adapted on the n records
  (``train.init_from``); and the same source model with its towers kept, only the head's six
  calibration scalars fitted to the n records (``train.warm_start=head``);
- cross-encoder (TALLRec-style: MiniLM + LoRA reads the titles): one seed, on CPU it costs
  minutes per pass over the validation records.

For the headline rows (256 and 8,000 records), the paired AUC difference against the like-ratio
rule (the history's like share, no training) on the same test records, the mean over seeds, with
a bootstrap interval resampling the 16 test users. Plot: AUC against n, TALLRec's published
curve beside it.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, fmt_seeds, hardware_line, launch_recipe, write_report
from peftrec.app.recommender import Recommender
from peftrec.data import load_movielens
from peftrec.data.preference import SHOTS, like_ratio, tallrec_split
from peftrec.metrics import load_metric

CONFIGS = REPO / "recipes" / "configs"
TOWERS = CONFIGS / "minilm_frozen_preference.yaml"
CROSS = CONFIGS / "minilm_lora_cross_preference.yaml"
ALL = 8000
TALLREC = {16: 0.6724, 64: 0.6748, 256: 0.7198}  # TALLRec README, LLaMA-7B + LoRA, test AUC
BOOTSTRAP = 1000
ARMS = {  # name: (config, overrides, setting, shots and seeds)
    "towers, frozen MiniLM": (TOWERS, [], "benchmark", None),
    "towers, ID-only items": (TOWERS, ["model.item_text=false"], "benchmark", None),
    "towers, frozen MiniLM + source domain": (TOWERS, [], "source", None),
    "towers + source domain, head calibrated": (
        TOWERS,
        ["train.warm_start=head", "train.lr=1e-2", "train.epochs=100"],
        "source",
        None,
    ),
    "cross-encoder, MiniLM + LoRA": (CROSS, ["train.epochs=3"], "benchmark", {256: [0]}),
}


FULL_DATA = {  # protocol p3 with labels: every user's last record is a test record
    "towers, frozen MiniLM": (TOWERS, ["train.epochs=3"]),
    "towers, ID-only items": (TOWERS, ["train.epochs=3", "model.item_text=false"]),
}


def grid(seeds: list[int]) -> dict[int, list[int]]:
    return {**{n: seeds for n in SHOTS}, ALL: [0]}


def train(config: Path, out: Path, overrides: list[str]) -> dict:
    """One recipe run (skipped when its metrics exist), with the process's wall time."""
    return launch_recipe("preference", config, out, overrides).results()


def app_probabilities(folder: Path, test, item_ids: list[str]) -> np.ndarray:
    """The saved model's like probabilities of the test records, as an app computes them (each
    history as long as it is)."""
    rec = Recommender.from_pretrained(folder)
    histories = [
        [(item_ids[i], bool(like)) for i, like in zip(items[mask], labels[mask], strict=True)]
        for items, labels, mask in zip(
            test.history_items, test.history_labels, test.history_mask, strict=True
        )
    ]
    return rec.predict_proba([item_ids[i] for i in test.items], histories=histories)


def paired_gap(test, runs: list[np.ndarray], rng) -> tuple[float, float, float]:
    """Mean over runs of AUC(run) - AUC(like ratio) on the test records, with a 95% bootstrap
    interval over the test users."""
    auc = load_metric("preference")
    reference = like_ratio(test)
    users = np.unique(test.users)
    by_user = [np.flatnonzero(test.users == u) for u in users]

    def gap(index: np.ndarray) -> float:
        y = test.labels[index]
        theirs = auc.compute(predictions=reference[index], references=y)["auc"]
        return float(
            np.mean([auc.compute(predictions=p[index], references=y)["auc"] for p in runs]) - theirs
        )

    draws = []
    for _ in range(BOOTSTRAP // 5):  # evaluate modules are slow to call: 200 draws
        pick = rng.integers(len(users), size=len(users))
        draws.append(gap(np.concatenate([by_user[k] for k in pick])))
    whole = gap(np.arange(len(test)))
    return whole, float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/preference.md")
    parser.add_argument("--runs", type=Path, default=REPO / "runs/bench_preference")
    parser.add_argument("--seeds", type=int, default=5, help="few-shot seeds 0..seeds-1")
    args = parser.parse_args()
    started = time.perf_counter()
    dataset = load_movielens("ml-100k")
    test = tallrec_split(dataset).test
    auc = load_metric("preference")
    reference = auc.compute(predictions=like_ratio(test), references=test.labels)["auc"]
    seeds = list(range(args.seeds))

    source = train(TOWERS, args.runs / "source", ["preference.records=source", "train.epochs=2"])
    runs: dict[str, dict[int, list[dict]]] = {}
    for arm, (config, overrides, setting, shots) in ARMS.items():
        runs[arm] = {}
        slug = re.sub(r"[^a-z0-9]+", "_", arm.lower()).strip("_")
        for n, arm_seeds in (shots or grid(seeds)).items():
            runs[arm][n] = []
            for seed in arm_seeds:
                out = args.runs / slug / f"n{n}_s{seed}"
                extra = [] if n == ALL else [f"data.train_records={n}", f"data.seed={seed}"]
                if setting == "source":
                    extra.append(f"train.init_from={args.runs / 'source' / 'model'}")
                metrics = train(config, out, [*overrides, *extra])
                p = app_probabilities(out / "model", test, dataset.item_ids)
                app = auc.compute(predictions=p, references=test.labels)["auc"]
                if abs(app - metrics["test_auc"]) > 1e-6:
                    raise SystemExit(f"{out}: predict_proba gives AUC {app}, the recipe {metrics}")
                runs[arm][n].append({**metrics, "probabilities": p, "seed": seed})
                print(f"{arm} n={n} seed={seed}: test AUC {app:.4f}", flush=True)

    rng = np.random.default_rng(0)
    lines = [
        "# Binary preference on tallrec-movie (TALLRec's MovieLens-100K benchmark)",
        "",
        f"`python -m benchmarks.preference`; {hardware_line()}; one process per run; "
        f"{time.perf_counter() - started:.0f} s for the study. Test AUC on the 1,000 test "
        f"records (16 users), computed by the saved model's `predict_proba` (equal to the "
        f"recipe's to 1e-6 in every run). The like-ratio rule (no training) scores "
        f"**{reference:.4f}**. Few-shot rows: mean ± std over seeds {seeds[0]}-{seeds[-1]} "
        "(TALLRec's draws, `data.seed`), with their count; 8000: one run. The source model alone "
        f"(trained on {source['train_records']} source records, {source['wall_seconds']:.0f} s) "
        f"scores {source['test_auc']:.4f}.",
        "",
        "| method | setting | " + " | ".join(f"n = {n}" for n in (*SHOTS, ALL)) + " |",
        "|---|---|" + "---|" * (len(SHOTS) + 1),
        "| TALLRec (LLaMA-7B + LoRA, published) | benchmark | "
        + " | ".join(f"{TALLREC[n]:.4f}" for n in SHOTS)
        + " | - |",
    ]
    for arm, (_, _, setting, _) in ARMS.items():
        cells = []
        for n in (*SHOTS, ALL):
            done = runs[arm].get(n, [])
            seeds_run = [r["seed"] for r in done] if n != ALL else None
            cells.append(fmt_seeds([r["test_auc"] for r in done], seeds_run) if done else "-")
        lines.append(f"| {arm} | {setting} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Paired against the like-ratio rule on the same test records (mean over the seeds; 95% "
        f"bootstrap interval over the 16 test users, {BOOTSTRAP // 5} draws):",
        "",
        "| method | n | AUC minus like ratio [95% CI] | trainable parameters | wall time per run |",
        "|---|---|---|---|---|",
    ]
    for arm in ARMS:
        for n in (256, ALL):
            done = runs[arm].get(n)
            if not done:
                continue
            mean, low, high = paired_gap(test, [r["probabilities"] for r in done], rng)
            seconds = np.median([r["process_seconds"] for r in done])
            lines.append(
                f"| {arm} | {n} | {mean:+.4f} [{low:+.4f}, {high:+.4f}] | "
                f"{done[0]['trainable_parameters']:,} | {seconds:.0f} s |"
            )
    lines += [
        "",
        "Full data, protocol p3 with labels (each user's last record is test, the one before "
        "validation; 943 test records, one per user, so no per-user AUC):",
        "",
        "| method | training records | test AUC | LogLoss | wall time |",
        "|---|---|---|---|---|",
    ]
    for arm, (config, overrides) in FULL_DATA.items():
        slug = re.sub(r"[^a-z0-9]+", "_", arm.lower()).strip("_")
        m = train(config, args.runs / "p3" / slug, [*overrides, "data.protocol=p3"])
        lines.append(
            f"| {arm} | {m['train_records']:,} | {m['test_auc']:.4f} | {m['test_logloss']:.4f} | "
            f"{m['process_seconds']:.0f} s |"
        )
    lines += ["", f"![AUC against training records]({args.out.with_suffix('.png').name})"]
    record = run_record(runs)
    data = {"like_ratio_auc": reference, "source": source["test_auc"], "runs": record}
    write_report(args.out, "\n".join(lines), data, plot(runs, reference))


def run_record(runs: dict) -> dict:
    """The runs' metrics for the JSON report (without probabilities and learning curves)."""
    return {
        arm: {
            str(n): [
                {k: v for k, v in r.items() if k not in ("probabilities", "history")} for r in rs
            ]
            for n, rs in by_n.items()
        }
        for arm, by_n in runs.items()
    }


def plot(runs: dict, reference: float):
    """AUC against the training records, TALLRec's published curve beside it (a figure)."""
    return auc_curve(
        runs,
        reference,
        TALLREC,
        "tallrec-movie: AUC against training records",
        "training records n",
    )


def auc_curve(runs: dict, reference: float, published: dict, title: str, xlabel: str):
    """Test AUC (mean ± std over seeds) against the records trained on, per arm; a published
    curve and the like ratio beside them; an arm run at n = 0 only (zero-shot) as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(
        list(published), list(published.values()), "k--", marker="s", label="TALLRec (published)"
    )
    ax.axhline(reference, color="grey", linestyle=":", label="like ratio (no training)")
    for arm, by_n in runs.items():
        ns = sorted(by_n)
        if ns == [0]:
            ax.axhline(by_n[0][0]["test_auc"], linestyle="-.", label=arm)
            continue
        means = [np.mean([r["test_auc"] for r in by_n[n]]) for n in ns]
        stds = [np.std([r["test_auc"] for r in by_n[n]]) for n in ns]
        ax.errorbar(ns, means, yerr=stds, marker="o", capsize=3, label=arm)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test AUC")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
