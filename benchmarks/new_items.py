"""Do items added by text compete with trained ones? Each trained item's text re-added as a new
item.

    python -m benchmarks.new_items runs/minilm_lora_rating/model [more model folders] \\
        --out results.md

For a hybrid (text + item-ID) model an item the app adds with ``add_items`` is scored from its
text alone. This re-scores every trained item that way ("as new") and compares, per user, the
rank its text-only copy would get among the trained catalogue with the rank of the item itself:

- calibration gap: mean |full score - text-only score| over all (user, item) pairs;
- median rank of the items themselves and of their text-only copies (1 = top), over all pairs;
- median rank of the text-only copies of each user's top-10 items;
- share of trained items whose text-only copy would enter at least one user's top 10.

A model trained with ``model.item_id_dropout`` should have a small gap and copies that rank like
the items. With a knowledge tower the copy keeps the item's facts (as ``add_items(...,
knowledge=...)`` gives them). Text-only models (no ID part) score both the same by construction.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.common import hardware_line, write_report
from peftrec.app.recommender import Recommender

TOP = 10


@torch.no_grad()
def compare(folder: Path) -> dict[str, float]:
    rec = Recommender.from_pretrained(folder).engine  # the network: text and ID parts apart
    head, trained = rec.model.head, rec.num_trained_items
    text = rec._item_text()[:trained]
    users = rec.user_vectors_of(torch.arange(rec.num_trained_users))
    full = head.score_all(users, head.items(text, torch.arange(trained))).double()
    # a new item has no ID embedding; a knowledge model's new item comes with its facts
    facts = head.knowledge.facts[:trained] if head.knowledge is not None else None
    alone = head.score_all(users, head.items(text, torch.full((trained,), -1), facts)).double()
    # rank of item i among the trained catalogue (users x items), and of its copy in its place
    order = torch.sort(full, dim=1, descending=True).values  # (users, items), best first
    rank_item = 1 + torch.searchsorted(-order.contiguous(), -full.contiguous(), right=False)
    rank_copy = 1 + torch.searchsorted(-order.contiguous(), -alone.contiguous(), right=False)
    copy_in_top = (rank_copy <= TOP).any(dim=0)
    top = rank_item <= TOP  # each user's trained top 10: where do their text-only copies land?
    return {
        "median_rank_copy_of_top10": float(rank_copy[top].double().median()),
        "gap": float((full - alone).abs().mean()),
        "median_rank_item": float(rank_item.double().median()),
        "median_rank_copy": float(rank_copy.double().median()),
        "copies_in_some_top10": float(copy_in_top.double().mean()),
        "items": trained,
        "id_dropout": float(rec.spec.head.get("id_dropout", 0.0)),
        "item_ids": bool(rec.spec.head["item_ids"]),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="saved model folders")
    parser.add_argument("--out", type=Path, help="write the table here too (Markdown)")
    args = parser.parse_args(argv)
    lines = [
        "| model | item-ID dropout | calibration gap | median rank: item / its text-only copy | "
        f"median rank of the copies of a user's top {TOP} | copies in some user's top {TOP} |",
        "|---|---|---|---|---|---|",
    ]
    for folder in args.models:
        r = compare(folder)
        lines.append(
            f"| `{folder}` | {r['id_dropout']:g}{'' if r['item_ids'] else ' (text only)'} | "
            f"{r['gap']:.3f} | {r['median_rank_item']:.0f} / {r['median_rank_copy']:.0f} | "
            f"{r['median_rank_copy_of_top10']:.0f} | {100 * r['copies_in_some_top10']:.1f}% "
            f"of {r['items']} |"
        )
        print(lines[-1], flush=True)
    lines += ["", f"Made by `python -m benchmarks.new_items`; {hardware_line()}."]
    write_report(args.out, "\n".join(lines), echo=False)


if __name__ == "__main__":
    main()
