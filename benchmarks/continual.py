"""Continual updates on protocol p4: full retrain against warm starts, side by side.

    python -m benchmarks.continual --config recipes/configs/minilm_lora_rating.yaml \\
        --out benchmarks/results/continual.md
    python -m benchmarks.continual --task ranking \\
        --config recipes/configs/minilm_lora_ranking.yaml \\
        --out benchmarks/results/continual_ranking.md

ml-100k in 5 time blocks of 20,000 ratings (``peftrec.data.blocks``). Every arm trains on B1
first (one shared run), then takes the updates t = 2, 3, 4, each scored on the next block
B_{t+1} (the recipe's test RMSE, unclipped, with its warm/cold split) and on the held-out shares
of B_1..B_{t-1} (forgetting: RMSE of the saved model's clipped predictions). A ranking model
(``--task ranking``) is scored by NDCG@10 with full ranking: on each user's first interaction of
B_{t+1}, the items the user had in B_1..B_t excluded, and (forgetting) on each user's first row of
the earlier held-out shares, the training rows of B_1..B_t excluded. The arms:

- retrain: a new model on B_1..B_t (``data.window=all``);
- warm start: the previous model continued on B_t alone (``train.init_from``, ``window=new``),
  with the config's epochs, or with 2;
- warm start + replay: the same with a random 20% of the earlier blocks' training rows mixed in;
- warm start on everything: the previous model continued for 2 epochs (or 1) on B_1..B_t;
- warm start + L2-SP: on B_t alone, with the adapter held near the parent's (``transfer``);
- merge + new adapter: the parent's LoRA merged into the backbone, a fresh one trained on B_t
  (``train.warm_start=merge``);
- towers only: the parent's adapter kept frozen, only the towers and head train, on B_t or on
  B_1..B_t (``train.warm_start=towers``; no language-model pass in training).

The updates run update by update, every arm in turn, so that the arms share the machine's load.
Wall time is the whole process (imports, start-up, training, evaluation, saving), one process,
this machine; the recipe's own ``wall_seconds`` (after the imports) is recorded beside it.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import REPO, hardware_line, launch_recipe, write_report
from peftrec.app.recommender import Recommender
from peftrec.data import load_movielens
from peftrec.data.blocks import (
    earlier_held,
    first_per_user,
    histories_before,
    p4_history,
    p4_ranking_split,
    time_blocks,
)
from peftrec.metrics import rank_of_targets
from peftrec.tasks.ranking.step import seen_mask

ARMS = {  # name: (folder prefix, overrides)
    "retrain": ("retrain", ["data.window=all"]),
    "warm start": ("warm", ["data.window=new"]),
    "warm start, 2 epochs": ("warm2", ["data.window=new", "train.epochs=2"]),
    "warm start + replay 20%": ("replay", ["data.window=new", "data.replay=0.2"]),
    "warm start on blocks 1..t, 2 epochs": ("warmall2", ["data.window=all", "train.epochs=2"]),
    "warm start on blocks 1..t, 1 epoch": ("warmall1", ["data.window=all", "train.epochs=1"]),
    "warm start + L2-SP toward the parent": (
        "l2sp",
        ["data.window=new", "transfer.loss=l2sp", "transfer.weight=0.01"],
    ),
    "merge + new adapter, 2 epochs": (
        "merge2",
        ["data.window=new", "train.warm_start=merge", "train.epochs=2"],
    ),
    "towers only": ("towers", ["data.window=new", "train.warm_start=towers"]),
    "towers only + replay 50%": (
        "towersreplay",
        ["data.window=new", "data.replay=0.5", "train.warm_start=towers"],
    ),
    "towers only on blocks 1..t": ("towersall", ["data.window=all", "train.warm_start=towers"]),
}
TASK_ARMS = {  # a ranking run costs more: the arms and the rating study's best
    "rating": tuple(ARMS),
    "ranking": (
        "retrain",
        "warm start",
        "warm start + replay 20%",
        "warm start on blocks 1..t, 1 epoch",
        "merge + new adapter, 2 epochs",
        "towers only",
        "towers only + replay 50%",
        "towers only on blocks 1..t",
    ),
    "sequential": (  # a frozen backbone: a warm start trains what towers only would
        "retrain",
        "warm start",
        "warm start + replay 20%",
        "warm start on blocks 1..t, 2 epochs",
    ),
}
METRIC = {
    "rating": ("rmse", "RMSE"),
    "ranking": ("ndcg@10", "NDCG@10"),
    "sequential": ("ndcg@10", "NDCG@10"),
}  # key, name
UPDATES = (2, 3, 4)
BOOTSTRAP = 1000


SETTINGS: list[str] = []  # --set: settings for every run


def train(config: Path, task: str, out: Path, overrides: list[str]) -> dict:
    """One p4 recipe run (skipped when its metrics exist): its metrics.json, with the process's
    wall time (``process_seconds``)."""
    overrides = ["data.protocol=p4", *SETTINGS, *overrides]
    return launch_recipe(task, config, out, overrides).results()


def per_row(
    folder: Path,
    dataset,
    task: str,
    rows: np.ndarray,
    exclude: np.ndarray,
    before: np.ndarray | None = None,
) -> np.ndarray:
    """The saved model, through the app, on each of ``rows``: the squared error of its clipped
    prediction (rating), or the NDCG@10 of the row's item as its user's target, the items of
    the ``exclude`` rows not ranked (ranking, sequential). A history model reads the user's
    saved history or, with ``before``, the user's ``before`` rows that precede the target."""
    inter = dataset.interactions
    rec = Recommender.from_pretrained(folder)
    users = [dataset.user_ids[u] for u in inter.users[rows]]
    if task == "rating":
        items = [dataset.item_ids[i] for i in inter.items[rows]]
        return (rec.predict(users, items) - inter.ratings[rows]) ** 2
    assert list(rec.item_ids) == list(dataset.item_ids)
    shape = len(dataset.user_ids), len(dataset.item_ids)
    mask = seen_mask(inter.users[exclude], inter.items[exclude], *shape)[inter.users[rows]]
    if before is None:
        scores = torch.as_tensor(rec.score_all(users))
    else:  # an earlier target: the history up to it, not the user's whole saved history
        histories = histories_before(dataset, before, rows)
        scores = torch.as_tensor(
            np.stack([rec.score_history([dataset.item_ids[i] for i in h]) for h in histories])
        )
    ranks = rank_of_targets(scores, torch.as_tensor(inter.items[rows]), mask).numpy()
    return np.where(ranks <= 10, 1.0 / np.log2(ranks + 1.0), 0.0)


def summarise(task: str, values: np.ndarray) -> float:
    """RMSE of squared errors, or mean NDCG."""
    return float(np.sqrt(values.mean()) if task == "rating" else values.mean())


def forgetting(folder: Path, dataset, task: str, block: int) -> float:
    """The metric on the held-out shares of B_1..B_{t-1} (a ranking: each user's first row)."""
    rows = earlier_held(dataset, block)
    learned, before = p4_history(dataset, block)
    if task == "rating":
        return summarise(task, per_row(folder, dataset, task, rows, learned))
    rows = first_per_user(dataset, rows)
    history = before if task == "sequential" else None
    return summarise(task, per_row(folder, dataset, task, rows, learned, history))


def next_rows(dataset, task: str, t: int) -> tuple[np.ndarray, np.ndarray]:
    """The next block's scored rows after update t, and what a ranking excludes."""
    if task == "rating":
        return time_blocks(dataset)[t].rows, np.zeros(0, np.int64)
    return p4_ranking_split(dataset, t).test, p4_history(dataset, t)[1]


def popularity(dataset, window: str, new_users_by_first: bool = False) -> float:
    """Next-block NDCG@10 (mean over t) of ranking every item by its count in B_t's training
    rows (``new``) or in those of B_1..B_t (``all``): no model, the reference a ranking update
    must beat. With ``new_users_by_first``, a user with no row in B_1..B_t is ranked by the count
    of the window's users' first items instead (what users start with)."""
    inter, blocks = dataset.interactions, time_blocks(dataset)
    shape = len(dataset.user_ids), len(dataset.item_ids)
    tiebreak = np.random.default_rng(0).random(shape[1]) * 1e-3
    values = []
    for t in UPDATES:
        test, before = next_rows(dataset, "ranking", t)
        learned = p4_history(dataset, t)[0]
        rows = blocks[t - 1].train if window == "new" else learned
        counts = np.bincount(inter.items[rows], minlength=shape[1]) + tiebreak
        scores = np.tile(counts.astype(np.float32), (len(test), 1))
        if new_users_by_first:
            firsts = first_per_user(dataset, learned)
            firsts = firsts[np.isin(firsts, rows)]
            first_counts = np.bincount(inter.items[firsts], minlength=shape[1]) + tiebreak
            new = ~np.isin(inter.users[test], inter.users[before])
            scores[new] = first_counts
        mask = seen_mask(inter.users[before], inter.items[before], *shape)[inter.users[test]]
        ranks = rank_of_targets(
            torch.as_tensor(scores), torch.as_tensor(inter.items[test]), mask
        ).numpy()
        values.append(np.where(ranks <= 10, 1.0 / np.log2(ranks + 1.0), 0.0).mean())
    return float(np.mean(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=tuple(TASK_ARMS), default="rating")
    parser.add_argument(
        "--config", type=Path, default=REPO / "recipes/configs/minilm_lora_rating.yaml"
    )
    parser.add_argument("--runs", type=Path, default=None, help="default runs/benchmarks/continual")
    parser.add_argument("--arms", nargs="+", default=None, help="a subset of the task's arms")
    parser.add_argument("--out", type=Path, default=None, help="Markdown report to write")
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="KEY=VALUE", help="settings for every run"
    )
    args = parser.parse_args()
    task, arms = args.task, args.arms or list(TASK_ARMS[args.task])
    SETTINGS[:] = args.set
    if "retrain" not in arms or set(arms) - set(ARMS):
        raise SystemExit(f"--arms: retrain and any of {list(ARMS)}")
    runs = args.runs or REPO / "runs/benchmarks" / ("continual" + f"_{task}" * (task != "rating"))
    key, name = METRIC[task]
    started = time.perf_counter()
    dataset = load_movielens("ml-100k")

    first = train(args.config, task, runs / "b1", ["data.block=1"])
    rows = {}
    previous = dict.fromkeys(arms, runs / "b1" / "model")
    for t in UPDATES:  # update by update, every arm in turn: the arms share the machine's load
        for arm in arms:
            prefix, options = ARMS[arm]
            out = runs / f"{prefix}_b{t}"
            extra = [] if arm == "retrain" else [f"train.init_from={previous[arm]}"]
            metrics = train(args.config, task, out, [f"data.block={t}", *options, *extra])
            rows[arm, t] = {
                "next": metrics[f"test_{key}"],
                "next_warm": metrics.get(f"test_{key}_warm"),
                "next_cold_users": metrics.get(f"test_{key}_cold_users"),
                "forgetting": forgetting(out / "model", dataset, task, t),
                "seconds": metrics["process_seconds"],
                "recipe_seconds": metrics["wall_seconds"],
                "trainable": metrics["trainable_parameters"],
                "backbone_trainable": metrics["backbone_trainable_parameters"],
                "epochs": metrics["best_epoch"],
            }
            previous[arm] = out / "model"
            print(f"{arm}, t={t}: {rows[arm, t]}", flush=True)

    def fmt(v):
        return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"

    scored = (
        "all its ratings"
        if task == "rating"
        else "each user's first interaction, full ranking, the user's earlier items excluded"
    )
    lines = [
        f"# Continual updates, protocol p4 ({task}; ml-100k, 5 time blocks of 20,000 ratings)",
        "",
        f"`python -m benchmarks.continual --task {task} --config "
        f"{args.config.resolve().relative_to(REPO)}"
        + "".join(f" --set {s}" for s in args.set)
        + "`; the same config for every run; "
        f"{hardware_line()}; one process per run, OMP_NUM_THREADS "
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}; "
        f"{sum(r['seconds'] for r in rows.values()):.0f} s of updates ({len(rows)} runs; this "
        f"report {time.perf_counter() - started:.0f} s). The next block: {scored}. B1 run: "
        f"next-block {name} {first[f'test_{key}']:.4f}, "
        + (
            f"{first['process_seconds']:.0f} s."
            if first["process_seconds"]
            else f"{first['wall_seconds']:.0f} s (the recipe's time, after its imports)."
        ),
        "",
        f"| arm | update t | next block {name} (warm / cold users) | forgetting: {name} on "
        "earlier held-out shares | best epoch | wall time (recipe) |",
        "|---|---|---|---|---|---|",
    ]
    for t in UPDATES:
        for arm in arms:
            r = rows[arm, t]
            lines.append(
                f"| {arm} | {t} | {fmt(r['next'])} ({fmt(r['next_warm'])} / "
                f"{fmt(r['next_cold_users'])}) | {fmt(r['forgetting'])} | {r['epochs']} | "
                f"{r['seconds']:.0f} s ({r['recipe_seconds']:.0f} s) |"
            )
    base = {k: np.mean([rows["retrain", t][k] for t in UPDATES]) for k in ("seconds", "trainable")}
    summary = {}
    for arm in arms:
        summary[arm] = {
            k: float(np.mean([rows[arm, t][k] for t in UPDATES]))
            for k in ("next", "forgetting", "seconds", "recipe_seconds", "trainable")
        }
        summary[arm]["paired"] = (
            paired_difference(runs, dataset, task, arm) if arm != "retrain" else None
        )
    lines += [
        "",
        "Means over t = 2, 3, 4; the paired difference is against the retrain on the same "
        "next-block rows (pooled over the updates, through the app: "
        + ("its clipped predictions" if task == "rating" else "its scores")
        + f"; 95% bootstrap interval resampling (update, user) groups, {BOOTSTRAP} draws); wall "
        "time is the whole process per update; trainable parameters per update:",
        "",
        f"| arm | next-block {name} | minus retrain's [95% CI] | forgetting | wall time, of "
        "retrain | trainable parameters, of retrain |",
        "|---|---|---|---|---|---|",
    ]
    for arm, m in summary.items():
        paired = "-" if m["paired"] is None else "{:+.4f} [{:+.4f}, {:+.4f}]".format(*m["paired"])
        lines.append(
            f"| {arm} | {m['next']:.4f} | {paired} | {m['forgetting']:.4f} | "
            f"{100 * m['seconds'] / base['seconds']:.0f}% ({m['seconds']:.0f} s) | "
            f"{100 * m['trainable'] / base['trainable']:.0f}% ({m['trainable']:,.0f}) |"
        )
    baselines = {}
    if task != "rating":
        baselines = {window: popularity(dataset, window) for window in ("new", "all")}
        baselines |= {
            f"{window}, new users by first items": popularity(dataset, window, True)
            for window in ("new", "all")
        }
        lines += [
            "",
            "No model, the same targets and exclusions: ranking by popularity in B_t scores "
            f"NDCG@10 {baselines['new']:.4f}, by popularity in B_1..B_t {baselines['all']:.4f}; "
            "with a new user (no row in B_1..B_t) ranked by how often each item was a user's "
            "first in the same rows: "
            f"{baselines['new, new users by first items']:.4f} (B_t), "
            f"{baselines['all, new users by first items']:.4f} (B_1..B_t) (means over t).",
        ]
    data = {
        "task": task,
        "runs": {f"{a} t={t}": r for (a, t), r in rows.items()},
        "summary": summary,
        "popularity": baselines,
        "b1": {k: first.get(k) for k in (f"test_{key}", "process_seconds")},
    }
    figure = plot(rows, arms, f"{name} on block t+1") if args.out else None
    write_report(args.out, "\n".join(lines), data, figure)


def paired_difference(runs: Path, dataset, task: str, arm: str) -> tuple[float, float, float]:
    """metric(arm) - metric(retrain) on the next blocks' rows, with a bootstrap interval over
    (update, user) groups."""
    inter = dataset.interactions
    values, groups = {arm: [], "retrain": []}, []
    for t in UPDATES:
        rows, exclude = next_rows(dataset, task, t)
        for name in values:
            folder = runs / f"{ARMS[name][0]}_b{t}" / "model"
            values[name].append(per_row(folder, dataset, task, rows, exclude))
        groups.append(t * 100_000 + inter.users[rows])
    a, b = np.concatenate(values[arm]), np.concatenate(values["retrain"])
    keys, index = np.unique(np.concatenate(groups), return_inverse=True)
    sums_a = np.bincount(index, weights=a)
    sums_b = np.bincount(index, weights=b)
    counts = np.bincount(index)
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(BOOTSTRAP):
        pick = np.bincount(rng.integers(len(keys), size=len(keys)), minlength=len(keys))
        n = (pick * counts).sum()
        mean_a, mean_b = (pick * sums_a).sum() / n, (pick * sums_b).sum() / n
        draws.append(np.sqrt(mean_a) - np.sqrt(mean_b) if task == "rating" else mean_a - mean_b)
    mean = summarise(task, a) - summarise(task, b)
    return mean, float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))


def plot(rows: dict, arms: list[str], label: str):
    """The next-block metric per update, one line per arm (a matplotlib figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm in arms:
        ax.plot(UPDATES, [rows[arm, t]["next"] for t in UPDATES], marker="o", label=arm)
    ax.set_xlabel("update t (trained through block t)")
    ax.set_ylabel(label)
    ax.set_xticks(UPDATES)
    ax.legend(fontsize=7)
    ax.set_title(f"p4: next-block {label.split()[0]} per update")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
