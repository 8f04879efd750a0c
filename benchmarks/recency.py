"""What is popular now, learned (issue 28): p4 next-block ranking of a history model with
``sequence.recency`` against the written-down rule, paired on the same targets.

    python -m benchmarks.recency --out benchmarks/results/recency.md

The model: ``recipes/configs/minilm_frozen_sequential.yaml`` with ``sequence.empty_state`` and
``sequence.recency``, retrained on B_1..B_t for t = 2, 3, 4 (``data.window=all``; runs whose
metrics exist are reused). Each update's saved model is scored through the app
(``Recommender.score_all(users, at=target times)``: the numpy path with the counts of its seen
interactions, blocks 1..t) on each user's first interaction of B_{t+1}, the items the user had in
B_1..B_t excluded, full ranking. The rule: known users ranked by popularity in B_t's training
rows, new users by how often each item was a user's first there (``benchmarks.continual``'s
0.2371). Paired differences pool (update, user) groups, 95% bootstrap intervals.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import REPO, hardware_line, launch_recipe, write_report
from benchmarks.continual import BOOTSTRAP, UPDATES, next_rows
from peftrec.app.recommender import Recommender
from peftrec.data import load_movielens
from peftrec.data.blocks import first_per_user, p4_history, time_blocks
from peftrec.metrics import rank_of_targets
from peftrec.tasks.ranking.step import seen_mask

CONFIG = REPO / "recipes/configs/minilm_frozen_sequential.yaml"
SETTINGS = ["sequence.empty_state=true", "sequence.recency=true"]


def ndcg(scores: np.ndarray, targets: np.ndarray, mask: torch.Tensor) -> np.ndarray:
    ranks = rank_of_targets(torch.as_tensor(scores), torch.as_tensor(targets), mask).numpy()
    return np.where(ranks <= 10, 1.0 / np.log2(ranks + 1.0), 0.0)


def rule_scores(dataset, t: int, test: np.ndarray, before: np.ndarray) -> np.ndarray:
    """The written-down rule's scores for the rows ``test`` (as ``continual.popularity``)."""
    inter, blocks = dataset.interactions, time_blocks(dataset)
    items = len(dataset.item_ids)
    tiebreak = np.random.default_rng(0).random(items) * 1e-3
    rows = blocks[t - 1].train
    scores = np.tile((np.bincount(inter.items[rows], minlength=items) + tiebreak), (len(test), 1))
    firsts = first_per_user(dataset, p4_history(dataset, t)[0])
    firsts = firsts[np.isin(firsts, rows)]
    new = ~np.isin(inter.users[test], inter.users[before])
    scores[new] = np.bincount(inter.items[firsts], minlength=items) + tiebreak
    return scores.astype(np.float32)


def paired(a: np.ndarray, b: np.ndarray, groups: np.ndarray) -> tuple[float, float, float]:
    keys, index = np.unique(groups, return_inverse=True)
    sums_a, sums_b, counts = (np.bincount(index, weights=w) for w in (a, b, np.ones(len(a))))
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(BOOTSTRAP):
        pick = np.bincount(rng.integers(len(keys), size=len(keys)), minlength=len(keys))
        n = (pick * counts).sum()
        draws.append(((pick * sums_a).sum() - (pick * sums_b).sum()) / n)
    return float(a.mean() - b.mean()), *np.quantile(draws, [0.025, 0.975]).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=REPO / "runs/benchmarks/recency")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    dataset = load_movielens("ml-100k")
    inter = dataset.interactions
    shape = len(dataset.user_ids), len(dataset.item_ids)
    model, rule, warm, groups, recipe = [], [], [], [], {}
    for t in UPDATES:
        out = args.runs / f"retrain_b{t}"
        overrides = ["data.protocol=p4", f"data.block={t}", "data.window=all", *SETTINGS]
        recipe[t] = launch_recipe("sequential", CONFIG, out, overrides).results()
        test, before = next_rows(dataset, "sequential", t)
        mask = seen_mask(inter.users[before], inter.items[before], *shape)[inter.users[test]]
        rec = Recommender.from_pretrained(out / "model")
        users = [dataset.user_ids[u] for u in inter.users[test]]
        scores = rec.score_all(users, at=inter.timestamps[test])
        model.append(ndcg(scores, inter.items[test], mask))
        rule.append(ndcg(rule_scores(dataset, t, test, before), inter.items[test], mask))
        warm.append(np.isin(inter.users[test], inter.users[before]))
        groups.append(t * 100_000 + inter.users[test])
        print(f"t={t}: model {model[-1].mean():.4f}, rule {rule[-1].mean():.4f}", flush=True)
    per_t = [
        (t, m.mean(), r.mean(), w) for t, m, r, w in zip(UPDATES, model, rule, warm, strict=True)
    ]
    m, r, w, g = (np.concatenate(x) for x in (model, rule, warm, groups))
    mean_model = float(np.mean([x[1] for x in per_t]))
    mean_rule = float(np.mean([x[2] for x in per_t]))
    lines = [
        "# What is popular now, learned: p4 next-block ranking against the written-down rule",
        "",
        f"`python -m benchmarks.recency`; {hardware_line()}; fp32, seed 0. The model: "
        f"`{CONFIG.relative_to(REPO)}` with {', '.join(f'`{s}`' for s in SETTINGS)}, retrained "
        "on B_1..B_t; scored through the app (`score_all(users, at=target times)`, the numpy "
        "path) on each user's first interaction of B_{t+1}, the user's earlier items excluded, "
        "full ranking. The rule: known users by popularity in B_t, new users by how often each "
        "item was a user's first in B_t.",
        "",
        "| update t | model NDCG@10 (known / new users) | rule NDCG@10 (known / new users) | "
        "recipe's own test NDCG@10 |",
        "|---|---|---|---|",
    ]
    for (t, mm, rr, ww), mv, rv in zip(per_t, model, rule, strict=True):
        lines.append(
            f"| {t} | {mm:.4f} ({mv[ww].mean():.4f} / {mv[~ww].mean():.4f}) | {rr:.4f} "
            f"({rv[ww].mean():.4f} / {rv[~ww].mean():.4f}) | {recipe[t]['test_ndcg@10']:.4f} |"
        )
    diff = paired(m, r, g)
    diff_warm = paired(m[w], r[w], g[w])
    diff_new = paired(m[~w], r[~w], g[~w])
    lines += [
        "",
        f"Mean over t = 2, 3, 4: model **{mean_model:.4f}**, rule {mean_rule:.4f}. Pooled over "
        f"the updates' {len(m):,} targets, model minus rule: {diff[0]:+.4f} "
        f"[{diff[1]:+.4f}, {diff[2]:+.4f}]; known users ({int(w.sum())}): "
        f"{m[w].mean():.4f} vs {r[w].mean():.4f}, {diff_warm[0]:+.4f} "
        f"[{diff_warm[1]:+.4f}, {diff_warm[2]:+.4f}]; new users ({int((~w).sum())}): "
        f"{m[~w].mean():.4f} vs {r[~w].mean():.4f}, {diff_new[0]:+.4f} "
        f"[{diff_new[1]:+.4f}, {diff_new[2]:+.4f}] (95% bootstrap intervals over (update, user) "
        f"groups, {BOOTSTRAP} draws).",
        "",
        f"{time.perf_counter() - started:.0f} s for the report (runs reused when present).",
    ]
    data = {
        "per_update": [
            {"t": t, "model": mm, "rule": rr, "recipe": recipe[t]["test_ndcg@10"]}
            for t, mm, rr, _ in per_t
        ],
        "mean": {"model": mean_model, "rule": mean_rule},
        "paired": {"all": diff, "known": diff_warm, "new": diff_new},
    }
    write_report(args.out, "\n".join(lines), data)


if __name__ == "__main__":
    main()
