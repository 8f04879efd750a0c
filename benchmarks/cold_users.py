"""Cold-start users: a profile text, a few ratings, or both (ml-100k, protocol p2u).

    python recipes/train_rating.py --config recipes/configs/minilm_lora_rating.yaml \\
        data.protocol=p2u model.user_text=true output_dir=runs/p2u_lora
    python -m benchmarks.cold_users runs/p2u_lora/model --out benchmarks/results/cold_users.md

p2u (peftrec's own protocol) holds out every rating of 20% of the users (test) and 10% more
(validation), so the model never saw them. Per held-out user, ratings are ordered by (timestamp,
row); for k in 0, 1, 3, 5, 10 the first k are known (folded in) and the ratings after the 10th are
scored, so every k scores the same ratings (users with 10 ratings or fewer are left out; every
ml-100k user has at least 20). RMSE over all the scored ratings, for:

(a) profile + fold-in: ``add_users({id: profile})``, then ``fold_in`` with the profile as prior;
(b) fold-in only: the same model, ``fold_in`` from a zero prior (k=0: mean + item bias);
(c) baseline: mean + item bias + user bias, all from rating averages (no model): item biases
    shrunk as in the recipe's initialisation, the user bias fitted to the k ratings, shrunk.

Each method's one ``l2`` (its shrinkage) is picked on the validation users, from L2_GRID, by the
mean RMSE over k = 1, 3, 5, 10; the table reports the test users. Several model folders give one
table each, in one file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import hardware_line, write_report
from peftrec.app.recommender import Recommender
from peftrec.config import load_config
from peftrec.data import load_data, split_rows
from peftrec.metrics import rmse
from peftrec.models.towers import shrunk_biases
from peftrec.tasks.rating.config import RatingRecipeConfig

KS = (0, 1, 3, 5, 10)
L2_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
METHODS = {
    "profile": "(a) profile + fold-in",
    "ratings": "(b) fold-in only",
    "baseline": "(c) baseline biases",
}


def users_in_order(dataset, rows: np.ndarray) -> dict[int, np.ndarray]:
    """Each user's rows ordered by (timestamp, row); only users with more than max(KS) ratings."""
    inter = dataset.interactions
    order = rows[np.lexsort((rows, inter.timestamps[rows], inter.users[rows]))]
    users, starts = np.unique(inter.users[order], return_index=True)
    groups = np.split(order, starts[1:])
    return {int(u): g for u, g in zip(users, groups, strict=True) if len(g) > max(KS)}


class Baseline:
    """mean + b_i (+ b_u from the known ratings): regularised averages of the training ratings."""

    def __init__(self, dataset, train_rows: np.ndarray):
        inter = dataset.interactions
        biases = shrunk_biases(
            inter.users[train_rows],
            inter.items[train_rows],
            inter.ratings[train_rows],
            len(dataset.user_ids),
            len(dataset.item_ids),
        )
        self.mean, self.item_bias = biases.mean, biases.item

    def predict(self, known_items, known_ratings, items, l2: float) -> np.ndarray:
        residual = np.asarray(known_ratings) - self.mean - self.item_bias[known_items]
        return self.mean + self.item_bias[items] + residual.sum() / (len(residual) + l2)


def predictions(
    rec: Recommender,
    baseline: Baseline,
    dataset,
    user: int,
    rows: np.ndarray,
    method: str,
    k: int,
    l2: float,
) -> np.ndarray:
    """Predicted ratings of ``rows[max(KS):]`` when ``rows[:k]`` are known."""
    inter, item_ids = dataset.interactions, dataset.item_ids
    known, scored = rows[:k], rows[max(KS) :]
    if method == "baseline":
        return baseline.predict(inter.items[known], inter.ratings[known], inter.items[scored], l2)
    uid = f"cold-{method}-{k}:{dataset.user_ids[user]}"  # a new user per k, never the trained row
    if k > 0:
        rec.fold_in(
            uid,
            {
                item_ids[i]: float(r)
                for i, r in zip(inter.items[known], inter.ratings[known], strict=True)
            },
            l2=l2,
        )
    elif method == "ratings":  # no ratings, no profile: bias and vector at their zero prior
        rec.fold_in(
            uid, {item_ids[inter.items[scored[0]]]: 3.0}, l2=1e12
        )  # (1e-12 of a rating away)
    return rec.predict([uid] * len(scored), [item_ids[i] for i in inter.items[scored]])


def rmse_by_k(
    rec, baseline, dataset, users: dict[int, np.ndarray], method: str, l2: float
) -> dict[int, float]:
    inter, result = dataset.interactions, {}
    for k in KS:
        errors = [
            predictions(rec, baseline, dataset, u, rows, method, k, l2)
            - inter.ratings[rows[max(KS) :]]
            for u, rows in users.items()
        ]
        result[k] = rmse(np.concatenate(errors))
    return result


def evaluate(folder: Path) -> tuple[str, str]:
    """One model folder: its Markdown section and a one-line summary."""
    started = time.perf_counter()
    cfg = load_config(RatingRecipeConfig, folder / "config.yaml")
    if cfg.data.protocol != "p2u" or not cfg.model.user_text:
        raise SystemExit(
            f"{folder}: trained with data.protocol={cfg.data.protocol}, model.user_text="
            f"{cfg.model.user_text}; this benchmark needs p2u and model.user_text=true"
        )
    dataset = load_data(cfg.data)
    split = split_rows(dataset, "p2u", seed=cfg.data.seed)
    rec = Recommender.from_pretrained(folder)
    baseline = Baseline(dataset, split.train)
    valid, test = users_in_order(dataset, split.valid), users_in_order(dataset, split.test)
    profiles = dataset.user_texts(cfg.data.user_template)
    rec.add_users(
        {
            f"cold-profile-{k}:{dataset.user_ids[u]}": profiles[u]
            for u in [*valid, *test]
            for k in KS
        }
    )

    chosen, table, tuning = {}, {}, {}
    for method in METHODS:
        on_valid = {l2: rmse_by_k(rec, baseline, dataset, valid, method, l2) for l2 in L2_GRID}
        tuning[method] = {l2: np.mean([on_valid[l2][k] for k in KS if k > 0]) for l2 in L2_GRID}
        chosen[method] = min(L2_GRID, key=tuning[method].get)
        table[method] = rmse_by_k(rec, baseline, dataset, test, method, chosen[method])

    # the profile path must encode as training did: a new user with a test user's profile against
    # that user's own (never trained) row, which differs only by its initial ID vector (std 0.01)
    some = list(test)[:20]
    pairs = [
        (u, dataset.item_ids[i])
        for u in some
        for i in dataset.interactions.items[test[u][max(KS) :]]
    ]
    trained_row = rec.predict([dataset.user_ids[u] for u, _ in pairs], [i for _, i in pairs])
    added = rec.predict(
        [f"cold-profile-0:{dataset.user_ids[u]}" for u, _ in pairs], [i for _, i in pairs]
    )

    scored = sum(len(rows) - max(KS) for rows in test.values())
    metrics = (
        folder.parent / "metrics.json"
    )  # the recipe's own results, when the run folder has them
    recipe = json.loads(metrics.read_text()) if metrics.is_file() else {}
    lines = [
        f"### {folder} ({cfg.backbone.name}, adapter {cfg.adapter.method}, seed {cfg.train.seed}, "
        f"split seed {cfg.data.seed})",
        "",
        f"Test RMSE of {scored} ratings of {len(test)} p2u test users (the same ratings for every "
        f"k); l2 per method chosen on the {len(valid)} validation users from {list(L2_GRID)}.",
        "",
        "| known ratings k | "
        + " | ".join(f"{METHODS[m]}, l2={chosen[m]:g}" for m in METHODS)
        + " |",
        "|---|" + "---|" * len(METHODS),
    ]
    lines += [f"| {k} | " + " | ".join(f"{table[m][k]:.4f}" for m in METHODS) + " |" for k in KS]
    if recipe:
        lines += [
            "",
            f"The recipe's own p2u test RMSE (every test rating, each user's own untrained row + "
            f"profile): {recipe['test_rmse']:.4f}, best epoch {recipe['best_epoch']}, "
            f"{recipe['trainable_parameters']} trainable parameters.",
        ]
    lines += [
        "",
        "Validation RMSE (mean over k = 1, 3, 5, 10) by l2: "
        + "; ".join(
            f"{METHODS[m][:3]} " + ", ".join(f"{l2:g}: {v:.4f}" for l2, v in tuning[m].items())
            for m in METHODS
        ),
    ]
    lines += [
        "",
        f"Profile check: max |add_users - the user's own untrained row| = "
        f"{np.abs(added - trained_row).max():.4f} over {len(pairs)} predictions. "
        f"Wall time {time.perf_counter() - started:.0f} s.",
        "",
    ]
    summary = f"{folder}: " + ", ".join(
        f"{m} k=0/10 {table[m][0]:.4f}/{table[m][10]:.4f}" for m in METHODS
    )
    return "\n".join(lines), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "models",
        nargs="+",
        type=Path,
        help="model folders trained on p2u with model.user_text=true",
    )
    parser.add_argument("--out", type=Path, help="write the Markdown table here")
    args = parser.parse_args()
    sections, summaries = zip(*(evaluate(folder) for folder in args.models), strict=True)
    text = "\n".join(
        [
            "# Cold-start users (ml-100k, protocol p2u, test users)",
            "",
            "Per test user, ratings ordered by (timestamp, row): the first k are known (folded "
            "in), the ratings after the 10th are scored. (a) new user from the profile text, then "
            "ridge fold-in of the k ratings around it; (b) ridge fold-in from a zero prior; (c) "
            "mean + item bias + shrunk user bias (no model). Made by "
            "`python -m benchmarks.cold_users`.",
            "",
            f"Hardware: {hardware_line()}. Numbers are test RMSE; the only choice made (l2) was "
            "made on validation users.",
            "",
            *sections,
        ]
    )
    write_report(args.out, text)
    print("\n".join(summaries))


if __name__ == "__main__":
    main()
