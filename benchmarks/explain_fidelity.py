"""Are explanations faithful? Removing the words they credit must lower the score more than
removing random words (P1 test pairs of a rating or ranking model).

    python -m benchmarks.explain_fidelity runs/minilm_lora_rating/model \\
        --out benchmarks/results/explain_fidelity.md

For a sample of the model's test pairs (the split in its config.yaml, seed 0): explain the
user's score of the item (:meth:`peftrec.Recommender.explain`), then delete from the item's text
the ``k`` words with the largest positive attribution and, separately, ``k`` words drawn at
random (``DRAWS`` draws, averaged), and score the shortened texts the way the explanation did
(same user, the item's ID embedding kept). The fidelity gap is (drop after removing the top
words) - (drop after removing random words), per pair; the report gives its mean with a
bootstrap interval over pairs. History models get the same test for past items: each past
item's credit is the score drop when it alone is left out, so the test leaves out the two
credited most *together* against two random ones.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import hardware_line, write_report
from peftrec.app.explain import text_scorer, word_spans
from peftrec.app.recommender import Recommender
from peftrec.config import load_config
from peftrec.data import load_data, split_rows
from peftrec.models.tokens import tokenize_texts
from peftrec.tasks import task_of

DRAWS = 5
BOOTSTRAP = 2000


def interval(values: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float]:
    """Mean and 95% bootstrap interval (resampling pairs)."""
    means = rng.choice(values, size=(BOOTSTRAP, len(values))).mean(axis=1)
    return float(values.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def without(text: str, spans: list[tuple[int, int, list]], drop: set[int]) -> str:
    return " ".join(text[s:e] for j, (s, e, _) in enumerate(spans) if j not in drop)


@torch.no_grad()
def word_drops(rec: Recommender, user: str, item: str, ks: list[int], rng) -> dict | None:
    """Score drops after removing the top-k credited words and k random words."""
    explanation = rec.explain(user, item)
    engine = rec.engine
    text = rec.item_info(item)["text"]
    _, spans = word_spans(engine.tokenizer, text, engine.spec.max_length)
    if len(spans) != len(explanation.words) or len(spans) <= max(ks):
        return None
    score = text_scorer(engine, engine.user_index[user], engine.item_index[item])

    def drop(removed: set[int]) -> float:
        tokens = tokenize_texts(
            engine.tokenizer, [without(text, spans, removed)], engine.spec.max_length
        )[0]
        return explanation.score - float(score(torch.tensor([tokens]))[0])

    order = np.argsort([-a for _, a in explanation.words])
    out = {
        "delta": explanation.delta,
        "score_change": explanation.score - explanation.baseline_score,
    }
    for k in ks:
        top = drop(set(order[:k].tolist()))
        random = np.mean(
            [drop(set(rng.choice(len(spans), k, replace=False).tolist())) for _ in range(DRAWS)]
        )
        out[k] = (top, float(random))
    return out


@torch.no_grad()
def history_drops(rec: Recommender, user: str, item: str, rng, k: int = 2) -> tuple | None:
    """Score drops after leaving out, together, the ``k`` past items credited most and ``k``
    random ones (each credit is a one-at-a-time effect, so this tests that they combine)."""
    history = rec.explain(user, item, steps=2).history  # words are not used here
    if not history or len(history) <= k:
        return None
    engine, vectors = rec.engine, rec._served()
    read = [engine.item_index[i] for i, _ in history]
    row = engine.item_index[item]

    def score(dropped: set[int]) -> float:
        state = engine.history_state([r for j, r in enumerate(read) if j not in dropped])
        return float(state[0] @ vectors.item_vectors[row] + vectors.item_biases[row])

    full = score(set())
    top = set(np.argsort([-d for _, d in history])[:k].tolist())
    draws = [set(rng.choice(len(read), k, replace=False).tolist()) for _ in range(DRAWS)]
    return full - score(top), float(np.mean([full - score(d) for d in draws]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a saved model folder (with its config.yaml)")
    parser.add_argument("--pairs", type=int, default=200, help="test pairs sampled (default 200)")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 3], help="words removed")
    parser.add_argument("--out", type=Path, default=None, help="Markdown report to write")
    args = parser.parse_args()

    started = time.perf_counter()
    rec = Recommender.from_pretrained(args.model)
    task = task_of(rec.spec.task)
    cfg = load_config(task.config, args.model / "config.yaml")
    dataset = load_data(cfg.data)
    split = split_rows(dataset, cfg.data.protocol, seed=cfg.data.seed)
    rng = np.random.default_rng(0)
    rows = rng.choice(split.test, size=min(args.pairs, len(split.test)), replace=False)
    pairs = [
        (
            dataset.user_ids[dataset.interactions.users[r]],
            dataset.item_ids[dataset.interactions.items[r]],
        )
        for r in rows
    ]
    pairs = [(u, i) for u, i in pairs if u in rec.user_index and i in rec.item_index]
    results = [r for u, i in pairs if (r := word_drops(rec, u, i, args.k, rng)) is not None]
    lines = [
        f"# Explanation fidelity: {args.model}",
        "",
        f"{rec.spec.task} model, {rec.spec.backbone} + {rec.spec.adapter.method}; "
        f"{len(results)} {cfg.data.protocol} test pairs (of {len(pairs)} sampled; texts with more "
        f"words than k), integrated gradients with 32 steps; {hardware_line()}; "
        f"{time.perf_counter() - started:.0f} s.",
        "",
        f"Completeness: |sum of word attributions - (score - baseline)| median "
        f"{np.median([abs(r['delta']) for r in results]):.1e}, max "
        f"{max(abs(r['delta']) for r in results):.1e}.",
        "",
        "| words removed | score drop, top-credited | score drop, random (mean of "
        f"{DRAWS}) | fidelity gap [95% CI] |",
        "|---|---|---|---|",
    ]
    summary = {}
    for k in args.k:
        top = np.array([r[k][0] for r in results])
        random = np.array([r[k][1] for r in results])
        mean, low, high = interval(top - random, rng)
        summary[k] = {
            "top": float(top.mean()),
            "random": float(random.mean()),
            "gap": [mean, low, high],
        }
        lines.append(
            f"| {k} | {top.mean():+.4f} | {random.mean():+.4f} "
            f"| {mean:+.4f} [{low:+.4f}, {high:+.4f}] |"
        )
    if rec.traits.history:
        drops = [d for u, i in pairs if (d := history_drops(rec, u, i, rng)) is not None]
        top, random = np.array(drops).T
        mean, low, high = interval(top - random, rng)
        lines += [
            "",
            f"Past items ({len(drops)} pairs): leaving out the two past items credited most "
            f"(together) drops the score by {top.mean():+.4f}, two random past items by "
            f"{random.mean():+.4f}; gap {mean:+.4f} [{low:+.4f}, {high:+.4f}].",
        ]
    write_report(args.out, "\n".join(lines))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
